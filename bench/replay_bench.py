"""Replay throughput and start-up: ``hoptrace replay --json F > /dev/null`` against tshark.

Both run in this same invocation, alternating, on each of two generated
multi-interface pcapngs of NATed traffic (bench/gen_pcapng.py, 1M records each by
default), so the ratio holds on a busy machine where absolute numbers do not:
shape ``mix`` (ICMP, UDP and TCP requests and replies over 5 hops, MASQUERADE at
the 4th: 200k paths) and shape ``udp4`` (issue 15's file: 250k UDP packets x 4
hops, MASQUERADEd at the last: 250k paths).

* ours: ``hoptrace replay --json F > /dev/null`` (read, decode, correlate, NAT,
  flows, NDJSON);
* peer: ``tshark -n -r F -T fields -e ip.src -e ip.dst -e ip.id > /dev/null``
  (read and dissect, three fields a record, no correlation).

Each is run ``--runs`` times (after one untimed read of the file, so the page
cache is warm for both); the best wall time and the best CPU time (user + system
of the child, from ``wait4``) count, with records/s of each and the peak RSS
(the child's ``ru_maxrss``, the largest of its runs).

Stages, per shape: where replay's time goes, measured inside the core
(``_core.replay_stages``, crates/hoptrace-py/src/stages.rs: one whole pass cut
after each stage, best of ``--runs``, no Python while timed): read (capture
records), decode (frames, labels, comments), correlate (join, links, verdicts,
flows; nothing rendered) and render (NAT diffs and NDJSON lines, into a sink);
each stage's own time is its pass minus the previous one's, as records/s and µs
per record.

Start-up, medians of ``--startup-runs`` on the same warm cache: ``hoptrace
--version`` against ``tshark --version``, and ``hoptrace replay --json`` of each
bundled fixture (fixtures/*.pcapng, a few hundred records each) against tshark's
fields over the same file; the bare interpreter (``python -c pass``) is printed
as the floor every Python start pays.

hoptrace is this checkout's (``python -c 'from tracer.cli import main ...'`` run
from the repository root: the same as the installed ``hoptrace`` script, but it
cannot pick up another checkout's code).

    .venv/bin/python bench/replay_bench.py                  # 1,000,000 records, both shapes, 3 runs each
    .venv/bin/python bench/replay_bench.py --shapes udp4 --no-startup
    .venv/bin/python bench/replay_bench.py --records 200000 --runs 1 --file /tmp/x.pcapng
    .venv/bin/python bench/replay_bench.py --json           # also one JSON object, last line

Targets (issue 15, the engine in Rust): >= 15x tshark wall time (goal 40x), peak RSS
<= 150 MB, start-up (replay --json of a fixture) under 150 ms.

Measured (1,000,000 records, 2 shared vCPUs at load ~2, best of 3, replay --json on
the core's engine, crates/hoptrace-core/src/engine.rs): hoptrace 0.59 s wall / 0.59 s
CPU (1.68M records/s, peak RSS 115 MB), tshark 16.08 s wall / 15.60 s CPU (62k/s, 410
MB): 27.1x wall, 26.4x CPU. Start-up medians: --version 51 ms (tshark 206 ms, python -c
pass 50 ms); replay of a fixture 55 ms (tshark 231 ms). With the Python engine (before):
13.70 s CPU, 73k records/s, 253 MB; 1.39x CPU.

Then with the reader reading ahead in a thread of its own and the reader, decoder and
join tuned (2026-12-07, load 4-7, so every wall figure is the neighbours' as much as
ours): shape mix 1.34 s wall / 0.63 s CPU vs tshark 25.2 / 15.6 s: 18.9x wall, 24.8x
CPU, 119 MB; shape udp4 0.79 / 0.51 s vs 33.6 / 18.3 s: 42.8x wall, 35.8x CPU, 127 MB.
Stages (mix, µs per record): read 0.09, decode 0.17, correlate 0.35, render 0.30. The
read-ahead shows only when a core is free: the thread that joins and renders then
sets the pace (mix: 0.44 s CPU of it, 0.19 s in the reading thread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # this checkout's tracer (its _core), as the children run it

from gen_pcapng import SHAPES  # noqa: E402

HOPTRACE = [sys.executable, "-c", "import sys; from tracer.cli import main; sys.exit(main())"]
# Issue 15 (the engine in Rust); issue 2 asked 3x (goal 6x) and 500 MB (goal 200 MB) of the Python engine.
TARGET_RATIO, GOAL_RATIO, TARGET_RSS_MB, GOAL_RSS_MB = 15.0, 40.0, 150, 150


def tshark_fields(path: str) -> list[str]:
    return ["tshark", "-n", "-r", path, "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.id"]


def timed(argv: list[str]) -> dict[str, float]:
    """Wall s, CPU s (user + system) and peak RSS (MB) of a child writing to /dev/null.

    On a shared box the wall clock measures the neighbours as much as the
    program: CPU time is the steadier figure.
    """
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=null, stderr=subprocess.PIPE, cwd=ROOT)
        assert proc.stderr is not None
        err = proc.stderr.read()  # before wait4: a full pipe would block the child
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[-4:])} exited {code}: {err.decode(errors='replace').strip()[-500:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {"wall_s": min(r["wall_s"] for r in runs), "cpu_s": min(r["cpu_s"] for r in runs),
            "rss_mb": max(r["rss_mb"] for r in runs)}  # fmt: skip


def median_wall(argv: list[str], runs: int) -> float:
    timed(argv)  # warm-up: page cache, bytecode cache
    return statistics.median(timed(argv)["wall_s"] for _ in range(runs))


def throughput(path: Path, records: int, runs: int) -> dict[str, Any]:
    hop = [*HOPTRACE, "replay", "--json", str(path)]
    tsh = tshark_fields(str(path))
    with open(path, "rb") as f:  # warm the page cache for both
        while f.read(1 << 24):
            pass
    ours: list[dict[str, float]] = []
    peer: list[dict[str, float]] = []
    for k in range(runs):  # alternate, so drift in the background load favours neither
        for name, argv, out in (("hoptrace", hop, ours), ("tshark", tsh, peer))[:: 1 if k % 2 == 0 else -1]:
            out.append(r := timed(argv))
            print(f"  run {k + 1}: {name:8} {r['wall_s']:7.2f} s wall {r['cpu_s']:7.2f} s CPU "
                  f"{r['rss_mb']:6.0f} MB", flush=True)  # fmt: skip
    o, p = best_of(ours), best_of(peer)
    for r in (o, p):
        r["records_per_s_wall"] = records / r["wall_s"]
        r["records_per_s_cpu"] = records / r["cpu_s"]
    return {"records": records, "runs": runs, "hoptrace": o, "tshark": p,
            "ratio_wall": p["wall_s"] / o["wall_s"], "ratio_cpu": p["cpu_s"] / o["cpu_s"]}  # fmt: skip


def stages(path: Path, runs: int) -> dict[str, Any] | None:
    """Each stage's pass, best of ``runs``, and its own share (minus the stage before)."""
    from tracer import _core

    if not hasattr(_core, "replay_stages"):
        print("  (stages: this tracer._core has no replay_stages; rebuild it: make install)")
        return None
    inputs = [(str(path), path.stem.encode(), None)]
    names: list[str] = list(_core.replay_stage_names())
    best: dict[str, float] = {}
    records = 0
    for _ in range(runs):
        for name in names:
            records, wall = _core.replay_stages(inputs, name)
            best[name] = min(best.get(name, wall), wall)
    out: dict[str, Any] = {"records": records, "runs": runs, "stages": {}}
    before = 0.0
    for name in names:
        own = max(best[name] - before, 1e-9)
        out["stages"][name] = {"pass_s": best[name], "own_s": own, "records_per_s": records / own,
                               "us_per_record": own * 1e6 / max(records, 1)}  # fmt: skip
        before = best[name]
    return out


