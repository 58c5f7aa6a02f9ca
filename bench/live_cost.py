"""What live's consumer costs per sighting: the core's Stream (tracer.engine) beside the old
Python engine (tests/reference/engine.py, its peer) in the same run, without and with the
Attributor (inferred NAT rules and node names over a Docker-shaped host topology).

200k eBPF-shaped, MASQUERADEd sightings (bench/record_bench.py) in 4096-row batches, NDJSON
to /dev/null; CPU time, best of ``--runs``. Run from the repository root:

    .venv/bin/python bench/live_cost.py [--records 200000] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import live_profile  # noqa: E402
import record_bench  # noqa: E402

import tests.reference.engine as old  # noqa: E402
import tracer.engine as new  # noqa: E402
from tracer.annotate.attribution import annotator  # noqa: E402
from tracer.sinks.output import NdjsonSink  # noqa: E402
from tracer.sources.base import BatchListSource  # noqa: E402


def one(mod: ModuleType, sink: Any, batches: list[Any], annotated: bool) -> float:
    """CPU seconds of one run of ``mod``'s engine over ``batches`` into NDJSON on /dev/null."""
    anns = [annotator(live_profile.docker_host(20), conntrack=False, refresh_s=None)] if annotated else []
    engine = mod.Engine(BatchListSource(batches, kind="ebpf"), annotators=anns)
    with open(os.devnull, "w") as null:
        t0 = time.process_time()
        mod.run(engine, [sink(null)])
        return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    batches = record_bench.make_batches(args.records, 4096)
    n = sum(len(b) for b in batches)
    live_profile.HOST = record_bench.HOPS[1].netns
    print(f"{n} sightings, {len(batches)} batches; ns per sighting (CPU, best of {args.runs})")
    for annotated in (False, True):
        got = {}
        for name, mod, sink in (("python engine (before)", old, old.NdjsonSink),
                                ("core Stream (after)", new, NdjsonSink)):
            got[name] = min(one(mod, sink, batches, annotated) for _ in range(args.runs)) / n * 1e9
            print(f"{name:24} annotated={annotated!s:5} {got[name]:8.0f} ns/sighting")
        before, after = got.values()
        print(f"{'':24} {'':15} {before / after:8.1f}x")


if __name__ == "__main__":
    main()
