"""One clock: ``hoptrace live --backend ebpf`` stamps sightings in UTC nanoseconds like every
other source, so its NDJSON ts_ns are now and a --record file is dated today, not 1970."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_hoptrace
from tests.record.test_record import tshark
from tests.taps.helpers import Live, lab_inodes

pytestmark = [pytest.mark.root, pytest.mark.lab]

SLACK_NS = 60 * 1_000_000_000


def test_ebpf_stamps_are_utc_now(lab_netns: Any, tmp_path: Path) -> None:
    rec = tmp_path / "ebpf.pcapng"
    inodes = lab_inodes(lab_netns)
    t0 = time.time_ns()
    tracing = Live("ebpf", (), "--record", str(rec))
    try:
        result = lab_netns.run("internet-ping")
        assert result.ok, result.detail
        live, _err = tracing.stop(settle_s=1.0)
    finally:
        tracing.kill()
    t1 = time.time_ns()
    hops = [h for d in live if d["type"] == "path" for h in d["hops"] if h["netns"] in inodes]
    assert hops, "no sighting in the lab's namespaces"
    for h in hops:
        assert t0 - SLACK_NS <= h["ts_ns"] <= t1 + SLACK_NS, (h["ts_ns"], t0, t1)
    # the recording, read back by the core's reader: the same instants
    r = run_hoptrace("replay", str(rec), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    replayed = [h for line in r.stdout.splitlines() if (d := json.loads(line))["type"] == "path"
                for h in d["hops"]]
    assert replayed and all(t0 - SLACK_NS <= h["ts_ns"] <= t1 + SLACK_NS for h in replayed)
    # and as Wireshark dates it: today (UTC), not Jan 1, 1970
    out = tshark(rec, "-T", "fields", "-e", "frame.time_epoch", "-c", "50")
    assert out.returncode == 0, out.stderr
    epochs = [float(x) for x in out.stdout.split()]
    assert epochs
    today = datetime.now(UTC).date()
    for e in epochs:
        assert abs(e * 1e9 - (t0 + t1) / 2) <= (t1 - t0) / 2 + SLACK_NS, e
        day = datetime.fromtimestamp(e, UTC).date()
        assert abs((day - today).days) <= 1, day


WINDOW_NS = 5_000_000  # a sighting and tcpdump's copy of the same packet: a few ms apart at most
FIELDS = ("frame.time_epoch", "frame.interface_name", "ip.id", "ip.src", "ip.dst", "ip.proto", "icmp.seq",
          "tcp.seq_raw")


def test_mergecap_puts_each_sighting_beside_tcpdumps_copy(lab_netns: Any, tmp_path: Path) -> None:
    """eBPF records the lab's host while tcpdump captures its eth0: merged by time (mergecap),
    each packet tcpdump saw sits beside the tracer's host/eth0 sighting of it, a few ms apart
    at most (both stamps are UTC: the kernel's monotonic clock converted, and tcpdump's)."""
    rec, dump, merged = tmp_path / "ebpf.pcapng", tmp_path / "tcpdump.pcap", tmp_path / "merged.pcapng"
    host_ino = lab_netns.netns_inode("host")
    tracing = Live("ebpf", [f"netns:{host_ino}/eth0"], "--record", str(rec), "--max-cpu", "0")
    tcpdump = subprocess.Popen(["nsenter", f"--net={lab_netns.netns_path('host')}", "--", "tcpdump", "-i", "eth0",
                                "-n", "-U", "--time-stamp-precision=nano", "-w", str(dump), "icmp or tcp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert tcpdump.stderr is not None
        assert "listening on" in tcpdump.stderr.readline()
        for scenario in ("internet-ping", "internet-ping", "internet-ping", "published-port"):
            result = lab_netns.run(scenario)
            assert result.ok, (scenario, result.detail)
        _live, _err = tracing.stop(settle_s=1.0)
    finally:
        tracing.kill()
        tcpdump.terminate()  # tcpdump, started here, by its pid
        tcpdump.wait(timeout=30)
    out = subprocess.run(["mergecap", "-w", str(merged), str(rec), str(dump)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    args = [a for f in FIELDS for a in ("-e", f)]
    out = tshark(merged, "-T", "fields", "-E", "separator=|", *args, "-Y", "icmp or tcp")
    assert out.returncode == 0, out.stderr
    frames = []
    for line in out.stdout.splitlines():
        epoch, iface, *key = line.split("|")
        ns = int(epoch.replace(".", "").ljust(19, "0")[:19])  # nanoseconds, exactly
        # ICMP errors quote a header: the first value of each field is the packet's own
        frames.append((ns, iface, tuple(k.split(",")[0] for k in key)))
    copies = [i for i, (_ns, iface, _k) in enumerate(frames) if "/" not in iface]  # tcpdump's: no node/
    traced = [i for i, (_ns, iface, _k) in enumerate(frames) if iface == "host/eth0"]
    assert len(copies) >= 10, "tcpdump saw too little"  # 3 echoes, 3 replies, the TCP exchange
    assert len(traced) == len(copies), (len(traced), len(copies))
    for i in copies:
        ns, _iface, key = frames[i]
        mine = [j for j in traced if frames[j][2] == key]
        assert len(mine) == 1, (key, mine)
        j = mine[0]
        assert abs(frames[j][0] - ns) <= WINDOW_NS, (key, frames[j][0] - ns)
        # side by side in the merged order: what lies between them was seen within the window
        # too (this packet at the other host hops; the recording is in arrival order, which
        # may put a sighting from another CPU's batch a few us out of time order)
        lo, hi = min(ns, frames[j][0]) - WINDOW_NS, max(ns, frames[j][0]) + WINDOW_NS
        between = frames[min(i, j) + 1:max(i, j)]
        assert all(lo <= t <= hi for t, _iface, _k in between), (key, between)
