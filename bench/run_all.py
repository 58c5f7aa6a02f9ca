"""Every benchmark in bench/ that measures a peer in the same run, then one table of ratios.

    .venv/bin/python bench/run_all.py                 # everything (the lab/kernel ones need root), long ones short
    .venv/bin/python bench/run_all.py --full          # the lab, kernel and fuzzing ones' full runs too, and soak
    .venv/bin/python bench/run_all.py --quick         # small inputs, short runs (a few minutes)
    .venv/bin/python bench/run_all.py --only replay,engine
    .venv/bin/python bench/run_all.py --list          # names, scripts, what each needs

Each benchmark runs as its own process (``python bench/<script>.py ...``, from the
repository root), its output streamed as it goes, prefixed with its name; the
figures are then read from that output and one table is printed: benchmark,
ours, the peer, the ratio and the target (issue numbers as in the scripts'
docstrings). The ratio is always "how many times better than the peer": a rate
divided by the peer's rate, or the peer's time divided by ours; for the lab's
forwarding under a tracer it is the rate with the tracer over the rate without
(at most 1). A benchmark that fails or whose output cannot be read shows as
such in the table and makes the exit status 1; one that needs root is skipped
without it (``--no-root`` skips them anyway). One generated 1M-record pcapng
(bench/gen_pcapng.py) serves replay, report, read, finish and join (replay also
generates issue 15's other shape, ``--shape udp4``, for itself); it is removed at
the end unless ``--keep``. Nothing but this checkout and what the benchmarks
generate is read: ``make bench`` works from a clean clone after ``make install``.

Benchmarks and their peers: replay and start-up against tshark (with the
per-stage split measured inside the core), report against tshark, read, join,
finish, correlate, engine and the path filter (bpf) against the Python (or
libpcap-through-ctypes) implementation they replaced, fuzz (cargo-fuzz over the
core's parsers: executions and findings) and fuzz_files (random files, scapy's
readers as the peer), the recorder and Parquet export, and the lab and kernel
ones (ebpf, taps, tui, lab, topology, soak) which build network namespaces of
their own (never touching the host's) and push traffic. The lab, kernel and
fuzzing ones run short unless ``--full`` (soak only with ``--full`` or
``--only soak``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

# (benchmark, ours, peer, ratio (> 1: ours is better), target)
Row = tuple[str, str, str, "float | None", str]


class Unreadable(Exception):
    """The benchmark's output does not say what its parser expects."""


def num(pattern: str, text: str, group: int = 1) -> float:
    m = re.search(pattern, text, re.M)
    if m is None:
        raise Unreadable(f"no match for {pattern!r}")
    return float(m.group(group).replace(",", ""))


def last_json(text: str) -> Any:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise Unreadable("no JSON line")


def rate(x: float, unit: str = "/s") -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.2f}{suffix}{unit}"
    return f"{x:.0f}{unit}"


# --- how each benchmark's output reads ----------------------------------------------------


def parse_replay(out: str) -> list[Row]:
    r = last_json(out)
    rows: list[Row] = []
    tps = r.get("throughputs") or ({"mix": r["throughput"]} if r.get("throughput") else {})
    for shape, tp in tps.items():
        o, p, n = tp["hoptrace"], tp["tshark"], f"{tp['records'] / 1e6:g}M {shape}"
        rows += [
            (f"replay --json, {n} (wall)", rate(o["records_per_s_wall"], " rec/s"),
             f"tshark fields {rate(p['records_per_s_wall'], ' rec/s')}", tp["ratio_wall"], ">= 15x (goal 40x)"),
            (f"replay --json, {n} (CPU)", rate(o["records_per_s_cpu"], " rec/s"),
             f"tshark fields {rate(p['records_per_s_cpu'], ' rec/s')}", tp["ratio_cpu"], ">= 15x (goal 40x)"),
            (f"replay peak RSS, {shape}", f"{o['rss_mb']:.0f} MB", f"tshark {p['rss_mb']:.0f} MB",
             p["rss_mb"] / o["rss_mb"], "<= 150 MB"),
        ]  # fmt: skip
    for shape, st in (r.get("stages") or {}).items():
        split = ", ".join(f"{k} {v['us_per_record']:.3f}" for k, v in st["stages"].items())
        total = sum(v["own_s"] for v in st["stages"].values())
        rows.append((f"replay stages, {shape} (µs/rec)", split, "", None,
                     f"{rate(st['records'] / total, ' rec/s')} in all"))  # fmt: skip
    su = r.get("startup")
    if su:
        v, m = su["version"], su["fixture_median"]
        rows += [
            ("start-up: --version (median)", f"{v['hoptrace_s'] * 1e3:.0f} ms",
             f"tshark {v['tshark_s'] * 1e3:.0f} ms", v["tshark_s"] / v["hoptrace_s"], "< 150 ms"),
            ("start-up: replay a fixture (median)", f"{m['hoptrace_s'] * 1e3:.0f} ms",
             f"tshark {m['tshark_s'] * 1e3:.0f} ms", m["tshark_s"] / m["hoptrace_s"], "< 150 ms"),
        ]  # fmt: skip
    return rows


