"""The recorder's EPBs from the core (crates/hoptrace-core/src/pcapng_writer.rs) are byte for
byte those of the Python encoder it replaced (tests/reference/record.py, the oracle): whole
recordings of every fixture's sightings (read with the core FileReader, rotation included)
and hypothesis batches (odd frame lengths, hostile names, drop reasons, IPv6, frameless rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import record as reference
from tracer.model import HopLabel, ObsBatch, obs_dtype
from tracer.sinks import record
from tracer.sources.files import FileSource

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "fixtures").glob("*.pcapng"))


def record_files(batches: list[ObsBatch], out: Path, encoder: object, **kw: object) -> list[bytes]:
    """What a PcapngRecorder writes for ``batches`` with ``encoder`` as its EPB encoder."""
    saved = record.encode_epbs
    record.encode_epbs = encoder  # type: ignore[assignment]
    try:
        with record.PcapngRecorder(out, **kw) as rec:  # type: ignore[arg-type]
            for b in batches:
                rec.on_batch(b)
        return [Path(p).read_bytes() for p in rec.paths_written]
    finally:
        record.encode_epbs = saved


def same_recording(batches: list[ObsBatch], tmp: Path, **kw: object) -> None:
    got = record_files(batches, tmp / "core.pcapng", record.encode_epbs, **kw)
    want = record_files(batches, tmp / "python.pcapng", reference.encode_epbs, **kw)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == w


def test_there_are_fixtures() -> None:
    assert len(FIXTURES) >= 5


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_fixture_recordings_are_identical(fixture: Path, tmp_path: Path) -> None:
    batches = list(FileSource([str(fixture)]).batches())
    assert sum(len(b) for b in batches) > 0
    same_recording(batches, tmp_path, snaplen=128)
    same_recording(batches, tmp_path, snaplen=33)


def test_rotated_recordings_are_identical(tmp_path: Path) -> None:
    # Enough big frames to cut files at 1 MB: the per-file split points must agree too.
    n = 12000
    rows = np.zeros(n, obs_dtype())
    rows["ts_ns"] = 10**18 + np.arange(n, dtype=np.uint64) * 1000
    rows["frame_len"] = 200
    rows["frame_off"] = np.arange(n) * 200
    rows["hop"] = np.arange(n) % 2
    rows["skb"] = np.arange(n, dtype=np.uint64)
    frames = np.random.default_rng(1).integers(0, 256, 200 * n, dtype=np.uint8).tobytes()
    b = ObsBatch(rows=rows, hops=[HopLabel("a", "eth0", 5, 2), HopLabel("b", "eth1", 6, 3)], frames=frames)
    same_recording([b], tmp_path, snaplen=256, max_mb=1)
    same_recording([b, b], tmp_path, snaplen=256, max_mb=1, files=2)


HOSTILE = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ['"', "\\", "\x00\x1f\x7f", "é", "\U0001f600", "a\nb\tc\r", "\u2028", "</script>"]
)
# Drop reason names may also hold lone surrogates (a capture's names decode with surrogatepass).
REASON_NAMES = HOSTILE | st.text(st.characters(categories=("Cs", "Ll")), max_size=6) | st.just("\udcff\ud800x")


@st.composite
def batches(draw: st.DrawFn) -> ObsBatch:
    nhops = draw(st.integers(1, 4))
    hops = [HopLabel(draw(HOSTILE), draw(HOSTILE), draw(st.integers(0, 2**64 - 1)), draw(st.integers(-5, 99)),
                     draw(st.sampled_from([1, 113, 276, 12]))) for _ in range(nhops)]  # fmt: skip
    n = draw(st.integers(1, 40))
    rows = np.zeros(n, obs_dtype())
    u64 = st.integers(0, 2**64 - 1)
    rows["ts_ns"] = draw(st.lists(st.one_of(u64, st.integers(10**18, 10**18 + 10**10)), min_size=n, max_size=n))
    rows["skb"] = draw(st.lists(st.one_of(st.just(0), u64), min_size=n, max_size=n))
    rows["netns"] = draw(st.lists(st.one_of(st.integers(0, 9), u64), min_size=n, max_size=n))
    rows["hop"] = draw(st.lists(st.integers(0, nhops - 1), min_size=n, max_size=n))
    rows["dir"] = draw(st.lists(st.integers(0, 255), min_size=n, max_size=n))
    rows["family"] = draw(st.lists(st.sampled_from([0, 4, 6]), min_size=n, max_size=n))
    for name, hi in (("proto", 255), ("ip_id", 2**32 - 1), ("tcp_seq", 2**32 - 1), ("icmp_seq", 2**16 - 1),
                     ("frag", 2**16 - 1), ("digest", 2**64 - 1), ("wire_len", 2**32 - 1)):  # fmt: skip
        rows[name] = draw(st.lists(st.integers(0, hi), min_size=n, max_size=n))
    codes = draw(st.lists(st.integers(0, 2**32 - 1), max_size=3))
    rows["drop_reason"] = draw(st.lists(st.sampled_from([0, *codes]), min_size=n, max_size=n))
    reasons = {c: draw(REASON_NAMES) for c in codes if draw(st.booleans())}  # some codes unnamed: UNKNOWN(n)
    size = draw(st.integers(0, 600))
    rows["frame_len"] = draw(st.lists(st.integers(0, 300), min_size=n, max_size=n))  # 0: a frameless row
    rows["frame_off"] = draw(st.lists(st.integers(0, size + 10), min_size=n, max_size=n))
    frames = draw(st.binary(min_size=size, max_size=size))
    return ObsBatch(rows=rows, hops=hops, frames=frames, drop_reasons=reasons)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=batches(), snaplen=st.integers(1, 400))
def test_hypothesis_batches_encode_identically(b: ObsBatch, snaplen: int) -> None:
    ifids = np.random.default_rng(len(b)).permutation(len(b.hops)).astype(np.uint32)
    got, got_ends = record.encode_epbs(b.rows, b.frames, ifids, snaplen, b.drop_reasons)
    want, want_ends = reference.encode_epbs(b.rows, b.frames, ifids, snaplen, b.drop_reasons)
    assert bytes(got) == bytes(want)
    assert got_ends.tolist() == want_ends.tolist()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(b=batches(), snaplen=st.integers(1, 400))
def test_hypothesis_recordings_are_identical(b: ObsBatch, snaplen: int, tmp_path: Path) -> None:
    same_recording([b, b], tmp_path, snaplen=snaplen)


def test_a_hop_past_the_label_table_is_a_value_error() -> None:
    rows = np.zeros(1, obs_dtype())
    rows["hop"] = 3
    with pytest.raises(ValueError, match="hop 3"):
        record.encode_epbs(rows, b"", np.zeros(1, np.uint32), 128, {})


def test_reason_codes_no_row_can_hold_and_a_huge_snaplen_encode_identically() -> None:
    # A kernel enum's table may hold negative or > u32 values (masks): they name nothing.
    rows = np.zeros(3, obs_dtype())
    rows["drop_reason"] = [0, 6, 2**32 - 1]
    rows["frame_len"] = 5
    reasons = {-1: "MINUS", 2**40: "MASK", 6: "NETFILTER_DROP", 2**32 - 1: "TOP"}
    for snaplen in (7, 2**40):
        got, _ = record.encode_epbs(rows, b"hello", np.zeros(1, np.uint32), snaplen, reasons)
        want, _ = reference.encode_epbs(rows, b"hello", np.zeros(1, np.uint32), snaplen, reasons)
        assert bytes(got) == bytes(want)
