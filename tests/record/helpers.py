"""Batches as the engine sees them, built from real frames (scapy builds, READERS' decoder fills)."""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from tracer.model import Dir, HopLabel, ObsBatch, Src

NS_WEB = 4026532466
NS_HOST = 4026532300
NS_INET = 4026532500
WEB_ETH0 = HopLabel("web", "eth0", NS_WEB, 2)
HOST_VETH = HopLabel("host", "veth1a2b3c", NS_HOST, 7)
HOST_DOCKER0 = HopLabel("host", "docker0", NS_HOST, 3)
HOST_ETH0 = HopLabel("host", "eth0", NS_HOST, 2)
INET_ETH0 = HopLabel("inet", "eth0", NS_INET, 2)
HOPS = [WEB_ETH0, HOST_VETH, HOST_DOCKER0, HOST_ETH0, INET_ETH0]


@dataclass(frozen=True, slots=True)
class Sighting:
    hop: int  # index into HOPS
    frame: bytes
    ts_ns: int
    dir: Dir
    skb: int = 0
    drop_reason: int = 0


def batch_of(sightings: Sequence[Sighting], hops: list[HopLabel] | None = None,
             drop_reasons: dict[int, str] | None = None, source: Src = Src.EBPF) -> ObsBatch:
    from tests.reference.decode import decode_frames

    hops = HOPS if hops is None else hops
    frames = [s.frame for s in sightings]
    rows = decode_frames(frames, [hops[s.hop].linktype for s in sightings])
    off = 0
    for i, s in enumerate(sightings):
        label = hops[s.hop]
        r = rows[i]
        r["ts_ns"], r["skb"], r["netns"], r["hop"] = s.ts_ns, s.skb, label.netns, s.hop
        r["ifindex"], r["dir"], r["source"] = label.ifindex, int(s.dir), int(source)
        r["drop_reason"] = s.drop_reason
        r["frame_off"], r["frame_len"], r["wire_len"] = off, len(s.frame), len(s.frame)
        off += len(s.frame)
    return ObsBatch(rows=rows, hops=list(hops), frames=b"".join(frames),
                    drop_reasons=dict(drop_reasons or {}))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@functools.lru_cache(maxsize=8)
def _ping_templates(payload: bytes) -> dict[str, bytes]:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether

    c, pub, srv = "172.17.0.2", "203.0.113.2", "198.51.100.8"
    e = Ether(src="02:42:ac:11:00:02", dst="02:42:ac:11:00:01")
    return {
        "req_in": bytes(e / IP(src=c, dst=srv, ttl=64) / ICMP(id=77) / payload),
        "req_fwd": bytes(e / IP(src=c, dst=srv, ttl=63) / ICMP(id=77) / payload),
        "req_nat": bytes(e / IP(src=pub, dst=srv, ttl=63) / ICMP(id=77) / payload),
        "rep_out": bytes(e / IP(src=srv, dst=pub, ttl=64) / ICMP(type=0, id=77) / payload),
        "rep_nat": bytes(e / IP(src=srv, dst=c, ttl=63) / ICMP(type=0, id=77) / payload),
    }


def _with_ids(frame: bytes, ip_id: int, seq: int) -> bytes:
    """The template with another IP ID and ICMP sequence, checksums fixed (fast: no scapy)."""
    f = bytearray(frame)
    struct.pack_into("!HH", f, 18, ip_id, 0)  # id, flags/frag
    struct.pack_into("!H", f, 24, 0)
    struct.pack_into("!H", f, 24, _csum(bytes(f[14:34])))
    struct.pack_into("!H", f, 36, 0)  # ICMP checksum, recomputed below
    struct.pack_into("!H", f, 40, seq)
    struct.pack_into("!H", f, 36, _csum(bytes(f[34:])))
    return bytes(f)


def ping_frames(seq: int, payload: bytes = b"hoptrace-payload-0123456789abcdef") -> dict[str, bytes]:
    """One echo request as seen before and after MASQUERADE, and its reply before/after."""
    t = _ping_templates(payload)
    req_id, rep_id = (100 + seq) & 0xFFFF, (900 + seq) & 0xFFFF
    return {k: _with_ids(v, req_id if k.startswith("req") else rep_id, seq) for k, v in t.items()}


def masquerade_pings(n: int, t0: int = 1_795_805_084_000_000_000, with_skb: bool = True,
                     drop_every: int = 0) -> list[Sighting]:
    """n pings web -> internet through MASQUERADE, the reply back; every drop_every-th dies on host/eth0."""
    out: list[Sighting] = []
    for i in range(n):
        f = ping_frames(i % 65536)
        t = t0 + i * 1_000_000
        skb = (0xFFFF888108470000 + (i % 512) * 0x100) if with_skb else 0
        out += [
            Sighting(0, f["req_in"], t, Dir.TX, skb),
            Sighting(1, f["req_in"], t + 7_000, Dir.RX, skb),
            Sighting(2, f["req_in"], t + 15_000, Dir.RX, skb),
        ]
        if drop_every and i % drop_every == drop_every - 1:
            out.append(Sighting(3, f["req_nat"], t + 31_000, Dir.DROP, skb, drop_reason=6))
            continue
        rskb = skb + 0x80 if with_skb else 0
        out += [
            Sighting(3, f["req_nat"], t + 31_000, Dir.TX, skb),
            Sighting(4, f["req_nat"], t + 60_000, Dir.RX, skb + 1 if with_skb else 0),
            Sighting(4, f["rep_out"], t + 200_000, Dir.TX, rskb),
            Sighting(3, f["rep_out"], t + 230_000, Dir.RX, rskb),
            Sighting(2, f["rep_nat"], t + 250_000, Dir.TX, rskb),
            Sighting(1, f["rep_nat"], t + 260_000, Dir.TX, rskb),
            Sighting(0, f["rep_nat"], t + 270_000, Dir.RX, rskb),
        ]
    return out