def parse_read(out: str) -> list[Row]:
    line = r"^{}.*?\s+([\d.]+) s CPU\s+(\d+) records/s \| peak RSS (\d+) MB"
    core, py = num(line.format("core"), out, 2), num(line.format("python"), out, 2)
    return [("read + decode (FileSource), CPU", rate(core, " rec/s"), f"Python reader {rate(py, ' rec/s')}",
             core / py, "—")]  # fmt: skip


def parse_correlate(out: str) -> list[Row]:
    ours = num(r"^correlator: ([\d,]+) records/s", out)
    peer = num(r"^peer \(per-row dict join.*?: ([\d,]+) records/s", out)
    return [("correlator, synthetic NAT stream (CPU)", rate(ours, " rec/s"), f"dict join {rate(peer, ' rec/s')}",
             ours / peer, "—")]  # fmt: skip


def parse_engine(out: str) -> list[Row]:
    rows: list[Row] = []
    for m in re.finditer(r"^\s*(\d+)\s+(yes|no)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", out, re.M):
        flows, ann, peer, ours = m.group(1), m.group(2), float(m.group(3)), float(m.group(4))
        rows.append((f"engine + NDJSON, {flows} flows{', annotated' if ann == 'yes' else ''}",
                     f"core {ours:.2f} µs/rec", f"Python reference {peer:.2f} µs/rec", peer / ours, "—"))  # fmt: skip
    if not rows:
        raise Unreadable("no result rows")
    return rows


def parse_live_cost(out: str) -> list[Row]:
    """bench/live_cost.py: the live consumer (engine + NDJSON) on eBPF-shaped batches, bare and
    with live's annotator, the Python reference engine in the same run."""
    rows: list[Row] = []
    for annotated in ("False", "True"):
        peer = num(rf"^python engine \(before\)\s+annotated={annotated}\s+([\d.]+) ns/sighting", out)
        ours = num(rf"^core Stream \(after\)\s+annotated={annotated}\s+([\d.]+) ns/sighting", out)
        rows.append((f"live consumer{', annotated' if annotated == 'True' else ''}", f"core {ours:.0f} ns/sighting",
                     f"Python reference {peer:.0f} ns/sighting", peer / ours, "<= 250 ns (issue 16)"))
    return rows


def parse_decode(out: str) -> list[Row]:
    """bench/decode_bench.py: the live sources' decode step per batch size, core vs the Python
    decoder they used before."""
    rows: list[Row] = []
    for m in re.finditer(r"^\s*(\d+) \|\s+([\d.]+)\s+([\d.]+) \|\s+([\d.]+)\s+([\d.]+) \|", out, re.M):
        n, ec, ep, tc, tp = m.group(1), *(float(m.group(k)) for k in range(2, 6))
        rows.append((f"eBPF source decode, batch {n}", f"{ec:.0f} ns/sighting", f"Python {ep:.0f} ns", ep / ec, "—"))
        rows.append((f"taps source decode, batch {n}", f"{tc:.0f} ns/sighting", f"Python {tp:.0f} ns", tp / tc, "—"))
    if not rows:
        raise Unreadable("no result rows")
    return rows


