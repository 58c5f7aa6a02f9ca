"""``live --backend ebpf --record`` on the direct road: the core makes the recorder's blocks as it
feeds the ring's batches (``Stream.feed_ring`` with a ``RingRecorder``, no rows handed to
Python), and the file is byte for byte what the Python recorder (``PcapngRecorder.on_batch``)
writes for the same sightings, decoded by the reference (tests/reference/ebpf.py): one file or
rotated, the recording started at any step (the TUI's ``r``), with rows wanted meanwhile by
another hook, and after a write error the tracing goes on as before.

The events are tests/probes/test_ring_feed.py's: the fixtures' sightings as ``struct
hop_event``s, pushed to the ring or written to a file laid out as the ring's mmap.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import probes.skb_hops as skb_hops
from tests.probes.test_ring_feed import (
    NAMES,
    SNAPLEN,
    Spy,
    Ticks,
    events_of,
    output,
    reference_lines,
    ring_source,
    source,
)
from tracer.model import HopLabel, ObsBatch
from tracer.pipeline import PipelineSource
from tracer.sinks.record import PcapngRecorder


class Recorder(PcapngRecorder):
    """The recorder, counting the rows it was handed (0 on the direct road)."""

    def __init__(self, *a: Any, max_bytes: int | None = None, **kw: Any) -> None:
        super().__init__(*a, max_mb=1 if max_bytes else None, **kw)
        if max_bytes:
            self.max_bytes = max_bytes  # files of a few kB: rotation with a fixture's sightings
        self.rows = 0

    def on_batch(self, batch: ObsBatch) -> None:
        self.rows += len(batch)
        super().on_batch(batch)


def decoded(chunks: list[list[bytes]], reasons: dict[int, str]) -> list[ObsBatch]:
    """The chunks' events as the rows road has them (``EbpfSource`` without a reader thread:
    the events pushed, then taken as an ObsBatch), one batch a chunk. Their rows are the
    reference's (tests/probes/test_ring_feed.py checks the paths they make); their hop indexes
    and labels are the source's, which the recorder's IDBs follow."""
    src = source(reasons)
    ring = src._core_ring()
    out = []
    for chunk in chunks:
        ring.push(b"".join(chunk))
        out.append(src._take())
    return out


def expected_files(tmp_path: Path, batches: list[ObsBatch], max_bytes: int | None) -> list[bytes]:
    """What the Python recorder writes for ``batches`` (its rows road), file by file."""
    with Recorder(tmp_path / "expected.pcapng", snaplen=SNAPLEN, max_bytes=max_bytes) as rec:
        for b in batches:
            rec.on_batch(b)
    return [Path(p).read_bytes() for p in rec.paths_written]


def files(rec: PcapngRecorder) -> list[bytes]:
    return [Path(p).read_bytes() for p in rec.paths_written]


@pytest.mark.parametrize("fixture", NAMES)
@pytest.mark.parametrize("max_bytes", [None, 1500])
def test_pushed_events_recorded_by_the_core_are_the_python_recorders_bytes(tmp_path: Path, fixture: str,
                                                                           max_bytes: int | None) -> None:
    events, reasons = events_of(fixture)
    want = expected_files(tmp_path, decoded([events], reasons), max_bytes)
    if max_bytes:
        assert len(want) > 1  # rotated
    got = {}
    for road in ("direct", "rows"):
        src = source(reasons)
        src._core_ring().push(b"".join(events))
        engine = Spy(PipelineSource(src, started=True))
        ticks = Ticks(engine)
        rec = Recorder(tmp_path / f"{road}.pcapng", snaplen=SNAPLEN, max_bytes=max_bytes)
        engine.batch_hooks += [ticks, rec.on_batch]
        if road == "rows":
            engine.batch_hooks.append(ticks.record)  # a hook that needs rows: the engine feeds them
        with rec:
            assert output(tmp_path, engine, True) == reference_lines([events], reasons)
        assert ticks.ticked == len(events)
        assert rec.rows == (0 if road == "direct" else len(events))
        assert rec.packets == len(events) and rec.error is None
        got[road] = files(rec)
    assert got["direct"] == want
    assert got["rows"] == want


@pytest.mark.parametrize("fixture,start,rows_at,max_bytes", [
    ("hairpin-proxy-ebpf.pcapng", 3, None, None),
    ("localhost-port-proxy-ebpf.pcapng", 1, None, 2500),
    ("internet-ping-ebpf.pcapng", 2, None, 1500),
    ("localhost-port-proxy-ebpf.pcapng", 0, (2, 4), 2500),
    ("hairpin-proxy-ebpf.pcapng", 0, (1, 3), None),
])
def test_a_recording_started_at_any_step_is_the_python_recorders_bytes_for_the_batches_since(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture: str, start: int,
        rows_at: tuple[int, int] | None, max_bytes: int | None) -> None:
    """The reader thread reads the ring in several batches (one per chunk the kernel submits).
    A recorder added at a step (as the TUI's ``r`` does; 0: from the start) is handed to the
    core at the next step boundary, and taken back while another hook wants rows (``rows_at``:
    the steps it comes and goes): the file is what the Python recorder writes for the batches
    from there on, whichever road each took."""
    monkeypatch.setattr(skb_hops, "HOLD_S", 0.0)  # a batch per poll that read anything
    events, reasons = events_of(fixture)
    chunks = [[events[k] for k in part.tolist()] for part in np.array_split(np.arange(len(events)), 6)]
    ring_file, src, ring = ring_source(tmp_path, reasons)
    engine = Spy(PipelineSource(src, started=True))
    rec = Recorder(tmp_path / "tui.pcapng", snaplen=SNAPLEN, max_bytes=max_bytes)
    ticks = Ticks(engine, *(rows_at or (None, None)))  # ``record``: a hook that wants rows
    engine.batch_hooks.append(ticks)

    if start:
        orig = ticks._step

        def step() -> None:
            orig()
            if ticks.steps == start:
                engine.batch_hooks.append(rec.on_batch)

        ticks._step = step  # type: ignore[method-assign]
    else:
        engine.batch_hooks.append(rec.on_batch)

    def kernel() -> None:
        for chunk in chunks:
            ring_file.append(chunk)
            ring_file.consumed()  # read in one poll: one batch
            time.sleep(0.02)
        src.stop()

    writer = threading.Thread(target=kernel)
    writer.start()
    try:
        with rec:
            got = output(tmp_path, engine, True)
    finally:
        writer.join(10)
        ring_file.f.close()
    assert got == reference_lines(chunks, reasons)
    assert src._bpf is None and ring.finished
    if rows_at:
        assert 0 < rec.rows < len(events) and 0 < ticks.recorded < len(events)  # both roads
    else:
        assert rec.rows == 0
    # the batches recorded: the last ones, as many sightings as the file holds
    assert rec.packets > 0
    first = next(k for k in range(len(chunks)) if sum(len(c) for c in chunks[k:]) == rec.packets)
    assert (first >= 1) == (start > 0)
    assert files(rec) == expected_files(tmp_path, decoded(chunks, reasons)[first:], max_bytes)


def test_blocks_queued_between_steps_count_towards_the_files_size(tmp_path: Path) -> None:
    """What the recorder queues itself between steps (the local answers' blocks, kept for every
    rotated file) is in the size the core cuts files at: the same files as the rows road."""
    events, reasons = events_of("hairpin-proxy-ebpf.pcapng")
    third = len(events) // 3
    chunks = [events[:third], events[third:2 * third], events[2 * third:]]
    answer = (b"k" * 40, b'"pid": 1', b"p" * 900)  # large: a file's room depends on it

    def run_road(road: str) -> list[bytes]:
        src = source(reasons)
        ring = src._core_ring()
        rec = Recorder(tmp_path / f"{road}.pcapng", snaplen=SNAPLEN, max_bytes=5000)
        with rec:
            if road == "rows":
                for b in decoded(chunks, reasons):
                    rec.on_batch(b)
                    rec.on_local([answer])
                return files(rec)
            # the core's road, by hand: a stream fed from the ring, a step a chunk
            from tracer import _core

            stream = _core.Stream()
            stream.set_output_fd(os_devnull())
            feeder_labels: list[HopLabel] = []
            ring_rec = rec.ring_recorder({k: v for k, v in reasons.items() if 0 < k <= 0xFFFF_FFFF})
            stream.set_recorder(ring_rec)
            for chunk in chunks:
                ring.push(b"".join(chunk))
                ring.set_clock(*src.clock.knots())  # type: ignore[union-attr]
                rec.ring_sync(feeder_labels)
                n, misses, *_ = stream.feed_ring(ring, 0.0)
                if misses:  # labels first, as EbpfSource._fed names them
                    src._name(misses)
                    for hop in src._labels.hops[len(feeder_labels):]:
                        feeder_labels.append(hop)
                        stream.add_hop(hop.node.encode(), hop.iface.encode(), hop.linktype)
                    rec.ring_learn(feeder_labels)
                    n, misses, *_ = stream.feed_ring(ring, 0.0)
                assert n == len(chunk) and not misses
                rec.ring_take()
                rec.on_local([answer])
            assert rec.rows == 0
            return files(rec)

    want = run_road("rows")
    assert len(want) > 4
    assert run_road("direct") == want


def os_devnull() -> int:
    fd = os.open(os.devnull, os.O_WRONLY)
    _open_fds.append(fd)
    return fd


_open_fds: list[int] = []


@pytest.fixture(autouse=True)
def _close_fds() -> Any:
    yield
    while _open_fds:
        os.close(_open_fds.pop())


def test_a_write_error_stops_the_recording_once_and_the_tracing_goes_on(tmp_path: Path) -> None:
    events, reasons = events_of("internet-ping-ebpf.pcapng")
    src = source(reasons)
    src._core_ring().push(b"".join(events))
    engine = Spy(PipelineSource(src, started=True))
    notices: list[str] = []
    rec = Recorder("/dev/full", snaplen=SNAPLEN, on_error="continue", notice=notices.append)
    rec._last_flush = -1e9  # the first step flushes
    engine.batch_hooks.append(rec.on_batch)
    with rec:
        assert output(tmp_path, engine, True) == reference_lines([events], reasons)
    assert rec.rows == 0
    assert notices == ["recording to /dev/full stopped: disk full after 0 packets; tracing continues without recording"]
    assert not rec.ring_active


def test_the_ring_recorder_refuses_what_does_not_add_up() -> None:
    from tracer import _core

    ring_rec = _core.RingRecorder(SNAPLEN, None, {})
    ring_rec.add_hop(0, b"\0" * 8)
    with pytest.raises(ValueError, match="not a first label"):
        ring_rec.add_hop(5, b"\0" * 8)
    assert ring_rec.hops == 1
    data, segments, new = ring_rec.take()
    assert (data, len(segments), len(new)) == (b"", 0, 0)
