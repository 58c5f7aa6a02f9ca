"""Topology and attribution against a real dockerd (the lab's docker engine)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.topology.helpers import capture, replay_paths, ruleset
from tracer.lab import addresses as A
from tracer.netns import run_in_netns
from tracer.topology import Topology

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(lab_docker: Any) -> Any:
    return lab_docker


@pytest.fixture(scope="module")
def topo(lab: Any) -> Topology:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_HOST", lab.status().docker_host)
        return Topology.discover()


def test_container_names_and_veths_match_docker(lab: Any, topo: Topology) -> None:
    assert topo.notices == () or all("Docker" not in n for n in topo.notices), topo.notices
    host = topo.namespace(lab.netns_inode("host"))
    assert host is not None
    for node in ("web", "client"):
        c = topo.container(node)
        assert c is not None, [x.name for x in topo.containers]
        assert c.netns == lab.netns_inode(node)
        ns = topo.namespace(c.netns)
        assert ns is not None and ns.name == node and ns.container == c.id
        eth0 = ns.iface("eth0")
        assert eth0 is not None
        # Docker's own view: the container's address and MAC, and the host-side ifindex its eth0 names.
        net = c.networks[0]
        assert (net.network, net.ip, net.mac, net.bridge) == ("bridge", A.CONTAINER_IP[node], eth0.mac, "docker0")
        assert eth0.ips[0] == net.ip

        def iflink() -> int:
            return int(Path("/sys/class/net/eth0/iflink").read_text())

        peer = topo.peer(eth0)
        assert peer is not None and peer.netns == host.inode and peer.name.startswith("veth")
        assert peer.ifindex == run_in_netns(lab.netns_path(node), iflink) or peer.ifindex == eth0.peer_ifindex
        bridge = topo.bridge_of(peer)
        assert bridge is not None and bridge.name == "docker0"
    assert topo.container_names[lab.netns_inode("web")] == "web"
    web = topo.container("web")
    assert web is not None and [(p.container_port, p.proto, p.host_port) for p in web.ports][:1] == [
        (A.WEB_PORT, "tcp", A.PUBLISHED_PORT)]
    assert any(r.text == "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" for r in host.nat_rules)


def test_docker_nat_rules_inferred_with_conntrack(lab: Any, topo: Topology, tmp_path: Path) -> None:
    from tracer.annotate.attribution import annotator
    from tracer.annotate.conntrack import ConntrackTable

    files = capture(lab, ("internet-ping", "published-port"), tmp_path)
    with ConntrackTable({lab.netns_inode("host"): lab.netns_path("host")}) as table:
        ann = annotator(topo, conntrack=table, refresh_s=None)
        paths = [ann(p) for p in replay_paths(lab, files)]
    events = {(ev.kind, p.proto, ev.before.src): (p, ev) for p in paths for ev in p.nat}
    p, masq = events[("snat", "icmp", A.CLIENT)]
    assert p.hops[0].node == "client"
    assert (masq.node, masq.rule, masq.rule_source) == (
        "host", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", "inferred")
    assert masq.conntrack is not None and "SRC_NAT" in masq.conntrack.status
    p, dnat = events[("dnat", "tcp", A.INET_UPLINK)]
    assert [h.node for h in p.hops][:2] == ["inet", "host"]
    assert dnat.rule is not None and dnat.rule.endswith(
        f"--dport {A.PUBLISHED_PORT} -j DNAT --to-destination {A.WEB}:{A.WEB_PORT}"), dnat.rule
    assert dnat.rule_source == "inferred"
    assert dnat.conntrack is not None and "DST_NAT" in dnat.conntrack.status


def test_docker_rules_traced_exactly_and_ruleset_left_as_found(lab: Any, topo: Topology, tmp_path: Path) -> None:
    from tracer.annotate.attribution import annotator
    from tracer.annotate.nftrace import RuleTrace

    before = ruleset(lab)
    with RuleTrace({lab.netns_inode("host"): lab.netns_path("host")}, filter_expr="icmp") as rt:
        assert rt.notices == []
        files = capture(lab, ("internet-ping",), tmp_path)
    assert ruleset(lab) == before
    ann = annotator(topo, conntrack=False, refresh_s=None)
    events = [ev for p in replay_paths(lab, files) for ev in rt.annotate(ann(p)).nat]
    masq = [ev for ev in events if ev.kind == "snat" and ev.before.src == A.CLIENT]
    assert masq and masq[0].rule_source == "trace"
    assert re.fullmatch(r"nat:POSTROUTING handle \d+: -A POSTROUTING -s 172\.17\.0\.0/16 ! -o docker0 "
                        r"-j MASQUERADE", masq[0].rule or ""), masq[0].rule


def test_node_namer_loads_container_names(lab: Any, tmp_path: Path) -> None:
    from tracer.sources.names import NodeNamer

    namer = NodeNamer()
    assert namer.load_docker(lab.status().docker_host) is None
    assert namer.name(lab.netns_inode("web")) == "web" and namer.containers[lab.netns_inode("client")] == "client"
    bad = NodeNamer()
    notice = bad.load_docker(f"unix://{tmp_path}/absent.sock")
    assert notice is not None and "did not answer" in notice and bad.containers == {}
