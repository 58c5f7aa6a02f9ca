"""Recording overhead and Parquet export rate, each against a peer in the same run.

    .venv/bin/python bench/record_bench.py [--records 1000000] [--batch 4096] [--peer-records 100000] [--reps 2]

Input: a synthetic NATed UDP stream with real frame bytes (106-byte frames, each
packet seen at 5 hops, a quarter without skb), built with numpy, in batches as
a live source yields them. Times are CPU seconds of this process
(``time.process_time``): the box is shared, wall time is noisy.

1. Recording overhead (target: recording costs <= 10% of the engine's rate):
   the engine (``tracer.engine.Engine``) over the batches, once without and
   once with ``PcapngRecorder.on_batch`` as a batch hook; also the recorder
   alone over the same batches (its cost as a share of the engine's; best of 3,
   cheap). Every recording goes to a new file, as a live one does (an earlier
   run's file is removed before the clock starts).
   Peer: scapy's ``RawPcapNgWriter`` writing the same sightings with their
   comments and direction, packet by packet (on ``--peer-records`` rows).
2. Parquet export (target: >= 500k observations/s): ``write_parquet`` of the
   paths the engine built. Peer: the obvious notebook way, one dict per
   observation into ``pandas.DataFrame`` and ``to_parquet`` (on a slice of
   ``--peer-records`` observations).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.model import HopLabel, ObsBatch, PacketPath
from tracer.sources.base import BatchListSource

HOPS = [
    HopLabel("web", "eth0", 4026532001, 2), HopLabel("host", "veth1a2b3c", 4026531840, 4),
    HopLabel("host", "docker0", 4026531840, 3), HopLabel("host", "eth0", 4026531840, 2),
    HopLabel("inet", "eth0", 4026532003, 2),
]  # fmt: skip
DIRS = [2, 1, 1, 2, 1]
FRAME = 106  # Ethernet 14 + IPv4 20 + UDP 8 + 64 bytes of payload


def make_batches(n_records: int, size: int, seed: int = 1) -> list[ObsBatch]:
    """Rows and frames that agree (addresses, ports, IP ID, TTL), MASQUERADE from hop 3 on."""
    from tracer import _core
    from tracer.model import obs_dtype

    rng = np.random.default_rng(seed)
    n_pk = n_records // len(HOPS)
    n = n_pk * len(HOPS)
    pk = np.repeat(np.arange(n_pk), len(HOPS))
    hop = np.tile(np.arange(len(HOPS)), n_pk)
    flow = rng.integers(0, 2000, n_pk)[pk]
    payload = rng.integers(0, 256, (n_pk, 64), dtype=np.uint8)[pk]
    f = np.zeros((n, FRAME), np.uint8)
    f[:, 0:6] = [2, 0x42, 0xAC, 0x11, 0, 1]
    f[:, 6:12] = [2, 0x42, 0xAC, 0x11, 0, 2]
    f[:, 12:14] = [8, 0]
    f[:, 14] = 0x45
    f[:, 16:18] = [0, 92]
    ip_id = (pk * 7) & 0xFFFF
    f[:, 18], f[:, 19] = ip_id >> 8, ip_id & 0xFF
    f[:, 22] = np.where(hop >= 3, 63, 64)
    f[:, 23] = 17
    masq = hop >= 3
    f[:, 26:30] = [172, 17, 0, 0]
    f[:, 28], f[:, 29] = (flow >> 8) & 0xFF, flow & 0xFF
    f[masq, 26:30] = [203, 0, 113, 2]
    f[:, 30:34] = [198, 51, 100, 8]
    sport = 30000 + flow
    f[:, 34], f[:, 35] = sport >> 8, sport & 0xFF
    f[:, 36:38] = [0, 53]
    f[:, 38:40] = [0, 72]
    f[:, 42:] = payload
    skb = np.uint64(0xFFFF888100000000) + (pk % 4096).astype(np.uint64) * np.uint64(0x100)
    skb[pk % 4 == 3] = 0
    out = []
    for i in range(0, n, size):
        j = min(n, i + size)
        frames = f[i:j].tobytes()
        rows = np.zeros(j - i, dtype=obs_dtype())
        lens = np.full(j - i, FRAME, dtype=np.uint32)
        _core.decode_into(rows, frames, np.arange(j - i, dtype=np.uint64) * np.uint64(FRAME), lens, 1)
        rows["ts_ns"] = 1_795_805_084_000_000_000 + pk[i:j] * 4_000 + hop[i:j] * 7_000
        rows["hop"] = hop[i:j]
        rows["netns"] = np.array([h.netns for h in HOPS], np.uint64)[hop[i:j]]
        rows["ifindex"] = np.array([h.ifindex for h in HOPS])[hop[i:j]]
        rows["dir"] = np.array(DIRS)[hop[i:j]]
        rows["source"] = 1
        rows["skb"] = skb[i:j]
        rows["frame_off"] = np.arange(j - i) * FRAME
        rows["frame_len"] = FRAME
        rows["wire_len"] = FRAME
        out.append(ObsBatch(rows=rows, hops=HOPS, frames=frames))
    return out




def run_engine(bs: list[ObsBatch], record: str | None) -> tuple[float, list[PacketPath]]:
    from tracer.engine import Engine
    from tracer.sinks.record import PcapngRecorder

    engine = Engine(BatchListSource(bs, kind="ebpf"))
    if record:
        fresh(record)
    rec = PcapngRecorder(record) if record else None
    if rec is not None:
        engine.batch_hooks.append(rec.on_batch)
    paths: list[PacketPath] = []
    cpu = time.process_time()
    for events in engine.events():
        paths.extend(e for e in events if isinstance(e, PacketPath))
    if rec is not None:
        rec.close()
    return time.process_time() - cpu, paths


def fresh(path: str) -> None:
    """Remove an earlier run's file before timing: a recording goes to a new file, and
    truncating 300 MB on ext4 (plus the flush ext4 then forces at close) is not the recorder's cost."""
    if os.path.exists(path):
        os.unlink(path)


