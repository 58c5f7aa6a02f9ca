"""Live capture without eBPF: AF_PACKET taps read through TPACKET_V3 memory-mapped rings.

One socket per (namespace, interface), opened by a short-lived thread that entered
the interface's namespace (``setns`` is per thread); the socket stays bound to that
namespace's device after the thread ends. A reader thread (from ``start()`` on, so
nothing is lost while the engine starts) copies the ring blocks of all taps, ~100
rounds a second while traffic flows, and gives them back at once; ``batches()`` (the
consumer, ~20 times a second) reads the tpacket headers of all rounds since its last
batch with one set of numpy calls, releases the sightings in time order across taps
after a short hold-back and decodes them in bulk in the core. No Python
object per frame: ~4% of a core per 100k sightings/s for reading and ordering, plus
the decoder's share (scapy's ``sniff`` keeps up with ~5k pps).

Known differences from a pcap file: TPACKET_V3 hands a VLAN tag that the device
stripped (offload) as metadata, not in the frame, so such frames read untagged; and a
socket cannot see drops, so a dropped packet's path just ends where it was last seen.

What a tap sees matches the eBPF probes' hops: a packet socket's tx hook
(``dev_queue_xmit_nit``) runs after POSTROUTING like ``net_dev_start_xmit``, its rx
hook in ``__netif_receive_skb`` before PREROUTING like ``netif_receive_skb``. The
sockets never ask for promiscuous mode: a promiscuous bridge device would pass
every bridged frame up to itself, adding docker0 hops the kernel probes never see.

The interface set follows the machine: the default set (Docker bridges, their
ports, container interfaces, the Docker host's uplink) is re-read when namespaces
come or go, so a new container's interfaces get taps within ~1 s and a stopped
container's taps close with a notice on stderr.
"""

from __future__ import annotations

import ctypes
import mmap
import queue
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracer.errors import HoptraceError, PrivilegeError, UsageError
from tracer.libpcap import compile_insns
from tracer.model import HopLabel, ObsBatch, Src
from tracer.netns import run_in_netns
from tracer.pcap_expr import protocol_only
from tracer.protocols import Attachments
from tracer.safe_text import term_safe
from tracer.sources.names import own_netns

if TYPE_CHECKING:
    import numpy as np

    from tracer.topology import Topology

# linux/if_packet.h, linux/if_ether.h, asm-generic/socket.h
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
PACKET_OUTGOING = 4
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1's
# block_status, num_pkts, offset_to_first_pkt (u32 words 2, 3, 4; the rest is unused here).
BLOCK_STATUS_OFF = 8
# struct tpacket3_hdr (48 bytes): tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len,
# tp_status (u32 words 0-5), tp_mac (u16 at byte 24); the sockaddr_ll follows at
# TPACKET_ALIGN(48) = 48, of which only sll_pkttype (its byte 10) is read: 48 + 10.
PKTTYPE_OFF = 58

# ARPHRD_* -> pcap LINKTYPE_* of the bytes a SOCK_RAW packet socket gives.
_LINKTYPES = {1: 1, 772: 1, 0xFFFE: 101, 519: 101, 512: 101, 776: 101, 778: 101}

# --------------------------------------------------------------------------
# Kernel socket filters (classic BPF compiled by libpcap)
# --------------------------------------------------------------------------


def snaplen_bpf(snaplen: int) -> bytes:
    """Accept everything, cut to ``snaplen``: without it a GSO super-packet (~64 KB) is
    copied into the ring whole although only its headers are kept."""
    return struct.pack("<HBBI", BPF_RET_K, 0, 0, snaplen)