def startup(runs: int) -> dict[str, Any]:
    fixtures = sorted((ROOT / "fixtures").glob("*.pcapng"))
    floor = median_wall([sys.executable, "-c", "pass"], runs)
    version = (median_wall([*HOPTRACE, "--version"], runs), median_wall(["tshark", "--version"], runs))
    per_fixture = {}
    for fx in fixtures:
        per_fixture[fx.stem] = (median_wall([*HOPTRACE, "replay", "--json", str(fx)], runs),
                                median_wall(tshark_fields(str(fx)), runs))  # fmt: skip
    ours = statistics.median(h for h, _ in per_fixture.values())
    peer = statistics.median(t for _, t in per_fixture.values())
    return {"runs": runs, "python_floor_s": floor,
            "version": {"hoptrace_s": version[0], "tshark_s": version[1]},
            "fixtures": {k: {"hoptrace_s": h, "tshark_s": t} for k, (h, t) in per_fixture.items()},
            "fixture_median": {"hoptrace_s": ours, "tshark_s": peer}}  # fmt: skip


def report(tps: dict[str, dict[str, Any]], sts: dict[str, dict[str, Any]], su: dict[str, Any] | None) -> None:
    for shape in dict.fromkeys([*tps, *sts]):
        if (tp := tps.get(shape)) is None:
            print(f"\nreplay, shape {shape}:")
        else:
            print(f"\nreplay of {tp['records']:,} records, shape {shape}, best of {tp['runs']}:")
            _throughput_lines(tp)
        st = sts.get(shape)
        if st is not None:
            print(f"  stages inside the core, {st['records']:,} records, best of {st['runs']} "
                  "(own: the pass minus the stage before):")
            for name, r in st["stages"].items():
                print(f"    {name:10} pass {r['pass_s']:6.3f} s  own {r['own_s']:6.3f} s "
                      f"{r['records_per_s']:13,.0f} records/s {r['us_per_record']:7.3f} µs/record")
    if su is not None:
        _startup_lines(su)


