"""The live pipeline's userspace cost per sighting: correlator + annotator + NDJSON, two ways.

    .venv/bin/python bench/engine_bench.py [--records 300000] [--flows 20,2000] [--profile]

Input: eBPF-shaped batches of NATed UDP (bench/record_bench.make_batches: 5 hops per
packet, MASQUERADE at host/eth0, real frame bytes, a quarter without skb), in
4096-row batches as the eBPF source yields them, with ``--flows`` distinct flows
(a flood is a few flows; a busy host many). Each row of the table is the engine
(``tracer.engine.run``) into an NDJSON sink on /dev/null, timed in CPU seconds of
this process (the box is shared: wall time is noisy):

* ``classic``:  every path built as objects (Observation per hop) and printed
  by ``path_line`` — the peer, what the engine did before ``render_lines``;
* ``lines``:    ``render_lines`` on: repeated shapes rendered from templates;
* ``floor``:    only what any engine writing this NDJSON pays: each line of the ``lines``
                run %-formatted from its template and values, and written the same way
                (a batch's lines joined, one write) — no reading, no correlation, no flows;

each bare and with the live annotator (``tracer.attribution``, a Docker host's
ruleset, no conntrack). Prints µs per sighting and the lines/classic CPU ratio.
The source's read + decode and the kernel are not in these figures
(bench/ebpf_bench.py measures the whole).
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

from tracer import correlate  # noqa: E402
from tracer.attribution import annotator  # noqa: E402
from tracer.engine import Engine, run  # noqa: E402
from tracer.model import ObsBatch  # noqa: E402
from tracer.output import NdjsonSink  # noqa: E402
from tracer.source import BatchListSource  # noqa: E402


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


def one(bs: list[ObsBatch], lines: bool, annotated: bool, prof: cProfile.Profile | None = None) -> float:
    # Netns of record_bench's host hops: the annotator's topology must know them.
    live_profile.HOST = record_bench.HOPS[1].netns
    anns = [annotator(live_profile.docker_host(20), conntrack=False, refresh_s=None)] if annotated else []
    engine = Engine(BatchListSource(bs, kind="ebpf"), annotators=anns)
    if not lines:
        engine.render_lines = lambda: False  # type: ignore[method-assign]
    with open(os.devnull, "w") as null:
        t0 = time.process_time()
        if prof is not None:
            prof.enable()
        run(engine, [NdjsonSink(null)])
        if prof is not None:
            prof.disable()
        return time.process_time() - t0


def floor(bs: list[ObsBatch]) -> float:
    """CPU seconds to format the lines run's template-rendered lines and write them (batched as
    NdjsonSink does): the part of the cost no correlator can save."""
    made: list[tuple[str, tuple[Any, ...]]] = []
    pick = correlate._Template.__init__

    def init(self: Any, fmt: str, order: tuple[int, ...], *rest: Any) -> None:
        pick(self, fmt, order, *rest)
        inner = self.pick

        def keep(values: list[Any]) -> tuple[Any, ...]:
            vals = inner(values)
            made.append((fmt, vals))
            return vals

        self.pick = keep

    correlate._Template.__init__ = init  # type: ignore[method-assign,assignment]
    try:
        one(bs, True, True)
    finally:
        correlate._Template.__init__ = pick  # type: ignore[method-assign]
    with open(os.devnull, "w") as null:
        t0 = time.process_time()
        for k in range(0, len(made), 1000):
            null.write("".join([fmt % vals for fmt, vals in made[k : k + 1000]]))
        null.flush()
        # per line, times every path (the few rendered in full are like the others)
        return (time.process_time() - t0) / max(len(made), 1) * _paths(bs)


def _paths(bs: list[ObsBatch]) -> int:
    """record_bench's batches: one path per packet, ``HOPS`` sightings each."""
    return sum(len(b) for b in bs) // len(record_bench.HOPS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=300_000)
    p.add_argument("--flows", default="20,2000")
    p.add_argument("--profile", action="store_true", help="cProfile of the annotated lines run")
    a = p.parse_args(argv)
    print(f"{'flows':>6} {'annotator':>9} {'classic us/rec':>15} {'lines us/rec':>13} {'lines/classic':>14} "
          f"{'floor us/rec':>13}")
    for flows in (int(x) for x in a.flows.split(",")):
        bs = batches(a.records, flows)
        n = sum(len(b) for b in bs)
        low = floor(bs)
        for annotated in (False, True):
            classic = one(bs, False, annotated)
            lines = one(bs, True, annotated)
            print(f"{flows:>6} {'yes' if annotated else 'no':>9} {classic / n * 1e6:>15.2f} "
                  f"{lines / n * 1e6:>13.2f} {lines / classic:>14.2f} {low / n * 1e6:>13.2f}")
        if a.profile:
            prof = cProfile.Profile()
            one(bs, True, True, prof)
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
            print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
