"""``hoptrace live --backend pcap`` end to end: a subprocess, its ready file, lab traffic,
SIGINT, NDJSON. And the same traffic through ``--backend ebpf`` at the same time: both
backends must report the same hops (where both look) and the same NAT events."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import run_hoptrace
from tests.taps.helpers import (
    CONTAINER_PING_REQUEST,
    INTERNET_PING_REPLY,
    INTERNET_PING_REQUEST,
    PUBLISHED_PORT_SYN,
    Capture,
    Live,
    correlate,
    expected,
    hop_seq,
    host_veths,
    json_hops,
    lab_ifaces,
    lab_inodes,
)
from tracer.lab import addresses as A
from tracer.model import Observation, PacketPath
from tracer.sources.taps import TapSource

pytestmark = [pytest.mark.root, pytest.mark.lab]

SCENARIOS = ("internet-ping", "published-port", "container-ping")


def _in_lab(d: dict[str, Any], inodes: dict[int, str]) -> bool:
    return d["type"] == "path" and all(h["netns"] in inodes for h in d["hops"])


def _echo(lines: list[dict[str, Any]], inodes: dict[int, str], icmp_dst: str, first: tuple[str, str]) -> list[dict[str, Any]]:
    return [d for d in lines if _in_lab(d, inodes) and d["proto"] == "icmp"
            and (d["hops"][0]["node"], d["hops"][0]["iface"]) == first
            and d["hops"][0]["dst"] == icmp_dst]


def test_live_pcap_reports_hops_and_nat_of_each_scenario(lab_netns: Any) -> None:
    veths = host_veths(lab_netns)
    inodes = lab_inodes(lab_netns)
    with Live("pcap", lab_ifaces(lab_netns), "--duration", "6") as live:
        for scenario in SCENARIOS:
            result = lab_netns.run(scenario)
            assert result.ok, f"{scenario}: {result.detail}"
        lines, err = live.wait()
    assert lines[-1]["type"] == "stats", err
    assert lines[-1]["lost_events"] == 0
    paths = [d for d in lines if _in_lab(d, inodes)]
    assert all(h["skb"] is None for d in paths for h in d["hops"])

    # internet-ping: MASQUERADE between docker0 rx and eth0 tx, undone on the reply.
    req = _echo(lines, inodes, A.SERVER, ("client", "eth0"))
    assert [json_hops(d) for d in req] == [expected(INTERNET_PING_REQUEST, veths)], (
        [(d["proto"], json_hops(d), d["hops"][0]["dst"]) for d in paths], lines[-1], err, len(lines))
    assert [(n["kind"], n["node"], n["hook"], n["from_hop"], n["to_hop"], n["before"]["src"],
             n["after"]["src"]) for n in req[0]["nat"]] == [
        ("snat", "host", "POSTROUTING", 2, 3, A.CLIENT, A.HOST_UPLINK)]
    assert req[0]["verdict"] == "left"
    rep = _echo(lines, inodes, A.HOST_UPLINK, ("host", "eth0"))
    assert [json_hops(d) for d in rep] == [expected(INTERNET_PING_REPLY, veths)]
    assert [(n["from_hop"], n["to_hop"], n["after"]["dst"]) for n in rep[0]["nat"]] == [(0, 1, A.CLIENT)]
    assert rep[0]["verdict"] == "delivered"

    # published-port: DNAT 203.0.113.2:8080 -> 172.17.0.2:80 between eth0 rx and docker0 tx.
    syns = [d for d in paths if d["proto"] == "tcp" and d["hops"][0]["dport"] == A.PUBLISHED_PORT
            and d["hops"][0]["iface"] == "eth0" and d["hops"][0]["dir"] == "rx"]
    assert syns, "no TCP path to the published port"
    for d in syns:
        assert json_hops(d) == expected(PUBLISHED_PORT_SYN, veths)
        assert [(n["kind"], n["hook"], n["from_hop"], n["to_hop"], n["after"]["dst"], n["after"]["dport"])
                for n in d["nat"]] == [("dnat", "PREROUTING", 0, 1, A.WEB, A.WEB_PORT)]
        assert d["nat"][0]["rule"] is not None and "DNAT" in d["nat"][0]["rule"]

    # container-ping: bridged, no NAT, no docker0 hop.
    bridged = _echo(lines, inodes, A.WEB, ("client", "eth0"))
    assert [json_hops(d) for d in bridged] == [expected(CONTAINER_PING_REQUEST, veths)]
    assert bridged[0]["nat"] == [] and bridged[0]["verdict"] == "delivered"


def test_pcap_and_ebpf_agree_on_the_same_traffic(lab_netns: Any) -> None:
    """Both backends trace the same packets of every lab experiment at once (in-process,
    each through its own correlator). eBPF sees more (the inet namespace, drops), so its hops are compared where
    the taps look; it is limited to this lab's namespaces in the kernel, so other labs'
    traffic on this machine cannot crowd it out."""
    from probes.skb_hops import EbpfSource

    inodes = lab_inodes(lab_netns)
    ifaces = lab_ifaces(lab_netns)
    tapped = {(int(i.split("/")[0][len("netns:"):]), i.split("/")[1]) for i in ifaces}
    from tracer.lab.scenarios import SCENARIOS as ALL

    with Capture(EbpfSource(netns=set(inodes))) as ebpf, Capture(TapSource(ifaces)) as taps:
        for scenario in ALL:  # every lab experiment, the dropped ping included
            assert lab_netns.run(scenario).ok, scenario
        tap_paths = correlate(taps.stop())
        ebpf_paths = correlate(ebpf.stop())
    assert taps.src.lost_events == 0 and ebpf.src.lost_events == 0

    def seen(p: PacketPath) -> list[Observation]:
        return [h for h in p.hops if (h.netns, h.ifname) in tapped and h.direction != "drop"]

    def key(p: PacketPath) -> tuple[Any, ...] | None:
        """The packet: IP ID and transport fields at its first tapped hop."""
        hops = seen(p)
        if not hops or hops[0].ip_id is None or p.proto not in ("icmp", "tcp", "udp"):
            return None
        h = hops[0]
        return (p.proto, h.ip_id, h.src, h.dst, h.sport, h.dport, h.node, h.ifname, h.direction)

    def nat(p: PacketPath) -> list[tuple[Any, ...]]:
        return [(n.kind, n.node, n.hook, n.before, n.after) for n in p.nat]

    ebpf_by_key = {key(p): p for p in ebpf_paths}
    compared = 0
    for p in tap_paths:
        k = key(p)
        if k is None:
            continue
        other = ebpf_by_key.get(k)
        assert other is not None, f"eBPF has no path for {k}: {hop_seq(p)}"
        assert hop_seq(p) == [(h.node, h.ifname, h.direction) for h in seen(other)], k
        assert nat(p) == nat(other), k
        compared += 1
    # 5 pings of 2 packets, a UDP exchange, 2 TCP exchanges of several packets, a dropped ping.
    assert compared >= 16
    # The dropped ping: the taps cannot see the drop, only where it was last seen.
    dropped = [p for p in tap_paths if p.proto == "icmp" and p.first.dst == A.SERVER
               and hop_seq(p)[-1] == ("host", "docker0", "rx")]
    assert dropped and all(p.verdict != "delivered" for p in dropped)


def test_unknown_interface_is_exit_2_listing_what_exists(lab_netns: Any) -> None:
    r = run_hoptrace("live", "--backend", "pcap", "--json", "--iface", "nosuch0", timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "hoptrace: unknown interface 'nosuch0'"
    assert lines[1].startswith("hoptrace: hint: interfaces here: ")
    assert "host/docker0" in lines[1] and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_live_pcap_filter_keeps_whole_paths_across_masquerade(lab_netns: Any) -> None:
    """--filter "host 172.17.0.3" matches the ping only before MASQUERADE (and the reply only
    after un-NAT); the taps must not drop the other hops, so whole paths come out."""
    veths = host_veths(lab_netns)
    inodes = lab_inodes(lab_netns)
    with Live("pcap", lab_ifaces(lab_netns), "--filter", f"host {A.CLIENT}", "--duration", "5") as live:
        assert lab_netns.run("internet-ping").ok
        assert lab_netns.run("published-port").ok  # inet -> web: no hop matches, no path
        lines, _err = live.wait()
    # ("host" also matches the client's ARP: those paths are not the point here)
    paths = [d for d in lines if _in_lab(d, inodes) and d["proto"] != "arp"]
    assert sorted((d["proto"], tuple(json_hops(d))) for d in paths) == sorted([
        ("icmp", tuple(expected(INTERNET_PING_REQUEST, veths))),
        ("icmp", tuple(expected(INTERNET_PING_REPLY, veths)))])
