"""The netns engine: every scenario does what it should, on the real kernel."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import need_root
from tracer.lab import NODES, SCENARIOS, Lab
from tracer.lab import addresses as A
from tracer.lab.netns_builder import veth_name

pytestmark = [pytest.mark.root, pytest.mark.lab]

EXPECT_OK = [s for s in SCENARIOS if s != "blocked"]


@pytest.mark.parametrize("scenario", EXPECT_OK)
def test_scenario_traffic_passes(lab_netns: Lab, scenario: str) -> None:
    result = lab_netns.run(scenario)
    assert (result.ok, scenario) == (True, scenario), result.detail


def test_blocked_dies_at_the_drop_rule_and_the_rule_is_removed(lab_netns: Lab) -> None:
    result = lab_netns.run("blocked")
    assert result.ok, result.detail
    assert "DROP rule matched 1 packet" in result.detail
    # The rule is gone again: the same ping now gets its answer.
    assert "DROP" not in lab_netns.iptables("host", "-S", "DOCKER-USER")
    assert lab_netns.run("internet-ping").ok


def test_masquerade_rewrites_the_source(lab_netns: Lab) -> None:
    """The inet side sees the host's uplink address, never the container's."""
    assert lab_netns.run("internet-ping").ok
    ct = lab_netns.exec("host", ["conntrack", "-L", "-p", "icmp"])
    assert ct.returncode == 0, ct.stderr
    line = next(ln for ln in ct.stdout.splitlines() if f"dst={A.SERVER}" in ln)
    assert f"src={A.CLIENT}" in line and f"dst={A.HOST_UPLINK}" in line, line


def test_published_port_is_dnat(lab_netns: Lab) -> None:
    assert lab_netns.run("published-port").ok
    ct = lab_netns.exec("host", ["conntrack", "-L", "-p", "tcp", "--orig-port-dst", "8080"])
    assert ct.returncode == 0, ct.stderr
    assert any(f"src={A.WEB} dst={A.INET_UPLINK} sport=80" in ln for ln in ct.stdout.splitlines()), ct.stdout


def test_localhost_port_is_dnat_in_output(lab_netns: Lab) -> None:
    """A client on the host at 127.0.0.1:8080: OUTPUT DNAT (route_localnet), as dockerd
    --userland-proxy=false does it (the netns engine has no docker-proxy)."""
    assert lab_netns.run("localhost-port").ok
    ct = lab_netns.exec("host", ["conntrack", "-L", "-p", "tcp", "--orig-dst", "127.0.0.1"])
    assert ct.returncode == 0, ct.stderr
    assert any(f"src={A.WEB} dst={A.GATEWAY} sport=80" in ln for ln in ct.stdout.splitlines()), ct.stdout


def test_the_netns_engine_has_no_userland_proxy() -> None:
    from tracer.errors import UsageError

    assert not Lab("netns", "hoptest-none").userland_proxy
    assert not Lab("netns", "hoptest-none", "off").userland_proxy
    with pytest.raises(UsageError, match="the netns engine has no docker-proxy"):
        Lab("netns", "hoptest-none", userland_proxy=True)
    assert Lab("docker", "hoptest-none").userland_proxy  # Docker's default
    assert not Lab("docker", "hoptest-none", "off").userland_proxy


def test_topology_is_dockers(lab_netns: Lab) -> None:
    links = json.loads(lab_netns.exec("host", ["ip", "-j", "-d", "link", "show"]).stdout)
    by_name = {link["ifname"]: link for link in links}
    assert by_name["docker0"]["linkinfo"]["info_kind"] == "bridge"
    for node in ("web", "client"):
        veth = by_name[veth_name(lab_netns.prefix, node)]
        assert veth.get("master") == "docker0"
        peer = json.loads(lab_netns.exec(node, ["ip", "-j", "addr", "show", "eth0"]).stdout)[0]
        assert (peer["address"], peer["addr_info"][0]["local"]) == (A.MAC[node], A.CONTAINER_IP[node])
    route = lab_netns.exec("host", ["ip", "route", "show", "default"]).stdout
    assert route.startswith(f"default via {A.INET_UPLINK} dev eth0")
    nat = lab_netns.iptables("host", "-t", "nat", "-S")
    assert f"-A POSTROUTING -s {A.BRIDGE_NET} ! -o docker0 -j MASQUERADE" in nat
    assert f"--dport 8080 -j DNAT --to-destination {A.WEB}:80" in nat


def test_nodes_json_names_every_namespace(lab_netns: Lab) -> None:
    nodes = json.loads((lab_netns.state.dir / "nodes.json").read_text())
    expected = {str(os.stat(lab_netns.netns_path(n)).st_ino): n for n in NODES}
    assert nodes == expected
    from tracer.sources.names import NodeNamer

    namer = NodeNamer()
    assert {n: namer.name(lab_netns.netns_inode(n)) for n in NODES} == {n: n for n in NODES}


def test_nothing_in_the_root_namespace(lab_netns: Lab) -> None:
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert veth_name(lab_netns.prefix, "web") not in root_links
    assert veth_name(lab_netns.prefix, "client") not in root_links


def test_status_lists_namespaces_and_servers(lab_netns: Lab) -> None:
    st = lab_netns.status()
    assert (st.exists, st.engine, sorted(st.namespaces)) == (True, "netns", sorted(NODES))
    assert sorted(p.split(" ", 1)[1] for p in st.processes) == ["httpd inet", "httpd web", "udp-echo inet"]


def test_up_twice_and_crash_leftovers(fresh_lab_prefix: str) -> None:
    need_root()
    lab = Lab("netns", fresh_lab_prefix)
    lab.up()
    first = lab.netns_inode("host")
    # A second `up` replaces the first lab (as after a crash) rather than failing.
    lab.up()
    assert lab.netns_inode("host") != first
    assert lab.run("gateway-ping").ok
    # A crash: the state file is lost but namespaces and servers remain; `up` still cleans them.
    lab.state.state_file.unlink()
    lab.up()
    assert lab.run("udp").ok
    assert len(lab.status().processes) == 3
    lab.down()
    assert lab.state.leftovers() == []


def test_a_failing_up_removes_the_half_built_lab(fresh_lab_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.errors import LabError
    from tracer.lab import netns_builder

    real_build = netns_builder.build

    def build_then_fail(lab: Lab) -> None:
        real_build(lab)  # bridge, veths, rules and web's httpd exist now
        raise LabError("injected failure")

    monkeypatch.setattr(netns_builder, "build", build_then_fail)
    lab = Lab("netns", fresh_lab_prefix)
    with pytest.raises(LabError, match="injected failure"):
        lab.up()
    assert lab.state.leftovers() == []
