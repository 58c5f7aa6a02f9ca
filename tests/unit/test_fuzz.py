"""Fuzzing the untrusted-input parsers: the pcap/pcapng readers and the frame decoder.

A tracer runs as root and reads files other tools wrote: whatever it reads,
it must not crash (only ``CaptureFileError``, one clear line), not hang, and
not allocate in proportion to lengths or counts a file merely claims.

Each property runs a bounded number of examples here (a few seconds in CI);
``bench/fuzz_long.py`` runs the same properties for minutes.
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CORPUS
from tests.reference import decode as reference
from tests.reference.decode import SUPPORTED_LINKTYPES
from tracer import _core
from tracer.errors import CaptureFileError
from tracer.model import obs_dtype
from tracer.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"

# CI budget: examples per property (bench/fuzz_long.py raises it). No example
# database: CI must not write into the work tree, and each run explores anew.
CI = settings(max_examples=int(os.environ.get("HOPTRACE_FUZZ_EXAMPLES", "100")), deadline=timedelta(seconds=10),
              database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
# A reader may hold a chunk (1 MiB) and one block (<= 16 MiB) of what it reads;
# more than this while reading a file of a few KiB is an allocation sized by a claim.
MEMORY_CAP = 48 << 20
LINKTYPES = [*sorted(SUPPORTED_LINKTYPES), 0, 105, 127, 65535]
INTERESTING32 = [0, 1, 3, 4, 7, 8, 12, 16, 28, 32, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF,
                 0x80000000, 0xFFFFFFF0, 0xFFFFFFFC, 0xFFFFFFFF, 0x1A2B3C4D, 0x0A0D0D0A]  # fmt: skip


# --------------------------------------------------------------------------
# Frames: random bytes, and frames built from random header fields
# --------------------------------------------------------------------------


@st.composite
def l4(draw: st.DrawFn, proto: int) -> bytes:
    payload = draw(st.binary(max_size=48))
    if proto == 6:
        doff = draw(st.integers(0, 15))
        return struct.pack("!HHIIBBHHH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)),
                           draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)), doff << 4,
                           draw(st.integers(0, 255)), 512, 0, 0) + payload  # fmt: skip
    if proto == 17:
        return struct.pack("!HHHH", draw(st.integers(0, 65535)), 53,
                           draw(st.sampled_from([8 + len(payload), 0, 7, 65535])), 0) + payload  # fmt: skip
    if proto in (1, 58):
        t = draw(st.sampled_from([0, 3, 8, 11, 12, 128, 129, 1, 2, 4, 255]))
        hdr = struct.pack("!BBHHH", t, draw(st.integers(0, 255)), 0, draw(st.integers(0, 65535)),
                          draw(st.integers(0, 65535)))  # fmt: skip
        if draw(st.booleans()):  # an error quoting a packet (maybe itself absurd)
            return hdr + draw(ip_packet(depth=1))
        return hdr + payload
    return payload


@st.composite
def ip_packet(draw: st.DrawFn, depth: int = 0) -> bytes:
    proto = draw(st.sampled_from([1, 6, 17, 58, 47, 0, 43, 44, 60, 51, 255]))
    body = draw(l4(proto)) if depth < 2 else draw(st.binary(max_size=32))
    if draw(st.booleans()):
        ihl = draw(st.integers(0, 15))
        total = draw(st.sampled_from([20 + len(body), 0, 19, 65535, ihl * 4]))
        frag = draw(st.sampled_from([0, 0x2000, 0x0001, 0x1FFF, 0x4000]))
        opts = bytes(max(0, ihl - 5) * 4)
        pkt = struct.pack("!BBHHHBBH4s4s", (draw(st.sampled_from([4, 6, 5, 0])) << 4) | ihl, 0, total,
                          draw(st.integers(0, 65535)), frag, 64, proto, 0,
                          draw(st.binary(min_size=4, max_size=4)), draw(st.binary(min_size=4, max_size=4)))  # fmt: skip
        return pkt + opts + body
    ext = b""
    for _ in range(draw(st.integers(0, 3))):  # extension headers, lengths as drawn
        ext += struct.pack("!BB", draw(st.sampled_from([6, 17, 58, 0, 43, 44, 60])), draw(st.integers(0, 255)))
        ext += draw(st.binary(min_size=6, max_size=14))
    plen = draw(st.sampled_from([len(ext) + len(body), 0, 65535, 1]))
    return struct.pack("!IHBB16s16s", 0x60000000 | draw(st.integers(0, 0xFFFFF)), plen, proto, 64,
                       draw(st.binary(min_size=16, max_size=16)), draw(st.binary(min_size=16, max_size=16))) + ext + body  # fmt: skip


@st.composite
def framed(draw: st.DrawFn) -> tuple[bytes, int]:
    """(frame, link type): a link header (maybe VLAN-tagged, maybe lying) around an IP packet, maybe cut."""
    lt = draw(st.sampled_from(LINKTYPES))
    inner = draw(st.one_of(ip_packet(), st.binary(max_size=64)))
    ethertype = draw(st.sampled_from([0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8, 0x05DC, 0]))
    if lt == 1:
        tags = b"".join(struct.pack("!HH", 0x8100, draw(st.integers(0, 4095))) for _ in range(draw(st.integers(0, 5))))
        frame = bytes(12) + tags + struct.pack("!H", ethertype) + inner
    elif lt == 113:
        frame = struct.pack("!HHH8sH", draw(st.integers(0, 5)), 1, 6, bytes(8), ethertype) + inner
    elif lt == 276:
        frame = struct.pack("!HHIHBB8s", ethertype, 0, draw(st.integers(0, 2**32 - 1)), 1,
                            draw(st.integers(0, 7)), 6, bytes(8)) + inner  # fmt: skip
    else:
        frame = inner
    cut = draw(st.integers(0, len(frame)))
    return (frame if draw(st.booleans()) else frame[:cut]), lt


def decode_frames(frames: list[Any], linktypes: int | list[int]) -> np.ndarray[Any, Any]:
    """The product's decoder (the core's; tests/unit/test_core_readers.py holds it to the reference)."""
    return _core.decode_frames(frames, linktypes).view(obs_dtype())  # type: ignore[no-any-return]


def check_rows(rows: np.ndarray[Any, Any], n: int) -> None:
    assert rows.dtype == obs_dtype() and len(rows) == n
    assert set(np.unique(rows["family"]).tolist()) <= {0, 4, 6}


@CI
@given(st.lists(st.tuples(st.binary(max_size=300), st.sampled_from(LINKTYPES)), max_size=80))
def test_decode_random_bytes_never_raises(frames: list[tuple[bytes, int]]) -> None:
    rows = decode_frames([f for f, _ in frames], [lt for _, lt in frames])
    check_rows(rows, len(frames))


@CI
@given(st.lists(framed(), min_size=1, max_size=70))
def test_decode_structured_frames_never_raise_and_batching_does_not_matter(frames: list[tuple[bytes, int]]) -> None:
    # Batches of 32 or more take the numpy path, single frames the scalar one:
    # the two must agree field for field on whatever they are fed.
    batch = decode_frames([f for f, _ in frames], [lt for _, lt in frames])
    one_by_one = np.concatenate([decode_frames([f], lt) for f, lt in frames])
    check_rows(batch, len(frames))
    assert batch.tobytes() == one_by_one.tobytes()


@CI
@given(framed(), st.integers(0, 3))
def test_decode_memoryview_slices_read_only_their_own_bytes(item: tuple[bytes, int], pad: int) -> None:
    # Frames of a batch share one buffer: nothing may be read past a frame's end. (The reference
    # decoder's; the core's reads of a shared buffer: tests/unit/test_core_decode_live.py.)
    frame, lt = item
    alone = reference.decode_frames([frame], lt)
    with_neighbour = reference.decode_frames([memoryview(frame + b"\xff" * 64)[: len(frame)], b"\xaa" * pad], lt)
    assert alone.tobytes() == with_neighbour[:1].tobytes()


# --------------------------------------------------------------------------
# Files: mutated seeds, and hand-made files with absurd claims
# --------------------------------------------------------------------------


def _seeds() -> list[bytes]:
    from tests.record.helpers import batch_of, masquerade_pings
    from tracer.sinks.record import PcapngRecorder

    out: list[bytes] = []
    buf = io.BytesIO()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp, "seed.pcapng")
        with PcapngRecorder(p, snaplen=80) as rec:
            rec.on_batch(batch_of(masquerade_pings(2, drop_every=2), drop_reasons={6: "NETFILTER_DROP"}))
        out.append(p.read_bytes())
    for name in ("internet-ping.pcapng", "blocked-ebpf.pcapng"):
        if (FIXTURES / name).is_file():
            out.append((FIXTURES / name).read_bytes())
    # A classic pcap (microsecond, little-endian) and a nanosecond big-endian one, Ethernet.
    frame = bytes(12) + b"\x08\x00" + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, b"\x0a\0\0\1", b"\x0a\0\0\2") + bytes(8)
    buf.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(3):
        buf.write(struct.pack("<IIII", 1_700_000_000 + i, 5, len(frame), len(frame)) + frame)
    out.append(buf.getvalue())
    out.append(struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 101) + struct.pack(">IIII", 1, 2, 32, 40) + frame[14:46].ljust(32, b"\0"))
    for name in ("icmpv6-length-zero.pcapng", "heap-overflow-1.pcap"):
        if (CORPUS / name).is_file():
            out.append((CORPUS / name).read_bytes())
    return out


SEEDS = _seeds()


@st.composite
def mutated_file(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        kind = draw(st.integers(0, 3))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == 0:  # a length-ish 32-bit field, either byte order, at an aligned place
            pos -= pos % 4
            val = draw(st.sampled_from(INTERESTING32))
            data[pos : pos + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), val)[: len(data) - pos]
        elif kind == 1:
            data[pos] = draw(st.integers(0, 255))
        elif kind == 2:  # splice: repeat a slice (duplicated blocks, sections, interfaces)
            end = draw(st.integers(pos, len(data)))
            data[pos:pos] = data[pos:end] * draw(st.integers(1, 3))
        else:
            del data[pos : pos + draw(st.integers(1, 64))]
    cut = draw(st.integers(0, len(data)))
    return bytes(data if draw(st.booleans()) else data[:cut])


def read_all(path: Path) -> Iterator[int]:
    """Every batch's row count; checks each batch is self-consistent on the way."""
    src = FileSource([str(path)])
    src.start()
    for b in src.batches():
        rows = b.rows
        assert rows.dtype == obs_dtype()
        if len(rows):
            assert int(rows["hop"].max()) < len(b.hops)
            assert int((rows["frame_off"] + rows["frame_len"]).max()) <= len(b.frames)
        yield len(rows)


