"""The live pipeline's userspace cost per sighting: correlation + annotator + NDJSON, the
product's engine against the Python reference.

    .venv/bin/python bench/engine_bench.py [--records 300000] [--flows 20,2000] [--profile]

Input: eBPF-shaped batches of NATed UDP (bench/record_bench.make_batches: 5 hops per
packet, MASQUERADE at host/eth0, real frame bytes, a quarter without skb), in
4096-row batches as the eBPF source yields them, with ``--flows`` distinct flows
(a flood is a few flows; a busy host many). Each row of the table is an engine into an
NDJSON sink on /dev/null, timed in CPU seconds of this process (the box is shared: wall
time is noisy):

* ``core``:      tracer.engine (the core's Stream: join, finishing, NDJSON in Rust) into
                 tracer.sinks.output.NdjsonSink — the product;
* ``reference``: tests/reference/engine.py (the plain Python correlator, paths as objects,
                 ``json.dumps``) into its NdjsonSink — the peer, the same lines;

each bare and with the live annotator (``tracer.annotate.attribution``, a Docker host's ruleset,
no conntrack; it runs on the core's paths as row views). Prints µs per sighting and the
reference/core CPU ratio. The source's read + decode and the kernel are not in these
figures (bench/ebpf_bench.py measures the whole).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import live_profile  # noqa: E402
import numpy as np  # noqa: E402
import record_bench  # noqa: E402

import tests.reference.engine as reference  # noqa: E402
from tracer.annotate.attribution import annotator  # noqa: E402
from tracer.engine import Engine, run  # noqa: E402
from tracer.model import ObsBatch  # noqa: E402
from tracer.sinks.output import NdjsonSink  # noqa: E402
from tracer.sources.base import BatchListSource  # noqa: E402


def batches(records: int, flows: int) -> list[ObsBatch]:
    """record_bench's batches with ``flows`` distinct flows instead of its 2000."""
    real = np.random.default_rng

    class Rng:
        def __init__(self, seed: int) -> None:
            self._rng = real(seed)

        def integers(self, lo: int, hi: int, size: Any = None, dtype: Any = np.int64) -> Any:
            return self._rng.integers(lo, flows if hi == 2000 else hi, size, dtype=dtype)

    record_bench.np.random.default_rng = Rng  # type: ignore[assignment]
    try:
        return record_bench.make_batches(records, 4096)
    finally:
        record_bench.np.random.default_rng = real


def one(bs: list[ObsBatch], core: bool, annotated: bool, prof: cProfile.Profile | None = None) -> float:
    # Netns of record_bench's host hops: the annotator's topology must know them.
    live_profile.HOST = record_bench.HOPS[1].netns
    anns = [annotator(live_profile.docker_host(20), conntrack=False, refresh_s=None)] if annotated else []
    source = BatchListSource(bs, kind="ebpf")
    with open(os.devnull, "w") as null:
        t0 = time.process_time()
        if prof is not None:
            prof.enable()
        if core:
            run(Engine(source, annotators=anns), [NdjsonSink(null)])
        else:
            reference.run(reference.Engine(source, annotators=anns), [reference.NdjsonSink(null)])
        if prof is not None:
            prof.disable()
        return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--flows", default="20,2000")
    p.add_argument("--profile", action="store_true", help="cProfile of the annotated core run")
    a = p.parse_args(argv)
    print(f"{'flows':>6} {'annotator':>9} {'reference us/rec':>17} {'core us/rec':>12} {'reference/core':>15}")
    for flows in (int(x) for x in a.flows.split(",")):
        bs = batches(a.records, flows)
        n = sum(len(b) for b in bs)
        for annotated in (False, True):
            peer = one(bs, False, annotated)
            ours = one(bs, True, annotated)
            print(f"{flows:>6} {'yes' if annotated else 'no':>9} {peer / n * 1e6:>17.2f} {ours / n * 1e6:>12.2f} "
                  f"{peer / ours:>15.1f}")
        if a.profile:
            prof = cProfile.Profile()
            one(bs, True, True, prof)
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
            print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
