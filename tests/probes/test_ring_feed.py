"""The core feeding the eBPF ring's batches to the engine itself (``Stream.feed_ring`` through
``EbpfSource.stream_steps``: no numpy array, no Python per batch) against the reference, byte
for byte: the same hop events decoded by tests/reference/ebpf.py and joined, finished and
written by tests/reference/engine.py.

The events are the fixtures' sightings (their frames, namespaces, interfaces, directions, drop
reasons and skbs) as ``struct hop_event``s, pushed (no reader thread: what the last poll reads)
or written to a file laid out as the ring's mmap while the core's reader thread reads it, in
several batches, with a recorder-like hook (rows wanted: ObsBatch steps) coming and going
mid-stream. The output goes to a file the core writes itself, or back through Python.
Also: a panic in the reader thread and labels out of step surface as errors, never as rows
naming the wrong hop.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import probes.skb_hops as skb_hops
import tests.reference.engine as ref
from probes.skb_hops import HEADER_LEN, EbpfSource, event_layout, event_type
from probes.utc_clock import MonoToUtc
from tests.reference import ebpf as reference
from tests.unit.test_core_stream import _ELAPSED, FIXTURES, Batches, read
from tracer import _core
from tracer.engine import Engine, run
from tracer.model import HopLabel, ObsBatch, obs_dtype
from tracer.pipeline import PipelineSource
from tracer.sinks.output import NdjsonSink

PAGE = mmap.PAGESIZE
DATA = 1 << 22
PER_RECORD = 16
SNAPLEN = 128
LINKTYPES = {1: 14, 101: 0}  # link type -> mac_len: Ethernet, raw IP
# Fixtures whose sightings make paths (the eBPF recordings, and taps of several hops).
NAMES = ["blocked-ebpf.pcapng", "demo-internet-ping-ebpf.pcapng", "hairpin-proxy-ebpf.pcapng",
         "internet-ping-ebpf.pcapng", "localhost-port-proxy-ebpf.pcapng", "published-port.pcapng", "udp.pcapng"]


def clock() -> MonoToUtc:
    return MonoToUtc(mono=lambda: 0, real=lambda: 0)  # UTC = monotonic: the fixtures' stamps stay


def events_of(fixture: str) -> tuple[list[bytes], dict[int, str]]:
    """The fixture's sightings of Ethernet or raw IP hops as hop events, and its drop reason names."""
    t = event_type(SNAPLEN)
    snap = ctypes.sizeof(t) - t.frame.offset  # type: ignore[attr-defined]
    out: list[bytes] = []
    reasons: dict[int, str] = {}
    for b in read([str(FIXTURES / fixture)])[0]:
        reasons.update(b.drop_reasons)
        frames = bytes(b.frames)
        for r in b.rows:
            label = b.hops[int(r["hop"])]
            if label.linktype not in LINKTYPES:
                continue
            frame = frames[int(r["frame_off"]):int(r["frame_off"]) + int(r["frame_len"])]
            ev = t()
            ev.ts_ns, ev.skb, ev.netns, ev.ifindex = int(r["ts_ns"]), int(r["skb"]), int(r["netns"]), int(r["ifindex"])
            ev.ifname = label.iface.encode("utf-8", "surrogateescape")[:15]
            ev.kind, ev.mac_len, ev.drop_reason = int(r["dir"]), LINKTYPES[label.linktype], int(r["drop_reason"])
            ev.len = ev.wire_len = int(r["wire_len"])
            ev.cap_len = min(len(frame), snap)
            ctypes.memmove(ctypes.addressof(ev) + t.frame.offset, frame, ev.cap_len)  # type: ignore[attr-defined]
            out.append(bytes(ev))
    reasons[-0x10000] = "SUBSYS_MASK"  # the kernel's enum has a mask no row carries
    return out, reasons


