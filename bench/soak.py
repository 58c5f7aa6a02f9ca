"""Soak: ``hoptrace live --backend ebpf --record`` under steady UDP load in the lab.

Run as root: ``.venv/bin/python bench/soak.py [--duration 600] [--load 0.5] [--json]``.

1. builds a netns-engine lab (unique ``hoptest-`` prefix; removed at the end, also on failure);
2. measures the lab's UDP capacity without the tracer (iperf3 client -> inet across the host's
   MASQUERADE, unlimited rate, ``--size``-byte datagrams): the peer figure of this run;
3. runs the tracer (eBPF backend, ``--record`` on, kernel-side filtered to the iperf3 port so
   other labs' traffic stays out) while iperf3 sends at ``--load`` x that capacity for
   ``--duration`` seconds, sampling the tracer's RSS, open fds and threads every ``--every`` s;
4. prints the figures and checks: RSS growth after warm-up <= 10 %, lost events 0, fd and
   thread counts flat, every datagram iperf3 delivered seen as a path. Exit 0 when all hold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracer.lab import Lab  # noqa: E402

# This checkout's hoptrace under this interpreter (make bench runs .venv/bin/python).
HOPTRACE = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tracer.cli import main; sys.exit(main())"]
SERVER = "198.51.100.8"
PORT = 5299  # not iperf3's default: nothing else on the machine uses it


def iperf_client(lab: Lab, rate_bps: int, seconds: float, size: int) -> dict[str, Any]:
    """One iperf3 UDP run from client to inet; the receiver's figures."""
    argv = ["iperf3", "-c", SERVER, "-p", str(PORT), "-u", "-b", str(rate_bps), "-l", str(size),
            "-t", str(seconds), "-i", "0", "-J"]
    for _attempt in range(3):
        r = lab.exec("client", argv, timeout=seconds + 30)
        data = json.loads(r.stdout or "{}")
        if r.returncode == 0 and "sum" in data.get("end", {}):
            break
        time.sleep(1.0)  # e.g. "the server is busy": the previous test is still being closed
    else:
        raise RuntimeError(f"iperf3 failed: {data.get('error') or r.stderr.strip()}")
    s = data["end"]["sum"]
    return {"sent_packets": int(s["packets"]), "lost_packets": int(s["lost_packets"]),
            "seconds": float(s["seconds"]), "bps": float(s["bits_per_second"]),
            "delivered_pps": (int(s["packets"]) - int(s["lost_packets"])) / float(s["seconds"])}


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds by kind (socket, anon_inode:bpf-map, a file, ...): what a leak would be made of."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split("[")[0] if "[" in target else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    ticks = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "cpu_s": (int(stat[11]) + int(stat[12])) / ticks}


def soak(lab: Lab, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    capacity = iperf_client(lab, 0, args.measure_s, args.size)
    # capacity = what the receiver got (iperf3's sender outruns the path and loses the rest)
    pps = capacity["delivered_pps"] * args.load
    if args.max_pps:
        pps = min(pps, args.max_pps)
    rate_bps = int(pps * args.size * 8)
    ready = work / "ready"
    rec = work / "soak.pcapng"
    argv = [*HOPTRACE, "live", "--backend", "ebpf", "--json", "--ready-file", str(ready),
            # "udp and port N", not "udp port N": only conjuncts of one kind reach the kernel filter
            "--filter", f"udp and port {PORT}",
            # every datagram is to be traced: no CPU budget (it would sample rather than fall behind)
            "--max-cpu", "0"]
    if not args.no_record:
        argv += ["--record", str(rec), "--record-max-mb", str(args.record_mb), "--record-files", "2"]
    err_path = work / "live.err"
    counts = {"udp_paths": 0, "lines": 0}
    last_line = [""]

    def read_ndjson(stream: Any) -> None:
        # counted as read (10 minutes of NDJSON is gigabytes): what a consumer of --json does
        for line in stream:
            counts["lines"] += 1
            if line.startswith('{"type": "path"') and '"proto": "udp"' in line:
                counts["udp_paths"] += 1
            last_line[0] = line

    with err_path.open("w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        reader = threading.Thread(target=read_ndjson, args=(proc.stdout,), daemon=True)
        reader.start()
        if args.nice:
            # diagnostic: is the tracer short of CPU on a shared machine, or slow?
            os.setpriority(os.PRIO_PROCESS, proc.pid, args.nice)
        try:
            t0 = time.monotonic()
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() - t0 > 60:
                    raise RuntimeError(f"tracer did not get ready: {err_path.read_text()[-500:]}")
                time.sleep(0.05)
            samples: list[dict[str, float]] = []
            fds_at_start = fd_kinds(proc.pid)
            # iperf3's JSON goes to a file: a pipe nobody reads until the end fills up and blocks it
            iperf_json = work / "iperf3.json"
            with iperf_json.open("w") as iperf_out:
                load = subprocess.Popen(
                    ["nsenter", f"--net={lab.netns_path('client')}", "--", "iperf3", "-c", SERVER, "-p", str(PORT),
                     "-u", "-b", str(rate_bps), "-l", str(args.size), "-t", str(args.duration), "-i", "0", "-J"],
                    stdout=iperf_out, stderr=subprocess.PIPE, text=True)
                start = time.monotonic()
                try:
                    while load.poll() is None and time.monotonic() - start < args.duration + 60:
                        samples.append({"t_s": round(time.monotonic() - start, 1), **sample(proc.pid)})
                        time.sleep(args.every)
                    samples.append({"t_s": round(time.monotonic() - start, 1), **sample(proc.pid)})
                    fds_at_end = fd_kinds(proc.pid)
                finally:
                    if load.poll() is None:
                        load.kill()
                    _, iperf_err = load.communicate()
            data = json.loads(iperf_json.read_text() or "{}")
            if "sum" not in data.get("end", {}):
                raise RuntimeError(f"iperf3 under load failed: {data.get('error') or iperf_err.strip()}")
            s = data["end"]["sum"]
            under_load = {"sent_packets": int(s["packets"]), "lost_packets": int(s["lost_packets"]),
                          "seconds": float(s["seconds"]), "bps": float(s["bits_per_second"])}
            time.sleep(1.0)  # the last datagrams leave the kernel and the correlator's window
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    reader.join(timeout=60)
    stats = json.loads(last_line[0]) if last_line[0] else {}
    udp_paths = counts["udp_paths"]
    # warm-up: the topology discovery, conntrack and Docker sockets open after the ready file
    warm_s = min(max(args.duration * args.warmup, 15.0), args.duration * 0.5)
    warm = [x for x in samples if x["t_s"] >= warm_s]
    # RSS swings with the garbage collector and the batch sizes: compare the median of the
    # first and of the last third of the warm samples; fds and threads: the steady (lowest) count
    # of each third (the topology re-discovery opens namespace fds and a thread for a moment)
    third = max(1, len(warm) // 3)
    first, last = warm[:third], warm[-third:]
    rss0 = int(statistics.median(x["rss_kb"] for x in first))
    rss1 = int(statistics.median(x["rss_kb"] for x in last))
    delivered = under_load["sent_packets"] - under_load["lost_packets"]
    result = {
        "lab": lab.prefix, "duration_s": args.duration, "load": args.load, "max_pps": args.max_pps, "datagram_bytes": args.size,
        "capacity_no_tracer": capacity, "rate_bps": rate_bps, "under_load": under_load,
        "tracer_exit": rc, "stats": stats, "udp_paths": udp_paths, "delivered_datagrams": delivered,
        "rss_after_warmup_kb": rss0, "rss_end_kb": rss1, "rss_growth": round((rss1 - rss0) / rss0, 4),
        "rss_max_kb": max(x["rss_kb"] for x in samples),
        "tracer_cpu": round((samples[-1]["cpu_s"] - samples[0]["cpu_s"])
                            / max(samples[-1]["t_s"] - samples[0]["t_s"], 0.1), 2),
        "fds": sorted({x["fds"] for x in warm}), "threads": sorted({x["threads"] for x in warm}),
        "fds_steady": [min(x["fds"] for x in first), min(x["fds"] for x in last)],
        "threads_steady": [min(x["threads"] for x in first), min(x["threads"] for x in last)],
        "fd_kinds": {"start": fds_at_start, "end": fds_at_end},
        "samples": samples, "stderr": err_path.read_text()[-1000:],
    }
    result["checks"] = {
        "exit 0": rc == 0,
        "stats last": stats.get("type") == "stats",
        "rss growth <= 10%": result["rss_growth"] <= 0.10,
        "lost events 0": stats.get("lost_events") == 0,
        "fds flat": result["fds_steady"][1] - result["fds_steady"][0] <= 2,
        "threads flat": result["threads_steady"][1] <= result["threads_steady"][0],
        # each datagram iperf3 delivered crossed client/eth0 .. inet/eth0: a path of its own
        "every delivered datagram traced": udp_paths >= delivered,
    }
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=600, help="seconds under load (default 600)")
    p.add_argument("--load", type=float, default=0.5, help="fraction of the measured capacity (default 0.5)")
    p.add_argument("--max-pps", type=int, default=0,
                   help="cap the load at this many datagrams/s (0: no cap); the CI test caps it at what "
                        "the tracer sustains on a shared 2-core machine")
    p.add_argument("--size", type=int, default=512, help="UDP payload bytes (default 512)")
    p.add_argument("--measure-s", type=int, default=4, help="capacity measurement seconds")
    p.add_argument("--every", type=float, default=3.0, help="sampling period, seconds")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the run that is warm-up (at least 15 s)")
    p.add_argument("--record-mb", type=int, default=256, help="recording ring: 2 files of this size")
    p.add_argument("--nice", type=int, default=0, help="the tracer's nice value (diagnostic, e.g. -10)")
    p.add_argument("--no-record", action="store_true", help="without --record (to see what recording costs)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = p.parse_args()
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        print("soak: needs root and iperf3", file=sys.stderr)
        return 2
    # SIGTERM (e.g. timeout(1)) unwinds like Ctrl-C, so the lab and the processes are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lab = Lab("netns", f"hoptest-soak{uuid.uuid4().hex[:6]}")
    server = None
    with tempfile.TemporaryDirectory(prefix="hoptrace-soak-") as tmp:
        try:
            lab.up()
            server = subprocess.Popen(["nsenter", f"--net={lab.netns_path('inet')}", "--", "iperf3", "-s",
                                       "-B", SERVER, "-p", str(PORT)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.wait_tcp("client", SERVER, PORT, "iperf3 server")
            result = soak(lab, args, Path(tmp))
        finally:
            if server is not None:
                server.kill()
                server.wait()
            lab.down()
    if args.json:
        print(json.dumps(result))
    else:
        cap, ul = result["capacity_no_tracer"], result["under_load"]
        print(f"capacity without tracer: {cap['bps'] / 1e6:.0f} Mbit/s, {cap['delivered_pps']:.0f} datagrams/s "
              f"({args.size} B)")
        print(f"under load with tracer: {ul['bps'] / 1e6:.0f} Mbit/s for {ul['seconds']:.0f} s "
              f"({ul['bps'] / (cap['delivered_pps'] * args.size * 8):.0%} of capacity), {ul['lost_packets']} of {ul['sent_packets']} datagrams lost "
              f"on the wire")
        st = result["stats"]
        print(f"tracer: {st.get('observations')} observations, {st.get('paths')} paths "
              f"({result['udp_paths']} udp for {result['delivered_datagrams']} delivered), "
              f"lost_events {st.get('lost_events')}; tracer CPU {result['tracer_cpu']:.0%} of a core")
        print(f"RSS median after warm-up {result['rss_after_warmup_kb'] / 1024:.1f} MiB -> end "
              f"{result['rss_end_kb'] / 1024:.1f} MiB (growth {result['rss_growth']:+.1%}, max "
              f"{result['rss_max_kb'] / 1024:.1f} MiB); fds steady {result['fds_steady']} (seen {result['fds']}); "
              f"threads steady {result['threads_steady']} (seen {result['threads']})")
        print(f"fds by kind: start {result['fd_kinds']['start']}, end {result['fd_kinds']['end']}")
        for name, ok in result["checks"].items():
            print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
