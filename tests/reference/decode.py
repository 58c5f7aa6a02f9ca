"""The reference decoder: frame bytes -> packet fields of ``OBS_DTYPE``, in Python.

The product decodes in the core (crates/hoptrace-core/src/decode.rs: ``_core.decode_frames``,
``_core.decode_into``); this is the decoder it replaced, moved here as it was, the oracle
tests/unit/test_core_readers.py and test_core_decode_live.py hold the core to byte for
byte (and tests/reference/readers.py reads with). It was the hot path of every source,
which is why it has two ways, each tested against the other: the common frames of a batch (plain
IPv4/IPv6 with TCP, UDP or ICMP echo) are decoded at once with numpy over the
batch's shared buffer (``_vector``: one row copy of each frame's headers, read
as big-endian fields; ~10x the per-frame path); every
other frame goes through ``decode_one``, precompiled ``struct`` unpackers per
frame (no per-frame slicing, no scapy), which is also the reference the fast
path is tested against byte for byte. It never raises on garbage: whatever
cannot be decoded is left 0 (an undecodable frame gets family 0), and every
read is bounds-checked against the frame's own end, because frames of a
batch share one buffer and ``unpack_from`` would happily read into the next
frame.

Link types (pcap ``LINKTYPE_*``): 1 Ethernet (+802.1Q/802.1ad/QinQ), 113 Linux
SLL, 276 Linux SLL2, 101/12/14 raw IP, 228 raw IPv4, 229 raw IPv6.

``digest`` is NAT-invariant: a 64-bit hash of (L4 payload length, the first
<=16 bytes of the L4 payload). NAT rewrites addresses, ports, ICMP ids and
checksums but never the payload. For ICMP errors the payload is the quoted
packet, which NAT rewrites too (the embedded header is translated back), so
its addresses, ports, ICMP id and checksums are zeroed before hashing.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any

import numpy as np

from tracer.model import (
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    HAS_FLOW_LABEL,
    HAS_FRAG,
    HAS_ICMP,
    HAS_INNER,
    HAS_IP_ID,
    HAS_L4_PORTS,
    HAS_TCP,
)

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
# DLT_RAW's numeric value differs by OS (12 most places, 14 on OpenBSD); both mean raw IP.
RAW_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14})
SUPPORTED_LINKTYPES = frozenset(
    {LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_IPV4, LINKTYPE_IPV6}
    | RAW_LINKTYPES
)

VLAN_ETHERTYPES = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
MAX_VLAN_TAGS = 4
# IPv6 extension headers walked to reach the L4 header; 44 (fragment) and 51 (AH) are special-cased.
IPV6_EXT_GENERIC = frozenset({0, 43, 60, 135, 139, 140})
MAX_IPV6_EXT = 8
ICMP4_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMP4_WITH_ID = frozenset({0, 8, 13, 14, 15, 16, 17, 18})
ICMP6_ERRORS = frozenset({1, 2, 3, 4})
ICMP6_WITH_ID = frozenset({128, 129})
PORT_PROTOS = frozenset({6, 17, 132, 136})  # TCP, UDP, SCTP, UDP-Lite: ports in the first 4 bytes
# How much of a quoted packet (ICMP error) goes into the digest.
QUOTED_DIGEST_BYTES = 64

#: The fields decode fills, in OBS_DTYPE order; the rest is the caller's.
DECODED_FIELDS: tuple[str, ...] = (
    "family", "proto", "ethertype", "has", "src", "dst", "sport", "dport", "ip_id",
    "flow_label", "ttl", "tcp_flags", "icmp_type", "icmp_code", "icmp_id", "icmp_seq",
    "tcp_seq", "tcp_ack", "length", "frag", "digest",
    "inner_src", "inner_dst", "inner_proto", "inner_sport", "inner_dport",
)  # fmt: skip

_u16 = Struct("!H").unpack_from
_u32 = Struct("!I").unpack_from
_qq = Struct("<QQ").unpack_from
_ip4 = Struct("!BxHHHBB2x4s4s").unpack_from  # vihl, totlen, id, frag, ttl, proto, src, dst
_ip6 = Struct("!IHBB16s16s").unpack_from  # vtcfl, plen, nxt, hlim, src, dst
_tcp = Struct("!HHIIBB").unpack_from  # sport, dport, seq, ack, doff, flags
_ports = Struct("!HH").unpack_from
_icmp = Struct("!BB2xHH").unpack_from  # type, code, id, seq
_sll2_meta = Struct("!4xI2xB").unpack_from  # ifindex, pkttype

_M64 = 0xFFFFFFFFFFFFFFFF
_K1 = 0x9E3779B97F4A7C15
_K2 = 0xD6E8FEB86659FD93


def mix64(n: int, w0: int, w1: int) -> int:
    """The digest's mixing step; ``digest_array`` is its numpy twin (keep them equal)."""
    h = ((n * _K1) & _M64) ^ w0
    h = ((h ^ (h >> 32)) * _K2) & _M64
    h ^= w1
    h = ((h ^ (h >> 32)) * _K2) & _M64
    return h ^ (h >> 32)


