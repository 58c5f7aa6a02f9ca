"""Generated sighting streams the differential tests share: what the correlator, the core's
join and its finisher must agree on (tests/reference is the oracle)."""

from __future__ import annotations

import random
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from tests.unit.conftest import MS, US, internet_ping, internet_pong
from tracer.model import ObsBatch, Observation

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def flood(n: int, seed: int) -> list[Observation]:
    """Pings and replies of a few flows with per-packet values (IP ID, seq, skb, TTL, length) varying."""
    rng = random.Random(seed)
    obs: list[Observation] = []
    for k in range(n):
        common: dict[str, Any] = dict(ip_id=rng.randrange(65536), icmp_seq=k, icmp_id=70 + rng.randrange(3),
                                      skb=rng.choice([None, 0xFFFF8881000 + k]),
                                      length=rng.choice([84, 84, 84, 1500]))
        t0 = 1_000 * MS + k * 50 * US
        ping = internet_ping(t0=t0, **common)
        if rng.random() < 0.2:  # dropped at the uplink
            ping = [*ping[:3], replace(ping[3], direction="drop", drop_reason="NETFILTER_DROP")]
        elif rng.random() < 0.1:  # TTL differs from the usual at one hop
            ping[4] = replace(ping[4], ttl=1)
        obs += ping
        if rng.random() < 0.5:
            reply_id = rng.randrange(65536)
            obs += [replace(o, ip_id=reply_id) for o in internet_pong(
                t0=t0 + 20 * US, **{k: v for k, v in common.items() if k != "ip_id"})]
    return obs


def batches_of(obs: list[Observation], cuts: list[int]) -> list[ObsBatch]:
    """``obs`` in batches cut at ``cuts``, as a source yields them: one label table, one frames
    buffer and one drop reason table shared by every batch (ObsBatch's contract)."""
    whole = ObsBatch.from_observations(obs)
    bounds = sorted({0, len(obs), *(min(c, len(obs)) for c in cuts)})
    return [ObsBatch(rows=whole.rows[a:b], hops=whole.hops, frames=whole.frames, drop_reasons=whole.drop_reasons)
            for a, b in pairwise(bounds)]


def hostile(n: int, seed: int) -> list[Observation]:
    """What tests the span lane's conditions: few IP IDs (fingerprints shared by packets in
    flight), reused and missing skbs, a hop seen twice, late and out-of-order sightings,
    missing hops, long gaps (beyond the window), drops."""
    rng = random.Random(seed)
    obs: list[Observation] = []
    t = 1_000 * MS
    for k in range(n):
        t += rng.choice([3 * US, 40 * US, 2 * MS, 700 * MS])
        common: dict[str, Any] = dict(ip_id=rng.randrange(3), icmp_seq=rng.randrange(3),
                                      skb=rng.choice([None, 0xA000, 0xA000 + k, 0xB000 + k]))
        hops = internet_ping(t0=t, **common) if rng.random() < 0.7 else [
            replace(o, ip_id=common["ip_id"]) for o in internet_pong(
                t0=t, **{k: v for k, v in common.items() if k != "ip_id"})]
        if rng.random() < 0.2:
            hops = [h for h in hops if rng.random() < 0.7]
        elif rng.random() < 0.3:  # the start or the end only: with a packet seen long before, one set of hops
            hops = hops[:2] if rng.random() < 0.5 else hops[2:]
        if rng.random() < 0.1 and hops:
            hops.append(replace(hops[-1], ts_ns=hops[-1].ts_ns + rng.choice([1, 5 * US])))  # seen twice
        if rng.random() < 0.1 and hops:
            hops[-1] = replace(hops[-1], direction="drop", drop_reason="NETFILTER_DROP")
        obs += [replace(h, skb=None) if rng.random() < 0.1 else h for h in hops]
    # Delivered late (another CPU's ring), sometimes by more than the window.
    late = [0, 0, 0, 0, 7 * US, 9 * US, 120 * MS, 600 * MS]
    order = sorted(range(len(obs)), key=lambda i: obs[i].ts_ns + rng.choice(late))
    return [obs[i] for i in order]


def replicated(fixture: str, copies: int) -> list[ObsBatch]:
    """A fixture's sightings, frames and all, repeated: each copy 10 ms later with its own IP IDs
    (another packet each time, of the same shapes: what templates and span paths are for)."""
    from tests.reference.readers import FileSource

    src = FileSource([str(FIXTURES / fixture)])
    src.start()
    try:
        base = list(src.batches())
    finally:
        src.stop()
    out = []
    for k in range(copies):
        for b in base:
            rows = b.rows.copy()
            rows["ts_ns"] += np.uint64(k * 10 * MS)
            rows["ip_id"] = (rows["ip_id"].astype(np.int64) + 7 * k) & 0xFFFF
            frames = bytearray(b.frames)
            if k % 3 == 1:
                # Every third copy says another IPv4 total length in its frames (what "ip[2:2]"
                # reads; the rows, and so the paths' shapes, stay the same).
                for off, n in zip(rows["frame_off"].tolist(), rows["frame_len"].tolist(), strict=True):
                    if n >= 18 and frames[off + 12 : off + 14] == b"\x08\x00":
                        frames[off + 16 : off + 18] = (60).to_bytes(2, "big")
            out.append(ObsBatch(rows, b.hops, bytes(frames), None, b.drop_reasons))
    return out
