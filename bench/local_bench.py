"""What the lookups of who took a packet (tracer/annotate/local.py) cost the traced traffic.

Run as root: ``.venv/bin/python bench/local_bench.py [--seconds 5] [--runs 3]``.

Builds a netns lab of its own, runs a server in ``web`` that accepts and closes, and a client
in ``client`` that opens short TCP connections one after the other as fast as it can (each
one a new flow that ends locally twice: at the server and back at the client, so every
connection costs two lookups). Measures connections/s with no tracer (the peer), with
``hoptrace live --backend ebpf --json --no-local`` (before: no lookups) and with ``live
--json`` (after: lookups on), and prints medians, the ratios, how many flow lines carried a
``"local"``, the tracer's CPU, and the load average (2 cores shared: read the numbers with it).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracer.lab import Lab  # noqa: E402
from tracer.lab import addresses as A  # noqa: E402

HOPTRACE = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tracer.cli import main; sys.exit(main())"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT = 9000

SERVER = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{A.WEB}", {PORT})); s.listen(512)
print("up", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"x"); c.close()
"""

CLIENT = f"""
import socket, sys, time
end = time.monotonic() + float(sys.argv[1]); n = 0
while time.monotonic() < end:
    c = socket.create_connection(("{A.WEB}", {PORT})); c.recv(1); c.close(); n += 1
print(n)
"""


def cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK


def flood(lab: Lab, seconds: float) -> float:
    r = lab.exec("client", [sys.executable, "-c", CLIENT, str(seconds)], timeout=seconds + 30)
    assert r.returncode == 0, r.stderr
    return int(r.stdout) / seconds


def traced(lab: Lab, seconds: float, extra: list[str]) -> tuple[float, float, int, int]:
    """(connections/s, tracer CPU % of a core, flow lines, flow lines with "local")."""
    ready = Path(f"/dev/shm/hoptrace-lb-{uuid.uuid4().hex[:6]}")
    out = Path(f"{ready}.ndjson")
    with out.open("w") as f:
        proc = subprocess.Popen([*HOPTRACE, "live", "--backend", "ebpf", "--json", "--max-cpu", "0",
                                 "--ready-file", str(ready), *extra, f"tcp port {PORT}"],
                                stdout=f, stderr=subprocess.PIPE, text=True)
        try:
            while not ready.exists():
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.05)
            c0, t0 = cpu_s(proc.pid), time.monotonic()
            rate = flood(lab, seconds)
            cpu = (cpu_s(proc.pid) - c0) / (time.monotonic() - t0) * 100
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    flows = with_local = 0
    with out.open() as f:
        for line in f:
            if line.startswith('{"type": "flow"'):
                flows += 1
                with_local += '"local"' in line
    out.unlink()
    return rate, cpu, flows, with_local


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    lab = Lab("netns", f"hoptest-lb{uuid.uuid4().hex[:6]}")
    lab.up()
    server = subprocess.Popen(["nsenter", f"--net={lab.netns_path('web')}", "--", sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        rows: dict[str, list[tuple[float, float, int, int]]] = {"none": [], "before": [], "after": []}
        for _ in range(args.runs):  # interleaved: the machine's load drifts
            rows["none"].append((flood(lab, args.seconds), 0.0, 0, 0))
            rows["before"].append(traced(lab, args.seconds, ["--no-local"]))
            rows["after"].append(traced(lab, args.seconds, []))
        base = statistics.median(r[0] for r in rows["none"])
        print(f"short TCP connections client -> web:{PORT}, {args.seconds:g} s x {args.runs} runs, "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for name, label in (("none", "no tracer"), ("before", "live --no-local (before)"),
                            ("after", "live (after: lookups)")):
            rs = rows[name]
            rate = statistics.median(r[0] for r in rs)
            cpu = statistics.median(r[1] for r in rs)
            flows = sum(r[2] for r in rs)
            local = sum(r[3] for r in rs)
            print(f"  {label:28} {rate:8.0f} conn/s  ({', '.join(f'{r[0]:.0f}' for r in rs)})  "
                  f"{rate / base:5.2f}x  tracer CPU {cpu:5.1f}%  flows {flows}, with local {local}")
    finally:
        server.kill()
        server.wait()
        lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