def _attach_filter(sock: socket.socket, insns: bytes) -> None:
    buf = ctypes.create_string_buffer(insns, len(insns))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native padding)
    fprog = struct.pack("HP", len(insns) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# --------------------------------------------------------------------------
# One tap
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TapSpec:
    """An interface to tap: which namespace (inode and a path to enter it) and its name there."""

    netns: int
    netns_path: str
    ifname: str
    node: str
    role: str = ""  # "bridge", "port" (of a bridge) or "": orders sightings with equal timestamps

    @property
    def key(self) -> tuple[int, str]:
        return (self.netns, self.ifname)

    @property
    def label(self) -> str:
        return f"{self.node}/{self.ifname}"


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


class TapGone(HoptraceError):
    """The interface (or its namespace) went away before or while its tap was opened."""


class Tap:
    """An AF_PACKET socket bound to one interface in its namespace, with its mmap'd ring."""

    def __init__(self, spec: TapSpec, hop: int, sock: socket.socket, ifindex: int,
                 linktype: int, block_size: int, block_nr: int) -> None:
        self.spec = spec
        self.hop = hop
        self.sock = sock
        self.fd = sock.fileno()
        self.ifindex = ifindex
        self.linktype = linktype
        self.block_size = block_size
        self.block_nr = block_nr
        self.drops = 0
        self.freezes = 0
        self.errored = False
        # A packet socket stamps a frame with the skb's own timestamp when it has one, so one
        # skb received on a bridge port and then on the bridge shows the same time at both
        # (measured: to the ns). Within such a tie the kernel's order is fixed: a port
        # receives before its bridge; a bridge transmits before its port.
        self.rank_rx = {"port": 0, "": 1, "bridge": 2}[spec.role]
        self.rank_tx = {"bridge": 0, "": 1, "port": 2}[spec.role]
        self._mm = mmap.mmap(self.fd, block_size * block_nr, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        # The ring's bytes (block copies are slices of it) and its u32 words (block headers).
        self._mv = memoryview(self._mm)
        self._w32 = self._mv.cast("I")
        # One ctypes view per block status word: handing a block back to the kernel is
        # then a single aligned 4-byte store, never a torn bytewise write.
        self._status = [ctypes.c_uint32.from_buffer(self._mm, i * block_size + BLOCK_STATUS_OFF)
                        for i in range(block_nr)]
        self._cur = 0

    @classmethod
    def open(cls, spec: TapSpec, hop: int, *, insns_for: Callable[[int], bytes],
             block_size: int, block_nr: int, retire_ms: int) -> Tap:
        def opener() -> tuple[socket.socket, int, int]:
            # Protocol 0 until bind: no frames of other interfaces are queued meanwhile.
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                ifindex = socket.if_nametoindex(spec.ifname)  # resolved in this thread's netns
                s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
                frame_size = 2048
                req = struct.pack("<7I", block_size, block_nr, frame_size,
                                  block_size * block_nr // frame_size, retire_ms, 0, 0)
                s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
                s.bind((spec.ifname, ETH_P_ALL))
                hatype = s.getsockname()[3]
                linktype = _LINKTYPES.get(hatype, 1)
                _attach_filter(s, insns_for(linktype))
            except BaseException:
                s.close()
                raise
            return s, ifindex, linktype

        try:
            path = "" if spec.netns == own_netns() else spec.netns_path
            sock, ifindex, linktype = run_in_netns(path, opener, timeout=10) if path else opener()
        except PermissionError as exc:
            raise PrivilegeError(f"cannot open a packet socket on {spec.label}: {exc.strerror}",
                                 "run hoptrace as root (CAP_NET_RAW)") from exc
        except OSError as exc:
            raise TapGone(f"cannot tap {spec.label}: {exc.strerror or exc}") from exc
        try:
            return cls(spec, hop, sock, ifindex, linktype, block_size, block_nr)
        except BaseException:
            sock.close()
            raise

    def take_blocks(self, pieces: list[memoryview], meta: list[tuple[int, int, int]]) -> tuple[int, int]:
        """Append a view of every block the kernel handed over (its used bytes; no copy yet)
        to ``pieces`` and (hop, rx rank, tx rank) to ``meta``; returns how many blocks and
        frames. The blocks stay ours until ``hand_back``: copy them first."""
        status, bs, nr, w32, mv = self._status, self.block_size, self.block_nr, self._w32, self._mv
        cur, k, rows = self._cur, 0, 0
        while k < nr and status[cur].value & TP_STATUS_USER:
            base = cur * bs
            # blk_len: header + frames, each a multiple of 8 (the & keeps a garbage value
            # from misaligning the next block in the copy).
            used = min(w32[(base >> 2) + 5], bs) & ~7
            rows += w32[(base >> 2) + 3]  # num_pkts
            pieces.append(mv[base : base + used])
            meta.append((self.hop, self.rank_rx, self.rank_tx))
            k += 1
            cur = cur + 1 if cur + 1 < nr else 0
        return k, rows

    def hand_back(self, k: int) -> None:
        """Give the next ``k`` blocks back to the kernel (after they were copied)."""
        status, nr, c = self._status, self.block_nr, self._cur
        for _ in range(k):
            status[c].value = TP_STATUS_KERNEL
            c = c + 1 if c + 1 < nr else 0
        self._cur = c

    def read_stats(self) -> int:
        """Fold the kernel's counters (reset on read) into ours; returns new drops."""
        try:
            _packets, drops, freezes = struct.unpack(
                "<III", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        except OSError:
            return 0
        self.drops += drops
        self.freezes += freezes
        return drops

    def clear_error(self) -> int:
        """Read (and so reset) the socket's pending error: ENETDOWN when the device went down or away."""
        self.errored = True
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def close(self) -> int:
        """Release everything; returns the drops counted since the last ``read_stats``."""
        drops = self.read_stats()
        self._status = []
        self._w32.release()  # the mmap cannot close while views of it exist
        self._mv.release()
        self._mm.close()
        self.sock.close()
        return drops


@dataclass(slots=True)
class _Round:
    """The ring blocks every tap handed over in one poll round, copied one after the other
    into ``frames`` (``used`` bytes each), not parsed yet: the reader thread only copies
    and gives the blocks back, the consumer parses many rounds at once (``parse_rounds``)."""

    frames: bytes
    used: list[int]
    meta: list[tuple[int, int, int]]  # (hop, rx rank, tx rank) per block
    rows: int  # frames in it


def take_round(taps: Sequence[Tap]) -> _Round | None:
    """Copy every block the kernel handed over on any of ``taps`` into one buffer (one
    memcpy per block, by one ``bytes.join``) and give the blocks back.

    The copy keeps the tpacket headers between frames: frame offsets point past them.
    That is cheaper than gathering frame bytes one by one (measured: a per-byte numpy
    gather cost more than the decode). No numpy here: in this VM a numpy call after an
    idle wait costs several times its warm price (~300 us for the ~40 calls that parse a
    round, whatever its size), so parsing once per consumer batch, not per round, is
    what keeps the reader cheap."""
    pieces: list[memoryview] = []
    meta: list[tuple[int, int, int]] = []
    taken = [(tap, *tap.take_blocks(pieces, meta)) for tap in taps]
    if not pieces:
        return None
    used = [len(p) for p in pieces]
    try:
        frames = b"".join(pieces)  # blk_len is a multiple of 8: every block stays 8-aligned
    finally:
        for piece in pieces:
            piece.release()
        for tap, k, _ in taken:
            if k:
                tap.hand_back(k)
    return _Round(frames, used, meta, sum(rows for _, _, rows in taken))


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


# --------------------------------------------------------------------------
# Which interfaces
# --------------------------------------------------------------------------


def _discover() -> Topology:
    from tracer.topology import Topology

    return Topology.discover(nat=False)


def _all_ifaces(topo: Topology) -> list[TapSpec]:
    return [TapSpec(ns.inode, ns.path, i.name, ns.name, _role(i))
            for ns in topo.namespaces if ns.error is None for i in ns.interfaces]


def _role(iface: Any) -> str:
    return "bridge" if iface.kind == "bridge" else "port" if iface.master is not None else ""


def default_specs(topo: Topology) -> list[TapSpec]:
    """TOPOLOGY's default set: Docker bridges and their ports, container interfaces, the uplink."""
    from tracer.topology import default_ifaces

    by_path = {ns.path: ns for ns in topo.namespaces}
    out = []
    for path, ifname in default_ifaces(topo):
        ns = by_path.get(path)
        iface = ns.iface(ifname) if ns is not None else None
        if ns is not None and iface is not None:
            out.append(TapSpec(ns.inode, ns.path, ifname, ns.name, _role(iface)))
    return out


def resolve_ifaces(names: Sequence[str], topo: Topology, *, strict: bool = True) -> list[TapSpec]:
    """``--iface`` values (``NODE/IFACE`` or ``IFACE``) -> taps.

    A bare ``IFACE`` is looked up in the node named ``host`` (the lab's Docker host, or the
    tracer's own namespace), then anywhere it is unique. ``strict``: an unknown name raises
    ``UsageError`` listing what exists; otherwise it is skipped (re-resolving after hot-plug).
    """
    every = _all_ifaces(topo)
    out: list[TapSpec] = []
    for name in names:
        if "/" in name:
            node, ifname = name.rsplit("/", 1)
            # "netns:<inode>/IFACE" names one namespace when several share a node name
            # (two labs up at once both have a "host").
            found = [s for s in every
                     if (s.node == node or f"netns:{s.netns}" == node) and s.ifname == ifname]
        else:
            same = [s for s in every if s.ifname == name]
            found = [s for s in same if s.node == "host"]
            if not found:
                found = [s for s in same if s.netns == topo.own_netns] or same
        if len(found) != 1:
            if not strict:
                continue
            if found:
                raise UsageError(
                    f"interface {name!r} exists in several namespaces: "
                    + ", ".join(f"netns:{s.netns}/{s.ifname} ({s.node})" for s in found),
                    "name one as netns:<inode>/IFACE")
            raise UsageError(f"unknown interface {name!r}",
                             "interfaces here: " + ", ".join(sorted(s.label for s in every)))
        if found[0].key not in {o.key for o in out}:
            out.append(found[0])
    return out


class _Reorder:
    """Holds sightings back until no tap can still deliver an older one, then releases them
    in time order, decoded.

    Each ring hands over whole blocks, when full or when the retire timer fires, so one
    tap's frames may reach us several ms after a later frame of another tap (measured:
    up to ~7 ms with a 4 ms timer). A path read out of order gets a wrong verdict, so
    frames wait ``delay_ns`` (against CLOCK_REALTIME, the clock of the ring timestamps).
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


# --------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------


class TapSource:
    """A ``tracer.sources.base.Source`` (kind "pcap") over AF_PACKET taps.

    ``ifaces``: ``--iface`` values; None = the default set, followed as containers come
    and go. ``bpf_filter``: the ``--filter`` expression, attached in the kernel only when
    protocol-only (see ``tracer.pcap_expr.protocol_only``); the engine's PathFilter does the rest.
    ``topology``: a callable returning a current Topology (e.g. a shared LiveTopology),
    asked every ``rediscover_s``; by default the source discovers on a thread of its own
    when namespaces come or go (checked every ``rediscover_s``) and every ``full_every_s``.
    ``lost_events``: kernel ring drops (PACKET_STATISTICS, read every second) plus
    sightings shed when more than ``max_pending`` wait for a consumer that cannot keep up.
    ``stop()`` only sets a flag; ``join()`` waits until the taps are closed.
    """

    kind = "pcap"

    def __init__(
        self,
        ifaces: Sequence[str] | None = None,
        bpf_filter: str | None = None,
        snaplen: int = 128,
        *,
        topology: Callable[[], Topology] | None = None,
        rediscover_s: float = 0.5,
        full_every_s: float = 5.0,
        ring_mb: int = 8,
        block_kb: int = 32,
        retire_ms: int = 4,
        poll_ms: int = 50,
        reorder_ms: int = 20,
        batch_ms: int = 50,
        drain_ms: int = 10,
        max_pending: int = 2_000_000,
        notices: Callable[[str], None] | None = None,
    ) -> None:
        self.ifaces = list(ifaces) if ifaces else None
        self.bpf_filter = bpf_filter or None
        self.snaplen = snaplen
        self.rediscover_s = rediscover_s
        self.full_every_s = full_every_s
        self.block_size = block_kb * 1024
        self.block_nr = max(2, ring_mb * 1024 // block_kb)
        self.retire_ms = retire_ms
        self.poll_ms = poll_ms
        self.reorder_ms = reorder_ms
        self.batch_ms = batch_ms
        self.drain_ms = drain_ms
        self._topology = topology
        self._notice = notices or (lambda msg: print(f"hoptrace: {term_safe(msg)}", file=sys.stderr, flush=True))
        self.kernel_filter = self.bpf_filter if protocol_only(self.bpf_filter) else None
        self._insns: dict[int, bytes] = {}
        self.hops: list[HopLabel] = []
        self._hop_index: dict[tuple[int, str, int], int] = {}
        self.taps: dict[tuple[int, str], Tap] = {}
        self._lost = 0
        self._stop = threading.Event()
        self._changes: queue.SimpleQueue[
            tuple[list[Tap], set[tuple[int, str]], list[TapSpec]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # re-discovery
        self._reader: threading.Thread | None = None
        self._reader_done = threading.Event()
        self._reorder: _Reorder | None = None
        self._rounds: list[_Round] = []  # copied by the reader, parsed by the consumer
        self._buf_lock = threading.Lock()
        self.max_pending = max_pending
        self._started = False
        self._ns_seen: frozenset[int] = frozenset()
        self._lock = threading.Lock()
        self._hop_lock = threading.Lock()

    # -- Source protocol ---------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        if self.bpf_filter:
            # Compile now even when it stays in userspace: a bad expression is exit 2 at once.
            compile_insns(self.bpf_filter, 1, self.snaplen)
        from tracer.topology import find_namespaces

        # Taken before the discovery: a namespace born during it counts as a change.
        self._ns_seen = frozenset(find_namespaces())
        topo = self._current_topology()
        specs = self._wanted(topo, strict=True)
        if not specs:
            raise UsageError(
                "no interfaces to tap: no Docker bridge or container found",
                "name interfaces with --iface NODE/IFACE (see `hoptrace topology`)")
        for spec in specs:
            try:
                tap = self._open(spec)
            except TapGone as exc:
                self._notice(str(exc))
                continue
            self.taps[spec.key] = tap
        if not self.taps:
            raise UsageError("none of the interfaces could be tapped")
        import numpy as np

        from tracer.model import obs_dtype

        self._reorder = _Reorder(np, obs_dtype(), self.reorder_ms * 1_000_000)
        self._started = True
        self._reader = threading.Thread(target=self._read_loop, name="taps-reader", daemon=True)
        self._reader.start()
        self._thread = threading.Thread(target=self._rediscover_loop, name="taps-rediscover",
                                        daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        """The reader thread: poll every ring, drain them in bulk, hand chunks to the reorder
        buffer; at stop, one last drain, then close everything."""
        reorder, lock = self._reorder, self._buf_lock
        assert reorder is not None
        poller = select.poll()
        by_fd: dict[int, Tap] = {}
        for tap in self.taps.values():
            poller.register(tap.fd, select.POLLIN)
            by_fd[tap.fd] = tap
        last_stats = last_drain = time.monotonic()
        busy = False  # the last round found blocks: traffic is flowing
        try:
            while not self._stop.is_set():
                self._apply_changes(poller, by_fd)
                # Every wake-up costs here (~100 us of CPU in this VM, measured idle: a
                # 5 ms poll loop alone took ~3% of a core). While traffic flows, one
                # sleep per round and a poll that does not block (for POLLERR); when a
                # round found nothing, block in poll until a ring hands over a block
                # (the kernel wakes it on block retire), ``poll_ms`` at most.
                if busy:
                    wait = self.drain_ms / 1000 - (time.monotonic() - last_drain)
                    if wait > 0:
                        time.sleep(wait)
                    events = poller.poll(0)
                else:
                    events = poller.poll(self.poll_ms)
                    if events:
                        # Each round costs a fixed part whatever it holds; waiting until
                        # drain_ms after the last one lets more blocks retire, so there
                        # are fewer, bigger rounds (rings hold ~1 s at least).
                        wait = self.drain_ms / 1000 - (time.monotonic() - last_drain)
                        if wait > 0:
                            time.sleep(wait)
                for fd, ev in events:
                    errored = by_fd.get(fd)
                    if errored is not None and ev & select.POLLERR:
                        errored.clear_error()  # level-triggered: reset it; re-discovery decides
                if busy or events:
                    rnd = take_round(list(by_fd.values()))
                    last_drain = time.monotonic()
                    busy = rnd is not None
                    if rnd is not None:
                        with lock:
                            self._rounds.append(rnd)
                            # A consumer that cannot keep up: shed the oldest, and say so.
                            self._lost += self._shed()
                now = time.monotonic()
                if now - last_stats >= 1.0:
                    self._lost += sum(t.read_stats() for t in self.taps.values())
                    last_stats = now
            rnd = take_round(list(by_fd.values()))
            if rnd is not None:
                with lock:
                    self._rounds.append(rnd)
        finally:
            self._shutdown()
            self._reader_done.set()

    def batches(self) -> Iterator[ObsBatch]:
        """Released sightings, decoded, in time order; the reading happens on the reader
        thread that ``start()`` began, so sightings are kept while the consumer is busy."""
        self.start()
        reorder, lock = self._reorder, self._buf_lock
        assert reorder is not None
        last_yield = time.monotonic()
        while True:
            finished = self._reader_done.wait(self.batch_ms / 1000)
            now = time.monotonic()
            # Taken before the rounds: every frame drained after it is newer than the
            # watermark derived from it by at least the reorder delay, as before parsing
            # moved here.
            now_ns = time.time_ns()
            with lock:  # the reader waits the ~1 ms this takes; its rings hold ~1 s
                rounds, self._rounds = self._rounds, []
                reorder.add_rounds(rounds)
                if finished:  # the reader's last drain is in: everything, in order
                    out, mark = reorder.release(None)
                elif reorder.due(now_ns) or now - last_yield >= 0.1:
                    out, mark = reorder.release(now_ns)
                else:
                    continue
            yield reorder.assemble(out, self.hops, mark)  # decoding, outside the lock
            last_yield = now
            if finished:
                return

    def stop(self) -> None:
        """Stop reading: the reader drains the rings once more, closes the taps and ends
        ``batches()`` after its last batch. Only sets a flag: safe from a signal handler."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the taps are closed (after ``stop()``)."""
        for t in (self._reader, self._thread):
            if t is not None and t is not threading.current_thread():
                t.join(timeout)

    @property
    def lost_events(self) -> int:
        return self._lost

    # -- tracer.protocols.LiveSource ------------------------------------------

    def attachments(self) -> Attachments:
        taps = dict(self.taps)
        return Attachments(len(taps), "taps", len({key[0] for key in taps}))

    @property
    def traced_netns(self) -> frozenset[int]:
        # Taps are per interface, but the namespaces they sit in change as containers come
        # and go: for whoever traces rules beside them (--rules), every namespace.
        return frozenset()

    # -- internals ---------------------------------------------------------

    def _insns_for(self, linktype: int) -> bytes:
        insns = self._insns.get(linktype)
        if insns is None:
            if self.kernel_filter:
                insns = compile_insns(self.kernel_filter, linktype, self.snaplen)
            else:
                insns = snaplen_bpf(self.snaplen)
            self._insns[linktype] = insns
        return insns

    def _current_topology(self) -> Topology:
        return self._topology() if self._topology is not None else _discover()

    def _wanted(self, topo: Topology, *, strict: bool) -> list[TapSpec]:
        if self.ifaces:
            return resolve_ifaces(self.ifaces, topo, strict=strict)
        return default_specs(topo)

    def _shed(self) -> int:
        """Drop the oldest sightings (parsed ones first: they were drained before any round
        still waiting) while more than ``max_pending`` wait; returns how many. Called with
        the buffer lock held."""
        reorder = self._reorder
        assert reorder is not None
        waiting = sum(r.rows for r in self._rounds)
        dropped = reorder.shed(max(self.max_pending - waiting, 0))
        while self._rounds and waiting + len(reorder) > self.max_pending:
            r = self._rounds.pop(0)
            waiting -= r.rows
            dropped += r.rows
        return dropped

    def _hop_for(self, spec: TapSpec, ifindex: int, linktype: int) -> int:
        with self._hop_lock:  # the re-discovery thread opens taps, the reader renames them
            key = (spec.netns, spec.ifname, ifindex)
            idx = self._hop_index.get(key)
            if idx is None or self.hops[idx].node != spec.node:
                idx = len(self.hops)
                self.hops.append(HopLabel(spec.node, spec.ifname, spec.netns, ifindex, linktype))
                self._hop_index[key] = idx
            return idx

    def _open(self, spec: TapSpec) -> Tap:
        tap = Tap.open(spec, -1, insns_for=self._insns_for, block_size=self.block_size,
                       block_nr=self.block_nr, retire_ms=self.retire_ms)
        tap.hop = self._hop_for(spec, tap.ifindex, tap.linktype)
        return tap

    def _rediscover_loop(self) -> None:
        """Follow the machine: open taps on new interfaces, close those that went away.

        A full discovery costs ~40 ms of CPU with a few labs up (netlink per namespace,
        the Docker API): run every 0.5 s it alone cost ~10% of a core. So it runs when
        the set of namespaces changed (a container started or stopped: ~1 ms to check;
        with named ``--iface``s only when one of theirs went away), when a tap reported
        an error, twice more within ~1 s after such a change (Docker moves the veth in
        after creating the namespace), and every ``full_every_s`` in any case.
        """
        last_ns = self._ns_seen
        last_full = time.monotonic()  # start() just discovered
        hot_until = 0.0
        while not self._stop.wait(self.rediscover_s):
            now = time.monotonic()
            if self._topology is None:
                from tracer.topology import find_namespaces

                ns = frozenset(find_namespaces())
                taps = list(self.taps.values())
                errored = any(t.errored for t in taps)
                # Named interfaces: only their namespaces going away matters at once
                # (other labs' namespaces come and go all the time on a busy host).
                tapped = {t.spec.netns for t in taps}
                changed = not tapped <= ns if self.ifaces else ns != last_ns
                last_ns = ns
                if changed or errored:
                    hot_until = now + 1.2
                hot = now < hot_until and now - last_full >= 0.5
                if not (changed or errored or hot or now - last_full >= self.full_every_s):
                    continue
                last_full = now
            try:
                topo = self._current_topology()
                wanted = {s.key: s for s in self._wanted(topo, strict=False)}
            except (HoptraceError, OSError) as exc:
                self._notice(f"re-discovering interfaces failed: {exc}")
                continue
            for t in list(self.taps.values()):
                t.errored = False  # seen by this discovery: closed below if it went away
            with self._lock:
                have = {key: tap.spec.node for key, tap in self.taps.items()}
            new: list[Tap] = []
            for key, spec in wanted.items():
                if key in have:
                    continue
                try:
                    new.append(self._open(spec))
                except TapGone:
                    continue  # vanished between discovery and open: the next round sees it
                except HoptraceError as exc:
                    self._notice(str(exc))
            gone = set(have) - set(wanted)
            # A container's name may come after its namespace (Docker reports the pid once
            # it has started it): later sightings there get the name.
            renamed = [s for key, s in wanted.items() if key in have and have[key] != s.node]
            if new or gone or renamed:
                self._changes.put((new, gone, renamed))

    def _apply_changes(self, poller: select.poll, by_fd: dict[int, Tap]) -> None:
        while True:
            try:
                new, gone, renamed = self._changes.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                for spec in renamed:
                    tap = self.taps.get(spec.key)
                    if tap is not None:
                        tap.spec = spec
                        tap.hop = self._hop_for(spec, tap.ifindex, tap.linktype)
                for key in gone:
                    tap = self.taps.pop(key, None)
                    if tap is None:
                        continue
                    poller.unregister(tap.fd)
                    by_fd.pop(tap.fd, None)
                    self._lost += tap.close()
                    self._notice(f"tap {tap.spec.label} closed: the interface went away")
                for tap in new:
                    if tap.spec.key in self.taps or self._stop.is_set():
                        tap.close()
                        continue
                    self.taps[tap.spec.key] = tap
                    poller.register(tap.fd, select.POLLIN)
                    by_fd[tap.fd] = tap
                    self._notice(f"tap {tap.spec.label} opened")

    def _shutdown(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=15)
        with self._lock:
            while True:  # taps opened by a last re-discovery round
                try:
                    new, _, _ = self._changes.get_nowait()
                except queue.Empty:
                    break
                for tap in new:
                    tap.close()
            for tap in self.taps.values():
                self._lost += tap.close()
            self.taps.clear()


def _decode(frames: bytes, offs: Any, lens: Any, lt: Any,
            np: Any, dtype: Any) -> np.ndarray[Any, Any]:
    """Rows with the packet fields of frames ``frames[offs[i]:][:lens[i]]`` (offs int64,
    lens uint32; ``lt`` one link type or a uint32 array of one per frame), the rest 0."""
    from tracer import _core

    rows = np.zeros(len(offs), dtype=dtype)
    _core.decode_into(rows, frames, offs, lens, lt)
    return rows


__all__ = ["Tap", "TapGone", "TapSource", "TapSpec", "default_specs", "resolve_ifaces", "snaplen_bpf"]
