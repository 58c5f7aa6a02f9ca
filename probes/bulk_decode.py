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
    width = frames.shape[1]
    F = frames
    end = cap.astype(np.int64)
    r = np.arange(n)

    def at(off: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return F[r, np.minimum(off, width - 1)].astype(np.int64)

    def be16(off: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return (at(off) << 8) | at(off + 1)

    def be32(off: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return (be16(off) << 16) | be16(off + 2)

    o = np.full(n, ETH_LEN, dtype=np.int64)
    eth = (mac_len == ETH_LEN) & (end >= ETH_LEN + 20)
    et = np.where(eth, be16(o - 2), 0)
    ver = at(o) >> 4
    v4 = eth & (et == 0x0800) & (ver == 4)
    v6 = eth & (et == 0x86DD) & (ver == 6) & (end >= ETH_LEN + 40)

    # IPv4 header
    ihl = (at(o) & 0xF) * 4
    length4 = be16(o + 2)
    fragw = be16(o + 6)
    v4 &= (ihl >= 20) & ~((length4 > 0) & (length4 < ihl)) & ((fragw & 0x3FFF) == 0)
    # IPv6 header
    plen6 = be16(o + 4)

    proto = np.where(v6, at(o + 6), at(o + 9))
    ttl = np.where(v6, at(o + 7), at(o + 8))
    l4 = np.where(v6, o + 40, o + ihl)
    plen = np.where(v6, plen6, np.where(length4 > 0, length4, end - o) - ihl)
    length = np.where(v6, 40 + plen6, length4)

    tcp = (proto == 6) & (l4 + 20 <= end)
    udp = (proto == 17) & (l4 + 4 <= end)
    icmp_type = at(l4)
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

    # From here on only the fast rows.
    F = F[f]
    r = np.arange(len(f))
    o, end, l4, plen = o[f], end[f], l4[f], plen[f]
    is6, tcp, udp, icmp = v6[f], tcp[f], udp[f], icmp[f]
    icmp_type = icmp_type[f]
    out = rows[f]
    out["family"] = np.where(is6, 6, 4)
    out["proto"] = proto[f]
    out["ethertype"] = et[f]
    out["ttl"] = ttl[f]
    out["length"] = length[f] & 0xFFFFFFFF
    out["frag"] = 0
    out["ip_id"] = np.where(is6, 0, be16(o + 4))
    vtcfl = be32(o)
    out["flow_label"] = np.where(is6, vtcfl & 0xFFFFF, 0)

    addr = np.zeros((len(f), 2, 16), dtype=np.uint8)
    a4 = ~is6
    idx4 = np.minimum(o[a4, None] + 12 + np.arange(8), width - 1)
    addr[a4, :, :4] = F[r[a4, None], idx4].reshape(-1, 2, 4)
    idx6 = np.minimum(o[is6, None] + 8 + np.arange(32), width - 1)
    addr[is6] = F[r[is6, None], idx6].reshape(-1, 2, 16)
    out["src"] = addr[:, 0].copy().view("S16").ravel()
    out["dst"] = addr[:, 1].copy().view("S16").ravel()

    ports = tcp | udp
    out["sport"] = np.where(ports, be16(l4), 0)
    out["dport"] = np.where(ports, be16(l4 + 2), 0)
    out["tcp_seq"] = np.where(tcp, be32(l4 + 4), 0)
    out["tcp_ack"] = np.where(tcp, be32(l4 + 8), 0)
    out["tcp_flags"] = np.where(tcp, at(l4 + 13), 0)
    with_id = np.where(is6, _ICMP6_ID[icmp_type], _ICMP4_ID[icmp_type])
    out["icmp_type"] = np.where(icmp, icmp_type, 0)
    out["icmp_code"] = np.where(icmp, at(l4 + 1), 0)
    out["icmp_id"] = np.where(icmp & with_id, be16(l4 + 4), 0)
    out["icmp_seq"] = np.where(icmp & with_id, be16(l4 + 6), 0)
    has = np.where(is6, HAS_FLOW_LABEL, HAS_IP_ID)
    has = has | np.where(ports, HAS_L4_PORTS, 0) | np.where(tcp, HAS_TCP, 0) | np.where(icmp, HAS_ICMP, 0)
    out["has"] = has

    hl = np.where(tcp, (at(l4 + 12) >> 4) * 4, 8)
    p = l4 + hl
    pay = np.maximum(plen - hl, 0)
    take = np.clip(np.minimum(np.minimum(pay, 16), end - p), 0, 16)
    idx = np.minimum(p[:, None] + _AR16, width - 1)
    words = np.where(take[:, None] > _AR16, F[r[:, None], idx], 0).astype(np.uint8)
    w = words.view("<u8")
    out["digest"] = digest_array(pay.astype(np.uint64), w[:, 0].copy(), w[:, 1].copy())
    out["inner_src"] = b""
    out["inner_dst"] = b""
    for name in ("inner_proto", "inner_sport", "inner_dport"):
        out[name] = 0
    rows[f] = out
    return len(slow)