def digest_bytes(n: int, data: bytes) -> int:
    """Digest of a payload of declared length ``n`` whose first bytes are ``data``."""
    if len(data) <= 16:
        w0, w1 = _qq(data.ljust(16, b"\0"))
        return mix64(n, w0, w1)
    h = n
    for i in range(0, len(data), 16):
        w0, w1 = _qq(data[i : i + 16].ljust(16, b"\0"))
        h = mix64(h, w0, w1)
    return h


def digest_array(n: np.ndarray[Any, Any], w0: np.ndarray[Any, Any], w1: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``mix64`` over uint64 arrays (numpy wraps uint64 arithmetic, as the & mask does)."""
    sh = np.uint64(32)
    h = (n.astype(np.uint64) * np.uint64(_K1)) ^ w0
    h = (h ^ (h >> sh)) * np.uint64(_K2)
    h ^= w1
    h = (h ^ (h >> sh)) * np.uint64(_K2)
    result: np.ndarray[Any, Any] = h ^ (h >> sh)
    return result


def _payload_digest(buf: Any, p: int, end: int, n: int) -> int:
    """Digest of the L4 payload that starts at ``p`` (declared length ``n``)."""
    if n < 0:
        n = 0
    take = min(n, 16, end - p)
    if take >= 16:
        w0, w1 = _qq(buf, p)
        return mix64(n, w0, w1)
    if take <= 0:
        return mix64(n, 0, 0)
    w0, w1 = _qq(bytes(buf[p : p + take]).ljust(16, b"\0"))
    return mix64(n, w0, w1)


# A decoded row: DECODED_FIELDS in order.
_EMPTY = (0, 0, 0, 0, b"", b"", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"", b"", 0, 0, 0)


def _link(buf: Any, off: int, end: int, linktype: int) -> tuple[int, int]:
    """(ethertype, L3 offset), or (0, -1) when the link header is not understood."""
    if linktype == LINKTYPE_ETHERNET:
        p = off + 12
        if p + 2 > end:
            return 0, -1
        (et,) = _u16(buf, p)
        p += 2
    elif linktype == LINKTYPE_LINUX_SLL:
        if off + 16 > end:
            return 0, -1
        (et,) = _u16(buf, off + 14)
        p = off + 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if off + 20 > end:
            return 0, -1
        (et,) = _u16(buf, off)
        p = off + 20
    elif linktype in RAW_LINKTYPES or linktype in (LINKTYPE_IPV4, LINKTYPE_IPV6):
        if off >= end:
            return 0, -1
        # By the version nibble, also for 228 (IPv4 only): tshark's IPv4 dissector hands a
        # version-6 header on to IPv6. For 229 it does not (a "Bogus IPv6 version"), and
        # tshark is the oracle this decoder is tested against.
        v = buf[off] >> 4
        if v == 4 and linktype != LINKTYPE_IPV6:
            return ETH_P_IP, off
        if v == 6:
            return ETH_P_IPV6, off
        return 0, -1
    else:
        return 0, -1
    tags = 0
    while et in VLAN_ETHERTYPES and tags < MAX_VLAN_TAGS:
        if p + 4 > end:
            return et, -1
        (et,) = _u16(buf, p + 2)
        p += 4
        tags += 1
    return et, p


def _quoted(buf: Any, p: int, end: int, qlen: int, v6: bool) -> tuple[bytes, bytes, int, int, int, int]:
    """(inner src, dst, proto, sport, dport, digest) of the packet quoted by an ICMP error at ``p``.

    ``qlen`` is the quoted part's declared length (NAT translates the quoted
    header in place, never changing sizes). An empty src means no usable
    quoted IP header (the caller then sets no HAS_INNER).
    """
    raw = bytearray(buf[p : min(end, p + QUOTED_DIGEST_BYTES)])
    isrc = idst = b""
    iproto = isport = idport = 0
    if not v6:
        if len(raw) >= 20 and raw[0] >> 4 == 4:
            ihl = (raw[0] & 0x0F) * 4
            iproto = raw[9]
            isrc, idst = bytes(raw[12:16]), bytes(raw[16:20])
            raw[10:12] = b"\0\0"
            raw[12:20] = bytes(8)
            frag_off = ((raw[6] << 8) | raw[7]) & 0x1FFF
            l4 = ihl if ihl >= 20 and frag_off == 0 else -1
        else:
            l4 = -1
    else:
        if len(raw) >= 40 and raw[0] >> 4 == 6:
            nxt = raw[6]
            isrc, idst = bytes(raw[8:24]), bytes(raw[24:40])
            raw[8:40] = bytes(32)
            l4 = 40
            hops = 0
            while nxt in IPV6_EXT_GENERIC and l4 + 2 <= len(raw) and hops < MAX_IPV6_EXT:
                nxt, l4 = raw[l4], l4 + (raw[l4 + 1] + 1) * 8
                hops += 1
            if nxt in IPV6_EXT_GENERIC or nxt == 44:
                l4 = -1
            iproto = nxt
        else:
            l4 = -1
    if isrc and l4 >= 0:
        pr = iproto
        if pr in PORT_PROTOS and l4 + 4 <= len(raw):
            isport, idport = (raw[l4] << 8) | raw[l4 + 1], (raw[l4 + 2] << 8) | raw[l4 + 3]
            raw[l4 : l4 + 4] = b"\0\0\0\0"
            ck = {6: 16, 17: 6, 136: 6}.get(pr)
            if ck is not None and l4 + ck + 2 <= len(raw):
                raw[l4 + ck : l4 + ck + 2] = b"\0\0"
        elif pr in (1, 58) and l4 + 8 <= len(raw):
            # A quoted ICMP echo: its id is what NAT rewrote; the checksum follows.
            raw[l4 + 2 : l4 + 4] = b"\0\0"
            if raw[l4] in (ICMP6_WITH_ID if pr == 58 else ICMP4_WITH_ID):
                isport = (raw[l4 + 4] << 8) | raw[l4 + 5]
                raw[l4 + 4 : l4 + 6] = b"\0\0"
    return isrc, idst, iproto, isport, idport, digest_bytes(max(qlen, 0), bytes(raw))


def decode_one(buf: Any, off: int, end: int, linktype: int) -> tuple[Any, ...]:
    """Decode the frame ``buf[off:end]`` into a tuple of DECODED_FIELDS. Never raises."""
    et, p = _link(buf, off, end, linktype)
    if p < 0:
        if et:
            return (0, 0, et, *_EMPTY[3:])
        return _EMPTY
    # A version-6 header behind the IPv4 ethertype: tshark's IPv4 dissector hands it to
    # IPv6 (and is the oracle), so decode it as the IPv6 packet it is.
    et6 = et == ETH_P_IP and p < end and buf[p] >> 4 == 6
    has = 0
    sport = dport = ip_id = flow_label = tcp_flags = icmp_type = icmp_code = 0
    icmp_id = icmp_seq = tcp_seq = tcp_ack = frag = 0
    isrc = idst = b""
    iproto = isport = idport = 0
    if et == ETH_P_IP and not et6:
        if p + 20 > end:
            return (0, 0, et, *_EMPTY[3:])
        vihl, length, ip_id, fragw, ttl, proto, src, dst = _ip4(buf, p)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or 0 < length < ihl:
            # Bogus version or lengths: not a header to trust (tshark agrees). A zero total
            # length is not bogus: it is TSO/GSO on tx (below).
            return (0, 0, et, *_EMPTY[3:])
        family = 4
        has = HAS_IP_ID
        l4 = p + ihl
        frag = (fragw & 0x1FFF) | (0x8000 if fragw & 0x2000 else 0)
        plen = (length if length else end - p) - ihl
        if frag:
            has |= HAS_FRAG
        later_fragment = fragw & 0x1FFF
    elif et == ETH_P_IPV6 or et6:
        if p + 40 > end:
            return (0, 0, et, *_EMPTY[3:])
        vtcfl, plen, proto, ttl, src, dst = _ip6(buf, p)
        if vtcfl >> 28 != 6:
            return (0, 0, et, *_EMPTY[3:])
        family = 6
        flow_label = vtcfl & 0xFFFFF
        has = HAS_FLOW_LABEL
        length = 40 + plen
        l4 = p + 40
        later_fragment = 0
        hops = 0
        while hops < MAX_IPV6_EXT:
            if proto in IPV6_EXT_GENERIC:
                if l4 + 2 > end:
                    break
                size = (buf[l4 + 1] + 1) * 8
                proto = buf[l4]
            elif proto == 44:
                if l4 + 8 > end:
                    break
                proto = buf[l4]
                (offm,) = _u16(buf, l4 + 2)
                (ip_id,) = _u32(buf, l4 + 4)
                frag = (offm >> 3) | (0x8000 if offm & 1 else 0)
                later_fragment = offm >> 3
                has |= HAS_FRAG | HAS_IP_ID
                size = 8
            elif proto == 51:
                if l4 + 2 > end:
                    break
                size = (buf[l4 + 1] + 2) * 4
                proto = buf[l4]
            else:
                break
            plen -= size
            l4 += size
            hops += 1
            if later_fragment:
                break
    elif et == ETH_P_ARP:
        # ARP: L2 only; sender/target protocol addresses stand in for src/dst.
        if p + 8 > end:
            return (0, 0, et, *_EMPTY[3:])
        hlen, plen_a = buf[p + 4], buf[p + 5]
        size = 8 + 2 * hlen + 2 * plen_a
        if p + size > end or plen_a > 16:
            return (0, 0, et, *_EMPTY[3:])
        spa = bytes(buf[p + 8 + hlen : p + 8 + hlen + plen_a])
        tpa = bytes(buf[p + 8 + 2 * hlen + plen_a : p + size])
        digest = _payload_digest(buf, p + 6, end, size)
        return (0, 0, et, 0, spa, tpa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, size, 0, digest,
                b"", b"", 0, 0, 0)  # fmt: skip
    else:
        return (0, 0, et, *_EMPTY[3:])

    if later_fragment:
        # A later fragment has no L4 header: digest its first bytes, which NAT leaves alone.
        digest = _payload_digest(buf, l4, end, plen)
    elif proto == 6:
        if l4 + 20 <= end:
            sport, dport, tcp_seq, tcp_ack, doff, tcp_flags = _tcp(buf, l4)
            hl = (doff >> 4) * 4
            has |= HAS_L4_PORTS | HAS_TCP
            digest = _payload_digest(buf, l4 + hl, end, plen - hl)
        elif l4 + 4 <= end:
            sport, dport = _ports(buf, l4)
            has |= HAS_L4_PORTS
            digest = _payload_digest(buf, l4 + 20, end, plen - 20)
        else:
            digest = _payload_digest(buf, l4, end, plen)
    elif proto == 17 or proto == 136:
        if l4 + 4 <= end:
            sport, dport = _ports(buf, l4)
            has |= HAS_L4_PORTS
        digest = _payload_digest(buf, l4 + 8, end, plen - 8)
    elif proto == 1 or proto == 58:
        if l4 + 8 <= end:
            icmp_type, icmp_code, icmp_id, icmp_seq = _icmp(buf, l4)
            has |= HAS_ICMP
            if proto == 1:
                errors, with_id = ICMP4_ERRORS, ICMP4_WITH_ID
            else:
                errors, with_id = ICMP6_ERRORS, ICMP6_WITH_ID
            if icmp_type in errors:
                icmp_id = icmp_seq = 0
                isrc, idst, iproto, isport, idport, digest = _quoted(buf, l4 + 8, end, plen - 8, family == 6)
                if isrc:
                    has |= HAS_INNER
            else:
                if icmp_type not in with_id:
                    icmp_id = icmp_seq = 0
                digest = _payload_digest(buf, l4 + 8, end, plen - 8)
        elif l4 + 2 <= end:
            icmp_type, icmp_code = buf[l4], buf[l4 + 1]
            has |= HAS_ICMP
            digest = _payload_digest(buf, l4 + 8, end, plen - 8)
        else:
            digest = _payload_digest(buf, l4, end, plen)
    elif proto == 132:
        if l4 + 4 <= end:
            sport, dport = _ports(buf, l4)
            has |= HAS_L4_PORTS
        digest = _payload_digest(buf, l4 + 12, end, plen - 12)
    else:
        digest = _payload_digest(buf, l4, end, plen)
    return (family, proto, et, has, src, dst, sport, dport, ip_id, flow_label, ttl, tcp_flags,
            icmp_type, icmp_code, icmp_id, icmp_seq, tcp_seq, tcp_ack, length & 0xFFFFFFFF, frag,
            digest, isrc, idst, iproto, isport, idport)  # fmt: skip


def link_meta(buf: Any, off: int, end: int, linktype: int) -> tuple[int, int]:
    """(ifindex, packet type) from a Linux cooked header; (0, -1) for other link types.

    SLL2 carries the interface index (``tcpdump -i any``); SLL v1 only the
    packet type (4 = PACKET_OUTGOING, i.e. tx).
    """
    if linktype == LINKTYPE_LINUX_SLL2 and off + 20 <= end:
        ifindex, pkttype = _sll2_meta(buf, off)
        return ifindex, pkttype
    if linktype == LINKTYPE_LINUX_SLL and off + 16 <= end:
        return 0, _u16(buf, off)[0]
    return 0, -1


_DTYPE_CACHE: dict[str, np.dtype[Any]] = {}


def _decoded_dtype() -> np.dtype[Any]:
    """DECODED_FIELDS with OBS_DTYPE's types, packed: the layout ``_pack`` writes."""
    dt = _DTYPE_CACHE.get("d")
    if dt is None:
        from tracer.model import obs_dtype

        full = obs_dtype()
        dt = np.dtype([(name, full.fields[name][0]) for name in DECODED_FIELDS])  # type: ignore[index]
        _DTYPE_CACHE["d"] = dt
    return dt


