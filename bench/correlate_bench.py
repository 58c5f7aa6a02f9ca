"""Correlator throughput on a synthetic NATed stream (numpy-built batches, no I/O).

    .venv/bin/python bench/correlate_bench.py [--records 1000000] [--batch 4096]

Each packet is seen at 5 hops (web/eth0 tx, host/veth rx, host/docker0 rx,
host/eth0 tx with MASQUERADE, inet/eth0 rx), packets overlap in time, and a
quarter carry no skb. Prints records/s of the correlator (the product's engine on
the core: paths joined and finished with NAT events, verdicts and flows, their lines
rendered) and, in the same run, of a peer: a per-row Python dict join on a
fingerprint tuple (what DESIGN.md measured as too slow), plus peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's tracer

import numpy as np

from tracer.model import HopLabel, ObsBatch, obs_dtype

HOPS = [
    HopLabel("web", "eth0", 4026532001, 2), HopLabel("host", "veth1", 4026531840, 4),
    HopLabel("host", "docker0", 4026531840, 3), HopLabel("host", "eth0", 4026531840, 2),
    HopLabel("inet", "eth0", 4026532003, 2),
]  # fmt: skip
DIRS = [2, 1, 1, 2, 1]


def make_rows(n_records: int, seed: int = 1) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    n_pk = n_records // len(HOPS)
    rows = np.zeros(n_pk * len(HOPS), dtype=obs_dtype())
    pk = np.repeat(np.arange(n_pk), len(HOPS))
    hop = np.tile(np.arange(len(HOPS)), n_pk)
    rows["ts_ns"] = 1_000_000_000 + pk * 4_000 + hop * 7_000  # 250k pps: hops of ~8 packets interleave
    rows["hop"] = hop
    rows["netns"] = np.array([h.netns for h in HOPS], dtype=np.uint64)[hop]
    rows["ifindex"] = np.array([h.ifindex for h in HOPS])[hop]
    rows["dir"] = np.array(DIRS)[hop]
    rows["source"] = 1
    skb = np.uint64(0xFFFF888100000000) + (pk % 4096).astype(np.uint64) * np.uint64(0x100)
    skb[pk % 4 == 3] = 0
    rows["skb"] = skb
    rows["family"] = 4
    rows["proto"] = 17
    rows["ethertype"] = 0x0800
    rows["has"] = 1 | 8
    flow = rng.integers(0, 2000, n_pk)[pk]
    src = np.zeros((len(rows), 16), dtype=np.uint8)
    src[:, 0], src[:, 1], src[:, 2], src[:, 3] = 172, 17, (flow >> 8) & 0xFF, flow & 0xFF
    masq = hop >= 3
    src[masq, 0], src[masq, 1], src[masq, 2], src[masq, 3] = 203, 0, 113, 2
    rows["src"] = src.view("S16").ravel()
    dst = np.zeros((len(rows), 16), dtype=np.uint8)
    dst[:, :4] = [198, 51, 100, 8]
    rows["dst"] = dst.view("S16").ravel()
    rows["sport"] = (30000 + flow).astype(np.uint16)
    rows["dport"] = 53
    rows["ip_id"] = (pk * 7) & 0xFFFF
    rows["ttl"] = np.where(hop >= 3, 63, 64)
    rows["length"] = 28 + 64
    rows["digest"] = rng.integers(0, 2**63, n_pk, dtype=np.uint64)[pk]
    return rows


def batches(rows: np.ndarray[Any, Any], size: int) -> list[ObsBatch]:
    return [ObsBatch(rows=rows[i : i + size], hops=HOPS) for i in range(0, len(rows), size)]


class _Count:
    """A sink that takes the core's NDJSON lines and counts paths and flows."""

    def __init__(self) -> None:
        self.paths = self.flows = 0

    def on_ndjson(self, data: bytes) -> None:
        self.paths += data.count(b'{"type": "path"')
        self.flows += data.count(b'{"type": "flow"')

    def on_path(self, path: Any) -> None:
        self.paths += 1

    def on_flow(self, flow: Any) -> None:
        self.flows += 1

    def on_stats(self, stats: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def run_correlator(bs: list[ObsBatch]) -> tuple[int, int]:
    """The product's correlation: tracer.engine on the core's Stream (join, NAT events, verdicts,
    flows; lines rendered, not written)."""
    from tracer.engine import Engine, run
    from tracer.sources.base import BatchListSource

    count = _Count()
    run(Engine(BatchListSource(bs, kind="ebpf")), [count])
    return count.paths, count.flows


def run_peer(bs: list[ObsBatch]) -> int:
    """One dict lookup and one tuple per row, nothing else: a floor for a per-row join."""
    open_: dict[tuple[Any, ...], list[int]] = {}
    for b in bs:
        for r in b.rows.tolist():
            key = (r[7], r[8], r[15], r[27], r[25])  # family, proto, ip_id, digest, length
            open_.setdefault(key, []).append(r[0])
    return len(open_)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096)
    a = ap.parse_args()
    rows = make_rows(a.records)
    bs = batches(rows, a.batch)
    rss_in_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, cpu = time.perf_counter(), time.process_time()
    paths, flows = run_correlator(bs)
    dt_c, cpu_c = time.perf_counter() - t, time.process_time() - cpu
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, cpu = time.perf_counter(), time.process_time()
    run_peer(bs)
    dt_p, cpu_p = time.perf_counter() - t, time.process_time() - cpu
    n = len(rows)
    print(f"records={n} paths={paths} flows={flows} batch={a.batch}")
    print(f"correlator: {n / cpu_c:,.0f} records/s of CPU time ({cpu_c:.2f} s CPU, {dt_c:.2f} s wall), "
          f"peak RSS {rss_mb:.0f} MB ({rss_in_mb:.0f} MB of it before: the input rows, "
          f"{rows.nbytes / 2**20:.0f} MB)")
    print(f"peer (per-row dict join, no paths built): {n / cpu_p:,.0f} records/s of CPU time "
          f"({cpu_p:.2f} s CPU, {dt_p:.2f} s wall)")
    print(f"ratio correlator/peer (CPU time): {cpu_p / cpu_c:.2f}")


if __name__ == "__main__":
    main()
