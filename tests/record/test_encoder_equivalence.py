"""tracer.sinks.record's EPB encoder writes exactly the bytes of the encoder it replaced.

The reference is the previous encoder, kept verbatim in reference_encoder.py: for the
same rows a recording must be byte-identical, whichever fast or fallback path a batch takes.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.record import reference_encoder as ref
from tests.record.helpers import HOPS, Sighting, batch_of, masquerade_pings, ping_frames
from tests.reference.record import packet_ids
from tracer.model import Dir, ObsBatch, obs_dtype
from tracer.sinks.record import encode_epbs

REASONS = {6: "NETFILTER_DROP", 2: "NOT_SPECIFIED", 77: "A_LONGER_REASON_NAME"}


def same(b: ObsBatch, snaplen: int = 128, ifids: np.ndarray | None = None, reasons: dict[int, str] | None = None) -> None:
    ifids = np.arange(7, 7 + len(b.hops), dtype=np.uint32) if ifids is None else ifids
    reasons = b.drop_reasons if reasons is None else reasons
    got, got_ends = encode_epbs(b.rows, b.frames, ifids, snaplen, reasons)
    want, want_ends = ref.encode_epbs(b.rows, b.frames, ifids, snaplen, reasons)
    assert bytes(got) == bytes(want)
    assert got_ends.tolist() == want_ends.tolist()


def synthetic(n: int, seed: int, frame_len: int = 106, stride: int | None = None, **over: object) -> ObsBatch:
    """Rows with random field values (what a source could hand over), frames of random bytes."""
    rng = np.random.default_rng(seed)
    rows = np.zeros(n, obs_dtype())
    for name in ("family", "proto", "tcp_flags", "icmp_type", "icmp_code"):
        rows[name] = rng.integers(0, 256, n)
    for name in ("ip_id", "tcp_seq", "tcp_ack"):
        rows[name] = rng.integers(0, 2**32, n, dtype=np.uint64)
    rows["icmp_seq"], rows["frag"] = rng.integers(0, 2**16, n), rng.integers(0, 2**16, n)
    rows["digest"] = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    rows["ts_ns"] = np.uint64(1_795_805_084_000_000_000) + np.cumsum(rng.integers(0, 9_000, n)).astype(np.uint64)
    rows["skb"] = np.uint64(0xFFFF888100000000) + rng.integers(0, 2**20, n).astype(np.uint64) * np.uint64(0x100)
    rows["skb"][rng.random(n) < 0.25] = 0
    rows["hop"] = rng.integers(0, len(HOPS), n)
    rows["netns"] = np.array([h.netns for h in HOPS], np.uint64)[rows["hop"]]
    rows["dir"] = rng.integers(0, 4, n)
    lens = np.full(n, frame_len) if isinstance(frame_len, int) else frame_len
    rows["frame_len"] = lens
    rows["wire_len"] = lens + rng.integers(0, 3, n) * 1000
    if stride is None:
        rows["frame_off"] = np.cumsum(lens) - lens
        size = int(lens.sum())
    else:
        rows["frame_off"] = np.arange(n) * stride
        size = stride * n
    for name, value in over.items():
        rows[name] = value
    frames = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    return ObsBatch(rows=rows, hops=list(HOPS), frames=frames, drop_reasons=dict(REASONS))


def test_recorder_fixtures_encode_identically() -> None:
    same(batch_of(masquerade_pings(40, drop_every=3), drop_reasons={6: "NETFILTER_DROP"}))
    same(batch_of(masquerade_pings(7, with_skb=False)))
    same(batch_of(masquerade_pings(3)), snaplen=61)
    one = batch_of([Sighting(2, ping_frames(5)["req_nat"], 10**18, Dir.DROP, 0x1234, drop_reason=9)])
    same(one)  # an unknown reason code: UNKNOWN(9)
    same(one, snaplen=1)


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_encode_identically(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 3000))
    same(synthetic(n, seed))  # equal frames back to back: the strided path
    same(synthetic(n, seed, frame_len=rng.integers(0, 200, n)), snaplen=int(rng.integers(1, 160)))  # any length
    same(synthetic(n, seed, frame_len=rng.integers(1, 90, n), stride=96))  # fixed slots, frames shorter


def test_every_slot_width_and_fallback_encodes_identically() -> None:
    n = 500
    rng = np.random.default_rng(7)
    # netns far apart and large drop reason codes: distinct kinds found by sorting.
    same(synthetic(n, 1, netns=np.array([0, 1, 4026531840, 2**64 - 1], np.uint64)[rng.integers(0, 4, n)]))
    same(synthetic(n, 2, drop_reason=np.array([0, 6, 77, 2**32 - 1], np.uint32)[rng.integers(0, 4, n)]))
    same(synthetic(n, 3, drop_reason=np.array([0, 6, 2, 77], np.uint32)[rng.integers(0, 4, n)]))
    same(synthetic(n, 4, dir=rng.integers(0, 256, n).astype(np.uint8)))  # dir > 3 reads as a drop
    # Timestamps: with different digit counts, below 10**9, 0, spanning many seconds, at the top.
    same(synthetic(n, 5, ts_ns=rng.integers(0, 2**64, n, dtype=np.uint64)))
    same(synthetic(n, 6, ts_ns=rng.integers(0, 10**9, n, dtype=np.uint64)))
    same(synthetic(n, 7, ts_ns=np.zeros(n, np.uint64)))
    same(synthetic(n, 8, ts_ns=np.uint64(10**18) + rng.integers(0, 10**12, n, dtype=np.uint64)))
    same(synthetic(n, 9, ts_ns=np.uint64(9_999_999_999_000_000_000) + rng.integers(0, 10**9, n, dtype=np.uint64)))
    same(synthetic(n, 10, ts_ns=np.full(n, 2**64 - 1, np.uint64)))
    same(synthetic(n, 11, ts_ns=np.uint64(10**9) + rng.integers(0, 10**6, n, dtype=np.uint64)))
    same(synthetic(n, 21, ts_ns=np.uint64(10**18) + rng.integers(0, 5 * 10**9, n, dtype=np.uint64)))  # a few seconds
    # skb: all unknown, small, the largest.
    same(synthetic(n, 12, skb=np.zeros(n, np.uint64)))
    same(synthetic(n, 13, skb=rng.integers(0, 300, n).astype(np.uint64)))
    same(synthetic(n, 14, skb=np.full(n, 2**64 - 1, np.uint64)))
    # Frames: none, pointing past the buffer, the same offset for every row.
    same(synthetic(n, 15, frame_len=0))
    same(synthetic(n, 16, frame_off=np.arange(n) * 200))
    same(synthetic(n, 17, frame_off=np.zeros(n, np.uint64)))
    same(synthetic(1, 18))
    # The same frame for every row, the buffer ending where the frame does (no word past it).
    b = synthetic(3, 22, frame_len=106, frame_off=np.zeros(3, np.uint64))
    same(ObsBatch(rows=b.rows, hops=b.hops, frames=b.frames[:106]))
    # A fixed stride where not even the first frame's last word is inside the buffer.
    b = synthetic(2, 23, frame_len=7, frame_off=np.array([0, 1], np.uint64))
    same(ObsBatch(rows=b.rows, hops=b.hops, frames=b.frames[:7]))
    # A hop table with more labels than the rows use, interface ids out of order.
    b = synthetic(n, 19)
    same(b, ifids=np.array([4, 0, 3, 1, 2], np.uint32))


def test_packet_ids_are_the_reference_hash() -> None:
    b = synthetic(2000, 20)
    assert packet_ids(b.rows).tolist() == ref.packet_ids(b.rows).tolist()
