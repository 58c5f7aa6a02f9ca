"""The live sources' decoder (``tracer._core.decode_into``) against the Python reference,
byte for byte.

The reference is tests/reference/decode.py's ``decode_into`` (the numpy ``_vector`` path from
32 frames on, ``decode_one`` per frame below), as the eBPF and taps sources called it
before they moved onto the core. Frames sit in one shared buffer as the sources
hand them over: the capture files' own read buffers (pcap/pcapng headers between
frames) for every fixture and every 16th corpus file, fixed-stride events cut to a
snap length (the eBPF ring), and hypothesis-made frames with random gaps. Rows are
compared whole: the packet fields must be the reference's, and every other field
must keep the caller's bytes.
"""

from __future__ import annotations

import ctypes
import os
import struct
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.reference.readers as reference
from probes.skb_hops import EbpfSource, HopEvent, HopKind
from probes.utc_clock import MonoToUtc
from tests.conftest import CORPUS, FIXTURES
from tests.reference.decode import DECODED_FIELDS, decode_into
from tests.unit.test_fuzz import LINKTYPES, framed
from tracer import _core
from tracer.errors import CaptureFileError
from tracer.model import obs_dtype

CI = settings(max_examples=int(os.environ.get("HOPTRACE_FUZZ_EXAMPLES", "100")), deadline=timedelta(seconds=20),
              database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip

DT = obs_dtype()
CALLER_FIELDS = [n for n in DT.names or () if n not in DECODED_FIELDS]


def caller_rows(n: int, seed: int) -> np.ndarray[Any, Any]:
    """Rows full of random bytes: the caller's fields set, the packet fields garbage to overwrite."""
    raw = np.random.default_rng(seed).integers(0, 256, n * DT.itemsize, dtype=np.uint8)
    return raw.view(DT).copy()


def first_difference(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> str:
    for name in DT.names or ():
        bad = np.flatnonzero(got[name] != want[name])
        if len(bad):
            i = int(bad[0])
            return f"row {i} field {name}: core {got[name][i]!r} vs reference {want[name][i]!r}"
    return "equal"


def assert_as_reference(buf: bytes, offs: list[int], lens: list[int], lts: int | list[int], seed: int = 0) -> None:
    """The core on zeroed rows == the reference with zeroed=True (as the sources called it);
    the core on filled rows == the reference with zeroed=False (packet fields all written,
    the caller's kept)."""
    n = len(offs)
    o64, l32 = np.array(offs, dtype=np.uint64), np.array(lens, dtype=np.uint32)
    lt_arg: int | np.ndarray[Any, Any] = lts if isinstance(lts, int) else np.array(lts, dtype=np.uint32)
    got, want = np.zeros(n, DT), np.zeros(n, DT)
    _core.decode_into(got, buf, o64, l32, lt_arg)
    decode_into(want, buf, offs, lens, lts, zeroed=True)
    assert got.tobytes() == want.tobytes(), first_difference(got, want)
    filled = caller_rows(n, seed)
    before = filled.copy()
    want = filled.copy()
    _core.decode_into(filled, np.frombuffer(buf, np.uint8), o64.astype(np.int64), l32, lt_arg)
    decode_into(want, buf, offs, lens, lts)
    assert filled.tobytes() == want.tobytes(), first_difference(filled, want)
    for name in CALLER_FIELDS:
        assert (filled[name] == before[name]).all(), name


def file_chunks(path: str) -> list[tuple[bytes, list[int], list[int], list[int]]]:
    """(read buffer, offsets, lengths, link types) of every chunk of a capture file, up to its damage."""
    reader = reference._FileReader(path)
    out = []
    try:
        for ch in reader.chunks():
            out.append((ch.buf, list(ch.offs), list(ch.lens), [reader.ifaces[i].linktype for i in ch.iface]))
    except CaptureFileError:
        pass
    return out


def corpus_sample() -> list[str]:
    names = sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng")) if CORPUS.is_dir() else []
    return names[::16]


FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("*.pcapng"))


def test_there_is_something_to_compare() -> None:
    assert len(FIXTURE_FILES) >= 10
    assert len(corpus_sample()) == 52, f"expected the 830-file corpus at {CORPUS} (HOPTRACE_CORPUS)"


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_frames_in_their_read_buffers(name: str) -> None:
    chunks = file_chunks(str(FIXTURES / name))
    assert chunks, name
    for k, (buf, offs, lens, lts) in enumerate(chunks):
        assert_as_reference(buf, offs, lens, lts, seed=k)
        assert_as_reference(buf, offs, lens, lts[0], seed=k)  # one link type for the batch
        for size in (1, 31, 32, 33):  # both sides of the reference's numpy threshold
            assert_as_reference(buf, offs[:size], lens[:size], lts[:size], seed=size)


def test_every_16th_corpus_file() -> None:
    frames = 0
    for name in corpus_sample():
        for k, (buf, offs, lens, lts) in enumerate(file_chunks(str(CORPUS / name))):
            try:
                assert_as_reference(buf, offs, lens, lts, seed=k)
            except AssertionError as exc:
                raise AssertionError(f"{name} chunk {k}: {exc}") from exc
            frames += len(offs)
    assert frames > 400  # the sample's decodable frames (418)


def _gapped(frames: list[bytes], gaps: list[int]) -> tuple[bytes, list[int], list[int]]:
    parts, offs, pos = [], [], 0
    for f, g in zip(frames, gaps, strict=True):
        parts += [b"\xa5" * g, f]
        offs.append(pos + g)
        pos += g + len(f)
    return b"".join(parts), offs, [len(f) for f in frames]


@CI
@given(st.lists(st.tuples(st.one_of(framed().map(lambda t: t[0]), st.binary(max_size=200)),
                          st.sampled_from(LINKTYPES), st.integers(0, 9)), max_size=80),
       st.integers(0, 2**32))  # fmt: skip
def test_generated_frames_with_gaps(frames: list[tuple[bytes, int, int]], seed: int) -> None:
    buf, offs, lens = _gapped([f for f, _, _ in frames], [g for _, _, g in frames])
    assert_as_reference(buf, offs, lens, [lt for _, lt, _ in frames], seed=seed)


@CI
@given(st.lists(framed(), min_size=1, max_size=70), st.sampled_from([1, 101, 113, 228, 229, 276]),
       st.sampled_from([14, 40, 64, 128]))  # fmt: skip
def test_truncated_frames_at_a_fixed_stride(frames: list[tuple[bytes, int]], lt: int, snaplen: int) -> None:
    """The eBPF ring's shape: one event per frame at a fixed stride, the frame cut to the snap length."""
    stride, head = snaplen + 48, 40
    buf = bytearray(stride * len(frames))
    offs, lens = [], []
    for k, (f, _) in enumerate(frames):
        cut = f[:snaplen]
        buf[k * stride + head : k * stride + head + len(cut)] = cut
        offs.append(k * stride + head)
        lens.append(len(cut))
    assert_as_reference(bytes(buf), offs, lens, lt, seed=len(frames))


def test_ebpf_source_rows_are_the_reference_decode() -> None:
    """EbpfSource._decode_events: the fixtures' frames as ring events (every 3rd without a mac
    header) give the reference's packet fields, beside the fields the events carry."""
    eth = [buf[o : o + n] for name in FIXTURE_FILES for buf, offs, lens, lts in file_chunks(str(FIXTURES / name))
           for o, n, lt in zip(offs, lens, lts, strict=True) if lt == 1]  # fmt: skip
    src = EbpfSource()
    src._dtype, src._obs_dtype, src.layout = np.dtype(src._ev_type), DT, None
    src.clock = MonoToUtc(mono=lambda: 0, real=lambda: 0)  # kernel time is UTC: ts_ns kept as given
    events, frames = [], []
    for k, whole in enumerate(eth):
        raw = k % 3 == 2
        frame = whole[14:] if raw else whole
        ev: Any = src._ev_type()
        ev.ts_ns, ev.skb, ev.netns, ev.ifindex, ev.ifname = 1000 + k, 0xFFFF00 + k, 7, 2, b"eth0"
        ev.kind, ev.mac_len, ev.drop_reason = int(HopKind.TX), 0 if raw else 14, k
        ev.len = ev.wire_len = len(frame)
        ev.cap_len = min(len(frame), src.snaplen)
        ctypes.memmove(ctypes.addressof(ev) + HopEvent.frame.offset, frame, ev.cap_len)
        events.append(bytes(ev))
        frames.append((frame[: ev.cap_len], 101 if raw else 1))
    batch = src._decode_events(b"".join(events))
    rows = batch.rows
    want = np.zeros(len(frames), DT)
    fbuf, foffs, flens = _gapped([f for f, _ in frames], [0] * len(frames))
    decode_into(want, fbuf, foffs, flens, [lt for _, lt in frames])
    assert len(rows) == len(frames) > 32
    for name in DECODED_FIELDS:
        assert (rows[name] == want[name]).all(), name
    assert rows["ts_ns"].tolist() == [1000 + k for k in range(len(frames))]
    assert rows["drop_reason"].tolist() == list(range(len(frames)))
    assert (rows["family"] != 0).any()
    assert [bytes(batch.frames[o : o + n]) for o, n in zip(rows["frame_off"].tolist(), rows["frame_len"].tolist(),
                                                            strict=True)] == [f for f, _ in frames]  # fmt: skip


def test_arguments_are_checked_and_nothing_is_written_on_error() -> None:
    frame = bytes(12) + b"\x08\x00" + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 1, 0, 64, 17, 0, b"\1" * 4, b"\2" * 4)
    rows = caller_rows(2, 1)
    before = rows.copy()
    offs, lens = np.array([0, 1], np.uint64), np.array([len(frame)] * 2, np.uint32)
    with pytest.raises(ValueError, match=r"frame 1 \(offset 1, length 34\) lies outside the 34-byte frames buffer"):
        _core.decode_into(rows, frame, offs, lens, 1)
    with pytest.raises(ValueError, match="frame 1 has a negative offset"):
        _core.decode_into(rows, frame, np.array([0, -1], np.int64), lens, 1)
    with pytest.raises(ValueError, match="2 offsets, 2 lengths, 1 link types and 2 rows: one of each per frame"):
        _core.decode_into(rows, frame + frame, offs, lens, np.array([1], np.uint32))
    with pytest.raises(ValueError, match="2 offsets, 2 lengths and 1 rows"):
        _core.decode_into(rows[:1], frame + frame, offs, lens, 1)
    with pytest.raises(TypeError, match="obs_dtype"):
        _core.decode_into(np.zeros(2 * DT.itemsize, np.uint8), frame, offs, lens, 1)
    with pytest.raises(TypeError, match="lengths must be a 1-D uint32"):
        _core.decode_into(rows, frame, offs, lens.astype(np.int64), 1)
    with pytest.raises(TypeError, match="frames must be bytes"):
        _core.decode_into(rows, bytearray(frame), offs, lens, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.decode_into(caller_rows(4, 2)[::2], frame, offs, lens, 1)
    frozen = rows.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="rows cannot be written"):
        _core.decode_into(frozen, frame, np.array([0, 0], np.uint64), lens, 1)
    assert rows.tobytes() == before.tobytes()
    _core.decode_into(rows, frame, np.array([0, 0], np.uint64), lens, 1)
    assert rows["src"].tolist() == [b"\1" * 4] * 2
    _core.decode_into(np.zeros(0, DT), b"", np.zeros(0, np.uint64), np.zeros(0, np.uint32), 1)
