"""TapSource against the real kernel in a netns lab: hops, direction, NAT, filters, drops,
hot-plug. Root; the lab (``lab_netns``) is built and removed by the fixture."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from typing import Any

import pytest

from tests.taps.helpers import (
    CONTAINER_PING_REQUEST,
    INTERNET_PING_REPLY,
    INTERNET_PING_REQUEST,
    PUBLISHED_PORT_SYN,
    Capture,
    correlate,
    expected,
    find_path,
    hop_seq,
    host_veths,
    lab_iface,
    lab_ifaces,
    lab_inodes,
    nat_tuples,
)
from tracer.lab import addresses as A
from tracer.sources.taps import TapSource

# The target is 2 s (typically ~0.2-0.6 s here); the bound is looser so that a loaded
# machine does not fail a functional test on timing.
HOTPLUG_S = 5.0

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _run(lab: Any, scenario: str, **kw: Any) -> Capture:
    with Capture(TapSource(lab_ifaces(lab), **kw)) as cap:
        result = lab.run(scenario)
        cap.stop()
    assert result.ok, result.detail
    return cap


def test_default_set_is_bridge_ports_containers_and_uplink(lab_netns: Any) -> None:
    veths = host_veths(lab_netns)
    src = TapSource(lab_ifaces(lab_netns))
    src.start()
    try:
        labels = sorted(t.spec.label for t in src.taps.values())
        assert all(t.linktype == 1 and t.ifindex > 0 for t in src.taps.values())
    finally:
        src.stop()
        src.join(timeout=10)
    assert not src.taps, "stop() left taps open"
    assert labels == sorted(["client/eth0", "web/eth0", "host/docker0", "host/eth0",
                             f"host/{veths['vC']}", f"host/{veths['vW']}"])


def test_internet_ping_hops_and_masquerade(lab_netns: Any) -> None:
    veths = host_veths(lab_netns)
    cap = _run(lab_netns, "internet-ping")
    paths = correlate(cap.batches)
    assert paths, f"no paths from {len(cap.observations())} sightings in {len(cap.batches)} batches"
    req = find_path(paths, lambda o: o.proto == 1 and o.icmp_type == 8 and o.dst == A.SERVER)
    assert hop_seq(req) == expected(INTERNET_PING_REQUEST, veths)
    assert all(h.source == "pcap" and h.skb is None for h in req.hops)
    assert nat_tuples(req) == [
        ("snat", "host", 2, 3,
         {"src": A.CLIENT, "sport": None, "dst": A.SERVER, "dport": None},
         {"src": A.HOST_UPLINK, "sport": None, "dst": A.SERVER, "dport": None})]
    assert req.nat[0].hook == "POSTROUTING"
    assert req.verdict == "left"
    rep = find_path(paths, lambda o: o.proto == 1 and o.icmp_type == 0 and o.src == A.SERVER)
    assert hop_seq(rep) == expected(INTERNET_PING_REPLY, veths)
    assert nat_tuples(rep) == [
        ("dnat", "host", 0, 1,
         {"src": A.SERVER, "sport": None, "dst": A.HOST_UPLINK, "dport": None},
         {"src": A.SERVER, "sport": None, "dst": A.CLIENT, "dport": None})]
    assert rep.verdict == "delivered"
    # Timestamps are per hop and in path order (CLOCK_REALTIME, ns).
    assert [h.ts_ns for h in req.hops] == sorted(h.ts_ns for h in req.hops)
    assert abs(req.first.ts_ns - time.time_ns()) < 60 * 10**9


def test_published_port_dnat(lab_netns: Any) -> None:
    veths = host_veths(lab_netns)
    paths = correlate(_run(lab_netns, "published-port").batches)
    syn = find_path(paths, lambda o: o.proto == 6 and o.tcp_flags == 0x02
                    and o.dport == A.PUBLISHED_PORT)
    assert hop_seq(syn) == expected(PUBLISHED_PORT_SYN, veths)
    assert [(k, node, f, t) for k, node, f, t, _, _ in nat_tuples(syn)] == [("dnat", "host", 0, 1)]
    assert syn.nat[0].before.dst == A.HOST_UPLINK and syn.nat[0].before.dport == A.PUBLISHED_PORT
    assert syn.nat[0].after.dst == A.WEB and syn.nat[0].after.dport == A.WEB_PORT
    assert syn.nat[0].hook == "PREROUTING"


def test_container_ping_is_bridged_without_nat(lab_netns: Any) -> None:
    veths = host_veths(lab_netns)
    paths = correlate(_run(lab_netns, "container-ping").batches)
    req = find_path(paths, lambda o: o.proto == 1 and o.icmp_type == 8 and o.dst == A.WEB)
    # No docker0 hop: the taps never make the bridge promiscuous, so bridged frames
    # do not pass up through it (the eBPF probes do not see them there either).
    assert hop_seq(req) == expected(CONTAINER_PING_REQUEST, veths)
    assert req.nat == ()
    assert req.verdict == "delivered"


def test_protocol_filter_goes_into_the_kernel(lab_netns: Any) -> None:
    src = TapSource(lab_ifaces(lab_netns), bpf_filter="udp")
    assert src.kernel_filter == "udp"
    with Capture(src) as cap:
        assert lab_netns.run("internet-ping").ok
        assert lab_netns.run("udp").ok
        cap.stop()
    protos = {o.proto_name for o in cap.observations()}
    assert protos == {"udp"}


def test_address_filter_stays_in_userspace(lab_netns: Any) -> None:
    # "host 172.17.0.3" matches the request only before MASQUERADE; the path is kept because
    # one hop matches, so the hop after it (source 203.0.113.2) must not be dropped per hop.
    src = TapSource(lab_ifaces(lab_netns), bpf_filter=f"host {A.CLIENT}")
    assert src.kernel_filter is None
    with Capture(src) as cap:
        assert lab_netns.run("internet-ping").ok
        cap.stop()
    seen = {(o.node, o.ifname, o.src) for o in cap.observations() if o.proto == 1 and o.icmp_type == 8}
    assert ("client", "eth0", A.CLIENT) in seen
    assert ("host", "eth0", A.HOST_UPLINK) in seen


def test_snaplen_cuts_frames_but_keeps_wire_length(lab_netns: Any) -> None:
    with Capture(TapSource([lab_iface(lab_netns, "client", "eth0")], snaplen=64)) as cap:
        lab_netns.exec("client", ["busybox", "ping", "-c", "1", "-s", "1000", "-W", "2", A.WEB],
                       check=True, capture_output=True)
        cap.stop()
    big = [o for o in cap.observations() if o.proto == 1 and o.length == 1028]
    assert big, "the 1000-byte ping was not seen"
    assert {(len(o.frame), o.wire_len) for o in big} == {(64, 1042)}


FLOOD = 30000


def _flood(lab: Any) -> None:
    code = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for i in range({FLOOD}): s.sendto(b'x'*32, ('{A.WEB}', 9))\n")
    lab.exec("client", ["python3", "-c", code], check=True, capture_output=True)


def test_sightings_held_shorter_than_the_retire_timer_are_counted_late(lab_netns: Any) -> None:
    """The reorder window's guarantee is checked, not assumed. A flood client -> internet
    fills client/eth0's and its veth's ring blocks at once, while the ping replies web ->
    client wait in web's blocks for the retire timer: with a 32 ms timer and a 1 ms window
    the replies' later hops come out before their first (late_events > 0); with the
    defaults none does."""
    flood = lab_netns.spawn("client", ["python3", "-c", (
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "end = time.monotonic() + 30\n"
        f"while time.monotonic() < end: s.sendto(b'x' * 32, ('{A.SERVER}', 9))\n")], "late-flood")
    try:
        for kw, late in (({"retire_ms": 32, "reorder_ms": 1}, True), ({}, False)):
            src = TapSource(lab_ifaces(lab_netns), **kw)
            with Capture(src) as cap:
                lab_netns.exec("client", ["busybox", "ping", "-q", "-c", "40", "-i", "0.02", "-W", "1", A.WEB],
                               check=True, capture_output=True)
                cap.stop()
            # From the rows: the flood's ~10^5 sightings as Observation objects take seconds.
            replies = sum(int(((b.rows["proto"] == 1) & (b.rows["icmp_type"] == 0)).sum()) for b in cap.batches)
            assert replies >= 4 * 20, (kw, replies)  # the flood may cost a few
            assert (src.late_events > 0) == late, (kw, src.late_events)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(flood.pid, signal.SIGTERM)


def test_kernel_drops_are_counted_never_silent(lab_netns: Any) -> None:
    """A tiny ring read too rarely: the kernel drops, lost_events says how many."""
    src = TapSource([lab_iface(lab_netns, "web", "eth0")], ring_mb=1, drain_ms=400, batch_ms=400)
    with Capture(src) as cap:
        _flood(lab_netns)
        time.sleep(1.5)  # socket statistics are read once a second
        cap.stop()
    seen = sum(1 for o in cap.observations() if o.proto == 17 and o.dport == 9)
    assert src.lost_events > 0
    assert seen + src.lost_events >= FLOOD * 0.95, (seen, src.lost_events)


def test_a_stalled_consumer_costs_memory_then_sheds_never_silently(lab_netns: Any) -> None:
    """The reader thread keeps draining the rings while the consumer is busy; beyond
    max_pending waiting sightings the oldest are shed and counted."""
    stalled = []

    def stall(_batch: Any) -> None:
        if not stalled:
            stalled.append(True)
            time.sleep(2.0)

    src = TapSource([lab_iface(lab_netns, "web", "eth0")], max_pending=5000)
    with Capture(src, on_batch=stall) as cap:
        time.sleep(0.3)  # the consumer is inside its stall now
        _flood(lab_netns)
        time.sleep(2.0)
        cap.stop()
    seen = sum(1 for o in cap.observations() if o.proto == 17 and o.dport == 9)
    assert src.lost_events > 0
    assert seen + src.lost_events >= FLOOD * 0.95, (seen, src.lost_events)


def test_interfaces_come_and_go_while_tracing(lab_netns: Any) -> None:
    """A new 'container' (namespace + veth into docker0) gets taps within 2 s; deleting it
    closes them with a notice and tracing goes on."""
    host_ns = lab_netns.state.ns_name("host")
    extra = f"hoptest-{uuid.uuid4().hex[:8]}"
    veth = f"vx{uuid.uuid4().hex[:6]}"
    notices: list[str] = []
    mine = lab_inodes(lab_netns)
    # full_every_s=60: only the namespace-change detection can pick the new one up in time.
    src = TapSource(None, rediscover_s=0.5, full_every_s=60, notices=notices.append)
    with Capture(src) as cap:
        try:
            subprocess.run(["ip", "netns", "add", extra], check=True)
            subprocess.run(["ip", "-n", host_ns, "link", "add", veth, "type", "veth", "peer", "name",
                            "eth0", "netns", extra], check=True)
            subprocess.run(["ip", "-n", host_ns, "link", "set", veth, "master", "docker0", "up"], check=True)
            subprocess.run(["ip", "-n", extra, "link", "set", "eth0", "up"], check=True)
            t0 = time.monotonic()
            while not {f"host/{veth}", f"{extra}/eth0"} <= {t.spec.label for t in list(src.taps.values())}:
                assert time.monotonic() - t0 < HOTPLUG_S, f"not tapped; notices: {notices}"
                time.sleep(0.05)
            subprocess.run(["ip", "netns", "del", extra], check=True)
            t0 = time.monotonic()
            while any(t.spec.ifname == veth for t in list(src.taps.values())):
                assert time.monotonic() - t0 < HOTPLUG_S, f"tap not closed; notices: {notices}"
                time.sleep(0.05)
            assert lab_netns.run("container-ping").ok
        finally:
            cap.stop()
            subprocess.run(["ip", "netns", "del", extra], check=False, capture_output=True)
    assert f"tap {extra}/eth0 closed: the interface went away" in notices
    assert f"tap host/{veth} closed: the interface went away" in notices
    # Tracing went on: the ping after the removal was seen in the lab.
    assert any(o.netns in mine and o.proto == 1 and o.icmp_type == 8 and o.dst == A.WEB
               for o in cap.observations())


def test_an_interface_added_to_a_known_namespace_is_tapped(lab_netns: Any) -> None:
    """A new port on docker0 in the host namespace (what `docker network connect` does:
    no namespace comes or goes) gets a tap within 2 s from the link notifications, not
    from the periodic full discovery (60 s here); removed, its tap closes."""
    host_ns = lab_netns.state.ns_name("host")
    veth = f"vl{uuid.uuid4().hex[:6]}"
    notices: list[str] = []
    src = TapSource(None, rediscover_s=0.5, full_every_s=60, notices=notices.append)
    with Capture(src) as cap:
        try:
            subprocess.run(["ip", "-n", host_ns, "link", "add", veth, "type", "veth", "peer", "name",
                            f"{veth}p"], check=True)
            subprocess.run(["ip", "-n", host_ns, "link", "set", veth, "master", "docker0", "up"], check=True)
            t0 = time.monotonic()
            while f"host/{veth}" not in {t.spec.label for t in list(src.taps.values())}:
                assert time.monotonic() - t0 < HOTPLUG_S, f"not tapped; notices: {notices}"
                time.sleep(0.05)
            subprocess.run(["ip", "-n", host_ns, "link", "del", veth], check=True)
            t0 = time.monotonic()
            while any(t.spec.ifname == veth for t in list(src.taps.values())):
                assert time.monotonic() - t0 < HOTPLUG_S, f"tap not closed; notices: {notices}"
                time.sleep(0.05)
        finally:
            cap.stop()
            subprocess.run(["ip", "-n", host_ns, "link", "del", veth], check=False, capture_output=True)
    assert f"tap host/{veth} opened" in notices
    assert f"tap host/{veth} closed: the interface went away" in notices
