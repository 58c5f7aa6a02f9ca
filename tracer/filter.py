"""``--filter EXPR``: a pcap-filter expression (tcpdump syntax) matched at any hop.

libpcap itself compiles the expression (``pcap_open_dead`` per link type +
``pcap_compile``) and runs it (``pcap_offline_filter``), through ctypes on the
libpcap that tcpdump installs: the very syntax and semantics users know from
tcpdump, without a capture handle. A path is kept when the frame of any of
its hops matches, so ``host 198.51.100.8`` keeps the container's packet both
before and after MASQUERADE rewrote its source.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import struct
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracer.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    decode_one,
)
from tracer.errors import FilterError

if TYPE_CHECKING:
    import numpy as np
from tracer.model import ObsBatch, Observation, PacketPath

SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
# Link types a sighting's frame is tried as, when only the frame is known (see _linktype_of).
_CANDIDATES = (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, LINKTYPE_LINUX_SLL, LINKTYPE_RAW)


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _PktHdr(ctypes.Structure):
    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


_LIB: Any = None
# Older libpcaps compile through a global parser; one compile at a time.
_LOCK = threading.Lock()


def _lib() -> Any:
    global _LIB
    if _LIB is None:
        name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise FilterError(f"--filter needs libpcap ({name}): {exc}", "apt-get install libpcap0.8") from exc
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                     ctypes.c_int, ctypes.c_uint32]  # fmt: skip
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_offline_filter.restype = ctypes.c_int
        lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram), ctypes.POINTER(_PktHdr),
                                            ctypes.c_char_p]  # fmt: skip
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _LIB = lib
    return _LIB


# pcap_open_dead takes a DLT_*, not a LINKTYPE_*: they differ for raw IP (LINKTYPE_RAW 101 is
# DLT_RAW 12 on Linux; 14 is OpenBSD's DLT_RAW).
_LINKTYPE_TO_DLT = {LINKTYPE_RAW: 12, 14: 12}


def _compile(expr: str, linktype: int) -> _BpfProgram:
    if "\0" in expr:
        # libpcap reads a C string: it would silently compile only the part before the NUL.
        raise FilterError(f"bad --filter {expr[:200]!r}: contains a NUL byte")
    lib = _lib()
    with _LOCK:
        handle = lib.pcap_open_dead(_LINKTYPE_TO_DLT.get(linktype, linktype), SNAPLEN)
        if not handle:
            raise FilterError(f"libpcap cannot open a handle for link type {linktype}")
        try:
            prog = _BpfProgram()
            if lib.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
                msg = (lib.pcap_geterr(handle) or b"syntax error").decode("utf-8", "replace")
                raise FilterError(f"bad --filter {expr[:200]!r}: {msg}")
            return prog
        finally:
            lib.pcap_close(handle)


# What a filter may say for its answer to depend only on where a packet is and its addresses,
# ports and protocols (what a path's shape fixes, see tracer.correlate): no lengths, flags,
# payload bytes (``proto[...]``), MAC addresses, VLANs or anything else per packet.
_SHAPE_WORDS = frozenset({
    "and", "or", "not", "&&", "||", "!", "host", "net", "mask", "port", "portrange", "src", "dst",
    "proto", "ip", "ip6", "tcp", "udp", "icmp", "icmp6", "sctp", "arp",
})  # fmt: skip
_SHAPE_VALUE = re.compile(r"^(\d+(-\d+)?|\d+(\.\d+){1,3}(/\d+)?|[0-9a-f:]*:[0-9a-f:.]*(/\d+)?)$")


def _by_shape(expr: str) -> bool:
    """Whether ``expr`` only reads what a path's shape fixes (then one answer per shape does)."""
    toks = expr.lower().replace("(", " ").replace(")", " ").replace("!", " ! ").split()
    return all(t in _SHAPE_WORDS or _SHAPE_VALUE.match(t) for t in toks)


