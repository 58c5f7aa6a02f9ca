"""The taps' ring reading in Python (numpy), as tracer/sources/taps.py had it before the
core took it over (crates/hoptrace-core/src/tpacket.rs, crates/hoptrace-py/src/tpacket.rs):
the oracle that tests/taps/test_taps_unit.py holds ``_core.TapReorder`` to, row for row
and byte for byte.

``_frames_of`` reads the frames of copied TPACKET_V3 ring blocks with one set of numpy
calls (a block of equal-sized frames is one stride, any other block is walked);
``_Reorder`` holds them back ``delay_ns`` and releases them in (timestamp, rank, arrival)
order, decoded by the reference decoder (tests/reference/decode.py). ``walk_block`` is the
frame-by-frame walk with the bounds the core keeps on blocks it cannot trust.
"""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracer.model import HopLabel, ObsBatch, Src

# struct tpacket3_hdr (48 bytes) then the sockaddr_ll: sll_pkttype is its byte 10.
PKTTYPE_OFF = 58
PACKET_OUTGOING = 4


@dataclass(slots=True)
class _Chunk:
    """The frames every tap handed over in one poll round: tpacket header columns (numpy
    arrays; each tap's frames in ring order, taps one after the other) and the copied
    blocks they point into. Decoded only when released."""

    hop: Any  # u4 index into TapSource.hops (the link type comes from there)
    ts: Any  # u8 ns (CLOCK_REALTIME)
    rank: Any  # u1 tie-break among equal timestamps (see Tap.rank_rx)
    dirs: Any  # u1 Dir
    wire: Any  # u4 tp_len
    lens: Any  # u4 captured length
    offs: Any  # i8 offset of each frame in ``frames``
    frames: bytes


@dataclass(slots=True)
class _Round:
    """The ring blocks every tap handed over in one poll round, copied one after the other
    into ``frames`` (``used`` bytes each), not parsed yet: the reader thread only copies
    and gives the blocks back, the consumer parses many rounds at once (``parse_rounds``)."""

    frames: bytes
    used: list[int]
    meta: list[tuple[int, int, int]]  # (hop, rx rank, tx rank) per block
    rows: int  # frames in it


def parse_rounds(rounds: Sequence[_Round]) -> _Chunk | None:
    """The frames of ``rounds`` (oldest first) as one chunk, with one set of numpy calls."""
    if not rounds:
        return None
    if len(rounds) == 1:
        r = rounds[0]
        return _frames_of(r.frames, r.used, r.meta)
    return _frames_of(b"".join(r.frames for r in rounds), [u for r in rounds for u in r.used],
                      [m for r in rounds for m in r.meta])


def _frames_of(frames: bytes, used: list[int], meta: list[tuple[int, int, int]],
               start: int = 0) -> _Chunk | None:
    """The frames in ``frames`` (ring blocks of ``used`` bytes each, one after the other
    from byte ``start``, a multiple of 8): their offsets and tpacket3_hdr fields."""
    import numpy as np

    a8: Any = np.frombuffer(frames, dtype=np.uint8)
    a16: Any = a8.view(np.uint16)
    a32: Any = a8.view(np.uint32)
    pos = np.zeros(len(used), dtype=np.int64)
    np.cumsum(used[:-1], out=pos[1:])
    pos += start
    num = a32[(pos >> 2) + 3].astype(np.int64)  # num_pkts
    n = int(num.sum())
    if n == 0:
        return None
    f0 = pos + a32[(pos >> 2) + 4]  # offset_to_first_pkt
    first = np.cumsum(num) - num  # index of each block's first frame
    bid = np.repeat(np.arange(len(used)), num)  # the block of each frame
    k = np.arange(n) - first[bid]  # its index in the block
    # Frames follow each other (tp_next_offset = the frame's aligned size), so a block of
    # equal-sized frames (one kind of traffic) is one stride: guess it from the first
    # frame and check every frame's tp_next_offset. A frame checked right makes the next
    # guess right, so a block whose checks all pass is exact; any other block is walked.
    stride = a32[np.minimum(f0, len(frames) - 4) >> 2].astype(np.int64)
    offs = f0[bid] + stride[bid] * k
    inner = k < num[bid] - 1  # the last frame's tp_next_offset is not needed
    bad = inner & (a32[np.minimum(offs, len(frames) - 4) >> 2] != stride[bid])
    if bad.any():
        w32 = memoryview(frames).cast("I")
        try:
            for b in np.unique(bid[bad]).tolist():
                off, walked = int(f0[b]), []
                for _ in range(int(num[b])):
                    walked.append(off)
                    off += w32[off >> 2]
                offs[first[b] : first[b] + len(walked)] = walked
        finally:
            w32.release()
    w = offs >> 2
    ts = a32[w + 1].astype(np.uint64) * np.uint64(1_000_000_000) + a32[w + 2]
    tx = a8[offs + PKTTYPE_OFF] == PACKET_OUTGOING
    blocks = np.array(meta, dtype=np.int64)  # (hop, rank_rx, rank_tx) per block
    return _Chunk(
        hop=blocks[:, 0].astype(np.uint32)[bid],
        ts=ts,
        rank=np.where(tx, blocks[:, 2][bid], blocks[:, 1][bid]).astype(np.uint8),
        dirs=np.where(tx, 2, 1).astype(np.uint8),
        wire=a32[w + 4],
        lens=a32[w + 3],  # tp_snaplen
        offs=offs + a16[(offs >> 1) + 12],  # + tp_mac: where the frame's bytes start
        frames=frames,
    )