def reference_lines(chunks: list[list[bytes]], reasons: dict[int, str]) -> list[str]:
    """What the reference prints for the events, in batches of ``chunks``: decoded as
    tests/reference/ebpf.py decodes them, each hop named as the eBPF source names a namespace it
    cannot name, then the source's clock at the end."""
    t = event_type(SNAPLEN)
    keys: dict[tuple[int, int, bytes, int], int] = {}
    hops: list[HopLabel] = []
    batches = []
    for chunk in chunks:
        buf = b"".join(chunk)
        rows = reference.decode_events(buf, np.dtype(t), t.frame.offset, clock(), keys)  # type: ignore[attr-defined]
        for (netns, ifindex, ifname, lt), i in sorted(keys.items(), key=lambda kv: kv[1])[len(hops):]:
            assert i == len(hops)
            node = "?" if netns == 0 else f"netns:{netns}"
            iface = ifname.decode("ascii", "replace") or (f"if{ifindex}" if ifindex else "(no device)")
            hops.append(HopLabel(node=node, iface=iface, netns=netns, ifindex=ifindex, linktype=lt))
        batches.append(ObsBatch(rows=rows, hops=hops, frames=buf, drop_reasons=reasons))
    batches.append(ObsBatch(rows=np.zeros(0, obs_dtype()), hops=hops, now_ns=0, drop_reasons=reasons))
    out = io.StringIO()
    ref.run(ref.Engine(Batches(batches)), [ref.NdjsonSink(out)])
    return [_ELAPSED.sub("}", x) for x in out.getvalue().splitlines()]


def source(reasons: dict[int, str]) -> EbpfSource:
    src = EbpfSource(snaplen=SNAPLEN)
    src.layout = SimpleNamespace(drop_reasons=reasons)  # type: ignore[assignment]
    src.clock = clock()
    return src


class Spy(Engine):
    """An engine that counts the steps the core fed itself and those fed as ObsBatch."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.fed_steps = 0
        self.python_bytes = 0

    def chunks(self):  # type: ignore[no-untyped-def]
        for lines in super().chunks():
            self.python_bytes += len(lines.data)
            yield lines


class Ticks:
    """A CPU budget's place among the batch hooks: counts sightings (``tick``), and may start and
    stop a recorder-like hook (a plain function of the batch) at given steps, as the TUI's ``r`` does."""

    def __init__(self, engine: Engine, start: int | None = None, stop: int | None = None) -> None:
        self.engine = engine
        self.ticked = 0
        self.steps = 0
        self.recorded = 0
        self.start_at, self.stop_at = start, stop

    def tick(self, sightings: int = 0) -> None:
        self.ticked += sightings
        self._step()

    def __call__(self, batch: ObsBatch) -> None:
        self.tick(len(batch))

    def record(self, batch: ObsBatch) -> None:
        self.recorded += len(batch)

    def _step(self) -> None:
        self.steps += 1
        if self.steps == self.start_at:
            self.engine.batch_hooks.append(self.record)
        if self.steps == self.stop_at and self.record in self.engine.batch_hooks:
            self.engine.batch_hooks.remove(self.record)


def output(tmp_path: Path, engine: Engine, to_file: bool) -> list[str]:
    if to_file:
        path = tmp_path / "out.ndjson"
        with open(path, "w") as f:
            run(engine, [NdjsonSink(f)])
        assert engine.output_fd is not None  # the core wrote the lines
        data = path.read_text()
    else:
        buf = io.StringIO()
        run(engine, [NdjsonSink(buf)])
        data = buf.getvalue()
    return [_ELAPSED.sub("}", x) for x in data.splitlines()]


@pytest.mark.parametrize("fixture", NAMES)
@pytest.mark.parametrize("to_file", [True, False])
def test_pushed_events_fed_by_the_core_print_what_the_reference_prints(tmp_path: Path, fixture: str,
                                                                        to_file: bool) -> None:
    events, reasons = events_of(fixture)
    assert events
    src = source(reasons)
    src._core_ring().push(b"".join(events))
    engine = Spy(PipelineSource(src, started=True))
    ticks = Ticks(engine)
    engine.batch_hooks.append(ticks)
    got = output(tmp_path, engine, to_file)
    assert got == reference_lines([events], reasons)
    assert ticks.ticked == len(events) and ticks.recorded == 0  # every step fed by the core
    assert (engine.python_bytes == 0) == to_file
    assert any(x.startswith('{"type": "path"') for x in got)


def test_a_recorder_hook_gets_batches_and_the_core_the_rest(tmp_path: Path) -> None:
    """With a hook that needs rows, the steps are ObsBatch (fed by the engine), as before."""
    events, reasons = events_of("hairpin-proxy-ebpf.pcapng")
    src = source(reasons)
    src._core_ring().push(b"".join(events))
    engine = Spy(PipelineSource(src, started=True))
    ticks = Ticks(engine)
    engine.batch_hooks += [ticks, ticks.record]
    assert output(tmp_path, engine, True) == reference_lines([events], reasons)
    assert ticks.recorded == ticks.ticked == len(events)