def _struct_code(dt: np.dtype[Any]) -> str:
    if dt.kind == "S":
        return f"{dt.itemsize}s"
    return {1: "B", 2: "H", 4: "I", 8: "Q"}[dt.itemsize]


# One struct.pack per frame into the packed decoded dtype, then one np.frombuffer per
# batch: 3x faster than np.array() over a list of tuples.
_pack = Struct("<" + "".join(_struct_code(_decoded_dtype()[n]) for n in DECODED_FIELDS)).pack


# Below this many frames the numpy set-up costs more than it saves.
VECTOR_MIN = 32
_RAW_LINKS = frozenset({*RAW_LINKTYPES, LINKTYPE_IPV4, LINKTYPE_IPV6})
# Byte-indexed tables: one gather instead of an np.isin (~15 us a call at these sizes).
_ICMP4_ERROR_LUT = np.zeros(256, dtype=bool)
_ICMP4_ERROR_LUT[sorted(ICMP4_ERRORS)] = True
_ICMP4_WITH_ID_LUT = np.zeros(256, dtype=bool)
_ICMP4_WITH_ID_LUT[sorted(ICMP4_WITH_ID)] = True
# _PREFIX16[k]: k bytes of 0xFF then zeros, to keep the first k of 16 digested bytes.
_PREFIX16 = np.tril(np.full((17, 16), 0xFF, dtype=np.uint8), -1)

