"""The core writing live's NDJSON to the output descriptor itself (``Stream.set_output_fd``:
a lone NDJSON sink on a file or a pipe, ``live --json > file``) against the reference engine
(tests/reference/engine.py), byte for byte.

Each run checks that the direct path was taken (``Engine.output_fd`` set, the steps' lines
empty in Python) and that the file holds what the reference prints: every fixture, batches
cut at random with idle clocks, counts, path filters, annotators through the core's tables
with tables changing mid-stream, whatever the sink's stream buffered before, a pipe, and a
reader that went away (BrokenPipeError, as the Python writer raised it).
"""

from __future__ import annotations

import io
import os
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import tests.reference.engine as ref
from tests.unit.test_core_annotate import HOST, Source, Trace, conntrack, entry, generated, topology
from tests.unit.test_core_stream import _ELAPSED, FIXTURES, Batches, fixtures, read, recut
from tracer.annotate.attribution import Attributor
from tracer.engine import Engine, run
from tracer.filter import PathFilter
from tracer.model import ObsBatch
from tracer.sinks.output import NdjsonSink


def lines_of(data: bytes) -> list[str]:
    return [_ELAPSED.sub("}", x) for x in data.decode("utf-8").splitlines()]


class Spy(Engine):
    """An engine that remembers whether any step handed Python a line."""

    python_bytes = 0

    def chunks(self):  # type: ignore[no-untyped-def]
        for lines in super().chunks():
            self.python_bytes += len(lines.data)
            yield lines


def direct(tmp_path: Path, engine: Spy, before: str = "") -> list[str]:
    """``engine`` run into an NDJSON sink on a real file (``before`` already in the stream's buffer)."""
    out = tmp_path / "out.ndjson"
    with open(out, "w") as f:
        f.write(before)
        run(engine, [NdjsonSink(f)])
    assert engine.output_fd is not None  # the core wrote the lines
    assert engine.python_bytes == 0
    return lines_of(out.read_bytes())


def reference(batches: Sequence[ObsBatch], **kw: Any) -> list[str]:
    buf = io.StringIO()
    ref.run(ref.Engine(Batches(batches), **kw), [ref.NdjsonSink(buf)])
    return [_ELAPSED.sub("}", x) for x in buf.getvalue().splitlines()]


def assert_same(tmp_path: Path, batches: Sequence[ObsBatch], expr: str | None = None, **kw: Any) -> list[str]:
    flt = PathFilter(expr) if expr else None
    got = direct(tmp_path, Spy(Batches(batches), path_filter=flt, **kw))
    assert got == reference(batches, path_filter=flt, **kw)
    return got


@pytest.mark.parametrize("fixture", fixtures())
def test_fixture(tmp_path: Path, fixture: str) -> None:
    batches, _ = read([str(FIXTURES / fixture)])
    lines = assert_same(tmp_path, batches)
    assert lines[-1].startswith('{"type": "stats"')


@pytest.mark.parametrize("seed", range(3))
def test_random_batches_idle_clocks_counts_and_filters(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    shown = 0
    for k, fixture in enumerate(fixtures()[seed::2]):
        batches = recut(read([str(FIXTURES / fixture)])[0], rng, idle=True)
        kw: dict[str, Any] = {}
        if k % 3 == 1:
            kw["count"] = rng.choice([0, 1, 3])
        if k % 3 == 2:
            kw["expr"] = rng.choice(["icmp", "udp", "len > 100"])
        shown += sum(x.startswith('{"type": "path"') for x in assert_same(tmp_path, batches, **kw))
    assert shown > 0


def test_the_sinks_buffer_goes_first(tmp_path: Path) -> None:
    batches, _ = read([str(FIXTURES / "internet-ping.pcapng")])
    got = direct(tmp_path, Spy(Batches(batches)), before="# written before\n")
    assert got[0] == "# written before"
    assert got[1:] == reference(batches)


@pytest.mark.parametrize("seed", range(2))
def test_table_annotators_with_tables_changing_mid_stream(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    batches = recut(generated(6_000, 4096, seed), rng, idle=True)
    switch = rng.randrange(1, max(2, len(batches)))

    def make() -> tuple[list[Any], Callable[[int], None]]:
        table = conntrack()
        snapshots = [topology(), topology("host-renamed", rules=False)]
        att = Attributor(lambda: snapshots[0], table)

        def before(k: int) -> None:
            if k == switch:
                snapshots.reverse()
            if k == switch // 2:
                table._tables[HOST].put(entry(3, 1003, ("SRC_NAT", "SEEN_REPLY")))

        return ([att, Trace()] if seed else [att]), before

    anns, before = make()
    engine = Spy(Source(batches, before), annotators=anns)
    got = direct(tmp_path, engine)
    anns, before = make()
    buf = io.StringIO()
    plain = [(lambda p, a=a: a(p)) for a in anns]
    ref.run(ref.Engine(Source(batches, before), annotators=plain), [ref.NdjsonSink(buf)])
    assert got == [_ELAPSED.sub("}", x) for x in buf.getvalue().splitlines()]
    assert any('"node": "dockerhost"' in x or '"node": "host-renamed"' in x for x in got)  # annotated


def test_not_with_another_sink_or_plain_function_annotators(tmp_path: Path) -> None:
    """Row views or two sinks: the lines come through Python, as before."""
    batches, _ = read([str(FIXTURES / "udp.pcapng")])
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        two = Spy(Batches(batches))
        run(two, [NdjsonSink(a), NdjsonSink(b)])
    assert two.output_fd is None and two.python_bytes > 0
    assert lines_of((tmp_path / "a").read_bytes()) == lines_of((tmp_path / "b").read_bytes()) == reference(batches)
    with open(tmp_path / "c", "w") as c:
        plain = Spy(Batches(batches), annotators=[lambda p: p])
        run(plain, [NdjsonSink(c)])
    assert plain.python_bytes > 0
    assert lines_of((tmp_path / "c").read_bytes()) == reference(batches, annotators=[lambda p: p])


def test_a_pipe(tmp_path: Path) -> None:
    batches = generated(4_000, 1024)
    r, w = os.pipe()
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(iter_read(r)))
    reader.start()
    with os.fdopen(w, "w") as f:
        engine = Spy(Batches(batches))
        run(engine, [NdjsonSink(f)])
    reader.join()
    os.close(r)
    assert engine.output_fd is not None and engine.python_bytes == 0
    assert lines_of(bytes(got)) == reference(batches)
    assert len(got) > 1 << 16  # more than a pipe holds: the writer waited for the reader


def iter_read(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def test_a_reader_that_went_away_is_a_broken_pipe() -> None:
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as f, pytest.raises(BrokenPipeError):
        run(Spy(Batches(generated(2_000, 500))), [NdjsonSink(f)])

