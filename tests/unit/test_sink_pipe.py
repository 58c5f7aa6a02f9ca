"""A sink writing into a full pipe loses nothing when a stop signal arrives mid-write.

CPython 3.11's buffered stdout dropped whole pages when a large blocking write to a full
pipe was interrupted by a signal with a handler: `hoptrace live --json | slow-reader`
stopped with SIGINT printed NDJSON lines cut in the middle (CI saw it in
tests/record/test_live_record.py). The writer here is the real sink over the real
sys.stdout, the reader starts only after the signal, as in that test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

_WRITER = r"""
import signal, sys
from tracer.sinks.output import {sink}
signal.signal(signal.SIGINT, lambda *_: None)
print("ready", file=sys.stderr, flush=True)
sink = {sink}(sys.stdout)
lines = ["%06d " % i + "x" * 93 + "\n" for i in range(4000)]
for part in (lines[:5], lines[5:]):
    {add}
    sink.flush()
"""


@pytest.mark.parametrize(("sink", "add"), [
    ("NdjsonSink", 'sink.on_ndjson("".join(part).encode())'),  # the core's lines, as bytes
    ("TextSink", "sink._buf.extend(part)"),
])
def test_a_signal_during_a_blocked_write_loses_nothing(sink: str, add: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(sink=sink, add=add)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    assert proc.stderr.readline() == b"ready\n"
    time.sleep(0.3)  # the pipe (64-128 KiB) is full by now and the writer blocked
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, b"")
    expected = "".join(f"{i:06d} " + "x" * 93 + "\n" for i in range(4000)).encode()
    assert len(out) == len(expected)
    assert out == expected