# The fast path copies each frame's first _W bytes from L3 as one row (a sliding window
# over the batch buffer, indexed by the L3 offsets) instead of gathering byte by byte,
# then reads every header field as a big-endian field of that row: IPv4 without options
# (L4 at 20) and IPv6 without extension headers (L4 at 40). 64 bytes hold IPv6 + a TCP
# header; the 16 digested payload bytes come from a 16-byte window at the payload.
_W = 64
_WINDOW = np.dtype({
    "names": ["vihl", "tot", "ip_id", "fragw", "ttl", "proto4", "src4", "dst4",
              "vtcfl", "plen6", "nxt", "hlim", "src6", "dst6"]
             + [f"{f}{v}" for v in (4, 6) for f in ("sport", "dport", "seq", "ack", "doff", "flags",
                                                    "itype", "icode", "iid", "iseq")],
    "formats": ["u1", ">u2", ">u2", ">u2", "u1", "u1", "S4", "S4",
                ">u4", ">u2", "u1", "u1", "S16", "S16"]
               + [">u2", ">u2", ">u4", ">u4", "u1", "u1", "u1", "u1", ">u2", ">u2"] * 2,
    "offsets": [0, 2, 4, 6, 8, 9, 12, 16, 0, 4, 6, 7, 8, 24]
               + [b + o for b in (20, 40) for o in (0, 2, 4, 8, 12, 13, 0, 1, 4, 6)],
    "itemsize": _W,
})  # fmt: skip
# What a fast row leaves 0 (written unless the caller says its rows are zeroed already).
_FAST_ZERO = {"frag": 0, "inner_src": b"", "inner_dst": b"", "inner_proto": 0, "inner_sport": 0, "inner_dport": 0}