def _record(events: list[bytes]) -> bytes:
    payload = struct.pack("<IIQ", len(events), 0, 0) + b"".join(events)
    return struct.pack("<II", len(payload), 0) + payload + b"\0" * (-(len(payload) + 8) % 8)


class RingFile:
    """A file laid out as a BPF ring buffer map's mmap (consumer page, producer page, the data
    twice), records appended as the kernel submits them."""

    def __init__(self, path: Path) -> None:
        self.f = path.open("w+b")
        self.f.truncate(2 * PAGE + 2 * DATA)
        self.pos = 0

    def append(self, events: list[bytes]) -> None:
        """The events in records of ``PER_RECORD``, submitted at once (one producer position)."""
        rec = b"".join(_record(events[at:at + PER_RECORD]) for at in range(0, len(events), PER_RECORD))
        assert self.pos + len(rec) <= DATA  # never wraps: the test's rings are big enough
        for copy in (0, DATA):
            self.f.seek(2 * PAGE + copy + self.pos)
            self.f.write(rec)
        self.pos += len(rec)
        self.f.seek(PAGE)
        self.f.write(struct.pack("<Q", self.pos))
        self.f.flush()

    def consumed(self, timeout_s: float = 10.0) -> None:
        """Wait until the consumer has read everything submitted."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if struct.unpack("<Q", os.pread(self.f.fileno(), 8, 0))[0] == self.pos:
                return
            time.sleep(0.002)
        raise AssertionError("the reader thread did not read the ring")


class FakeBpf:
    """What EbpfSource._detach touches of bcc's BPF object: no counters, a cleanup."""

    def __getitem__(self, key: bytes) -> Any:
        raise KeyError(key)

    def cleanup(self) -> None:
        pass


def ring_source(tmp_path: Path, reasons: dict[int, str]) -> tuple[RingFile, EbpfSource, Any]:
    """An EbpfSource reading a ring file (as if attached: the kernel is the test), its core ring."""
    ring_file = RingFile(tmp_path / "ring")
    src = source(reasons)
    ring = src._core_ring()
    ring.open(ring_file.f.fileno(), DATA)
    ring.set_clock(*src.clock.knots())  # type: ignore[union-attr]
    src._mapped, src._bpf = True, FakeBpf()
    return ring_file, src, ring


@pytest.mark.parametrize("fixture,start,stop", [("internet-ping-ebpf.pcapng", None, None),
                                                ("hairpin-proxy-ebpf.pcapng", 2, 4),
                                                ("localhost-port-proxy-ebpf.pcapng", 1, None)])
def test_the_reader_threads_batches_fed_by_the_core_print_what_the_reference_prints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture: str, start: int | None, stop: int | None) -> None:
    """The reader thread reads the ring as records come, in several batches (one per chunk the
    kernel submits: the reference gets the same); the engine's steps are the core's (a
    recorder-like hook coming and going: ObsBatch steps meanwhile); stop() drains the ring,
    and the stats come last."""
    monkeypatch.setattr(skb_hops, "HOLD_S", 0.0)  # a batch per poll that read anything
    events, reasons = events_of(fixture)
    chunks = [[events[k] for k in part.tolist()] for part in np.array_split(np.arange(len(events)), 6)]
    ring_file, src, ring = ring_source(tmp_path, reasons)
    engine = Spy(PipelineSource(src, started=True))
    ticks = Ticks(engine, start, stop)
    engine.batch_hooks.append(ticks)

    def kernel() -> None:
        for chunk in chunks:
            ring_file.append(chunk)
            ring_file.consumed()  # read in one poll: one batch
            time.sleep(0.02)
        src.stop()  # as SIGINT does: what is left is drained, then the end

    writer = threading.Thread(target=kernel)
    writer.start()
    try:
        got = output(tmp_path, engine, True)
    finally:
        writer.join(10)
        ring_file.f.close()
    assert got == reference_lines(chunks, reasons)
    assert ticks.ticked == len(events)
    assert ticks.steps >= 3  # several steps
    if start is not None:
        assert 0 < ticks.recorded <= len(events)
    assert src._bpf is None and ring.finished