def read_bounded(path: Path) -> int:
    """Rows read before the end or a CaptureFileError; asserts the memory cap."""
    tracemalloc.start()
    try:
        n = 0
        try:
            for k in read_all(path):
                n += k
        except CaptureFileError as exc:
            assert str(exc) and "\n" not in str(exc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_CAP, f"{peak >> 20} MiB to read a {path.stat().st_size}-byte file"
    return n


@CI
@given(mutated_file())
def test_readers_survive_mutated_captures(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.pcapng"
    path.write_bytes(data)
    read_bounded(path)


@CI
@given(st.binary(max_size=400))
def test_readers_survive_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.pcap"
    path.write_bytes(data)
    read_bounded(path)


def _shb(section_len: int = -1) -> bytes:
    return struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, section_len) + struct.pack("<I", 28)


def _idb(snaplen: int = 128, linktype: int = 1, opts: bytes = b"") -> bytes:
    body = struct.pack("<HHI", linktype, 0, snaplen) + opts
    return struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def _epb(data: bytes, caplen: int | None = None, origlen: int | None = None, ifid: int = 0,
         comment: bytes | None = None) -> bytes:  # fmt: skip
    padded = data + bytes(-len(data) % 4)
    body = struct.pack("<IIIII", ifid, 0, 1, len(data) if caplen is None else caplen,
                       len(data) if origlen is None else origlen) + padded  # fmt: skip
    if comment is not None:
        body += struct.pack("<HH", 1, len(comment)) + comment + bytes(-len(comment) % 4) + bytes(4)
    return struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


ETH_UDP = bytes(12) + b"\x08\x00" + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, b"\x0a\0\0\1", b"\x0a\0\0\2") + bytes(8)