def decode_scalar(
    buf: Any, offsets: Sequence[int], lengths: Sequence[int], linktypes: int | Sequence[int]
) -> np.ndarray[Any, Any]:
    """The reference decoder: ``decode_one`` per frame, packed into the decoded dtype."""
    if isinstance(linktypes, int):
        lt = linktypes
        out = [_pack(*decode_one(buf, o, o + ln, lt)) for o, ln in zip(offsets, lengths, strict=True)]
    else:
        out = [
            _pack(*decode_one(buf, o, o + ln, lt))
            for o, ln, lt in zip(offsets, lengths, linktypes, strict=True)
        ]
    return np.frombuffer(b"".join(out), dtype=_decoded_dtype()).copy()


def _vector(
    buf: Any,
    offsets: Sequence[int] | np.ndarray[Any, Any],
    lengths: Sequence[int] | np.ndarray[Any, Any],
    linktypes: int | Sequence[int] | np.ndarray[Any, Any],
    out: np.ndarray[Any, Any] | None = None,
    zeroed: bool = False,
) -> np.ndarray[Any, Any]:
    """numpy for the common frames (IPv4 without options / IPv6 + TCP/UDP/ICMP echo, not
    fragmented, no VLAN tag, no IPv6 extension header, no ICMP error); every other frame goes
    through ``decode_one``. Equal to ``decode_scalar`` field for field (tested over the corpus).

    Writes DECODED_FIELDS into ``out`` (any dtype with those fields) when given, else into a
    new array of the decoded dtype, and returns it. ``zeroed``: ``out`` is all zero already.
    """
    b8 = np.frombuffer(buf, dtype=np.uint8)
    size = len(b8)
    if size < _W:
        # windows need _W bytes: pad a small buffer (a big one is read in place, and the
        # few frames whose window would run past its end take the slow path)
        b8 = np.concatenate([b8, np.zeros(_W, dtype=np.uint8)])
    last = len(b8) - 1
    off = np.asarray(offsets, dtype=np.int64)
    end = off + np.asarray(lengths, dtype=np.int64)
    n = len(off)
    if out is None:
        tgt, zeroed = np.zeros(n, dtype=_decoded_dtype()), True
    else:
        tgt = out

    # Link layer: the ethertype and where L3 starts, -1 when not understood.
    l3 = np.full(n, -1, dtype=np.int64)
    et = np.zeros(n, dtype=np.int64)
    if isinstance(linktypes, int):
        lts = None
        present = [linktypes]
    else:
        lts = np.asarray(linktypes, dtype=np.int64)
        lo, hi = int(lts.min()), int(lts.max())
        # np.unique sorts; link type values are small, so count them instead
        present = (np.flatnonzero(np.bincount(lts - lo)) + lo).tolist() if hi - lo < 4096 else np.unique(lts).tolist()
    for lt in present:
        m: Any = slice(None) if lts is None else lts == lt
        if lt in _RAW_LINKS:
            m = (off < end) if lts is None else m & (off < end)
            ver = b8[np.minimum(off[m], last)] >> 4
            e = np.where(ver == 6, ETH_P_IPV6, ETH_P_IP if lt != LINKTYPE_IPV6 else 0)
            e[(ver != 4) & (ver != 6)] = 0
            et[m] = e
            l3[m] = np.where(e != 0, off[m], -1)
            continue
        hl, eoff = {LINKTYPE_ETHERNET: (14, 12), LINKTYPE_LINUX_SLL: (16, 14), LINKTYPE_LINUX_SLL2: (20, 0)}.get(
            lt, (0, -1))
        if eoff < 0:
            continue
        m = (off + hl <= end) if lts is None else m & (off + hl <= end)
        if lts is None and m.all():  # one link type, every frame long enough: no masking
            eo = np.minimum(off + eoff, last - 1)
            et = (b8[eo].astype(np.int64) << 8) | b8[eo + 1]
            l3 = off + hl
            continue
        eo = np.minimum(off[m] + eoff, last - 1)
        et[m] = (b8[eo].astype(np.int64) << 8) | b8[eo + 1]
        l3[m] = off[m] + hl

    win = _windows(b8, _W)
    ok = (l3 >= 0) & (l3 < len(win))
    stride = _stride(off, l3, len(b8) - _W)
    if stride:
        # Frames at a fixed stride with L3 at one offset in each (the eBPF source's events):
        # the header windows are a strided view of the buffer, no copy at all.
        v = np.ndarray((n,), dtype=_WINDOW, buffer=b8, offset=int(l3[0]), strides=(stride,))
    else:
        v = win[np.where(ok, l3, 0)].view(_WINDOW).ravel()
    vihl = v["vihl"]
    tot = v["tot"]
    is4 = (
        ok & (et == ETH_P_IP) & (vihl == 0x45) & (l3 + 20 <= end)
        & ((tot == 0) | (tot >= 20)) & ((v["fragw"] & 0x3FFF) == 0)
    )  # fmt: skip
    is6 = ok & (et == ETH_P_IPV6) & ((vihl >> 4) == 6) & (l3 + 40 <= end)
    proto = np.where(is4, v["proto4"], np.where(is6, v["nxt"], 0))
    is4 &= (proto == 1) | (proto == 6) | (proto == 17)
    is6 &= (proto == 6) | (proto == 17) | (proto == 58)
    l4 = l3 + np.where(is4, 20, 40)
    tcp = (proto == 6) & (l4 + 20 <= end)
    udp = (proto == 17) & (l4 + 4 <= end)
    itype = np.where(is4, v["itype4"], v["itype6"])
    icmp = np.where(proto == 1, ~_ICMP4_ERROR_LUT[itype], (proto == 58) & (itype > 4))
    icmp &= l4 + 8 <= end
    fast = (is4 | is6) & (tcp | udp | icmp)

    win16 = _windows(b8, 16)
    fast4, fast6 = fast & is4, fast & is6
    groups = [(4, fast4, int(np.count_nonzero(fast4))), (6, fast6, int(np.count_nonzero(fast6)))]
    groups.sort(key=lambda grp: -grp[2])
    for i, (fam, sel, k) in enumerate(groups):
        if k == 0:
            continue
        if i == 0 and 2 * k >= n:
            # The larger family over every row: whole-column writes instead of scattered ones.
            # Rows of the other family and slow rows get garbage here, and their own (full)
            # writes below.
            r: Any = slice(None)
            g, fpr, g3, gend = v, proto, l3, end
        else:
            r = np.flatnonzero(sel)
            g, fpr, g3, gend = v[r], proto[r], l3[r], end[r]
            zeroed = zeroed and i == 0
        s = str(fam)
        t, c = fpr == 6, (fpr == 1) | (fpr == 58)
        ports = t | (fpr == 17)
        ity = g["itype" + s]
        if fam == 4:
            with_id = c & _ICMP4_WITH_ID_LUT[ity]
            gtot = g["tot"]
            plen = np.where(gtot != 0, gtot, gend - g3) - 20
            has = np.where(ports, HAS_IP_ID | HAS_L4_PORTS, HAS_IP_ID)
            tgt["src"][r], tgt["dst"][r] = g["src4"], g["dst4"]
            tgt["ip_id"][r] = g["ip_id"]
            tgt["ttl"][r], tgt["length"][r] = g["ttl"], gtot
            tgt["ethertype"][r] = ETH_P_IP  # is4 implies it
            if not zeroed:
                tgt["flow_label"][r] = 0
        else:
            with_id = c & ((ity == 128) | (ity == 129))
            plen = g["plen6"].astype(np.int64)
            has = np.where(ports, HAS_FLOW_LABEL | HAS_L4_PORTS, HAS_FLOW_LABEL)
            tgt["src"][r], tgt["dst"][r] = g["src6"], g["dst6"]
            tgt["flow_label"][r] = g["vtcfl"] & 0xFFFFF
            tgt["ttl"][r], tgt["length"][r] = g["hlim"], plen + 40
            tgt["ethertype"][r] = ETH_P_IPV6
            if not zeroed:
                tgt["ip_id"][r] = 0
        # A flood is one protocol: fields of a protocol no row has are not computed.
        any_t, any_c = bool(t.any()), bool(c.any())
        if any_t:
            has |= np.where(t, HAS_TCP, 0)
        if any_c:
            has |= np.where(c, HAS_ICMP, 0)
        tgt["family"][r], tgt["proto"][r], tgt["has"][r] = fam, fpr, has
        tgt["sport"][r] = np.where(ports, g["sport" + s], 0)
        tgt["dport"][r] = np.where(ports, g["dport" + s], 0)
        for name, cond, seen, field in (
            ("tcp_seq", t, any_t, "seq"), ("tcp_ack", t, any_t, "ack"), ("tcp_flags", t, any_t, "flags"),
            ("icmp_type", c, any_c, "itype"), ("icmp_code", c, any_c, "icode"),
            ("icmp_id", with_id, any_c, "iid"), ("icmp_seq", with_id, any_c, "iseq"),
        ):
            if seen:
                tgt[name][r] = np.where(cond, g[field + s], 0)
            elif not zeroed:
                tgt[name][r] = 0
        if not zeroed:
            for name, zero in _FAST_ZERO.items():
                tgt[name][r] = zero
        # Digest: (payload length, its first <= 16 bytes that lie inside the frame).
        l4hl = np.where(t, (g["doff" + s] >> 4).astype(np.int64) * 4, 8) if any_t else 8
        p = g3 + (20 if fam == 4 else 40) + l4hl
        pn = np.maximum(plen - l4hl, 0)
        take = np.maximum(np.minimum(np.minimum(pn, gend - p), 16), 0)
        beyond = p >= len(win16)  # the window would run past the buffer: slow path below
        if beyond.any():
            fast[np.arange(n)[r][beyond & sel[r]]] = False
            p = np.where(beyond, 0, p)
        if stride and isinstance(r, slice) and _stride(off, p, len(win16) - 1) == stride:
            head = np.ndarray((n, 16), dtype=np.uint8, buffer=b8, offset=int(p[0]), strides=(stride, 1))
        else:
            head = win16[p]
        words = (head if bool((take == 16).all()) else head & _PREFIX16[take]).view("<u8")
        tgt["digest"][r] = digest_array(pn.astype(np.uint64), words[:, 0], words[:, 1])
    if not fast.all():
        slow = np.flatnonzero(~fast)
        lts_slow: int | list[int] = linktypes if lts is None else lts[slow].tolist()  # type: ignore[assignment]
        dec = decode_scalar(buf, off[slow].tolist(), (end - off)[slow].tolist(), lts_slow)
        for name in DECODED_FIELDS:
            tgt[name][slow] = dec[name]
    return tgt


