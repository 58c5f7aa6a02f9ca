"""The core's join (tracer._core.Joiner) on a big capture: ns per sighting through the binding,
and with --check the same paths, numbers and order as the reference correlator
(tests/reference/correlate.py).

    .venv/bin/python bench/gen_pcapng.py /tmp/nat-1m.pcapng --records 1000000
    .venv/bin/python bench/join_bench.py /tmp/nat-1m.pcapng --save /tmp/nat-1m-rows.npy --check
    cargo run --release -p hoptrace-core --example join_bench -- /tmp/nat-1m-rows.npy

The file is read once with FileSource (its batches of 4096 rows are what the join is fed);
``--save`` keeps the rows as .npy for the pure-Rust example, which times the join alone.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tests.reference.correlate import Correlator  # noqa: E402
from tracer import _core  # noqa: E402
from tracer.model import ObsBatch  # noqa: E402
from tracer.sources.files import FileSource  # noqa: E402


def load(path: str) -> tuple[list[np.ndarray[Any, Any]], list[Any]]:
    if path.endswith(".npy"):
        rows = np.load(path)
        return [rows[k : k + 4096] for k in range(0, len(rows), 4096)], []
    src = FileSource([path])
    src.start()
    batches = list(src.batches())
    return [b.rows for b in batches], batches[-1].hops if batches else []


def cpu_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime


def run_core(batches: list[np.ndarray[Any, Any]]) -> tuple[list[tuple[int, tuple[int, ...]]], float, float]:
    j = _core.Joiner()
    out = []
    t, c = time.perf_counter(), cpu_s()
    results = [j.feed(b) for b in batches]
    results.append(j.flush())
    wall, cpu = time.perf_counter() - t, cpu_s() - c
    for num, step, offsets, sightings, _rows in results:
        for k in sorted(range(len(num)), key=lambda k: (int(step[k]), int(num[k]))):
            out.append((int(num[k]), tuple(sightings[offsets[k] : offsets[k + 1]].tolist())))
    return out, wall, cpu


def run_python(batches: list[np.ndarray[Any, Any]], hops: list[Any]) -> list[tuple[int, tuple[int, ...]]]:
    c = Correlator()
    out = []
    start = 0
    for b in [*batches, None]:
        if b is None:
            paths = c.flush()
        else:
            rows = b.copy()
            rows["wire_len"] = np.arange(start, start + len(rows), dtype=np.uint32)
            rows["frame_len"] = 0
            start += len(rows)
            paths = c.feed_batch(ObsBatch(rows, hops))
        out += [(int(p.id[1:]), tuple(h.wire_len for h in p.hops)) for p in paths]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", help=".pcapng/.pcap (read with FileSource) or .npy of OBS_DTYPE rows")
    ap.add_argument("--save", help="write the rows here as .npy")
    ap.add_argument("--check", action="store_true", help="compare with the reference correlator (slow)")
    args = ap.parse_args()
    batches, hops = load(args.capture)
    n = sum(len(b) for b in batches)
    if args.save:
        np.save(args.save, np.concatenate(batches))
    runs = [run_core(batches) for _ in range(3)]
    paths = runs[0][0]
    wall = sorted(r[1] for r in runs)[1]
    cpu = sorted(r[2] for r in runs)[1]
    print(f"{n} sightings -> {len(paths)} paths in {len(batches)} batches")
    print(f"_core.Joiner via the binding: {wall / n * 1e9:.1f} ns/sighting wall, {cpu / n * 1e9:.1f} ns of CPU "
          "(median of 3: parsing rows, the join, numpy columns out)")
    if args.check:
        t = time.perf_counter()
        ref = run_python(batches, hops if hops else [])
        print(f"tests/reference/correlate.py: {(time.perf_counter() - t) / n * 1e9:.0f} ns/sighting "
              "(classic paths: includes making PacketPaths, NAT, verdicts, flows)")
        if ref != paths:
            bad = next(k for k, (a, b) in enumerate(zip(ref, paths, strict=False)) if a != b)
            print(f"DIFFERENT from the reference at path {bad}: {ref[bad]} != {paths[bad]}", file=sys.stderr)
            return 1
        print("same paths, numbers and order as the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