def parse_record(out: str) -> list[Row]:
    alone = num(r"^recorder alone:\s+([\d,]+) records/s", out)
    share = num(r"= ([\d.]+)% of the engine's CPU time", out)
    scapy = num(r"^peer scapy RawPcapNgWriter: ([\d,]+) records/s", out)
    export = num(r"^parquet export: ([\d,]+) observations/s", out)
    pandas = num(r"^peer pandas from dicts \+ to_parquet: ([\d,]+) observations/s", out)
    return [
        ("recorder (pcapng writer)", f"{rate(alone, ' rec/s')}, {share:.1f}% of engine",
         f"scapy writer {rate(scapy, ' rec/s')}", alone / scapy, "<= 10% of the engine"),
        ("Parquet export", rate(export, " obs/s"), f"pandas from dicts {rate(pandas, ' obs/s')}", export / pandas,
         ">= 500k obs/s"),
    ]  # fmt: skip


def parse_finish(out: str) -> list[Row]:
    core = num(r"^core PathFinisher\s+[\d.]+\s+\d+\s+(\d+)", out)
    rows: list[Row] = []
    for name in ("python json.dumps",):
        py = num(rf"^{name}\s+[\d.]+\s+\d+\s+(\d+)", out)
        rows.append((f"finish paths: core vs {name}", f"{core:.0f} ns/hop", f"{py:.0f} ns/hop", py / core, "—"))
    return rows


def parse_join(out: str) -> list[Row]:
    core = num(r"^_core\.Joiner via the binding: ([\d.]+) ns/sighting wall", out)
    py = num(r"^tests/reference/correlate\.py: ([\d.]+) ns/sighting", out)
    return [("join sightings: core vs the Python reference", f"{core:.0f} ns/sighting", f"{py:.0f} ns/sighting",
             py / core, "tens of ns")]  # fmt: skip


def parse_live_profile(out: str) -> list[Row]:
    bare = num(r"^engine \+ NDJSON\s+:\s+[\d.]+ s CPU\s+([\d.]+) us/path", out)
    ann = num(r"^engine \+ annotator \+ NDJ\s+:\s+[\d.]+ s CPU\s+([\d.]+) us/path", out)
    return [("annotator cost (engine with / without)", f"{ann:.1f} µs/path", f"bare {bare:.1f} µs/path",
             bare / ann, "—")]  # fmt: skip


def parse_fuzz(out: str) -> list[Row]:
    ours = num(r"our readers ([\d.]+) files/s", out)
    peer = num(r"peer scapy raw readers ([\d.]+) files/s", out)
    fails = "no failures" if re.search(r"^no failures$", out, re.M) else "FAILURES"
    return [(f"fuzz: random files read ({fails})", f"{ours:.0f} files/s", f"scapy {peer:.0f} files/s", ours / peer,
             "no failures")]  # fmt: skip


def parse_ebpf(out: str) -> list[Row]:
    res = last_json(out)
    targets = {"udp": ">= 0.75, 0 lost, <= 25% CPU", "tcp": ">= 0.90, 0 lost, <= 25% CPU"}
    rows: list[Row] = []
    for key, r in sorted(res.items()):
        test, mode = key.split("/")
        if mode == "none":
            continue
        base = res[f"{test}/none"]["rate"]
        unit, scale = (" pps", 1.0) if test == "udp" else (" Gbit/s", 1e9)
        rows.append((f"eBPF {mode}, lab {test.upper()} forwarding",
                     f"{r['rate'] / scale:,.{0 if scale == 1 else 2}f}{unit}, {r['lost']} lost, {r['cpu_pct']:.0f}% CPU",
                     f"no tracer {base / scale:,.{0 if scale == 1 else 2}f}{unit}", r["ratio"], targets[test]))  # fmt: skip
    return rows


def parse_taps(out: str) -> list[Row]:
    m = re.search(r"^ratio taps/tcpdump: ([\d.]+)\s+\(target >= 0\.9; (.*)\)", out, re.M)
    if m is None:
        raise Unreadable("no taps/tcpdump ratio")
    ours = num(r"^taps\s+lossless rate\s+([\d.]+)", out)
    peer = num(r"^tcpdump\s+lossless rate\s+([\d.]+)", out)
    return [(f"taps lossless capture ({m.group(2)})", rate(ours, " sightings/s"), f"tcpdump {rate(peer, '/s')}",
             float(m.group(1)), ">= 0.9x, <= 25% CPU per 100k/s")]  # fmt: skip


