"""`hoptrace topology --json` with 50 "containers" (netns + veth on a bridge), target <= 1 s.

Builds hoptest-<random>-host with a bridge br0 (172.18.0.1/16, MASQUERADE rule,
forwarding) and 50 namespaces hoptest-<random>-cNN, each with eth0 <-> vethNN on
br0 and a default route, then times, in the same run:

* hoptrace:  .venv/bin/hoptrace topology --json   (whole machine, as a user runs it)
* peer:      what one does by hand for the same answer: per namespace
             `ip -j addr` + `ip -j route` (+ `ip -j link` for peers), and
             `iptables-save -t nat` in the host namespace

and prints the medians and the ratio. Everything is removed afterwards, also on failure.
Run as root:  .venv/bin/python bench/topology_bench.py [--containers 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This checkout's hoptrace under this interpreter (make bench runs .venv/bin/python).
HOPTRACE = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tracer.cli import main; sys.exit(main())"]


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def build(prefix: str, n: int) -> list[str]:
    host = f"{prefix}-host"
    names = [host] + [f"{prefix}-c{i:02d}" for i in range(n)]
    for name in names:
        sh("ip", "netns", "add", name)
    batch = ["link add br0 type bridge", "addr add 172.18.0.1/16 dev br0", "link set br0 up"]
    for i in range(n):
        batch += [f"link add veth{i:02d} type veth peer name eth0 netns {prefix}-c{i:02d}",
                  f"link set veth{i:02d} master br0", f"link set veth{i:02d} up"]
    sh("ip", "-n", host, "-batch", "-", stdin="\n".join(batch) + "\n")
    for i in range(n):
        sh("ip", "-n", f"{prefix}-c{i:02d}", "-batch", "-", stdin="\n".join([
            "link set lo up", f"addr add 172.18.{1 + i // 250}.{1 + i % 250}/16 dev eth0",
            "link set eth0 up", "route add default via 172.18.0.1"]) + "\n")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "netns", "exec", host, "iptables", "-t", "nat", "-A", "POSTROUTING",
       "-s", "172.18.0.0/16", "!", "-o", "br0", "-j", "MASQUERADE")
    return names


def teardown(names: list[str]) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_hoptrace() -> tuple[float, float, dict]:
    """Wall and CPU seconds (the CPU time says what an idle machine's wall time would be:
    the work is one thread; the 2 cores here are shared with other jobs)."""
    c, t = _cpu(), time.perf_counter()
    out = subprocess.run([*HOPTRACE, "topology", "--json"], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t, _cpu() - c, json.loads(out)


def time_peer(names: list[str]) -> tuple[float, float]:
    c, t = _cpu(), time.perf_counter()
    for name in names:
        for what in ("link", "addr", "route"):
            subprocess.run(["ip", "-n", name, "-j", what], capture_output=True, check=True)
    subprocess.run(["ip", "netns", "exec", names[0], "iptables-save", "-t", "nat"], capture_output=True,
                   check=True)
    return time.perf_counter() - t, _cpu() - c


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    prefix = f"hoptest-{uuid.uuid4().hex[:8]}"
    names: list[str] = []
    try:
        t = time.perf_counter()
        names = build(prefix, args.containers)
        print(f"built {args.containers} containers in {time.perf_counter() - t:.1f} s ({prefix})")
        ours, ours_cpu, peer, peer_cpu = [], [], [], []
        data: dict = {}
        for _ in range(args.runs):
            dt, cpu, data = time_hoptrace()
            ours.append(dt)
            ours_cpu.append(cpu)
            pt, pc = time_peer(names)
            peer.append(pt)
            peer_cpu.append(pc)
        mine = [ns for ns in data["namespaces"] if ns["node"].startswith(prefix)]
        veths = [i for ns in mine for i in ns["interfaces"]
                 if i["name"] == "eth0" and i["peer"] and i["peer"]["node"] == f"{prefix}-host"]
        assert len(mine) == args.containers + 1, len(mine)
        assert len(veths) == args.containers, len(veths)
        h, p = statistics.median(ours), statistics.median(peer)
        hc, pc = statistics.median(ours_cpu), statistics.median(peer_cpu)
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"hoptrace topology --json: median wall {h:.3f} s, cpu {hc:.3f} s over {args.runs} runs "
              f"({len(data['namespaces'])} namespaces on the machine; target <= 1 s: "
              f"{'met' if h <= 1.0 else 'MISSED'} (wall), {'met' if hc <= 1.0 else 'MISSED'} (cpu))")
        print(f"peer (ip -j link/addr/route per netns + iptables-save): median wall {p:.3f} s, cpu {pc:.3f} s")
        print(f"ratio hoptrace/peer: wall {h / p:.2f}, cpu {hc / pc:.2f}")
    finally:
        teardown(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
