"""The reference: pcap / pcapng files -> ObsBatch in Python, as tracer/sources/files.py did
before the core (crates/hoptrace-core: reader.rs, pcap.rs, pcapng.rs, files.rs) took
over. tests/unit/test_core_readers.py holds the core to it, batch for batch and byte for
byte; tests/test_oracle.py reads the corpus with it. Not used by the product.

pcap / pcapng files -> ObsBatch, in timestamp order across files.

The files are parsed with ``struct`` over chunks read with plain ``read()``
(DESIGN.md measured scapy's raw readers at 400-800k records/s and struct
over a buffer at 1.5M/s); a batch's frames are slices of the chunk it was
read from, so no per-packet bytes are copied, and memory stays bounded by
the chunk size whatever the file size (an mmap would count the whole file
in the process's RSS as it is read).

Labels: a pcapng interface named ``node/iface`` is that hop; otherwise a
``--hop NODE/IFACE=FILE`` label, else the file name's stem as the node and
the interface's name (or ``if<N>``) as iface. Linux cooked v2 frames carry
the interface index, so a ``tcpdump -i any`` capture yields one hop per
index. Nodes without a real netns inode get small synthetic ids (1, 2, ...)
per node name, shared across files, so two captures of one namespace are
one namespace to the correlator.

In a pcapng that mixes link types, packets on interfaces of a link type
hoptrace does not decode are skipped; a file with nothing else is an
"unsupported link type" error.

hoptrace's own recordings carry a JSON comment per packet
(``{"v":1,"dir":..,"skb":..,"drop_reason":..,"ts_ns":..}``) that overrides
direction, skb, drop reason and gives the nanosecond timestamp.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from struct import Struct
from typing import Any, BinaryIO

import numpy as np

from tests.reference.decode import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    SUPPORTED_LINKTYPES,
    decode_into,
    link_meta,
)
from tracer.errors import CaptureFileError
from tracer.model import Dir, HopLabel, ObsBatch, Src, obs_dtype

BATCH_ROWS = 4096
CHUNK_BYTES = 1 << 20
# libpcap refuses records bigger than this (MAXIMUM_SNAPLEN); so do we.
MAX_RECORD = 262144
MAX_BLOCK = 16 << 20

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

LINKTYPE_NAMES = {
    0: "NULL", 1: "ETHERNET", 9: "PPP", 12: "RAW", 14: "RAW", 101: "RAW", 104: "C_HDLC",
    105: "IEEE802_11", 107: "FRELAY", 108: "LOOP", 113: "LINUX_SLL", 127: "IEEE802_11_RADIOTAP",
    143: "DOCSIS", 192: "PPI", 195: "IEEE802_15_4", 228: "IPV4", 229: "IPV6",
    276: "LINUX_SLL2",
}  # fmt: skip

_U64_MAX = (1 << 64) - 1
_IFINDEX_MAX = (1 << 31) - 1
_DIRS_B = {b"rx": Dir.RX, b"tx": Dir.TX, b"drop": Dir.DROP}
# tracer.sinks.record's comment, exactly (one per line of the joined batch); the recorder pads
# values with spaces to a fixed width per batch.
_META_RE = re.compile(
    rb'^\{"v": *1,"dir": *(?:"(rx|tx|drop)"|null),"skb": *(?:"0x([0-9a-fA-F]{1,16})"|null),'
    rb'"hook": *(?:"[^"\\\n]*"|null),"netns": *(\d{1,19}),'
    rb'"drop_reason": *(?:"([A-Za-z0-9_()]+)"|null),"ts_ns": *(\d{1,19})\}$',
    re.M,
)
_OPTHDR_LE = Struct("<HH").unpack_from
_OPTHDR_BE = Struct(">HH").unpack_from
_DIRS = {"rx": Dir.RX, "tx": Dir.TX, "drop": Dir.DROP}


def linktype_name(lt: int) -> str:
    return f"{lt} ({LINKTYPE_NAMES[lt]})" if lt in LINKTYPE_NAMES else str(lt)


def parse_hop_arg(text: str) -> tuple[str, str]:
    """``NODE/IFACE=FILE`` -> ("NODE/IFACE", FILE); a malformed argument is a UsageError."""
    from tracer.errors import UsageError

    label, sep, path = text.partition("=")
    node, slash, iface = label.partition("/")
    if not sep or not path or not slash or not node or not iface:
        raise UsageError(f"--hop {text!r}: expected NODE/IFACE=FILE")
    return label, path


@dataclass(slots=True)
class _Chunk:
    """Records of one file read from one buffer: the raw material of one batch."""

    buf: bytes
    offs: list[int] = field(default_factory=list)
    lens: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    iface: list[int] = field(default_factory=list)  # interface id within the file
    wire: list[int] = field(default_factory=list)
    flags_dir: list[int] = field(default_factory=list)  # Dir from EPB flags, 0 = not said
    meta: list[tuple[int, bytes]] = field(default_factory=list)  # (row, JSON comment)


@dataclass(slots=True)
class _Iface:
    linktype: int
    name: str = ""
    description: str = ""
    tsresol_num: int = 1000  # ts * num // den = ns
    tsresol_den: int = 1
    tsoffset_ns: int = 0


class _FileReader:
    """One capture file, yielding ``_Chunk``s; raises CaptureFileError after the last good one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ifaces: list[_Iface] = []
        self.packets = 0
        self.skipped_linktypes: set[int] = set()
        self._f: BinaryIO | None = None
        self._data = b""
        self._pos = 0
        self._eof = False
        self.bytes_read = 0  # for FileSource.progress()

    def error(self, problem: str) -> CaptureFileError:
        return CaptureFileError(f"{self.path}: {problem}")

    # -- buffering ---------------------------------------------------------
    def _ensure(self, need: int) -> bool:
        """Make ``need`` bytes available at ``_pos``; False at EOF (short)."""
        while len(self._data) - self._pos < need:
            if self._eof or self._f is None:
                return False
            try:
                more = self._f.read(max(CHUNK_BYTES, need))
            except OSError as exc:
                raise self.error(f"read error after {self.packets} packets: {exc.strerror or exc}") from exc
            if not more:
                self._eof = True
                return False
            self.bytes_read += len(more)
            self._data = self._data[self._pos :] + more
            self._pos = 0
        return True

    # -- entry -------------------------------------------------------------
    def chunks(self) -> Iterator[_Chunk]:
        p = Path(self.path)
        if p.is_dir():
            raise self.error("is a directory, not a capture file")
        try:
            self._f = open(p, "rb")  # noqa: SIM115 - closed in finally, read lazily
        except OSError as exc:
            raise self.error(exc.strerror or str(exc)) from exc
        try:
            if not self._ensure(4):
                raise self.error("empty file" if not self._data else "truncated file header")
            magic_be = int.from_bytes(self._data[:4], "big")
            magic_le = int.from_bytes(self._data[:4], "little")
            if magic_le == PCAPNG_SHB:
                yield from self._pcapng()
            elif PCAP_MAGIC_US in (magic_be, magic_le) or PCAP_MAGIC_NS in (magic_be, magic_le):
                yield from self._pcap()
            else:
                raise self.error(f"not a pcap or pcapng file (magic 0x{magic_be:08x})")
            if self.packets == 0:
                if self.skipped_linktypes:
                    lts = ", ".join(linktype_name(x) for x in sorted(self.skipped_linktypes))
                    raise self.error(f"unsupported link type {lts}")
                raise self.error("no packets")
        finally:
            self._f.close()

    # -- pcap --------------------------------------------------------------
    def _pcap(self) -> Iterator[_Chunk]:
        if not self._ensure(24):
            raise self.error("truncated pcap file header")
        d = self._data
        end = ">" if int.from_bytes(d[:4], "big") in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else "<"
        magic, _vmaj, _vmin, _zone, _sig, _snap, ltw = Struct(end + "IHHiIII").unpack_from(d, 0)
        ns = magic == PCAP_MAGIC_NS
        lt = ltw & 0x03FFFFFF  # upper bits: FCS length, as libpcap's LT_LINKTYPE() masks
        if lt not in SUPPORTED_LINKTYPES:
            raise self.error(f"unsupported link type {linktype_name(lt)}")
        self.ifaces.append(_Iface(linktype=lt, tsresol_num=1 if ns else 1000))
        self._pos = 24
        capl = Struct(end + "I").unpack_from
        mult = 1 if ns else 1000
        chunk = _Chunk(self._data)
        # Only the record lengths are chased here, one unpack per record; the headers are
        # parsed in bulk by _bulk_pcap.
        pend: list[int] = []
        while True:
            if len(self._data) - self._pos < 16:
                yield from self._pcap_drain(chunk, pend, end, mult)
                if not self._ensure(16):
                    if len(self._data) > self._pos:
                        raise self.error(f"truncated record header after {self.packets} packets")
                    return
                chunk = _Chunk(self._data)
            pos = self._pos
            (caplen,) = capl(self._data, pos + 8)
            if caplen > MAX_RECORD:
                yield from self._pcap_drain(chunk, pend, end, mult)
                raise self.error(f"bad record length {caplen} after {self.packets} packets")
            if len(self._data) - pos < 16 + caplen:
                yield from self._pcap_drain(chunk, pend, end, mult)
                if not self._ensure(16 + caplen):
                    raise self.error(f"truncated packet after {self.packets} packets")
                chunk = _Chunk(self._data)
                pos = self._pos
            pend.append(pos)
            self._pos = pos + 16 + caplen
            if len(pend) >= BATCH_ROWS:
                yield from self._pcap_drain(chunk, pend, end, mult)
                chunk = _Chunk(self._data)

    def _pcap_drain(self, chunk: _Chunk, pend: list[int], endian: str, mult: int) -> Iterator[_Chunk]:
        """Parse the pending pcap record headers at once and hand the chunk out."""
        if pend:
            b8 = np.frombuffer(chunk.buf, dtype=np.uint8)
            pos = np.array(pend, dtype=np.int64)
            pend.clear()

            def u32(at: int) -> np.ndarray[Any, Any]:
                parts = [b8[pos + at + i].astype(np.uint64) for i in range(4)]
                if endian == ">":
                    parts.reverse()
                return parts[0] | (parts[1] << np.uint64(8)) | (parts[2] << np.uint64(16)) | (parts[3] << np.uint64(24))

            # sec * 1e9 + frac * 1000 < 2^63 for any 32-bit sec/frac: no overflow.
            ts = u32(0) * np.uint64(1_000_000_000) + u32(4) * np.uint64(mult)
            n = len(pos)
            chunk.offs.extend((pos + 16).tolist())
            chunk.lens.extend(u32(8).tolist())
            chunk.ts.extend(ts.tolist())
            chunk.iface.extend([0] * n)
            chunk.wire.extend(u32(12).tolist())
            chunk.flags_dir.extend([0] * n)
            self.packets += n
        if chunk.offs:
            yield chunk

    # -- pcapng ------------------------------------------------------------
    def _pcapng(self) -> Iterator[_Chunk]:
        endian = "<"
        hdr = Struct("<II").unpack_from
        chunk = _Chunk(self._data)
        # Enhanced Packet Blocks are only located here (one unpack per block) and parsed in
        # bulk with numpy by _bulk_epbs: per-packet Python was most of the replay time.
        pend: list[int] = []
        while True:
            if len(self._data) - self._pos < 12:
                yield from self._drain(chunk, pend, endian)
                if not self._ensure(12):
                    if len(self._data) > self._pos:
                        raise self.error(f"truncated block after {self.packets} packets")
                    return
                chunk = _Chunk(self._data)
            pos = self._pos
            d = self._data
            btype, blen = hdr(d, pos)
            if btype == 6 and 32 <= blen <= len(d) - pos and not blen % 4:
                # A tight loop over the run of whole EPBs in this buffer, on locals only.
                dlen = len(d)
                limit = BATCH_ROWS - len(chunk.offs)
                append = pend.append
                while True:
                    append(pos)
                    pos += blen
                    if len(pend) >= limit or pos + 12 > dlen:
                        break
                    btype, blen = hdr(d, pos)
                    if btype != 6 or blen < 32 or blen > dlen - pos or blen % 4:
                        break
                self._pos = pos
                if len(pend) + len(chunk.offs) >= BATCH_ROWS:
                    yield from self._drain(chunk, pend, endian)
                    chunk = _Chunk(self._data)
                continue
            if pend:
                yield from self._settle(chunk, pend, endian)
            if btype == PCAPNG_SHB or int.from_bytes(d[pos : pos + 4], "little") == PCAPNG_SHB:
                bom = d[pos + 8 : pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    yield from self._drain(chunk, pend, endian)
                    raise self.error("bad pcapng byte-order magic")
                hdr = Struct(endian + "II").unpack_from
                btype, blen = hdr(d, pos)
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                yield from self._drain(chunk, pend, endian)
                raise self.error(f"bad block length {blen} after {self.packets} packets")
            if len(self._data) - pos < blen:
                yield from self._drain(chunk, pend, endian)
                if not self._ensure(blen):
                    raise self.error(f"truncated block after {self.packets} packets")
                chunk = _Chunk(self._data)
                pos = self._pos
                d = self._data
                if btype == 6:  # now whole: the bulk path takes it
                    continue
            if btype == 6:  # an EPB too short for its fixed fields
                yield from self._drain(chunk, pend, endian)
                raise self.error(f"bad packet block after {self.packets} packets")
            if btype == 1:  # Interface Description Block
                self._idb(d, pos, blen, endian)
            elif btype == PCAPNG_SHB:
                self._section_base = len(self.ifaces)  # a new section numbers its interfaces anew
            elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                if blen >= 16:
                    (wirelen,) = Struct(endian + "I").unpack_from(d, pos + 8)
                    caplen = min(wirelen, blen - 16)
                    self._packet(chunk, d, pos + 12, caplen, wirelen, 0, 0, 0, 0, endian)
            elif btype == 2 and blen >= 32:  # obsolete Packet Block
                ifid, _drops, tsh, tsl, caplen, wirelen = Struct(endian + "HHIIII").unpack_from(d, pos + 8)
                body_end = pos + blen - 4
                if pos + 28 + caplen <= body_end:
                    self._packet(chunk, d, pos + 28, caplen, wirelen, ifid, (tsh << 32) | tsl,
                                 pos + 28 + ((caplen + 3) & ~3), body_end, endian)  # fmt: skip
            self._pos = pos + blen
            if self._error is not None:
                yield from self._drain(chunk, pend, endian)
            if len(chunk.offs) >= BATCH_ROWS:
                yield chunk
                chunk = _Chunk(self._data)

    def _settle(self, chunk: _Chunk, pend: list[int], endian: str) -> Iterator[_Chunk]:
        """Parse pending EPBs into the chunk; on a damaged one, yield what was good and raise."""
        if pend:
            self._bulk_epbs(chunk, pend, endian)
            pend.clear()
        if self._error is not None:
            err, self._error = self._error, None
            if chunk.offs:
                yield chunk
            raise err

    def _drain(self, chunk: _Chunk, pend: list[int], endian: str) -> Iterator[_Chunk]:
        """_settle, then hand the chunk out (before its buffer is replaced)."""
        yield from self._settle(chunk, pend, endian)
        if chunk.offs:
            yield chunk

    def _bulk_epbs(self, chunk: _Chunk, pend: list[int], endian: str) -> None:
        """Enhanced Packet Blocks at ``pend`` (offsets into chunk.buf), parsed with numpy gathers."""
        buf = chunk.buf
        # Blocks are 4-byte aligned from the start of the buffer (it always starts at a block).
        words = np.frombuffer(buf, dtype=endian + "u4", count=len(buf) // 4)
        b8 = np.frombuffer(buf, dtype=np.uint8)
        pos = np.array(pend, dtype=np.int64)
        w = pos // 4
        blen = words[w + 1].astype(np.int64)
        ifid = words[w + 2].astype(np.int64)
        ts = (words[w + 3].astype(np.uint64) << np.uint64(32)) | words[w + 4].astype(np.uint64)
        caplen = words[w + 5].astype(np.int64)
        wire = words[w + 6].astype(np.int64)
        nif = len(self.ifaces) - self._section_base
        bad_len = pos + 28 + caplen > pos + blen - 4
        bad_if = ifid >= nif
        bad = bad_len | bad_if
        if bad.any():
            k = int(np.argmax(bad))
            if bad_len[k]:
                self._error = self.error(f"bad packet length {int(caplen[k])} after {self.packets + k} packets")
            else:
                self._error = self.error(
                    f"packet on undeclared interface {int(ifid[k])} after {self.packets + k} packets")
            pos, blen, ifid, ts, caplen, wire = pos[:k], blen[:k], ifid[:k], ts[:k], caplen[:k], wire[:k]
            if not k:
                return
        ifid = ifid + self._section_base
        # Only the interfaces present here: a table over every interface ever declared
        # made a file of many sections quadratic.
        uniq, inv = np.unique(ifid, return_inverse=True)
        lts = np.array([self.ifaces[i].linktype for i in uniq.tolist()], dtype=np.int64)[inv]
        ok = np.isin(lts, list(SUPPORTED_LINKTYPES))
        if not ok.all():
            self.skipped_linktypes.update(np.unique(lts[~ok]).tolist())
            pos, blen, ifid, ts, caplen, wire = pos[ok], blen[ok], ifid[ok], ts[ok], caplen[ok], wire[ok]
        n = len(pos)
        if not n:
            return
        ts_ns = np.empty(n, dtype=np.uint64)
        for i in np.unique(ifid).tolist():
            sel = ifid == i
            iface = self.ifaces[i]
            t = ts[sel]
            num, den, off = iface.tsresol_num, iface.tsresol_den, iface.tsoffset_ns
            if den == 1 and off == 0 and int(t.max()) <= _U64_MAX // num:
                ts_ns[sel] = t * np.uint64(num)
            else:  # sub-ns or 2^-k resolutions, offsets, garbage: exact Python integers
                ts_ns[sel] = [max(0, min(x * num // den + off, _U64_MAX)) for x in t.tolist()]
        # Options: walk a few in lock-step for every block (flags = 2, comment = 1).
        fdir = np.zeros(n, dtype=np.uint8)
        cstart = np.zeros(n, dtype=np.int64)
        clen = np.zeros(n, dtype=np.int64)
        p = pos + 28 + ((caplen + 3) & ~3)
        oend = pos + blen - 4
        rows = np.flatnonzero(p + 4 <= oend)
        hi, lo = (0, 1) if endian == ">" else (1, 0)
        for _ in range(8):
            if not len(rows):
                break
            q = p[rows]
            code = (b8[q + hi].astype(np.int64) << 8) | b8[q + lo]
            ln = (b8[q + 2 + hi].astype(np.int64) << 8) | b8[q + 2 + lo]
            good = (code != 0) & (q + 4 + ln <= oend[rows])
            flag = good & (code == 2) & (ln >= 4)
            fbyte = b8[np.where(flag, q + (7 if endian == ">" else 4), 0)] & 3
            fdir[rows[flag]] = np.where(fbyte[flag] == 1, Dir.RX, np.where(fbyte[flag] == 2, Dir.TX, 0))
            com = good & (code == 1) & (ln > 0)
            com &= b8[np.where(com, q + 4, 0)] == ord("{")
            first = com & (clen[rows] == 0)
            cstart[rows[first]] = q[first] + 4
            clen[rows[first]] = ln[first]
            p[rows] = q + 4 + ((ln + 3) & ~3)
            rows = rows[good & (p[rows] + 4 <= oend[rows])]
        base = len(chunk.offs)
        chunk.offs.extend((pos + 28).tolist())
        chunk.lens.extend(caplen.tolist())
        chunk.ts.extend(ts_ns.tolist())
        chunk.iface.extend(ifid.tolist())
        chunk.wire.extend(wire.tolist())
        chunk.flags_dir.extend(fdir.tolist())
        for j, s, ln in zip(np.flatnonzero(clen).tolist(), cstart[clen > 0].tolist(), clen[clen > 0].tolist(),
                            strict=True):  # fmt: skip
            chunk.meta.append((base + j, buf[s : s + ln]))
        self.packets += n

    _error: CaptureFileError | None = None
    _section_base = 0

    def _idb(self, d: bytes, pos: int, blen: int, endian: str) -> None:
        if blen < 20:
            self._error = self.error("bad interface description block")
            return
        lt, _res, _snap = Struct(endian + "HHI").unpack_from(d, pos + 8)
        iface = _Iface(linktype=lt)
        for code, val in _options(d, pos + 16, pos + blen - 4, endian):
            if code == 2:
                iface.name = val.decode("utf-8", "replace").rstrip("\0")
            elif code == 3:
                iface.description = val.decode("utf-8", "replace").rstrip("\0")
            elif code == 9 and val:
                r = val[0]
                if r & 0x80:
                    iface.tsresol_num, iface.tsresol_den = 1_000_000_000, 1 << (r & 0x7F)
                elif r <= 9:
                    iface.tsresol_num, iface.tsresol_den = 10 ** (9 - r), 1
                else:
                    iface.tsresol_num, iface.tsresol_den = 1, 10 ** (r - 9)
            elif code == 14 and len(val) >= 8:
                (off,) = Struct(endian + "q").unpack_from(val)
                iface.tsoffset_ns = off * 1_000_000_000
        self.ifaces.append(iface)

    def _packet(self, chunk: _Chunk, d: bytes, off: int, caplen: int, wirelen: int, ifid: int,
                ts: int, opt_start: int, opt_end: int, endian: str) -> None:  # fmt: skip
        if ifid >= len(self.ifaces) - self._section_base:
            self._error = self.error(f"packet on undeclared interface {ifid} after {self.packets} packets")
            return
        ifid += self._section_base
        iface = self.ifaces[ifid]
        if iface.linktype not in SUPPORTED_LINKTYPES:
            self.skipped_linktypes.add(iface.linktype)
            return
        fdir = 0
        p = opt_start
        if opt_end - p >= 4:
            # Options inline (not via _options): this runs once per packet.
            opthdr = _OPTHDR_BE if endian == ">" else _OPTHDR_LE
            while p + 4 <= opt_end:
                code, ln = opthdr(d, p)
                if code == 0 or p + 4 + ln > opt_end:
                    break
                if code == 2 and ln >= 4:
                    bits = d[p + 4 + (3 if endian == ">" else 0)] & 3
                    fdir = Dir.RX if bits == 1 else Dir.TX if bits == 2 else 0
                elif code == 1 and d[p + 4 : p + 5] == b"{":
                    # hoptrace's metadata; decoded in bulk per batch (json.loads per packet
                    # was a third of the replay time).
                    chunk.meta.append((len(chunk.offs), d[p + 4 : p + 4 + ln]))
                p += 4 + ((ln + 3) & ~3)
        chunk.offs.append(off)
        chunk.lens.append(caplen)
        # Clamped: a garbage timestamp must not overflow the u64 column.
        chunk.ts.append(max(0, min(ts * iface.tsresol_num // iface.tsresol_den + iface.tsoffset_ns, _U64_MAX)))
        chunk.iface.append(ifid)
        chunk.wire.append(wirelen)
        chunk.flags_dir.append(fdir)
        self.packets += 1


def _options(d: bytes, p: int, end: int, endian: str) -> Iterator[tuple[int, bytes]]:
    """pcapng options (code, value) between p and end; stops quietly at garbage."""
    big = endian == ">"
    while p + 4 <= end:
        if big:
            code, ln = (d[p] << 8) | d[p + 1], (d[p + 2] << 8) | d[p + 3]
        else:
            code, ln = d[p] | (d[p + 1] << 8), d[p + 2] | (d[p + 3] << 8)
        if code == 0 or p + 4 + ln > end:
            return
        yield code, d[p + 4 : p + 4 + ln]
        p += 4 + ((ln + 3) & ~3)


def _decimal(v: str) -> int | None:
    """int(v) of a decimal string; None for anything else. (``v.isdigit()`` and ``int(v)``
    raised ValueError on digits int() does not take, "²", and on more than 4300 digits.)"""
    if not v.isdecimal():
        return None
    try:
        return int(v)
    except ValueError:  # beyond int()'s digit limit
        return None


def _positive_u64(value: Any) -> int:
    return value if isinstance(value, int) and 0 < value <= _U64_MAX else 0


def _parse_skb(value: Any) -> int:
    if isinstance(value, int):
        return value & 0xFFFFFFFFFFFFFFFF
    if isinstance(value, str):
        try:
            return int(value, 0) & 0xFFFFFFFFFFFFFFFF
        except ValueError:
            return 0
    return 0


class FileSource:
    """A Source (kind "file") over pcap/pcapng files; see the module doc."""

    kind = "file"

    def __init__(self, files: Sequence[str], hops: Sequence[tuple[str, str]] = ()) -> None:
        self._inputs: list[tuple[str, tuple[str, str] | None]] = [(f, None) for f in files]
        for label, path in hops:
            node, _, iface = label.partition("/")
            self._inputs.append((path, (node, iface or "if0")))
        self.hops: list[HopLabel] = []
        self._hop_index: dict[tuple[int, int, int], int] = {}
        self._node_netns: dict[str, int] = {}
        self._drop_ids: dict[str, int] = {}
        self.drop_reasons: dict[int, str] = {}
        self._stopped = False
        self.packets = 0
        self._readers: list[_FileReader] = []
        self._sizes: int | None = None

    # -- Source protocol ----------------------------------------------------
    def start(self) -> None:
        if not self._inputs:
            from tracer.errors import UsageError

            raise UsageError("no capture file given", "hoptrace replay FILE... [--hop NODE/IFACE=FILE]")

    def stop(self) -> None:
        self._stopped = True

    @property
    def lost_events(self) -> int:
        return 0

    def progress(self) -> tuple[int, int]:
        """(bytes read so far, bytes in all the inputs), for a progress line; the total counts
        regular files only (a pipe's size is not known), taken once at the first call."""
        if self._sizes is None:
            total = 0
            for path, _label in self._inputs:
                with contextlib.suppress(OSError):
                    total += Path(path).stat().st_size if Path(path).is_file() else 0
            self._sizes = total
        return sum(r.bytes_read for r in self._readers), self._sizes

    def batches(self) -> Iterator[ObsBatch]:
        streams = [self._file_batches(i, path, label) for i, (path, label) in enumerate(self._inputs)]
        if len(streams) == 1:
            for b in streams[0]:
                if self._stopped:
                    return
                yield b
            return
        yield from self._merge(streams)

    # -- per file --------------------------------------------------------------
    def _file_batches(self, fidx: int, path: str, label: tuple[str, str] | None) -> Iterator[ObsBatch]:
        reader = _FileReader(path)
        self._readers.append(reader)
        dtype = obs_dtype()
        stem = Path(path).stem or "capture"
        for ch in reader.chunks():
            n = len(ch.offs)
            rows = np.zeros(n, dtype=dtype)
            ifaces = reader.ifaces
            if len({*ch.iface}) == 1:
                lts: int | list[int] = ifaces[ch.iface[0]].linktype
            else:
                lts = [ifaces[i].linktype for i in ch.iface]
            decode_into(rows, ch.buf, ch.offs, ch.lens, lts)
            rows["ts_ns"] = ch.ts
            rows["frame_off"] = ch.offs
            rows["frame_len"] = ch.lens
            rows["wire_len"] = ch.wire
            rows["dir"] = ch.flags_dir
            rows["source"] = Src.FILE
            # Hop per (interface, SLL2 ifindex); SLL/SLL2 packet type gives the direction.
            ifids = np.array(ch.iface, dtype=np.uint32)
            hop = np.empty(n, dtype=np.uint32)
            for ifid in np.unique(ifids).tolist():
                iface = ifaces[ifid]
                lt = iface.linktype
                sel = np.flatnonzero(ifids == ifid)
                if lt != LINKTYPE_LINUX_SLL and lt != LINKTYPE_LINUX_SLL2:
                    hop[sel] = self._hop(fidx, ifid, 0, iface, label, stem)
                    continue
                dirs = rows["dir"]
                buf = ch.buf
                for i in sel.tolist():
                    o = ch.offs[i]
                    ifindex, pkttype = link_meta(buf, o, o + ch.lens[i], lt)
                    if ifindex > _IFINDEX_MAX:  # a garbage index: the kernel's are positive int32
                        ifindex = 0
                    if pkttype >= 0 and not dirs[i]:
                        dirs[i] = Dir.TX if pkttype == 4 else Dir.RX
                    hop[i] = self._hop(fidx, ifid, ifindex, iface, label, stem)
            rows["hop"] = hop
            rows["netns"] = np.array([h.netns for h in self.hops], dtype=np.uint64)[hop]
            rows["ifindex"] = np.array([h.ifindex for h in self.hops], dtype=np.int32)[hop]
            if ch.meta:
                self._apply_meta(rows, ch.meta)
            self.packets += n
            yield ObsBatch(rows=rows, hops=self.hops, frames=ch.buf, drop_reasons=self.drop_reasons)

    def _hop(self, fidx: int, ifid: int, ifindex: int, iface: _Iface,
             label: tuple[str, str] | None, stem: str) -> int:  # fmt: skip
        key = (fidx, ifid, ifindex)
        h = self._hop_index.get(key)
        if h is not None:
            return h
        name = iface.name
        if "/" in name:
            node, _, ifname = name.partition("/")
        elif label is not None:
            node = label[0]
            ifname = label[1] if ifid == 0 else (name or f"if{ifid}")
        else:
            node, ifname = stem, name or f"if{ifid}"
        if ifindex:
            ifname = f"if{ifindex}" if ifname in ("any", "") or ifname.startswith("if") else f"{ifname}:if{ifindex}"
        netns = 0
        declared = False  # netns=0 is real: a drop the kernel saw on no device
        for part in iface.description.replace(",", " ").split():
            k, _, v = part.partition("=")
            n = _decimal(v)
            if k == "netns" and n is not None and n <= _U64_MAX:
                netns, declared = n, True
            elif k == "ifindex" and n is not None and not ifindex and n <= _IFINDEX_MAX:
                ifindex = n
        if not netns and not declared:
            netns = self._node_netns.setdefault(node, len(self._node_netns) + 1)
        self.hops.append(HopLabel(node=node, iface=ifname, netns=netns, ifindex=ifindex, linktype=iface.linktype))
        self._hop_index[key] = len(self.hops) - 1
        return len(self.hops) - 1

    def _apply_meta(self, rows: np.ndarray[Any, Any], metas: list[tuple[int, bytes]]) -> None:
        """hoptrace's JSON comments override direction, skb, ts_ns, drop reason, netns."""
        if self._apply_meta_fast(rows, metas):
            return
        try:
            objs = json.loads(b"[" + b",".join(raw for _, raw in metas) + b"]")
            if len(objs) != len(metas):
                raise ValueError("comment count")
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON in a comment
            # Some comment is not one JSON object: decode one by one, skipping the bad ones.
            objs = []
            for _, raw in metas:
                try:
                    objs.append(json.loads(raw))
                except (ValueError, RecursionError):
                    objs.append(None)
        keep = [(i, o) for (i, _), o in zip(metas, objs, strict=True) if isinstance(o, dict) and "v" in o]
        if not keep:
            return
        idx = np.array([i for i, _ in keep], dtype=np.int64)
        objs = [o for _, o in keep]
        dirs = np.array([_DIRS.get(d, 0) if isinstance(d := o.get("dir"), str) else 0 for o in objs], dtype=np.uint8)
        sel = dirs != 0
        rows["dir"][idx[sel]] = dirs[sel]
        skbs = np.array([_parse_skb(o.get("skb")) for o in objs], dtype=np.uint64)
        sel = skbs != 0
        rows["skb"][idx[sel]] = skbs[sel]
        for col, key in (("ts_ns", "ts_ns"), ("netns", "netns")):
            vals = np.array([_positive_u64(o.get(key)) for o in objs], dtype=np.uint64)
            sel = vals != 0
            rows[col][idx[sel]] = vals[sel]
        for i, o in keep:
            reason = o.get("drop_reason")
            if reason is None:
                continue
            if isinstance(reason, str) and reason:
                rid = self._drop_ids.get(reason)
                if rid is None:
                    rid = len(self._drop_ids) + 1
                    self._drop_ids[reason] = rid
                    self.drop_reasons[rid] = reason
                rows["drop_reason"][i] = rid
            elif isinstance(reason, int) and 0 < reason < 1 << 32:
                rows["drop_reason"][i] = reason

    def _apply_meta_fast(self, rows: np.ndarray[Any, Any], metas: list[tuple[int, bytes]]) -> bool:
        """The recorder's exact comment layout, matched by one regex over the whole batch.

        json.loads of every comment was half of the reader's time. False (nothing
        done) when any comment is laid out otherwise; then JSON decides.
        """
        found = _META_RE.findall(b"\n".join(raw for _, raw in metas))
        if len(found) != len(metas):
            return False
        idx = np.array([i for i, _ in metas], dtype=np.int64)
        c_dir, c_skb, c_netns, c_reason, c_ts = zip(*found, strict=True)
        get = _DIRS_B.get
        dirs = np.array([get(x, 0) for x in c_dir], dtype=np.uint8)
        sel = dirs != 0
        rows["dir"][idx[sel]] = dirs[sel]
        skbs = np.array([int(x, 16) if x else 0 for x in c_skb], dtype=np.uint64)
        sel = skbs != 0
        rows["skb"][idx[sel]] = skbs[sel]
        for col, digits in (("netns", c_netns), ("ts_ns", c_ts)):
            vals = np.array(digits, dtype="S20").astype(np.uint64)
            sel = vals != 0
            rows[col][idx[sel]] = vals[sel]
        for j, r in enumerate(c_reason):
            if r:
                reason = r.decode("utf-8", "replace")
                rid = self._drop_ids.get(reason)
                if rid is None:
                    rid = len(self._drop_ids) + 1
                    self._drop_ids[reason] = rid
                    self.drop_reasons[rid] = reason
                rows["drop_reason"][metas[j][0]] = rid
        return True

    # -- merge -------------------------------------------------------------------
    def _merge(self, streams: list[Iterator[ObsBatch]]) -> Iterator[ObsBatch]:
        """k-way merge by ts_ns, in bulk: emit what every stream has passed (a watermark)."""
        errors: list[CaptureFileError] = []
        pending: list[ObsBatch | None] = [None] * len(streams)
        live = list(range(len(streams)))

        def refill(k: int) -> None:
            try:
                pending[k] = next(streams[k])
            except StopIteration:
                pending[k] = None
                live.remove(k)
            except CaptureFileError as exc:
                errors.append(exc)
                pending[k] = None
                live.remove(k)

        for k in range(len(streams)):
            refill(k)
        while live and not self._stopped:
            # Streams are in time order each; rows up to the smallest "last ts" are final.
            mark = min(int(pending[k].rows["ts_ns"].max()) for k in live)  # type: ignore[union-attr]
            parts: list[tuple[np.ndarray[Any, Any], bytes | bytearray | memoryview]] = []
            for k in list(live):
                b = pending[k]
                assert b is not None
                take = b.rows["ts_ns"] <= mark
                if take.all():
                    parts.append((b.rows, b.frames))
                    refill(k)
                elif take.any():
                    parts.append((b.rows[take], b.frames))
                    pending[k] = ObsBatch(rows=b.rows[~take], hops=b.hops, frames=b.frames,
                                          drop_reasons=b.drop_reasons)  # fmt: skip
            if parts:
                yield self._combine(parts)
        if errors:
            raise errors[0]

    def _combine(self, parts: list[tuple[np.ndarray[Any, Any], bytes | bytearray | memoryview]]) -> ObsBatch:
        rows = np.concatenate([r for r, _ in parts])
        order = np.argsort(rows["ts_ns"], kind="stable")
        rows = rows[order]
        # Frames of different files live in different buffers: copy the few bytes of each
        # row's frame into one buffer (frames are snaplen-sized, a batch is a few thousand).
        out = bytearray()
        offs = np.empty(len(rows), dtype=np.uint64)
        frames_of: list[bytes | bytearray | memoryview] = []
        for r, f in parts:
            frames_of.extend([f] * len(r))
        for j, idx in enumerate(order.tolist()):
            f = frames_of[idx]
            o = int(rows["frame_off"][j])
            ln = int(rows["frame_len"][j])
            offs[j] = len(out)
            out += f[o : o + ln]
        rows["frame_off"] = offs
        return ObsBatch(rows=rows, hops=self.hops, frames=bytes(out), drop_reasons=self.drop_reasons)


def open_files(files: Sequence[str], hop_args: Sequence[str]) -> FileSource:
    """A FileSource from CLI arguments (``FILE...`` and ``--hop NODE/IFACE=FILE``)."""
    hops = [parse_hop_arg(h) for h in hop_args]
    return FileSource(files, hops)

