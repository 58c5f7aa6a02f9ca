"""Read + decode throughput: FileSource on the core against the Python reader it replaced.

Both read every batch of one generated multi-interface pcapng of NATed
traffic (bench/gen_pcapng.py: EPBs with flags and hoptrace's JSON comment,
as ``live --record`` writes), each in a child process of its own, one after
the other in this same invocation. Prints records/s (wall and CPU) and each
child's peak RSS. No correlation: just the source (what ``replay`` reads).

    .venv/bin/python bench/read_bench.py                    # 1,000,000 records
    .venv/bin/python bench/read_bench.py --records 200000 --file /tmp/x.pcapng

Measured (1,000,000 records, 270 MB, 2 shared vCPUs at load 4-6, 2026-12-07; CPU
includes the child's interpreter and numpy start-up): Python 3.61 s CPU (277k
records/s), core 0.44 s CPU (2.25M records/s), peak RSS 40 / 35 MB; wall 6.42 s
vs 0.60 s (10.6x). In-process, the core's iterator alone: 0.26-0.36 s CPU.
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

READ = """
import sys
sys.path.insert(0, {root!r})
from {module} import FileSource
n = 0
for b in FileSource([{path!r}]).batches():
    n += len(b)
print(n)
"""

VARIANTS = {"python (tests/reference/readers.py)": "tests.reference.readers", "core (tracer/sources/files.py)": "tracer.sources.files"}


def timed(code: str) -> tuple[float, float, int, str]:
    """(wall s, CPU s, peak RSS in KiB, stdout) of a child running ``code``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"reader failed: {err.strip()[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, out.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="FileSource read+decode: core vs Python")
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
    try:
        rates = {}
        for name, module in VARIANTS.items():
            wall, cpu, rss, out = timed(READ.format(root=str(ROOT), module=module, path=str(path)))
            records = int(out)
            rates[name] = records / wall
            print(f"{name:38} {records} records {wall:6.2f} s wall {records / wall:10.0f} records/s | "
                  f"{cpu:6.2f} s CPU {records / cpu:10.0f} records/s | peak RSS {rss / 1024:.0f} MB")  # fmt: skip
        py, core = rates.values()
        print(f"core/python {core / py:.1f}x (wall)")
    finally:
        if made and not a.keep:
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