def test_a_panic_in_the_reader_thread_is_raised_by_feed_ring(tmp_path: Path) -> None:
    ring_file = RingFile(tmp_path / "ring")
    ring = _core.EbpfRing(event_layout(SNAPLEN), HEADER_LEN)
    stream = _core.Stream()
    try:
        ring.open(ring_file.f.fileno(), DATA)
        ring.start(0.001, 16, 0.01)
        n, misses, data, _, _ = stream.feed_ring(ring, 0.01)
        assert (n, misses, data) == (0, [], b"")
        ring._panic_for_tests()
        with pytest.raises(BaseException, match="as the test asked") as info:
            stream.feed_ring(ring, 5.0)
        assert type(info.value).__name__ == "PanicException"
        assert stream.feed_ring(ring, 0.0)[0] == 0 and ring.finished
    finally:
        ring.close()
        ring_file.f.close()


def test_hops_are_named_before_their_rows_are_fed() -> None:
    """The core feeds no row whose hop has no label: it hands the new keys back first, and
    feeds the batch (whole, once) only when every key has its label; asked again without
    them, it refuses, and the batch still waits."""
    events, _ = events_of("internet-ping-ebpf.pcapng")
    ring = _core.EbpfRing(event_layout(SNAPLEN), HEADER_LEN)
    ring.set_clock(*clock().knots())
    ring.push(b"".join(events))
    stream = _core.Stream()
    n, misses, _, _, _ = stream.feed_ring(ring, 0.0)
    assert n == 0 and len(misses) > 1 and [m[0] for m in misses] == list(range(len(misses)))
    for _, netns, ifindex, ifname, lt in misses[:-1]:
        stream.add_hop(b"n%d" % netns, ifname or b"if%d" % ifindex, lt)
    with pytest.raises(RuntimeError, match=f"hop label {len(misses) - 1} out of step"):
        stream.feed_ring(ring, 0.0)
    assert stream.observations == 0
    stream.add_hop(b"last", b"x", misses[-1][4])
    n, again, _, _, _ = stream.feed_ring(ring, 0.0)
    assert n == len(events) == stream.observations and again == []
    assert stream.feed_ring(ring, 0.0)[0] == 0  # nothing left


def test_a_source_whose_labels_the_core_does_not_have_in_step_is_refused() -> None:
    """A label the ring does not know about in the source's table (a bug) is an error, not rows
    pointing at other hops' names."""
    events, reasons = events_of("internet-ping-ebpf.pcapng")
    src = source(reasons)
    src._core_ring().push(b"".join(events))
    src._labels.hops.append(HopLabel(node="x", iface="y", netns=1, ifindex=1, linktype=1))
    engine = Engine(PipelineSource(src, started=True))
    with pytest.raises(RuntimeError, match="out of step"):
        for _ in engine.chunks():
            pass


def test_stats_are_read_from_another_thread_while_the_core_feeds(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The TUI's stats tick reads the engine's figures from its own thread while the engine's
    thread is inside feed_ring (the stream borrowed, the GIL released): the figures come, they
    do not raise (which froze the status bar at '0 ev/s' through a flood), and they count."""
    monkeypatch.setattr(skb_hops, "HOLD_S", 0.0)
    events, reasons = events_of("internet-ping-ebpf.pcapng")
    chunks = [[events[k] for k in part.tolist()] for part in np.array_split(np.arange(len(events)), 4)]
    ring_file, src, _ = ring_source(tmp_path, reasons)
    engine = Engine(PipelineSource(src, started=True))
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def kernel() -> None:
        try:
            for chunk in chunks:
                ring_file.append(chunk)
                ring_file.consumed()
                for _ in range(25):  # while the engine's thread waits in feed_ring for more
                    st = engine.stats()
                    seen.append((st.observations, st.paths))
                    time.sleep(0.002)
        except BaseException as exc:  # raised in this thread: the test's to see
            errors.append(exc)
        finally:
            src.stop()

    writer = threading.Thread(target=kernel)
    writer.start()
    try:
        got = output(tmp_path, engine, True)
    finally:
        writer.join(10)
        ring_file.f.close()
    assert not errors, errors
    assert len(seen) == 25 * len(chunks)
    assert seen[-1][0] > 0  # sightings counted while running
    assert engine.stats().paths == sum('"type": "path"' in line for line in got)
