"""Finishing paths and writing their NDJSON: the core's PathFinisher against Python, same run.

    .venv/bin/python bench/finish_bench.py [/tmp/nat-1m.pcapng] [--records 1000000] [--check]

The capture (bench/gen_pcapng.py makes it when missing: NATed ICMP/UDP/TCP, 5 hops
a packet) is replayed once by the reference engine (tests/reference) with its
correlator watched (tests/unit/test_core_finish.Recorder): its finished paths, step by
step in finishing order. Then, timed in CPU seconds of this process (the box is shared),
each writing to /dev/null:

* ``python json.dumps``: each path as the reference writes it (tests/reference/render.py:
  ``json.dumps`` of its dict), one write per step — the peer: Python at its plainest;
* ``core PathFinisher``: every step through ``tracer._core.PathFinisher.finish``
  (rows in, NAT events, verdicts, flows, lines out) and ``take``; the claims the join
  teaches it between steps are one Python call each here, timed apart.

``--check`` requires the core's lines to be the reference's (the stats line's elapsed
time aside).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tests.reference.render import line, path_json  # noqa: E402
from tests.reference.replay import Outcome, replay_files  # noqa: E402
from tests.unit.test_core_finish import Recorder  # noqa: E402
from tracer.model import ObsBatch, PacketPath  # noqa: E402


def record(path: str) -> tuple[list[tuple[Any, ...]], Outcome, Recorder]:
    rec = Recorder()
    return rec.ops, replay_files([path], correlator=rec), rec


def steps_of(ops: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The recorder's ops with each step's paths gathered: ("step", [(num, path), ...])."""
    out: list[tuple[Any, ...]] = []
    pending: list[tuple[int, PacketPath]] = []
    for op in ops:
        if op[0] == "path":
            pending.append((op[1], op[2]))
        elif op[0] == "step":
            if pending:
                out.append(("step", pending))
            pending = []
        else:
            out.append(op)
    return out


def python_json(steps: list[tuple[Any, ...]]) -> float:
    with open(os.devnull, "w") as null:
        t0 = time.process_time()
        for op in steps:
            if op[0] == "step":
                null.write("".join([line(path_json(p)) + "\n" for _num, p in op[1]]))
                null.flush()
        return time.process_time() - t0


def core(steps: list[tuple[Any, ...]], stats: Outcome, corr: Recorder) -> tuple[float, float, bytes]:
    """CPU seconds in all, CPU seconds in ``finish`` (the rest: one Python call per claim,
    which the join makes in Rust), and the bytes written."""
    from tracer._core import PathFinisher

    # The batches as the join would hand them over (made before the clock starts).
    ready: list[tuple[Any, ...]] = []
    for op in steps:
        if op[0] == "step":
            batch = ObsBatch.from_observations([h for _n, p in op[1] for h in p.hops])
            ready.append(("step", batch.rows.view(np.uint8),
                          np.array([len(p.hops) for _n, p in op[1]], dtype=np.uint32),
                          np.array([n for n, _p in op[1]], dtype=np.uint64),
                          [(h.node, h.iface) for h in batch.hops], batch.drop_reasons))
        else:
            ready.append(op)
    fin = PathFinisher(window_ns=corr.window_ns, flow_idle_ns=corr.flow_idle_ns,
                       max_flow_paths=corr.max_flow_paths)
    kept: list[Any] = []
    in_finish = 0.0
    clock = time.process_time
    with open(os.devnull, "wb") as null:
        t0 = clock()
        for op in ready:
            kind = op[0]
            if kind == "step":
                t1 = clock()
                fin.finish(*op[1:])
                out = fin.take()
                in_finish += clock() - t1
                null.write(out)
                kept.append(out)
            elif kind == "claim":
                fin.claim(*op[1:5])
            elif kind == "retract":
                fin.retract(*op[1:])
            elif kind == "take_flows":
                fin.take_flows(op[1])
            elif kind == "close_flows":
                fin.close_flows()
        fin.stats(stats.observations, 0, 0.0)
        out = fin.take()
        null.write(out)
        kept.append(out)
        secs = clock() - t0
    return secs, in_finish, b"".join(x.tobytes() for x in kept)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", nargs="?", default="/tmp/nat-1m.pcapng")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--check", action="store_true", help="the core's lines equal the reference's")
    a = p.parse_args(argv)
    if not Path(a.path).exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_pcapng.py"), a.path, "--records",
                        str(a.records)], check=True)
    t0 = time.monotonic()
    ops, stats, corr = record(a.path)
    steps = steps_of(ops)
    paths = sum(len(op[1]) for op in steps if op[0] == "step")
    hops = sum(len(pp.hops) for op in steps if op[0] == "step" for _n, pp in op[1])
    print(f"{a.path}: {stats.observations} sightings, {paths} paths, {hops} hops "
          f"(recorded in {time.monotonic() - t0:.1f} s)")
    rows = [("python json.dumps", python_json(steps))]
    t_all, t_core, got = core(steps, stats, corr)
    rows.append(("core PathFinisher", t_core))
    claims = sum(1 for op in steps if op[0] == "claim")
    print(f"(core: {t_all:.3f} CPU s with {claims} claims made one Python call each; finish() alone below)")
    print(f"{'':20} {'CPU s':>8} {'ns/path':>9} {'ns/hop':>8} {'x core':>7}")
    for name, secs in rows:
        print(f"{name:20} {secs:8.3f} {secs / paths * 1e9:9.0f} {secs / hops * 1e9:8.0f} {secs / t_core:7.1f}")
    if a.check:
        strip = re.compile(r', "elapsed_s": [0-9.e+-]+\}$')
        want = [strip.sub("}", x) for x in stats.lines]
        have = [strip.sub("}", x) for x in got.decode().splitlines()]
        print("check:", "same lines" if want == have else "DIFFERENT", f"({len(want)} lines)")
        return 0 if want == have else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