def _throughput_lines(tp: dict[str, Any]) -> None:
    o, p = tp["hoptrace"], tp["tshark"]
    for name, r in (("hoptrace replay --json", o), ("tshark -T fields", p)):
        print(f"  {name:26} {r['wall_s']:7.2f} s wall {r['records_per_s_wall']:9,.0f} records/s | "
              f"{r['cpu_s']:7.2f} s CPU {r['records_per_s_cpu']:9,.0f} records/s | peak RSS {r['rss_mb']:.0f} MB")
    print(f"  ratio (tshark time / hoptrace time): {tp['ratio_wall']:.2f}x wall, {tp['ratio_cpu']:.2f}x CPU "
          f"(target >= {TARGET_RATIO:g}x, goal {GOAL_RATIO:g}x; RSS <= {TARGET_RSS_MB} MB, goal {GOAL_RSS_MB} MB)")


def _startup_lines(su: dict[str, Any]) -> None:
    ms = 1e3
    print(f"\nstart-up, median of {su['runs']} on a warm cache (python -c pass: {su['python_floor_s'] * ms:.0f} ms):")
    v = su["version"]
    print(f"  {'--version':26} hoptrace {v['hoptrace_s'] * ms:6.0f} ms   tshark {v['tshark_s'] * ms:6.0f} ms")
    for name, r in su["fixtures"].items():
        print(f"  {'replay ' + name:26} hoptrace {r['hoptrace_s'] * ms:6.0f} ms   tshark {r['tshark_s'] * ms:6.0f} ms")
    m = su["fixture_median"]
    print(f"  {'median over fixtures':26} hoptrace {m['hoptrace_s'] * ms:6.0f} ms   tshark {m['tshark_s'] * ms:6.0f} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3, help="timed runs of each, the best counts")
    p.add_argument("--startup-runs", type=int, default=7, help="runs per start-up figure, the median counts")
    p.add_argument("--file", default=None, help="pcapng of shape mix to use (generated if missing)")
    p.add_argument("--udp4-file", default=None, help="pcapng of shape udp4 to use (generated if missing)")
    p.add_argument("--shapes", default="mix,udp4", help="comma-separated: mix, udp4 (bench/gen_pcapng.py)")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage split")
    p.add_argument("--keep", action="store_true", help="keep the generated file")
    p.add_argument("--no-startup", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    a = p.parse_args(argv)
    shapes = [x for x in a.shapes.split(",") if x]
    if bad := [x for x in shapes if x not in SHAPES]:
        p.error(f"unknown shape(s) {', '.join(bad)}: one of {', '.join(SHAPES)}")
    tps: dict[str, dict[str, Any]] = {}
    sts: dict[str, dict[str, Any]] = {}
    su = None
    for shape in shapes if not (a.no_throughput and a.no_stages) else []:
        given = {"mix": a.file, "udp4": a.udp4_file}[shape]
        path = Path(given or f"/tmp/hoptrace-bench-{shape}-{a.records}.pcapng")
        made = False
        if not path.exists():
            t0 = time.perf_counter()
            n = SHAPES[shape](str(path), a.records)
            made = True
            print(f"generated {n:,} records of shape {shape} ({path.stat().st_size / 1e6:.0f} MB) "
                  f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        try:
            if not a.no_throughput:
                print(f"shape {shape}: {path}")
                tps[shape] = throughput(path, a.records, a.runs)
            if not a.no_stages and (st := stages(path, a.runs)) is not None:
                sts[shape] = st
        finally:
            if made and not a.keep:
                path.unlink()
    if not a.no_startup:
        su = startup(a.startup_runs)
    report(tps, sts, su)
    if a.json:
        print(json.dumps({"throughput": tps.get("mix"), "throughputs": tps, "stages": sts, "startup": su}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