class _Reorder:
    """Holds sightings back until no tap can still deliver an older one, then releases them
    in time order, decoded.

    Each ring hands over whole blocks, when full or when the retire timer fires, so one
    tap's frames may reach us up to the retire timer's period after a later frame of
    another tap (see hoptrace_core::tpacket::Reorder for what was measured). A path read
    out of order gets a wrong verdict, so frames wait ``delay_ns`` (against CLOCK_REALTIME,
    the clock of the ring timestamps).
    Decoding happens once per released batch: the bulk decoder's cost is mostly per call.
    """

    def __init__(self, np: Any, dtype: Any, delay_ns: int) -> None:
        self.np = np
        self.dtype = dtype
        self.delay_ns = delay_ns
        self.items: list[tuple[_Chunk, int, int]] = []  # (chunk, min ts, max ts)

    def add(self, chunk: _Chunk) -> None:
        if len(chunk.ts):
            self.items.append((chunk, int(chunk.ts.min()), int(chunk.ts.max())))

    def add_rounds(self, rounds: Sequence[_Round]) -> None:
        """Parse ``rounds`` (oldest first) into one buffer that also takes the frames still
        held, so that everything a later release hands out lies in one buffer and a batch
        needs no join of its own: the held frames' span is copied again (about a third of
        a batch), instead of every released byte a second time."""
        if not rounds:
            return
        views: list[memoryview] = []
        shifts: list[int] = []
        size = 0
        for chunk, _, _ in self.items:
            lo, hi = int(chunk.offs.min()), int((chunk.offs + chunk.lens).max())
            views.append(memoryview(chunk.frames)[lo:hi])
            shifts.append(size - lo)
            size += hi - lo
        pad = -size % 8  # the rounds' blocks stay 8-aligned: their headers are read as u32
        try:
            parts: list[Any] = [*views, b"\0" * pad] if views else []
            buf = b"".join(parts + [r.frames for r in rounds])
        finally:
            for v in views:
                v.release()
        self.items = [(_Chunk(c.hop, c.ts, c.rank, c.dirs, c.wire, c.lens, c.offs + shift, buf), tmin, tmax)
                      for (c, tmin, tmax), shift in zip(self.items, shifts, strict=True)]
        new = _frames_of(buf, [u for r in rounds for u in r.used], [m for r in rounds for m in r.meta],
                         start=size + pad)
        if new is not None:
            self.add(new)

    def __len__(self) -> int:
        return sum(len(c.ts) for c, _, _ in self.items)

    def due(self, now_ns: int) -> bool:
        mark = now_ns - self.delay_ns
        return any(tmin <= mark for _, tmin, _ in self.items)

    def take(self, hops: list[HopLabel], now_ns: int | None) -> ObsBatch:
        """The sightings older than ``now_ns - delay`` (all with None), oldest first; the
        batch's now_ns is that watermark: nothing older can come later."""
        out, mark = self.release(now_ns)
        return self.assemble(out, hops, mark)

    def shed(self, max_rows: int) -> int:
        """Drop the oldest chunks while more than ``max_rows`` wait; returns how many rows."""
        dropped = 0
        while self.items and len(self) > max_rows:
            chunk, _, _ = self.items.pop(0)
            dropped += len(chunk.ts)
        return dropped

    def release(self, now_ns: int | None) -> tuple[list[tuple[_Chunk, Any]], int]:
        """Take the chunks (or parts) older than the watermark out; cheap, no decoding."""
        if now_ns is None:
            mark = max((tmax for _, _, tmax in self.items), default=time.time_ns())
        else:
            mark = now_ns - self.delay_ns
        out: list[tuple[_Chunk, Any]] = []  # (chunk, selection or None for all)
        keep: list[tuple[_Chunk, int, int]] = []
        for chunk, tmin, tmax in self.items:
            if tmin > mark:
                keep.append((chunk, tmin, tmax))
            elif tmax <= mark:
                out.append((chunk, None))
            else:
                m = chunk.ts <= mark
                out.append((chunk, m))
                rest = ~m
                later = _Chunk(chunk.hop[rest], chunk.ts[rest], chunk.rank[rest],
                               chunk.dirs[rest], chunk.wire[rest], chunk.lens[rest],
                               chunk.offs[rest], chunk.frames)
                keep.append((later, int(later.ts.min()), tmax))
        self.items = keep
        return out, mark

    def assemble(self, out: list[tuple[_Chunk, Any]], hops: list[HopLabel], mark: int) -> ObsBatch:
        """Released chunks -> one ObsBatch in time order, decoded."""
        np = self.np
        if not out:
            return ObsBatch(np.zeros(0, dtype=self.dtype), hops, b"", now_ns=mark)

        def col(name: str) -> Any:
            parts = [getattr(c, name) if m is None else getattr(c, name)[m] for c, m in out]
            return np.concatenate(parts) if len(parts) > 1 else parts[0]

        if all(c.frames is out[0][0].frames for c, _ in out):  # add_rounds: one buffer
            frames = out[0][0].frames
            offs = col("offs")
        else:
            # Only the span of each part's buffer that holds its frames: a chunk split at
            # the watermark keeps its whole buffer, and rounds lie in it oldest first, so
            # the released part's frames sit mostly in its first rounds and the rest in the
            # last (joining whole buffers copied ~2x the frame bytes: ~1 ms per batch).
            views, parts, base = [], [], 0
            for c, m in out:
                o = c.offs if m is None else c.offs[m]
                lo, hi = int(o.min()), int((o + (c.lens if m is None else c.lens[m])).max())
                views.append(memoryview(c.frames)[lo:hi])
                parts.append(o + (base - lo))
                base += hi - lo
            try:
                frames = b"".join(views)
            finally:
                for v in views:
                    v.release()
            offs = np.concatenate(parts)
        ts, rank = col("ts"), col("rank")
        # Time order, ties by rank: one key (rank < 4 fits in the 2 bits a CLOCK_REALTIME
        # ns timestamp leaves free until 2116). A stable sort keeps ring order last; it is
        # a merge of the already sorted runs (each tap's frames of a round), ~2x lexsort.
        order = np.argsort((ts << np.uint64(2)) | rank, kind="stable")
        hop = col("hop")[order]
        offs, lens = offs[order], col("lens")[order]
        lt_rows = np.array([h.linktype for h in hops], dtype=np.uint32)[hop]
        lt: Any = int(lt_rows[0]) if (lt_rows == lt_rows[0]).all() else lt_rows
        rows = _decode(frames, offs, lens, lt, np, self.dtype)
        rows["ts_ns"] = ts[order]
        rows["hop"] = hop
        rows["netns"] = np.array([h.netns for h in hops], dtype=np.uint64)[hop]
        rows["ifindex"] = np.array([h.ifindex for h in hops], dtype=np.int32)[hop]
        rows["dir"] = col("dirs")[order]
        rows["source"] = int(Src.PCAP)
        rows["frame_off"] = offs
        rows["frame_len"] = lens
        rows["wire_len"] = col("wire")[order]
        return ObsBatch(rows, hops, frames, now_ns=mark)