def parse_tui(out: str) -> list[Row]:
    sections = re.split(r"^== ", out, flags=re.M)
    ours = next(s for s in sections if s.startswith("hoptrace"))
    peer = next(s for s in sections if not s.startswith(("hoptrace", "ratios")) and "frame_lag_p99_ms" in s)
    o, p = num(r"frame_lag_p99_ms\s+([\d,.]+)", ours), num(r"frame_lag_p99_ms\s+([\d,.]+)", peer)
    ro, rp = num(r"paths_per_s_to_ui\s+([\d,.]+)", ours), num(r"paths_per_s_to_ui\s+([\d,.]+)", peer)
    return [("TUI at 20k paths/s: p99 UI delay", f"{o:.0f} ms", f"DataTable {p:.0f} ms", p / max(o, 0.1), "< 100 ms"),
            ("TUI at 20k paths/s: paths shown", rate(ro, " paths/s"), f"DataTable {rate(rp, ' paths/s')}",
             ro / max(rp, 1), "—")]  # fmt: skip


def parse_lab(out: str) -> list[Row]:
    rows: list[Row] = []
    for engine, target in (("netns", "up <= 3 s"), ("docker", "up <= 20 s")):
        if not re.search(rf"^{engine}\s+up", out, re.M):
            continue
        up = num(rf"^{engine}\s+up\s+median\s+([\d.]+) s", out)
        down = num(rf"^{engine}\s+down median\s+([\d.]+) s", out)
        floor = num(rf"^{engine}\s+peer: ip netns add\+del of its namespaces ([\d.]+) s", out)
        rows.append((f"lab up + down ({engine})", f"{up:.2f} s + {down:.2f} s", f"ip netns {floor:.3f} s",
                     floor / (up + down), target))  # fmt: skip
    if not rows:
        raise Unreadable("no engine figures")
    return rows


def parse_topology(out: str) -> list[Row]:
    ours = num(r"^hoptrace topology --json: median wall ([\d.]+) s", out)
    peer = num(r"^peer \(ip -j .*?median wall ([\d.]+) s", out)
    return [("topology --json, 50 containers", f"{ours:.2f} s", f"ip -j + iptables-save {peer:.2f} s", peer / ours,
             "<= 1 s")]  # fmt: skip


def parse_soak(out: str) -> list[Row]:
    r = last_json(out)
    cap, ul, st = r["capacity_no_tracer"], r["under_load"], r.get("stats", {})
    ok = all(r["checks"].values())
    return [(f"soak {ul['seconds']:.0f} s at {ul['bps'] / (cap['delivered_pps'] * 512 * 8):.0%} ({'all checks ok' if ok else 'CHECKS FAILED'})",
             f"{st.get('lost_events', '?')} lost events, RSS {r['rss_growth']:+.1%}",
             f"capacity {rate(cap['delivered_pps'], ' pps')}", None, "0 lost, RSS +<=10%")]  # fmt: skip


def parse_bpf(out: str) -> list[Row]:
    ours = num(r"^core BpfProgram\.match_frames: ([\d,]+) frames/s wall", out)
    peer = num(r"^peer libpcap pcap_offline_filter per frame \(ctypes\): ([\d,]+) frames/s wall", out)
    same = "verdicts equal" if re.search(r"^verdicts equal on every frame$", out, re.M) else "VERDICTS DIFFER"
    return [(f"path filter (BPF) over frames ({same})", rate(ours, " frames/s"), f"libpcap per frame {rate(peer, '/s')}",
             ours / peer, "—")]  # fmt: skip


def parse_fuzz_core(out: str) -> list[Row]:
    rows = re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(-?\d+)\s+(.+)$", out, re.M)
    rows = [r for r in rows if r[0] != "target"]
    if not rows:
        raise Unreadable("no per-target lines")
    execs = sum(int(r[1]) for r in rows)
    found = [r[0] for r in rows if r[5].strip() != "none" or r[4] != "0"]
    return [(f"fuzz (cargo-fuzz: {', '.join(r[0] for r in rows)})",
             f"{execs:,} executions, {len(found)} with findings{': ' + ', '.join(found) if found else ''}", "", None,
             "no findings")]  # fmt: skip


def parse_report(out: str) -> list[Row]:
    r = last_json(out)
    n = f"{r['records'] / 1e6:g}M"
    p = r["tshark"]
    return [(f"{name}, {n} records (wall)", rate(r[name]["records_per_s_wall"], " obs/s"),
             f"tshark fields {rate(p['records_per_s_wall'], ' rec/s')}", r[name]["ratio_wall"],
             ">= 1M obs/s") for name in ("report", "report --parquet")]  # fmt: skip


