"""Per-hop captures (tracer.lab.capture) and the committed fixtures they produced."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, need_tool
from tracer.lab import SCENARIOS, Lab
from tracer.lab import addresses as A
from tracer.lab.capture import capture_scenario

FIELDS = ["frame.interface_name", "frame.interface_description", "frame.comment", "ip.src", "ip.dst",
          "ip.proto", "tcp.srcport", "tcp.dstport", "icmp.type", "frame.time_epoch"]


def sightings(pcap: Path) -> list[dict[str, str]]:
    """One dict per packet: tshark's view of the file (an independent reader)."""
    need_tool("tshark")
    r = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=\t",
                        *[a for f in FIELDS for a in ("-e", f)]],
                       capture_output=True, text=True, timeout=60, check=True)
    out = []
    for line in r.stdout.splitlines():
        row = dict(zip(FIELDS, line.split("\t"), strict=True))
        row["dir"] = json.loads(row["frame.comment"])["dir"] if row["frame.comment"] else ""
        out.append(row)
    return out


def hop_of(rows: list[dict[str, str]], **want: str) -> list[str]:
    return [f"{r['frame.interface_name']} {r['dir']}" for r in rows
            if all(r[k] == v for k, v in want.items())]


@pytest.mark.root
@pytest.mark.lab
def test_capture_every_hop_with_direction_and_netns(lab_netns: Lab, tmp_path: Path) -> None:
    need_tool("tcpdump")
    out = tmp_path / "internet-ping.pcapng"
    result, packets = capture_scenario(lab_netns, "internet-ping", out)
    assert result.ok, result.detail
    rows = sightings(out)
    assert len(rows) == packets
    veth = next(r["frame.interface_name"] for r in rows if r["frame.interface_name"].startswith("host/veth"))
    # The echo request, hop by hop in time order, rewritten by MASQUERADE between docker0 and eth0.
    request = hop_of(rows, **{"icmp.type": "8"})
    assert request == ["client/eth0 tx", f"{veth} rx", "host/docker0 rx", "host/eth0 tx", "inet/eth0 rx"]
    assert hop_of(rows, **{"icmp.type": "8", "ip.src": A.CLIENT}) == request[:3]
    assert hop_of(rows, **{"icmp.type": "8", "ip.src": A.HOST_UPLINK}) == request[3:]
    reply = hop_of(rows, **{"icmp.type": "0"})
    assert reply == ["inet/eth0 tx", "host/eth0 rx", "host/docker0 tx", f"{veth} tx", "client/eth0 rx"]
    # Each interface block names its namespace's inode.
    descr = {r["frame.interface_name"]: r["frame.interface_description"] for r in rows}
    for node in ("client", "inet"):
        assert f"netns={lab_netns.netns_inode(node)}" in descr[f"{node}/eth0"]
    times = [float(r["frame.time_epoch"]) for r in rows]
    assert times == sorted(times)


# Where each scenario's IP packets are seen (host veths collapsed to "host/veth"). Hairpin is
# DNATed at the bridge (br_netfilter) and bridged straight to web: it never touches docker0.
FIXTURE_HOPS = {
    "gateway-ping": {"client/eth0", "host/veth", "host/docker0"},
    "internet-ping": {"client/eth0", "host/veth", "host/docker0", "host/eth0", "inet/eth0"},
    "host-ping": {"host/docker0", "host/veth", "client/eth0"},
    "container-ping": {"client/eth0", "host/veth", "web/eth0"},
    "published-port": {"inet/eth0", "host/eth0", "host/docker0", "host/veth", "web/eth0"},
    "hairpin": {"client/eth0", "host/veth", "web/eth0"},
    # 127.0.0.1:8080 from the host, --userland-proxy=false: OUTPUT DNAT before any device, so
    # it is first seen leaving docker0 (MASQUERADEd to 172.17.0.1); lo never sees it.
    "localhost-port": {"host/docker0", "host/veth", "web/eth0"},
    "udp": {"client/eth0", "host/veth", "host/docker0", "host/eth0", "inet/eth0"},
    "blocked": {"client/eth0", "host/veth", "host/docker0"},
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fixture_exists_and_shows_the_scenarios_hops(scenario: str) -> None:
    pcap = FIXTURES / f"{scenario}.pcapng"
    assert pcap.exists(), f"missing {pcap}: run make fixtures"
    rows = sightings(pcap)
    hops = {"host/veth" if r["frame.interface_name"].startswith("host/veth") else r["frame.interface_name"]
            for r in rows if r["ip.src"]}
    assert hops == FIXTURE_HOPS[scenario]
    assert all(r["dir"] in ("rx", "tx") for r in rows)


def test_fixture_nat_is_visible() -> None:
    """What the fixtures must show for the correlator's golden tests to mean anything."""
    rows = sightings(FIXTURES / "internet-ping.pcapng")
    assert hop_of(rows, **{"icmp.type": "8", "ip.src": A.HOST_UPLINK}) == ["host/eth0 tx", "inet/eth0 rx"]
    rows = sightings(FIXTURES / "published-port.pcapng")
    syn_in = [r for r in rows if r["tcp.dstport"] in ("8080", "80") and r["ip.src"] == A.INET_UPLINK]
    seen = {(r["frame.interface_name"], r["ip.dst"], r["tcp.dstport"]) for r in syn_in}
    assert ("inet/eth0", A.HOST_UPLINK, "8080") in seen
    assert ("web/eth0", A.WEB, "80") in seen
    rows = sightings(FIXTURES / "blocked.pcapng")
    assert hop_of(rows, **{"icmp.type": "8"}) == [
        "client/eth0 tx", hop_of(rows, **{"icmp.type": "8"})[1], "host/docker0 rx"]
    assert not hop_of(rows, **{"frame.interface_name": "host/eth0"})


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_netns_engine_paths_match_the_docker_fixtures(lab_netns: Lab, tmp_path: Path, scenario: str) -> None:
    """The hand-built lab sends each scenario's packets over the same hops as real Docker."""
    need_tool("tcpdump")
    out = tmp_path / f"{scenario}.pcapng"
    result, _ = capture_scenario(lab_netns, scenario, out)
    assert result.ok, result.detail
    hops = {"host/veth" if r["frame.interface_name"].startswith("host/veth") else r["frame.interface_name"]
            for r in sightings(out) if r["ip.src"]}
    assert hops == FIXTURE_HOPS[scenario]
