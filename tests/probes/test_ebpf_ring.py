"""The eBPF ring consumer in the core (``tracer._core.EbpfRing``) against the Python one it
replaced (tests/reference/ebpf.py: ``RingReader`` over the mmap, numpy decode), on the same
ring bytes: a file laid out as a BPF ring buffer map's mmap (consumer page, producer page, the
data twice), records submitted, discarded and still busy, wrapping the data's end; events made
of the fixtures' frames (with and without a mac header), many hops and names, kinds outside
the enum, and a clock re-sampled across NTP steps. Rows are compared field for field, the hop
column as the label it names; the consumer position each writes back must be the same.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.skb_hops import HEADER_LEN, EbpfSource, event_layout, event_type
from probes.utc_clock import MonoToUtc
from tests.conftest import FIXTURES
from tests.reference import ebpf as reference
from tests.unit.test_core_decode_live import FIXTURE_FILES, file_chunks
from tracer import _core
from tracer.model import obs_dtype

CI = settings(max_examples=int(os.environ.get("HOPTRACE_FUZZ_EXAMPLES", "60")), deadline=timedelta(seconds=20),
              database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                    HealthCheck.function_scoped_fixture])  # fmt: skip

BUSY, DISCARD = 1 << 31, 1 << 30
DATA = 1 << 16
PAGE = mmap.PAGESIZE
UTC0 = 1_765_000_000_000_000_000
# One name per (netns, ifindex) within a batch: the reference names a key by its first row
# (a device renamed between two events of one batch keeps its first name there; the core
# takes each event's own).
NAMES = [b"", b"eth0", b"veth9a\0zz", b"x" * 16, b"\xff\xfe"]


def _frames() -> list[bytes]:
    out = []
    for name in FIXTURE_FILES:
        for buf, offs, lens, lts in file_chunks(str(FIXTURES / name)):
            out.extend(bytes(buf[o:o + n]) for o, n, lt in zip(offs, lens, lts, strict=True) if lt == 1)
    return out


FRAMES = _frames()


def test_there_are_fixture_frames() -> None:
    assert len(FRAMES) > 20


def _event(t: Any, frame: bytes, *, raw: bool, ts: int, netns: int, ifindex: int, name: bytes, kind: int,
           reason: int, skb: int) -> bytes:
    ev = t()
    f = frame[14:] if raw else frame
    ev.ts_ns, ev.skb, ev.netns, ev.ifindex, ev.ifname = ts, skb, netns, ifindex, name
    ev.kind, ev.mac_len, ev.drop_reason = kind, 0 if raw else 14, reason
    ev.len = ev.wire_len = len(f)
    snap = ctypes.sizeof(t) - t.frame.offset
    ev.cap_len = min(len(f), snap)
    ctypes.memmove(ctypes.addressof(ev) + t.frame.offset, f, ev.cap_len)
    return bytes(ev)


def _ring_file(path: Path, records: list[tuple[int, list[bytes]]], cons: int) -> tuple[Any, int]:
    """A file laid out as the ring's mmap (the data area written twice, as the kernel maps
    it); ``records``: (length bits, events) each, written from ``cons`` on."""
    data = bytearray(DATA)
    pos = cons
    for bits, events in records:
        payload = struct.pack("<IIQ", len(events), 0, 0) + b"".join(events)
        rec = struct.pack("<II", len(payload) | bits, 0) + payload
        for k in range(0, len(rec)):
            data[(pos + k) & (DATA - 1)] = rec[k]
        pos += (len(payload) + 8 + 7) & ~7
    body = bytearray(2 * PAGE) + data + data
    body[0:8] = struct.pack("<Q", cons)
    body[PAGE:PAGE + 8] = struct.pack("<Q", pos)
    f = path.open("w+b")
    f.write(body)
    f.flush()
    return f, pos


def _consumer(f: Any) -> int:
    f.seek(0)
    return int(struct.unpack("<Q", f.read(8))[0])


def _as_labels(rows: np.ndarray[Any, Any], labels: list[Any]) -> list[Any]:
    return [labels[h] for h in rows["hop"].tolist()]


def _compare(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    assert len(got) == len(want)
    for name in obs_dtype().names or ():
        if name == "hop":
            continue
        bad = np.flatnonzero(got[name] != want[name])
        assert not len(bad), f"row {bad[0]} field {name}: core {got[name][bad[0]]!r} vs reference {want[name][bad[0]]!r}"


class Both:
    """The core's consumer and the reference's, each on its own copy of the same ring."""

    def __init__(self, snaplen: int, clock: MonoToUtc) -> None:
        self.t = event_type(snaplen)
        self.ring = _core.EbpfRing(event_layout(snaplen), HEADER_LEN)
        self.clock = clock
        self.ref_labels: dict[tuple[int, int, bytes, int], int] = {}
        self.core_labels: list[tuple[int, int, bytes, int]] = []

    def core(self) -> tuple[np.ndarray[Any, Any], bytes]:
        self.ring.set_clock(*self.clock.knots())
        rows, frames, misses = self.ring.take()
        for index, netns, ifindex, ifname, lt in misses:
            assert index == len(self.core_labels)
            self.core_labels.append((netns, ifindex, ifname, lt))
        return rows, frames

    def reference(self, buf: bytes) -> np.ndarray[Any, Any]:
        return reference.decode_events(buf, np.dtype(self.t), self.t.frame.offset, self.clock, self.ref_labels)

    def ref_table(self) -> list[Any]:
        table: list[Any] = [None] * len(self.ref_labels)
        for k, i in self.ref_labels.items():
            table[i] = k
        return table

    def check(self, got: np.ndarray[Any, Any], frames: bytes, want: np.ndarray[Any, Any], buf: bytes) -> None:
        _compare(got, want)
        assert frames == buf
        assert _as_labels(got, self.core_labels) == _as_labels(want, self.ref_table())


def test_a_ring_file_reads_as_the_reference_reads_it(tmp_path: Path) -> None:
    both = Both(128, MonoToUtc(mono=lambda: 0, real=lambda: UTC0))
    t = both.t
    evs = [_event(t, fr, raw=k % 3 == 2, ts=1000 + k, netns=7 + k % 4, ifindex=2 + k % 3,
                  name=b"eth%d" % (k % 3), kind=k % 5, reason=k % 2 * 77, skb=0xFFFF00 + k)
           for k, fr in enumerate(FRAMES[:40])]  # fmt: skip
    records = [(0, evs[0:10]), (DISCARD, evs[10:12]), (0, evs[12:13]), (0, evs[13:30]), (BUSY, evs[30:40])]
    cons = DATA - 3000  # the records wrap the data's end
    f1, prod = _ring_file(tmp_path / "core", records, cons)
    f2, _ = _ring_file(tmp_path / "ref", records, cons)
    try:
        both.ring.open(f1.fileno(), DATA)
        assert both.ring.poll() == 28 == both.ring.held
        got, frames = both.core()
        ref = reference.RingReader(f2.fileno(), DATA, ctypes.sizeof(t))
        buf = ref.read()
        assert buf == b"".join(evs[0:10] + evs[12:30])
        both.check(got, frames, both.reference(buf), buf)
        # both stop at the busy record and hand back the same space
        assert _consumer(f1) == _consumer(f2) == ref.consumer < prod
        assert both.ring.poll() == 0 and ref.read() == b""
        ref.close()
        both.ring.close()
        assert both.ring.poll() == 0  # unmapped: nothing, no fault
    finally:
        f1.close()
        f2.close()


def test_an_ebpf_source_batch_is_the_reference_decode() -> None:
    """EbpfSource._decode_events (push + take): hop labels named, UTC stamps, the frames."""
    src = EbpfSource()
    src.layout = None
    src.clock = MonoToUtc(mono=lambda: 0, real=lambda: UTC0)
    t = event_type(src.snaplen)
    evs = [_event(t, fr, raw=k % 2 == 1, ts=k, netns=4026531840 + k % 2, ifindex=3, name=b"veth%d\0old" % (k % 2),
                  kind=1 + k % 3, reason=0, skb=k) for k, fr in enumerate(FRAMES[:12])]  # fmt: skip
    buf = b"".join(evs)
    batch = src._decode_events(buf)
    labels: dict[tuple[int, int, bytes, int], int] = {}
    want = reference.decode_events(buf, np.dtype(t), t.frame.offset, src.clock, labels)
    _compare(batch.rows, want)
    assert batch.frames == buf
    got_hops = [(h.netns, h.ifindex, h.iface.encode(), h.linktype) for h in batch.hops]
    table: list[Any] = [None] * len(labels)
    for k, i in labels.items():
        table[i] = k
    assert _as_labels(batch.rows, got_hops) == _as_labels(want, table)
    assert {h.node for h in batch.hops} == {"netns:4026531840", "netns:4026531841"}
    # a second batch: the known labels keep their index, nothing named twice
    again = src._decode_events(buf)
    assert again.rows["hop"].tolist() == batch.rows["hop"].tolist() and len(again.hops) == 2


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 60))
    events = draw(st.lists(st.tuples(
        st.integers(0, len(FRAMES) - 1), st.booleans(), st.integers(0, 2**40),
        st.sampled_from([0, 1, 4026531840, 4026532526, 2**32 - 1]), st.sampled_from([0, 1, 2, 7, 2**31 + 5, 2**32 - 1]),
        st.integers(0, 255),
        st.integers(0, 2**32 - 1)), min_size=n, max_size=n))  # fmt: skip
    cuts = sorted(draw(st.lists(st.integers(1, n), max_size=5, unique=True)))
    bits = draw(st.lists(st.sampled_from([0, 0, 0, DISCARD]), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    steps = draw(st.lists(st.tuples(st.integers(1, 2**35), st.integers(-(2**33), 2**33)), max_size=6))
    snaplen = draw(st.sampled_from([14, 64, 128, 200]))
    cons = draw(st.integers(0, 2**20)) * 8
    return {"events": events, "cuts": cuts, "bits": bits, "steps": steps, "snaplen": snaplen, "cons": cons}


@CI
@given(scenario())
def test_generated_rings_read_as_the_reference_reads_them(tmp_path: Path, s: dict[str, Any]) -> None:
    # a clock with NTP steps both ways: knots made by MonoToUtc's own rule
    mono = [1_000_000_000]
    real_off = [UTC0]
    clock = MonoToUtc(mono=lambda: mono[0], real=lambda: mono[0] + real_off[0])
    for dm, dstep in s["steps"]:
        mono[0] += dm
        real_off[0] += dstep
        clock.resample()
    both = Both(s["snaplen"], clock)
    t = both.t
    evs = [_event(t, FRAMES[fi], raw=raw, ts=ts, netns=netns, ifindex=ifi, name=name, kind=kind, reason=reason,
                  skb=ts ^ 0x5A5A)
           for fi, raw, ts, netns, ifi, kind, reason in s["events"]
           for name in [NAMES[(netns * 31 + ifi) % len(NAMES)]]]  # fmt: skip
    bounds = [0, *s["cuts"], len(evs)]
    records = [(bits, evs[a:b]) for bits, a, b in zip(s["bits"], bounds, bounds[1:], strict=False) if b > a]
    f1, _ = _ring_file(tmp_path / "core", records, s["cons"])
    f2, _ = _ring_file(tmp_path / "ref", records, s["cons"])
    try:
        both.ring.open(f1.fileno(), DATA)
        both.ring.poll()
        got, frames = both.core()
        ref = reference.RingReader(f2.fileno(), DATA, ctypes.sizeof(t))
        buf = ref.read()
        assert _consumer(f1) == _consumer(f2)
        both.check(got, frames, both.reference(buf), buf)
        ref.close()
        both.ring.close()
    finally:
        f1.close()
        f2.close()


def test_bad_layouts_and_clocks_are_refused() -> None:
    lay = event_layout(128)
    with pytest.raises(ValueError, match="without field kind"):
        _core.EbpfRing({k: v for k, v in lay.items() if k != "kind"}, HEADER_LEN)
    with pytest.raises(ValueError, match="ifname lies outside"):
        _core.EbpfRing({**lay, "ifname": lay["size"]}, HEADER_LEN)
    ring = _core.EbpfRing(lay, HEADER_LEN)
    with pytest.raises(ValueError, match="increasing"):
        ring.set_clock(0, [5, 5], [0, 1])
    with pytest.raises(OSError, match="not a power of two"):
        ring.open(0, 3000)


def _append(f: Any, pos: int, records: list[tuple[int, list[bytes]]]) -> int:
    """Records written at producer position ``pos`` of a ring file (both copies of the data),
    then the producer position moved past them: what the kernel does while the reader runs."""
    for bits, events in records:
        payload = struct.pack("<IIQ", len(events), 0, 0) + b"".join(events)
        rec = struct.pack("<II", len(payload) | bits, 0) + payload
        for k, b in enumerate(rec):
            at = (pos + k) & (DATA - 1)
            for copy in (0, DATA):
                f.seek(2 * PAGE + copy + at)
                f.write(bytes([b]))
        pos += (len(payload) + 8 + 7) & ~7
    f.seek(PAGE)
    f.write(struct.pack("<Q", pos))
    f.flush()
    return pos


def test_the_reader_thread_hands_over_what_the_reference_reads(tmp_path: Path) -> None:
    both = Both(128, MonoToUtc(mono=lambda: 0, real=lambda: UTC0))
    t = both.t
    evs = [_event(t, fr, raw=k % 4 == 3, ts=5000 + k, netns=9, ifindex=1 + k % 2, name=b"v%d" % (k % 2),
                  kind=2, reason=0, skb=k) for k, fr in enumerate(FRAMES[:30])]  # fmt: skip
    first = [(0, evs[0:8]), (BUSY, evs[8:10])]
    f1, prod = _ring_file(tmp_path / "core", first, DATA - 1000)
    f2, _ = _ring_file(tmp_path / "ref", first, DATA - 1000)
    ref = reference.RingReader(f2.fileno(), DATA, ctypes.sizeof(t))
    try:
        both.ring.open(f1.fileno(), DATA)
        both.ring.set_clock(*both.clock.knots())
        both.ring.start(0.001, 4, 10.0)  # a batch once 4 events are held
        with pytest.raises(RuntimeError, match="reader thread"):
            both.ring.poll()
        got = both.ring.next_batch(5.0)
        assert got is not None
        buf = ref.read()
        rows, frames, misses = got
        both.core_labels += [(n, i, name, lt) for _, n, i, name, lt in misses]
        both.check(rows, frames, both.reference(buf), buf)
        assert both.ring.next_batch(0.05) is None  # the busy record holds the rest back
        # the kernel submits the busy record and writes more; the thread reads on
        busy_at = _consumer(f1)
        for f in (f1, f2):
            f.seek(2 * PAGE + (busy_at & (DATA - 1)))
            f.write(struct.pack("<I", 16 + 2 * ctypes.sizeof(t)))
            f.seek(2 * PAGE + DATA + (busy_at & (DATA - 1)))
            f.write(struct.pack("<I", 16 + 2 * ctypes.sizeof(t)))
            _append(f, prod, [(0, evs[10:20]), (DISCARD, evs[20:22]), (0, evs[22:30])])
        seen: list[Any] = []
        while sum(len(r) for r, _, _ in seen) < 20:  # the 2 once busy, 10, 8 (2 discarded)
            nxt = both.ring.next_batch(5.0)
            assert nxt is not None
            seen.append(nxt)
        both.ring.stop()
        assert both.ring.next_batch(0.0) is None and both.ring.finished
        buf = ref.read()
        assert len(buf) == 20 * ctypes.sizeof(t)
        at = 0
        for rows, frames, misses in seen:
            both.core_labels += [(n, i, name, lt) for _, n, i, name, lt in misses]
            part = buf[at:at + len(rows) * ctypes.sizeof(t)]
            at += len(part)
            both.check(rows, frames, both.reference(part), part)
        assert _consumer(f1) == _consumer(f2)
    finally:
        both.ring.close()
        ref.close()
        f1.close()
        f2.close()


def test_a_panic_in_the_reader_thread_reaches_python(tmp_path: Path) -> None:
    f, _ = _ring_file(tmp_path / "ring", [], 0)
    ring = _core.EbpfRing(event_layout(128), HEADER_LEN)
    try:
        ring.open(f.fileno(), DATA)
        ring.start(0.001, 16, 0.01)
        assert ring.next_batch(0.01) is None and not ring.finished
        ring._panic_for_tests()
        with pytest.raises(BaseException, match="as the test asked") as info:
            ring.next_batch(5.0)
        assert type(info.value).__name__ == "PanicException"
        assert ring.next_batch(0.0) is None and ring.finished
    finally:
        ring.close()
        f.close()


def test_stop_poll_and_close_from_another_thread_while_one_waits(tmp_path: Path) -> None:
    """The TUI stops its engine's thread from the main thread: the ring is drained and closed
    while a consumer waits in next_batch (no "Already borrowed")."""
    t = event_type(128)
    evs = [_event(t, FRAMES[0], raw=False, ts=k, netns=1, ifindex=1, name=b"e", kind=1, reason=0, skb=k)
           for k in range(3)]  # fmt: skip
    f, _ = _ring_file(tmp_path / "ring", [], 0)
    ring = _core.EbpfRing(event_layout(128), HEADER_LEN)
    got: list[Any] = []
    errors: list[BaseException] = []
    try:
        ring.open(f.fileno(), DATA)
        ring.start(0.001, 1000, 10.0)  # holds everything: only stop() hands it over

        def consumer() -> None:
            try:
                while not ring.finished:
                    b = ring.next_batch(0.2)
                    if b is not None:
                        got.append(b)
            except BaseException as exc:
                errors.append(exc)

        c = threading.Thread(target=consumer)
        c.start()
        _append(f, 0, [(0, evs)])
        time.sleep(0.1)
        ring.stop()
        assert ring.poll() == 0  # the thread read it all
        ring.close()
        c.join(5)
        assert not c.is_alive() and not errors, errors
        assert [len(r) for r, _, _ in got] == [3]
    finally:
        ring.close()
        f.close()