def _stride(off: np.ndarray[Any, Any], pos: np.ndarray[Any, Any], last: int) -> int:
    """S when ``off`` steps by S > 0 and every ``pos - off`` is one value with ``pos`` in
    [0, last]; else 0."""
    n = len(off)
    if n < 2:
        return 0
    step = int(off[1] - off[0])
    if step <= 0 or int(off[-1] - off[0]) != step * (n - 1) or int(pos[0]) < 0 or int(pos[-1]) > last:
        return 0
    d = np.diff(off)
    h = pos - off
    if d.min() != step or d.max() != step or h.min() != h.max():
        return 0
    return step


def _windows(b8: np.ndarray[Any, Any], width: int) -> np.ndarray[Any, Any]:
    """Every ``width``-byte window of ``b8`` (len >= width), as rows of a read-only view.

    sliding_window_view does the same with ~15 us of checks per call."""
    return np.ndarray((len(b8) - width + 1, width), dtype=np.uint8, buffer=b8, strides=(1, 1))


def decode_into(
    rows: np.ndarray[Any, Any],
    buf: Any,
    offsets: Sequence[int] | np.ndarray[Any, Any],
    lengths: Sequence[int] | np.ndarray[Any, Any],
    linktypes: int | Sequence[int] | np.ndarray[Any, Any],
    *,
    zeroed: bool = False,
) -> None:
    """Fill the packet fields of ``rows`` from frames at ``buf[offsets[i]:offsets[i]+lengths[i]]``.

    ``zeroed``: the rows are all zero (np.zeros), so fields a frame does not have need no write.
    """
    n = len(offsets)
    if n == 0:
        return
    if n >= VECTOR_MIN:
        _vector(buf, offsets, lengths, linktypes, out=rows, zeroed=zeroed)
        return
    lts = linktypes if isinstance(linktypes, int) else list(np.asarray(linktypes).tolist())
    dec = decode_scalar(buf, np.asarray(offsets).tolist(), np.asarray(lengths).tolist(), lts)
    for name in DECODED_FIELDS:
        rows[name] = dec[name]


def decode_frames(frames: Sequence[bytes | memoryview], linktypes: int | Sequence[int]) -> np.ndarray[Any, Any]:
    """Rows of ``obs_dtype()``, one per frame, with the packet fields filled (see module doc).

    The caller fills ts_ns, skb, netns, hop, ifindex, dir, source,
    drop_reason, frame_off, frame_len and wire_len.
    """
    from tracer.model import obs_dtype

    rows = np.zeros(len(frames), dtype=obs_dtype())
    if not len(frames):
        return rows
    if isinstance(linktypes, int):
        lts: int | list[int] = linktypes
    else:
        lts = list(linktypes)
        if len(lts) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(lts)} link types")
    lengths = [len(f) for f in frames]
    offsets = []
    pos = 0
    for ln in lengths:
        offsets.append(pos)
        pos += ln
    buf = b"".join(frames)
    decode_into(rows, buf, offsets, lengths, lts)
    return rows