def run_recorder(bs: list[ObsBatch], path: str) -> float:
    from tracer.sinks.record import PcapngRecorder

    fresh(path)
    cpu = time.process_time()
    with PcapngRecorder(path) as rec:
        for b in bs:
            rec.on_batch(b)
    return time.process_time() - cpu


def run_scapy_peer(bs: list[ObsBatch], limit: int, path: str) -> tuple[float, int]:
    """scapy's raw pcapng writer, one call per sighting, same comment and direction."""
    import json

    from scapy.utils import RawPcapNgWriter

    w = RawPcapNgWriter(path)
    w.linktype = 1
    w.sync = False
    w._write_header(None)
    done = 0
    cpu = time.process_time()
    for b in bs:
        frames = bytes(b.frames)
        for r in b.rows:
            if done >= limit:
                break
            off, ln = int(r["frame_off"]), int(r["frame_len"])
            d = int(r["dir"])
            skb = int(r["skb"])
            ts = int(r["ts_ns"])
            meta = {"v": 1, "dir": ("rx", "tx")[d - 1] if d in (1, 2) else None,
                    "skb": f"0x{skb:x}" if skb else None, "hook": None, "netns": int(r["netns"]),
                    "drop_reason": None, "ts_ns": ts}  # fmt: skip
            w._write_packet(frames[off : off + min(ln, 128)], linktype=1, sec=ts / 1e9, caplen=min(ln, 128),
                            wirelen=int(r["wire_len"]), ifname=HOPS[int(r["hop"])].name.encode(),
                            direction=d if d in (1, 2) else None, comments=[json.dumps(meta).encode()])  # fmt: skip
            done += 1
    w.close()
    return time.process_time() - cpu, done


def import_parquet_libraries() -> float:
    """pyarrow(.parquet, .compute) and pandas, once per process, before either exporter runs: the peer
    (pandas) ran second and found them imported, the export paid for them (~0.3 s)."""
    cpu = time.process_time()
    import pandas  # noqa: F401
    import pyarrow.compute
    import pyarrow.parquet  # noqa: F401

    import tracer.sinks.analysis  # noqa: F401

    return time.process_time() - cpu


