"""Report throughput: ``hoptrace report F`` and ``hoptrace report F --parquet DIR`` against tshark.

Issue 15's target: ``report`` and ``report --parquet DIR`` of the 1M-record pcapng of
bench/gen_pcapng.py at >= 1M observations/s. Both run on the core's engine
(tracer._core.report: crates/hoptrace-core/src/report.rs and columns.rs), output to
/dev/null; the peer is tshark's field extraction of the same file
(``-T fields -e ip.src -e ip.dst -e ip.id``), alternating with ours in one invocation after
a warm-up read of the file, best of --runs (wall and CPU), peak RSS of each.

    .venv/bin/python bench/report_bench.py                 # generates /tmp/hoptrace-bench-mix-1000000.pcapng
    .venv/bin/python bench/report_bench.py --file F --records N --runs 3 --json

Use a release build of the core (``cargo build --release -p hoptrace-py`` and copy
target/release/lib_core.so to tracer/_core.cpython-311-x86_64-linux-gnu.so).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from gen_pcapng import SHAPES  # noqa: E402
from replay_bench import HOPTRACE, best_of, timed, tshark_fields  # noqa: E402

TARGET_OBS_PER_S = 1_000_000


def throughput(path: Path, records: int, runs: int) -> dict[str, Any]:
    out_dir = Path(tempfile.mkdtemp(prefix="hoptrace-report-bench-"))
    try:
        commands = {
            "report": [*HOPTRACE, "report", str(path)],
            "report --parquet": [*HOPTRACE, "report", str(path), "--parquet", str(out_dir / "pq")],
            "tshark": tshark_fields(str(path)),
        }
        with open(path, "rb") as f:  # warm the page cache for all
            while f.read(1 << 24):
                pass
        got: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        for k in range(runs):  # alternate, so drift in the background load favours none
            order = list(commands.items())[:: 1 if k % 2 == 0 else -1]
            for name, argv in order:
                got[name].append(r := timed(argv))
                print(f"  run {k + 1}: {name:17} {r['wall_s']:7.2f} s wall {r['cpu_s']:7.2f} s CPU "
                      f"{r['rss_mb']:6.0f} MB", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    result: dict[str, Any] = {"records": records, "runs": runs}
    for name, rs in got.items():
        b = best_of(rs)
        b["records_per_s_wall"] = records / b["wall_s"]
        b["records_per_s_cpu"] = records / b["cpu_s"]
        result[name] = b
    p = result["tshark"]
    for name in ("report", "report --parquet"):
        result[name]["ratio_wall"] = p["wall_s"] / result[name]["wall_s"]
        result[name]["ratio_cpu"] = p["cpu_s"] / result[name]["cpu_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3, help="timed runs of each, the best counts")
    p.add_argument("--file", default=None, help="pcapng of shape mix to use (generated if missing)")
    p.add_argument("--keep", action="store_true", help="keep the generated file")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object, last")
    a = p.parse_args(argv)
    path = Path(a.file or f"/tmp/hoptrace-bench-mix-{a.records}.pcapng")
    made = False
    if not path.exists():
        t0 = time.perf_counter()
        n = SHAPES["mix"](str(path), a.records)
        made = True
        print(f"generated {n:,} records ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    try:
        print(f"file: {path}")
        r = throughput(path, a.records, a.runs)
    finally:
        if made and not a.keep:
            path.unlink()
    print(f"\n{a.records:,} records, best of {a.runs} (observations/s; target >= {TARGET_OBS_PER_S:,}/s):")
    for name in ("report", "report --parquet", "tshark"):
        x = r[name]
        line = (f"  {name:17} {x['wall_s']:6.2f} s wall {x['cpu_s']:6.2f} s CPU  "
                f"{x['records_per_s_wall']:>12,.0f} obs/s wall {x['records_per_s_cpu']:>12,.0f} obs/s CPU  "
                f"{x['rss_mb']:5.0f} MB")  # fmt: skip
        if name != "tshark":
            line += f"  {x['ratio_wall']:.1f}x tshark wall"
        print(line)
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
