"""Faults while tracing, in the lab: a tapped interface and its namespace vanish (pcap backend);
the eBPF ring overflows under a burst (loss counted, the tracer catches up afterwards)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.helpers import Live, lab_inodes, lab_tap_ifaces, paths_in
from tracer.model import ObsBatch

pytestmark = [pytest.mark.root, pytest.mark.lab]

SERVER = "198.51.100.8"


@pytest.fixture
def doomed_ns() -> Any:
    """A namespace of our own with an interface up: the test deletes both while a tap is on it."""
    name = f"hoptest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # a veth pair with both ends inside (no dummy module on this kernel)
        subprocess.run(["ip", "-n", name, "link", "add", "doomed0", "type", "veth", "peer", "name", "doomed1"],
                       check=True)
        for dev in ("doomed0", "doomed1"):
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_tapped_namespace_deleted_tracing_goes_on(lab_netns: Any, doomed_ns: str, tmp_path: Path) -> None:
    lab = lab_netns
    inode = os.stat(f"/run/netns/{doomed_ns}").st_ino
    with Live(tmp_path, "pcap", *lab_tap_ifaces(lab), "--iface", f"netns:{inode}/doomed0") as live:
        assert lab.run("internet-ping").ok
        # the interface goes, then the namespace (a tap's socket would keep the namespace alive)
        subprocess.run(["ip", "-n", doomed_ns, "link", "del", "doomed0"], check=True)
        subprocess.run(["ip", "netns", "del", doomed_ns], check=True)
        time.sleep(2.5)  # the taps' re-discovery runs every second or so
        assert live.proc.poll() is None, live.proc.communicate()[1]
        after = time.time_ns()
        for scenario in ("internet-ping", "udp"):
            result = lab.run(scenario)
            assert result.ok, result.detail
        rc, records, err = live.stop(signal.SIGINT)
    assert rc == 0, err
    assert "Traceback" not in err
    assert "doomed0" in err, err  # a notice says the tap went away (not silence, not a crash)
    paths = paths_in(records, lab_inodes(lab))
    later = {p["proto"] for p in paths if p["hops"][0]["ts_ns"] >= after}
    assert {"icmp", "udp"} <= later, f"no paths after the namespace went: {later}"
    assert records[-1]["type"] == "stats"


BURST = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    s.sendto(b"hoptrace burst %d" % i, ("198.51.100.8", 9))
"""


def test_ring_overflow_is_counted_and_tracing_catches_up(lab_netns: Any) -> None:
    """A 16 KiB ring (~90 sightings) and a 2000-datagram burst while nobody reads it: the loss
    shows in lost_events, and the paths made after the reader caught up are complete."""
    from probes.skb_hops import EbpfSource
    from tests.taps.helpers import correlate

    lab = lab_netns
    inodes = lab_inodes(lab)
    src = EbpfSource(netns=set(inodes), ring_pages=4)
    src.start()
    batches: list[ObsBatch] = []
    errors: list[BaseException] = []
    reading = threading.Event()

    def reader() -> None:
        reading.wait()
        try:
            batches.extend(src.batches())
        except BaseException as exc:  # re-raised below in the test's thread
            errors.append(exc)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        burst = lab.exec("client", [sys.executable, "-c", BURST, "2000"])
        assert burst.returncode == 0, burst.stderr
        reading.set()  # the reader starts only now: the ring overflowed meanwhile
        time.sleep(1.0)
        lost = src.lost_events
        assert lost > 0, "the burst did not overflow a 16 KiB ring"
        mark = time.time_ns()
        for scenario in ("internet-ping", "udp"):
            result = lab.run(scenario)
            assert result.ok, result.detail
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        reading.set()
        src.stop()
        t.join(timeout=20)
    assert not t.is_alive() and not errors, errors
    assert src.lost_events == lost, "sightings were lost after the burst, at a trickle"
    paths = [p for p in correlate(batches) if p.hops and p.hops[0].ts_ns >= mark]
    protos = {}
    for p in paths:
        nodes = [inodes.get(h.netns) for h in p.hops]
        if nodes[:1] == ["client"] and "inet" in nodes:
            protos[p.hops[0].proto] = len(p.hops)
    # ICMP 1 and UDP 17: each request went client -> host -> inet, every hop seen
    assert set(protos) >= {1, 17}, protos
    assert min(protos.values()) >= 4, protos
