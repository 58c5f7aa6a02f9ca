"""Replay throughput: ``hoptrace replay --json F > /dev/null`` against tshark on the same file.

Both run in this same invocation, one after the other, on one generated
multi-interface pcapng of NATed traffic (bench/gen_pcapng.py), so the ratio
holds on a busy machine where absolute numbers do not. Prints records/s of
both, the ratio, and hoptrace's peak RSS (the child's ru_maxrss).

    .venv/bin/python bench/replay_bench.py                  # 1,000,000 records
    .venv/bin/python bench/replay_bench.py --records 200000 --file /tmp/x.pcapng

Targets (issue 2): >= 3x tshark including correlation, peak RSS <= 500 MB;
goal 6x and <= 200 MB.

Measured (1,000,000 records, 2 shared vCPUs, 2026-11-27): hoptrace 13.99 s CPU
(71k records/s, peak RSS 292 MB), tshark 18.37 s CPU (54k/s): 1.31x. Before the
CLI GC policy (tracer.engine.gc_policy) and the output/NAT constructor work:
22.3 s CPU (45k/s), 0.78x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from gen_pcapng import generate  # noqa: E402


def timed(argv: list[str]) -> tuple[float, float, int, int]:
    """(wall s, CPU s, peak RSS in KiB, exit status) of a child writing to /dev/null.

    CPU time (user + system) is printed too: on a shared box the wall clock
    measures the neighbours as much as the program.
    """
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=null, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"{argv[0]} failed ({proc.returncode}): {err.strip()[-500:]}", file=sys.stderr)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, proc.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="hoptrace replay vs tshark -T fields")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--file", default=None, help="pcapng to use (generated if missing)")
    p.add_argument("--keep", action="store_true", help="keep the generated file")
    a = p.parse_args(argv)
    path = Path(a.file or f"/tmp/hoptrace-bench-{a.records}.pcapng")
    made = False
    if not path.exists():
        t0 = time.perf_counter()
        n = generate(str(path), a.records)
        made = True
        print(f"generated {n} records ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    records = a.records
    try:
        hop = [str(ROOT / ".venv" / "bin" / "hoptrace"), "replay", "--json", str(path)]
        tsh = ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.id"]
        h_wall, h_cpu, h_rss, h_rc = timed(hop)
        t_wall, t_cpu, _t_rss, t_rc = timed(tsh)
        if h_rc or t_rc:
            return 1
        h_rate, t_rate = records / h_wall, records / t_wall
        print(f"records               {records}")
        print(f"hoptrace replay       {h_wall:7.2f} s wall {h_rate:9.0f} records/s | {h_cpu:7.2f} s CPU "
              f"{records / h_cpu:9.0f} records/s | peak RSS {h_rss / 1024:.0f} MB")
        print(f"tshark -T fields      {t_wall:7.2f} s wall {t_rate:9.0f} records/s | {t_cpu:7.2f} s CPU "
              f"{records / t_cpu:9.0f} records/s")
        print(f"ratio hoptrace/tshark {h_rate / t_rate:.2f}x wall, {t_cpu / h_cpu:.2f}x CPU "
              "(target >= 3x, goal 6x; RSS <= 500 MB, goal 200 MB)")
    finally:
        if made and not a.keep:
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