ABSURD: dict[str, bytes] = {
    "pcap snaplen 4G, record claims 2G": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 0xFFFFFFFF, 1)
    + struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 0x7FFFFFFF) + ETH_UDP,
    "pcap record caplen > origlen, huge": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    + struct.pack("<IIII", 1, 0, 0xFFFFFFF0, 10) + ETH_UDP,
    "pcapng block length 4G": _shb() + struct.pack("<II", 6, 0xFFFFFFF0) + bytes(64),
    "pcapng block length 16M+4 (just over the cap)": _shb() + _idb() + struct.pack("<II", 6, (16 << 20) + 4) + bytes(64),
    "pcapng block length not a multiple of 4": _shb() + _idb() + struct.pack("<II", 6, 41) + bytes(40),
    "pcapng block length below the minimum": _shb() + struct.pack("<II", 6, 4) + bytes(64),
    "pcapng EPB caplen 4G inside a small block": _shb() + _idb() + _epb(ETH_UDP, caplen=0xFFFFFFF0),
    "pcapng EPB for an interface that does not exist": _shb() + _idb() + _epb(ETH_UDP, ifid=0xFFFFFFFF),
    "pcapng IDB snaplen 4G": _shb() + _idb(snaplen=0xFFFFFFFF) + _epb(ETH_UDP),
    "pcapng option length past the block": _shb() + _idb(opts=struct.pack("<HH", 2, 0xFFFF) + b"abcd") + _epb(ETH_UDP),
    "pcapng tsresol 2^-127 and 10^-255": _shb() + _idb(opts=struct.pack("<HHB3x", 9, 1, 0xFF) + struct.pack("<HH", 0, 0))
    + _idb(opts=struct.pack("<HHB3x", 9, 1, 0x7F) + struct.pack("<HH", 0, 0)) + _epb(ETH_UDP) + _epb(ETH_UDP, ifid=1),
    "pcapng 20k interfaces, a packet on every 997th": _shb() + _idb() * 20_000 + b"".join(_epb(ETH_UDP, ifid=i) for i in range(0, 20_000, 997)),
    "pcapng 20k options in one IDB": _shb() + _idb(opts=struct.pack("<HH", 1, 4) * 10_000 + b"abcd" * 10_000) + _epb(ETH_UDP),
    "pcapng 1k sections": (_shb() + _idb() + _epb(ETH_UDP)) * 1_000,
    "pcapng comment: JSON with absurd numbers": _shb() + _idb()
    + _epb(ETH_UDP, comment=b'{"v":1,"dir":"rx","skb":"0x' + b"f" * 5000 + b'","netns":1' + b"0" * 4000
           + b',"ts_ns":-1,"drop_reason":{"a":1}}'),
    "pcapng comment: not UTF-8, not JSON": _shb() + _idb() + _epb(ETH_UDP, comment=b'{"v":1\xff\xfe' + bytes(100)),
}


@pytest.mark.parametrize("name", sorted(ABSURD))
def test_readers_bounded_on_absurd_lengths_and_counts(name: str, tmp_path: Path) -> None:
    path = tmp_path / "absurd.pcapng"
    path.write_bytes(ABSURD[name])
    read_bounded(path)


# --------------------------------------------------------------------------
# Bugs found by fuzzing (tracer/sources/files.py), fixed: regression tests.
# --------------------------------------------------------------------------


def test_readers_survive_a_deeply_nested_json_comment(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pcapng"
    path.write_bytes(_shb() + _idb() + _epb(ETH_UDP, comment=b'{"v":1,"x":' + b"[" * 60_000))
    read_bounded(path)


def test_readers_are_linear_in_pcapng_sections(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "sections.pcapng"
    path.write_bytes((_shb() + _idb() + _epb(ETH_UDP)) * 24_000)  # 1.8 MB
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tracer.sources.files import FileSource; "
            f"s = FileSource([{str(path)!r}]); s.start(); print(sum(len(b) for b in s.batches()))")  # fmt: skip
    # Linear reading takes about a second here; quadratic, 10-25 s (16k sections: 4.7 s, 4k: 0.56 s).
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=6, check=True)
    assert out.stdout.strip() == "24000"