def run_export(paths: list[PacketPath], directory: str) -> tuple[float, int]:
    from tracer.sinks.analysis import write_parquet

    n = sum(len(p.hops) for p in paths)
    cpu = time.process_time()
    write_parquet(paths, directory)
    return time.process_time() - cpu, n


def run_pandas_peer(paths: list[PacketPath], limit: int, directory: str) -> tuple[float, int]:
    import pandas as pd

    fields = ("ts_ns", "node", "ifname", "netns", "ifindex", "direction", "source", "family", "proto",
              "src", "dst", "sport", "dport", "ip_id", "ttl", "length", "skb", "digest", "drop_reason")  # fmt: skip
    cpu = time.process_time()
    recs: list[dict[str, Any]] = []
    for p in paths:
        for i, o in enumerate(p.hops):
            d = {k: getattr(o, k) for k in fields}
            d["path_id"], d["hop"] = p.id, i
            recs.append(d)
        if len(recs) >= limit:
            break
    df = pd.DataFrame(recs)
    df["skb"] = df["skb"].astype("UInt64")
    df.to_parquet(os.path.join(directory, "peer.parquet"))
    return time.process_time() - cpu, len(recs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--peer-records", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=2, help="engine runs with and without the recorder, alternated")
    a = ap.parse_args()
    bs = make_batches(a.records, a.batch)
    n = sum(len(b) for b in bs)
    with tempfile.TemporaryDirectory(prefix="hoptrace-bench-") as tmp:
        rec_path = os.path.join(tmp, "rec.pcapng")
        # Both engine runs keep their paths (as a sink would until it prints them):
        # the same number of live objects, so the same garbage-collector work.
        # Alternated, best of --reps each: the box is shared and noisy.
        plain, recorded = [], []
        for _ in range(a.reps):
            t, paths = run_engine(bs, None)
            plain.append(t)
            del paths
            t, paths = run_engine(bs, rec_path)
            recorded.append(t)
        cpu_plain, cpu_rec = min(plain), min(recorded)
        size_mb = os.path.getsize(rec_path) / 1e6
        cpu_alone = min(run_recorder(bs, rec_path) for _ in range(max(3, a.reps)))  # cheap: best of 3+
        cpu_peer, n_peer = run_scapy_peer(bs, a.peer_records, os.path.join(tmp, "peer.pcapng"))
        cpu_imports = import_parquet_libraries()
        cpu_exp, n_obs = run_export(paths, os.path.join(tmp, "parquet"))
        pq_mb = sum(p.stat().st_size for p in Path(tmp, "parquet").iterdir()) / 1e6
        cpu_pd, n_pd = run_pandas_peer(paths, a.peer_records, tmp)
    print(f"records={n} paths={len(paths)} batch={a.batch} recording={size_mb:.0f} MB parquet={pq_mb:.0f} MB")
    print(f"engine without recorder: {n / cpu_plain:,.0f} records/s ({cpu_plain:.2f} s CPU)")
    print(f"engine with recorder:    {n / cpu_rec:,.0f} records/s ({cpu_rec:.2f} s CPU)"
          f" -> overhead {100 * (cpu_rec - cpu_plain) / cpu_plain:+.1f}% (best of {a.reps} each, alternated)")
    print(f"recorder alone:          {n / cpu_alone:,.0f} records/s ({cpu_alone:.2f} s CPU)"
          f" = {100 * cpu_alone / cpu_plain:.1f}% of the engine's CPU time (target <= 10%; best of {max(3, a.reps)})")
    print(f"peer scapy RawPcapNgWriter: {n_peer / cpu_peer:,.0f} records/s on {n_peer} rows;"
          f" recorder/peer = {(n / cpu_alone) / (n_peer / cpu_peer):.1f}x")
    print(f"parquet export: {n_obs / cpu_exp:,.0f} observations/s ({n_obs} in {cpu_exp:.2f} s CPU, target >= 500k/s;"
          f" imports of pyarrow/pandas before it, for both exporters: {cpu_imports:.2f} s)")
    print(f"peer pandas from dicts + to_parquet: {n_pd / cpu_pd:,.0f} observations/s on {n_pd};"
          f" export/peer = {(n_obs / cpu_exp) / (n_pd / cpu_pd):.1f}x")


if __name__ == "__main__":
    main()