def _decode(frames: bytes, offs: Any, lens: Any, lt: Any,
            np: Any, dtype: Any) -> np.ndarray[Any, Any]:
    """Rows with the packet fields of frames ``frames[offs[i]:][:lens[i]]`` (offs int64,
    lens uint32; ``lt`` one link type or a uint32 array of one per frame), the rest 0."""
    from tests.reference.decode import decode_into

    rows = np.zeros(len(offs), dtype=dtype)
    decode_into(rows, frames, offs, lens, lt)
    return rows


def walk_block(block: bytes) -> list[tuple[int, int, bytes, int]]:
    """(ts, dir, frame bytes, wire length) per frame of one block, following
    tp_next_offset, within the block's bounds (blk_len cut to the bytes given): a frame
    whose header or data leaves them, or whose tp_next_offset does not step past its own
    48-byte header, ends the walk."""
    if len(block) < 24:
        return []
    num, first, blk_len = struct.unpack_from("<III", block, 12)
    used = block[: min(blk_len, len(block))]
    out, off = [], first
    for k in range(num):
        if off + PKTTYPE_OFF + 1 > len(used):
            break
        nxt, sec, nsec, snap, wire = struct.unpack_from("<IIIII", used, off)
        mac = struct.unpack_from("<H", used, off + 24)[0]
        if off + mac + snap > len(used):
            break
        out.append((sec * 1_000_000_000 + nsec, 2 if used[off + PKTTYPE_OFF] == PACKET_OUTGOING else 1,
                    bytes(used[off + mac : off + mac + snap]), wire))
        if k + 1 == num or nxt < 48:
            break
        off += nxt
    return out