class PathFilter:
    """A compiled pcap-filter expression; ``keep(path)`` is True when any hop matches."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        # Paths of one shape (same hops, addresses, ports, protocols) all match or all do not.
        self.by_shape = _by_shape(expr)
        self._progs: dict[int, _BpfProgram | None] = {}
        # Compile for Ethernet now: a bad expression fails before any capture starts.
        self._progs[LINKTYPE_ETHERNET] = _compile(expr, LINKTYPE_ETHERNET)
        self._linktypes: dict[tuple[str, str], int] = {}

    def _prog(self, linktype: int) -> _BpfProgram | None:
        if linktype not in self._progs:
            try:
                self._progs[linktype] = _compile(self.expr, linktype)
            except FilterError:
                # Valid for Ethernet but meaningless here (e.g. "ether host" on raw IP):
                # frames of this link type simply never match.
                self._progs[linktype] = None
        return self._progs[linktype]

    def match(self, frame: bytes | bytearray | memoryview, linktype: int) -> bool:
        prog = self._prog(linktype)
        if prog is None:
            return False
        data = bytes(frame)
        # A header per call: the engine's thread and the TUI's may match at the same time.
        hdr = _PktHdr(0, 0, len(data), len(data))
        return bool(_lib().pcap_offline_filter(ctypes.byref(prog), ctypes.byref(hdr), data))

    def learn_linktype(self, node: str, iface: str, linktype: int) -> None:
        """Tell the filter a hop's link type (sources know it: ``HopLabel.linktype``)."""
        self._linktypes[(node, iface)] = linktype

    def keep(self, path: PacketPath) -> bool:
        return self.keep_hops(path.hops)

    def keep_row(self, batch: ObsBatch, rows: np.ndarray[Any, Any], i: int) -> bool | None:
        """``keep`` for one sighting still in its batch (``rows[i]``, rows of ``batch``), from its
        frame bytes; None when only the sighting as an ``Observation`` can tell (no frame bytes,
        or their link type not learnt yet)."""
        row = rows[i]
        flen = int(row["frame_len"])
        if not flen:
            return None
        label = batch.hops[int(row["hop"])]
        lt = self._linktypes.get((label.node, label.iface))
        if lt is None:
            return None
        off = int(row["frame_off"])
        return self.match(batch.frames[off : off + flen], lt)

    def keep_hops(self, hops: Sequence[Observation]) -> bool:
        for obs in hops:
            if obs.frame:
                lt = self._linktype_of(obs)
                if lt is not None:
                    if self.match(obs.frame, lt):
                        return True
                    continue
            synth = synth_frame(obs)
            if synth and self.match(synth, LINKTYPE_RAW):
                return True
        return False

    def _linktype_of(self, obs: Observation) -> int | None:
        """The link type of a sighting's frame: told, or the one whose decode gives this sighting."""
        key = (obs.node, obs.ifname)
        lt = self._linktypes.get(key)
        if lt is not None:
            return lt
        from tracer.addr import addr_text

        for cand in _CANDIDATES:
            f = decode_one(obs.frame, 0, len(obs.frame), cand)
            if f[0] == obs.family and f[2] == obs.ethertype and f[1] == obs.proto and (
                obs.family == 0 or addr_text(f[0], f[4]) == obs.src
            ):
                self._linktypes[key] = cand
                return cand
        return None

    def __del__(self) -> None:
        lib = _LIB
        if lib is None:
            return
        for prog in self._progs.values():
            if prog is not None:
                lib.pcap_freecode(ctypes.byref(prog))


def synth_frame(obs: Observation) -> bytes:
    """A raw IP header (+ L4 ports / ICMP type) rebuilt from a sighting's fields.

    For sightings without frame bytes: enough for host/net/proto/port/icmp
    filters, which is what people filter paths by.
    """
    from tracer.addr import addr_bytes

    if obs.family not in (4, 6) or not obs.src or not obs.dst:
        return b""
    _, src = addr_bytes(obs.src)
    _, dst = addr_bytes(obs.dst)
    if obs.proto in (6, 17, 132, 136):
        l4 = struct.pack("!HH", obs.sport or 0, obs.dport or 0)
        if obs.proto == 6:
            l4 += struct.pack("!IIBBHHH", obs.tcp_seq or 0, obs.tcp_ack or 0, 0x50, obs.tcp_flags or 0, 0, 0, 0)
        else:
            l4 += bytes(4)
    elif obs.proto in (1, 58):
        l4 = struct.pack("!BBHHH", obs.icmp_type or 0, obs.icmp_code or 0, 0, obs.icmp_id or 0, obs.icmp_seq or 0)
    else:
        l4 = b""
    if obs.family == 4:
        frag = (obs.frag_offset // 8) | (0x2000 if obs.more_fragments else 0)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), obs.ip_id or 0, frag, obs.ttl,
                          obs.proto, 0, src[:4], dst[:4])  # fmt: skip
        if obs.frag_offset:
            l4 = b""
        return hdr + l4
    hdr = struct.pack("!IHBB16s16s", (6 << 28) | (obs.flow_label or 0), len(l4), obs.proto, obs.ttl, src, dst)
    return hdr + l4