# --- the benchmarks -----------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    args: list[str]  # full run; {capture} is the shared generated pcapng
    quick: list[str] | None  # None: not run with --quick
    parse: Callable[[str], list[Row]]
    root: bool = False
    needs: tuple[str, ...] = field(default=())  # executables it runs
    # Lab, kernel, fuzzing and other long runs: their short arguments unless --full.
    long: bool = False


BENCHES = [
    Bench("replay", "replay_bench.py", ["--file", "{capture}", "--records", "{records}", "--runs", "3", "--json"],
          ["--file", "{capture}", "--records", "{records}", "--runs", "1", "--startup-runs", "3", "--json"],
          parse_replay, needs=("tshark",)),
    Bench("report", "report_bench.py", ["--file", "{capture}", "--records", "{records}", "--runs", "3", "--json"],
          ["--file", "{capture}", "--records", "{records}", "--runs", "1", "--json"], parse_report, needs=("tshark",)),
    Bench("read", "read_bench.py", ["--file", "{capture}", "--records", "{records}"],
          ["--file", "{capture}", "--records", "{records}"], parse_read),
    Bench("correlate", "correlate_bench.py", [], ["--records", "100000"], parse_correlate),
    Bench("engine", "engine_bench.py", [], ["--records", "50000", "--flows", "20"], parse_engine),
    Bench("live_cost", "live_cost.py", ["--runs", "3"], ["--records", "50000", "--runs", "1"], parse_live_cost),
    Bench("decode", "decode_bench.py", [], ["--sizes", "64,2048", "--repeat", "3"], parse_decode),
    Bench("finish", "finish_bench.py", ["{capture}"], ["{capture}"], parse_finish),
    Bench("join", "join_bench.py", ["{capture}", "--check"], ["{capture}", "--check"], parse_join),
    Bench("record", "record_bench.py", [], ["--records", "100000", "--peer-records", "20000", "--reps", "1"],
          parse_record, long=True),
    Bench("live_profile", "live_profile.py", [], ["--records", "50000"], parse_live_profile),
    Bench("bpf", "bpf_bench.py", ["--records", "300000"], ["--records", "100000", "--runs", "1"], parse_bpf),
    Bench("fuzz", "fuzz_core.py", ["--seconds", "60"], ["--seconds", "10"], parse_fuzz_core, needs=("cargo",), long=True),
    Bench("fuzz_files", "fuzz_long.py", ["--minutes", "3"], ["--minutes", "0.5", "--examples", "50"], parse_fuzz, long=True),
    Bench("ebpf", "ebpf_bench.py", ["--seconds", "5"], ["--seconds", "2", "--modes", "source"], parse_ebpf,
          root=True, needs=("iperf3", "bpftool"), long=True),
    Bench("taps", "taps_bench.py", ["--reps", "2", "--rates", "50000,0"],
          ["--reps", "1", "--rates", "0", "--seconds", "2"], parse_taps, root=True, needs=("iperf3", "tcpdump"), long=True),
    Bench("tui", "tui_bench.py", [], ["--seconds", "5", "--peer-seconds", "3"], parse_tui, long=True),
    Bench("lab", "lab_bench.py", ["--runs", "3"], ["--runs", "1", "--engine", "netns"], parse_lab, root=True, long=True),
    Bench("topology", "topology_bench.py", ["--runs", "3"], ["--runs", "1"], parse_topology, root=True, long=True),
    Bench("soak", "soak.py", ["--duration", "120", "--json"], None, parse_soak, root=True, needs=("iperf3",), long=True),
]  # fmt: skip
BY_NAME = {b.name: b for b in BENCHES}


def run(b: Bench, argv: list[str], timeout_s: float) -> tuple[int, str]:
    """Run one benchmark, its output streamed with its name in front; (exit status, output)."""
    cmd = [sys.executable, str(ROOT / "bench" / b.script), *argv]
    print(f"\n[{b.name}] $ {' '.join(cmd[1:])}", flush=True)
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert proc.stdout is not None
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        proc.terminate()  # SIGTERM: the lab benchmarks remove what they built

    timer = threading.Timer(timeout_s, stop)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            print(f"[{b.name}] {line}", end="", flush=True)
        code = proc.wait()
    finally:
        timer.cancel()
    if fired.is_set():
        print(f"[{b.name}] timed out after {timeout_s:.0f} s", flush=True)
        code = code or 124
    return code, "".join(lines)


