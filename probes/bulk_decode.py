"""Vectorised decoding of the common frames, for the eBPF source's event rate.

``tracer.decode.decode_into`` decodes one frame per Python call (~2-3 us):
fine for files and taps, too slow for the hundreds of thousands of hop
events per second the probes produce (DESIGN.md, "Decode in bulk"). This
decodes the common case — Ethernet without VLAN tag, IPv4 without
fragmentation or IPv6 without extension headers, carrying TCP, UDP or
ICMP/ICMPv6 that is not an error — with numpy over the whole batch, and
hands every other row (ARP, VLAN, fragments, ICMP errors, extension
headers, truncated frames, ...) to ``decode_into``. The result must equal
``decode_into`` field for field; tests/probes/test_bulk_decode.py checks it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracer.decode import (
    ICMP4_ERRORS,
    ICMP4_WITH_ID,
    ICMP6_ERRORS,
    ICMP6_WITH_ID,
    decode_into,
    digest_array,
)
from tracer.model import HAS_FLOW_LABEL, HAS_ICMP, HAS_IP_ID, HAS_L4_PORTS, HAS_TCP

ETH_LEN = 14
_AR16 = np.arange(16, dtype=np.int64)


def _lookup(values: frozenset[int]) -> np.ndarray[Any, Any]:
    t = np.zeros(256, dtype=bool)
    t[list(values)] = True
    return t


_ICMP4_ERR, _ICMP4_ID = _lookup(ICMP4_ERRORS), _lookup(ICMP4_WITH_ID)
_ICMP6_ERR, _ICMP6_ID = _lookup(ICMP6_ERRORS), _lookup(ICMP6_WITH_ID)


def decode_bulk(
    rows: np.ndarray[Any, Any],
    frames: np.ndarray[Any, Any],
    cap: np.ndarray[Any, Any],
    mac_len: np.ndarray[Any, Any],
    buf: Any,
    offsets: np.ndarray[Any, Any],
) -> int:
    """Fill the packet fields of ``rows`` from ``frames`` (n x snaplen uint8, ``cap`` valid bytes each).

    ``buf``/``offsets`` address the same frames as one buffer for the
    per-frame fallback. Returns how many rows took the fallback.
    """
    n = len(rows)
    if n == 0:
        return 0
    # Two gathers per batch (the L4 header window and the payload window);
    # everything before L4 is at fixed columns (Ethernet without VLAN tag).
    F = frames
    width = F.shape[1]
    # Windows are gathered from the flat buffer (1-D take) when the frames are
    # in it unpadded: 2-D fancy indexing over strided rows is ~2x slower.
    flat = np.frombuffer(buf, dtype=np.uint8) if width >= ETH_LEN + 40 else None
    base = offsets.astype(np.int64)
    if width < ETH_LEN + 40:
        F = np.pad(F, ((0, 0), (0, ETH_LEN + 40 - width)))
        width = F.shape[1]
    H = F[:, : ETH_LEN + 40]  # a view: columns are widened one at a time
    end = cap.astype(np.int64)
    r = np.arange(n)
    o = ETH_LEN

    def c8(M: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
        return M[:, k].astype(np.int64)

    def c16(M: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
        return (M[:, k].astype(np.int64) << 8) | M[:, k + 1]

    def c32(M: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
        return (c16(M, k) << 16) | c16(M, k + 2)

    def window(start: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        cols = np.minimum(start[:, None] + _AR16, width - 1)
        if flat is not None:
            return flat[base[:, None] + cols]
        return F[r[:, None], cols]

    eth = (mac_len == ETH_LEN) & (end >= ETH_LEN + 20)
    et = np.where(eth, c16(H, 12), 0)
    ver = c8(H, o) >> 4
    v4 = eth & (et == 0x0800) & (ver == 4)
    v6 = eth & (et == 0x86DD) & (ver == 6) & (end >= ETH_LEN + 40)

    ihl = (c8(H, o) & 0xF) * 4
    length4 = c16(H, o + 2)
    fragw = c16(H, o + 6)
    v4 &= (ihl >= 20) & ~((length4 > 0) & (length4 < ihl)) & ((fragw & 0x3FFF) == 0)
    plen6 = c16(H, o + 4)

    proto = np.where(v6, c8(H, o + 6), c8(H, o + 9))
    ttl = np.where(v6, c8(H, o + 7), c8(H, o + 8))
    l4 = np.where(v6, o + 40, o + ihl)
    plen = np.where(v6, plen6, np.where(length4 > 0, length4, end - o) - ihl)
    length = np.where(v6, 40 + plen6, length4)

    W = window(l4)
    tcp = (proto == 6) & (l4 + 20 <= end)
    udp = (proto == 17) & (l4 + 4 <= end)
    icmp_type = c8(W, 0)
    icmp4 = v4 & (proto == 1) & (l4 + 8 <= end) & ~_ICMP4_ERR[icmp_type]
    icmp6 = v6 & (proto == 58) & (l4 + 8 <= end) & ~_ICMP6_ERR[icmp_type]
    icmp = icmp4 | icmp6
    fast = (v4 | v6) & (tcp | udp | icmp)

    slow = np.flatnonzero(~fast)
    if len(slow):
        part = rows[slow]
        decode_into(part, buf, offsets[slow].tolist(), cap[slow].tolist(),
                    np.where(mac_len[slow] >= ETH_LEN, 1, 101).tolist())
        rows[slow] = part
    f = np.flatnonzero(fast)
    if len(f) == 0:
        return len(slow)

    # From here on only the fast rows. Fields are written column by column:
    # fancy-indexing a structured array copies row by row (~0.5 us a row).
    every = len(f) == n

    def put(name: str, values: Any) -> None:
        if every:
            rows[name] = values
        else:
            col = rows[name]
            col[f] = values

    if not every:
        F, H, W, base = F[f], H[f], W[f], base[f]
        end, l4, plen = end[f], l4[f], plen[f]
        v6, tcp, udp, icmp = v6[f], tcp[f], udp[f], icmp[f]
        icmp_type, proto, et, ttl, length = icmp_type[f], proto[f], et[f], ttl[f], length[f]
        r = np.arange(len(f))
    is6 = v6
    put("family", np.where(is6, 6, 4))
    put("proto", proto)
    put("ethertype", et)
    put("ttl", ttl)
    put("length", length & 0xFFFFFFFF)
    put("frag", 0)
    put("ip_id", np.where(is6, 0, c16(H, o + 4)))
    put("flow_label", np.where(is6, c32(H, o) & 0xFFFFF, 0))

    addr = np.zeros((len(f), 2, 16), dtype=np.uint8)
    a4 = ~is6
    addr[a4, 0, :4] = H[a4, o + 12 : o + 16]
    addr[a4, 1, :4] = H[a4, o + 16 : o + 20]
    addr[is6, 0] = H[is6, o + 8 : o + 24]
    addr[is6, 1] = H[is6, o + 24 : o + 40]
    put("src", addr[:, 0].copy().view("S16").ravel())
    put("dst", addr[:, 1].copy().view("S16").ravel())

    ports = tcp | udp
    put("sport", np.where(ports, c16(W, 0), 0))
    put("dport", np.where(ports, c16(W, 2), 0))
    put("tcp_seq", np.where(tcp, c32(W, 4), 0))
    put("tcp_ack", np.where(tcp, c32(W, 8), 0))
    put("tcp_flags", np.where(tcp, c8(W, 13), 0))
    with_id = np.where(is6, _ICMP6_ID[icmp_type], _ICMP4_ID[icmp_type])
    put("icmp_type", np.where(icmp, icmp_type, 0))
    put("icmp_code", np.where(icmp, c8(W, 1), 0))
    put("icmp_id", np.where(icmp & with_id, c16(W, 4), 0))
    put("icmp_seq", np.where(icmp & with_id, c16(W, 6), 0))
    has = np.where(is6, HAS_FLOW_LABEL, HAS_IP_ID)
    has = has | np.where(ports, HAS_L4_PORTS, 0) | np.where(tcp, HAS_TCP, 0) | np.where(icmp, HAS_ICMP, 0)
    put("has", has)

    hl = np.where(tcp, (c8(W, 12) >> 4) * 4, 8)
    p = l4 + hl
    pay = np.maximum(plen - hl, 0)
    take = np.clip(np.minimum(np.minimum(pay, 16), end - p), 0, 16)
    words = np.where(take[:, None] > _AR16, window(p), np.uint8(0)).astype(np.uint8, copy=False)
    w = words.view("<u8")
    put("digest", digest_array(pay.astype(np.uint64), w[:, 0].copy(), w[:, 1].copy()))
    put("inner_src", b"")
    put("inner_dst", b"")
    for name in ("inner_proto", "inner_sport", "inner_dport"):
        put(name, 0)
    return len(slow)