def table(rows: list[Row]) -> str:
    cells = [("benchmark", "ours", "peer", "ratio", "target")]
    cells += [(r[0], r[1], r[2], "—" if r[3] is None else f"{r[3]:.2f}x", r[4]) for r in rows]
    widths = [max(len(c[k]) for c in cells) for k in range(5)]
    out = []
    for i, c in enumerate(cells):
        # the ratio column right-aligned, the rest left
        out.append("  ".join(s.rjust(w) if k == 3 and i else s.ljust(w)
                             for k, (s, w) in enumerate(zip(c, widths, strict=True))).rstrip())  # fmt: skip
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small inputs and short runs, a few minutes in all")
    p.add_argument("--full", action="store_true",
                   help="the lab, kernel and fuzzing benchmarks' full runs (short ones by default; soak only so)")
    p.add_argument("--only", default="", help="comma-separated names (see --list)")
    p.add_argument("--skip", default="", help="comma-separated names not to run")
    p.add_argument("--no-root", action="store_true", help="skip the benchmarks that need root (lab, kernel)")
    p.add_argument("--records", type=int, default=None, help="records in the shared pcapng (1M; --quick 200k)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    p.add_argument("--keep", action="store_true", help="keep the generated pcapng")
    p.add_argument("--list", action="store_true")
    a = p.parse_args(argv)
    if a.list:
        for b in BENCHES:
            extra = ", ".join(filter(None, ["root" if b.root else "", *b.needs, "" if b.quick is not None else "not in --quick"]))
            print(f"{b.name:13} bench/{b.script:20} {extra}")
        return 0
    names = [n for n in a.only.split(",") if n] or [b.name for b in BENCHES]
    unknown = [n for n in names + a.skip.split(",") if n and n not in BY_NAME]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; --list shows them")
    chosen = [BY_NAME[n] for n in names if n not in a.skip.split(",")]
    records = a.records or (200_000 if a.quick else 1_000_000)
    capture = Path(f"/tmp/hoptrace-bench-{records}.pcapng")
    made = False
    rows: list[Row] = []
    failed = []
    took_s: list[str] = []
    t_all = time.monotonic()
    try:
        for b in chosen:
            missing = [x for x in b.needs if not any((Path(d) / x).exists() for d in os.get_exec_path())]
            why = ("needs root" if b.root and os.geteuid() != 0 else "--no-root" if b.root and a.no_root
                   else f"needs {', '.join(missing)}" if missing else None)  # fmt: skip
            if why is None and b.quick is None and (a.quick or (b.long and not a.full)):
                why = None if b.name in a.only.split(",") else "long run: use --full or --only"
            if why:
                rows.append((b.name, f"skipped: {why}", "", None, ""))
                continue
            short = a.quick or (b.long and not a.full)
            args = b.quick if short and b.quick is not None else b.args
            if any("{capture}" in x for x in args) and not capture.exists():
                from gen_pcapng import generate

                t0 = time.perf_counter()
                n = generate(str(capture), records)
                made = True
                print(f"generated {n:,} records in {capture} ({capture.stat().st_size / 1e6:.0f} MB, "
                      f"{time.perf_counter() - t0:.1f} s)")  # fmt: skip
            args = [x.replace("{capture}", str(capture)).replace("{records}", str(records)) for x in args]
            t0 = time.monotonic()
            code, out = run(b, args, a.timeout)
            took = time.monotonic() - t0
            try:
                got = b.parse(out)
            except (Unreadable, KeyError, ValueError, StopIteration) as exc:
                got = []
                why = f"output unreadable ({exc})"
            if code != 0 or not got:
                failed.append(b.name)
                rows.append((b.name, f"FAILED (exit {code})" if code else why or "no figures", "", None, ""))
            rows += got
            took_s.append(f"{b.name} {took:.0f} s")
    finally:
        if made and not a.keep:
            capture.unlink(missing_ok=True)
    print(f"\n== {len(chosen)} benchmarks in {time.monotonic() - t_all:.0f} s ({', '.join(took_s)}), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; ratio > 1: ours is better than the peer\n")
    print(table(rows))
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
