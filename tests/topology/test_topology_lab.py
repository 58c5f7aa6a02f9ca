"""Topology, names, conntrack and rule inference against the real lab (netns engine).

The NAT test captures the lab's own traffic with tcpdump (one `-i any` capture
per namespace: Linux cooked v2 keeps the ifindex and direction), replays it
through READERS' FileSource and the Correlator, and annotates the paths with
the live topology and conntrack table of the lab, as `hoptrace live` would.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_hoptrace
from tests.topology.helpers import capture, replay_paths
from tracer.lab import addresses as A
from tracer.lab.netns_builder import veth_name
from tracer.topology import Topology, default_ifaces

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def lab(lab_netns: object) -> object:
    return lab_netns


@pytest.fixture(scope="module")
def topo(lab: object) -> Topology:
    return Topology.discover()


def test_containers_named_and_veth_peers_match(lab: object, topo: Topology) -> None:
    host = topo.namespace(lab.netns_inode("host"))  # type: ignore[attr-defined]
    assert host is not None and host.name == "host"
    for node in ("web", "client"):
        ns = topo.namespace(lab.netns_inode(node))  # type: ignore[attr-defined]
        assert ns is not None and ns.name == node
        eth0 = ns.iface("eth0")
        assert eth0 is not None and eth0.ips[0] == A.CONTAINER_IP[node]
        peer = topo.peer(eth0)
        assert peer is not None
        bridge = topo.bridge_of(peer)
        assert (peer.netns, peer.name, bridge.name if bridge else None) == (
            host.inode, veth_name(lab.prefix, node), "docker0")  # type: ignore[attr-defined]
        assert topo.peer(peer) == eth0
        assert ns.uplink == "eth0"
    uplink = host.iface(host.uplink or "")
    assert uplink is not None and A.HOST_UPLINK in uplink.ips
    texts = [r.text for r in host.nat_rules]
    assert "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" in texts
    assert host.forwarding


def test_default_ifaces_cover_bridge_ports_containers_and_uplink(lab: object, topo: Topology) -> None:
    got = set(default_ifaces(topo))
    host = lab.netns_path("host")  # type: ignore[attr-defined]
    host_ns = topo.namespace(lab.netns_inode("host"))  # type: ignore[attr-defined]
    assert host_ns is not None
    want = {
        (host_ns.path, "docker0"),
        (host_ns.path, veth_name(lab.prefix, "web")),  # type: ignore[attr-defined]
        (host_ns.path, veth_name(lab.prefix, "client")),  # type: ignore[attr-defined]
        (host_ns.path, host_ns.uplink),
    }
    for node in ("web", "client"):
        ns = topo.namespace(lab.netns_inode(node))  # type: ignore[attr-defined]
        assert ns is not None
        want.add((ns.path, "eth0"))
    assert want <= got, (host, want - got)


def test_topology_command_json_and_text(lab: object) -> None:
    r = run_hoptrace("topology", "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    web_inode = lab.netns_inode("web")  # type: ignore[attr-defined]
    web = next(ns for ns in data["namespaces"] if ns["netns"] == web_inode)
    eth0 = next(i for i in web["interfaces"] if i["name"] == "eth0")
    veth = veth_name(lab.prefix, "web")  # type: ignore[attr-defined]
    assert (web["node"], eth0["addresses"][0], eth0["peer"]["node"], eth0["peer"]["iface"]) == (
        "web", f"{A.WEB}/16", "host", veth)
    host = next(ns for ns in data["namespaces"] if ns["netns"] == lab.netns_inode("host"))  # type: ignore[attr-defined]
    assert veth in host["bridges"]["docker0"]
    assert any(r["rule"].endswith(f"--to-destination {A.WEB}:{A.WEB_PORT}") for r in host["nat_rules"])
    text = run_hoptrace("topology", timeout=30)
    assert text.returncode == 0, text.stderr
    assert f"eth0 (veth) up {A.WEB}/16" in text.stdout
    assert f"<-> host/{veth} " not in text.stdout  # the container side names the host veth ...
    assert f"<-> host/{veth}" in text.stdout  # ... exactly once per container
    assert f"{veth} (veth) up" in text.stdout and "[port of docker0]" in text.stdout


# --------------------------------------------------------------------------
# conntrack + NAT attribution over a real capture
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captured(lab: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """internet-ping, published-port and hairpin, captured in client, host and inet (-i any each)."""
    return capture(lab, ("internet-ping", "published-port", "hairpin"), tmp_path_factory.mktemp("cap"))


def test_nat_events_get_rule_and_conntrack_of_flows_begun_before(lab: object, captured: dict[str, Path]) -> None:
    from tracer.annotate.attribution import annotator
    from tracer.annotate.conntrack import ConntrackTable

    host_inode = lab.netns_inode("host")  # type: ignore[attr-defined]
    topo = Topology.discover()
    # Started only now, after the traffic: the entries come from the initial dump.
    with ConntrackTable({host_inode: lab.netns_path("host")}) as table:  # type: ignore[attr-defined]
        assert table.errors == {}
        ann = annotator(topo, conntrack=table, refresh_s=None)
        paths = [ann(p) for p in replay_paths(lab, captured)]
    by_kind: dict[str, list] = {}  # type: ignore[type-arg]
    for p in paths:
        for ev in p.nat:
            by_kind.setdefault(f"{ev.kind}:{p.proto}", []).append((p, ev))

    ping = [(p, ev) for p, ev in by_kind.get("snat:icmp", []) if ev.before.src == A.CLIENT]
    assert ping, [(p.proto, [(h.node, h.ifname, h.src, h.dst) for h in p.hops]) for p in paths]
    p, ev = ping[0]
    assert p.hops[0].node == "client" and "host" in {h.node for h in p.hops}
    assert (ev.node, ev.rule, ev.rule_source) == (
        "host", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", "inferred")
    assert ev.conntrack is not None and ev.conntrack.id is not None
    assert "SRC_NAT" in ev.conntrack.status
    assert (ev.conntrack.original.src, ev.conntrack.reply.dst) == (A.CLIENT, A.HOST_UPLINK)

    # The reply is translated back by conntrack: same entry, the rule that set the mapping up.
    back = [(p, e) for p, e in by_kind.get("dnat:icmp", []) if e.after.dst == A.CLIENT]
    assert back and back[0][1].conntrack is not None
    assert back[0][1].conntrack.id == ev.conntrack.id
    assert back[0][1].rule == ev.rule

    dnat = [(p, e) for p, e in by_kind.get("dnat:tcp", []) if e.before.dport == A.PUBLISHED_PORT]
    assert dnat, [(p.proto, [(h.node, h.ifname, h.src, h.dst, h.dport) for h in p.hops]) for p in paths]
    _, ev = dnat[0]
    assert (ev.node, ev.rule, ev.rule_source) == (
        "host", f"-A DOCKER -p tcp -m tcp --dport {A.PUBLISHED_PORT} -j DNAT --to-destination "
        f"{A.WEB}:{A.WEB_PORT}", "inferred")
    assert ev.conntrack is not None and "DST_NAT" in ev.conntrack.status
    ids = {e.conntrack.id for _, e in dnat if e.conntrack}
    replies = [e for _, e in by_kind.get("snat:tcp", []) if e.before.src == A.WEB]
    assert replies and {e.conntrack.id for e in replies if e.conntrack} <= ids
    assert all(e.rule == ev.rule for e in replies)

    # Hairpin: client -> the host's published port, DNATed back onto the bridge it came from.
    hairpin = [e for _, e in dnat if e.before.src == A.CLIENT]
    assert hairpin and hairpin[0].rule == ev.rule and hairpin[0].conntrack is not None
    back = [e for e in replies if e.after.dst == A.CLIENT]
    assert back and back[0].conntrack is not None and back[0].conntrack.id == hairpin[0].conntrack.id


def test_without_conntrack_nat_still_comes_from_the_packets(lab: object, captured: dict[str, Path]) -> None:
    from tracer.annotate.attribution import annotator

    ann = annotator(Topology.discover(), conntrack=False, refresh_s=None)
    paths = [ann(p) for p in replay_paths(lab, captured)]
    events = [ev for p in paths for ev in p.nat]
    assert events and all(ev.conntrack is None for ev in events)
    assert any(ev.rule == "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" for ev in events)
    assert ann.without_conntrack == len(events)
    assert ann.notices == ["conntrack is not followed: NAT events come from the packet diff only"]


# --------------------------------------------------------------------------
# Bad input and faults
# --------------------------------------------------------------------------


def test_no_docker_api_names_fall_back_with_one_notice(lab: object, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    topo = Topology.discover()
    notices = [n for n in topo.notices if "Docker API" in n]
    assert len(notices) == 1 and "did not answer" in notices[0], topo.notices
    assert topo.containers == ()
    ns = topo.namespace(lab.netns_inode("web"))  # type: ignore[attr-defined]
    assert ns is not None and ns.name == "web"  # the lab's label
    r = run_hoptrace("topology", env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"},
                     timeout=30)
    assert r.returncode == 0
    assert [line for line in r.stderr.splitlines() if "Docker API" in line] == [
        f"hoptrace: {notices[0]}"]


def test_conntrack_unavailable_is_flagged(lab: object, captured: dict[str, Path], tmp_path: Path) -> None:
    from tracer.annotate.attribution import annotator
    from tracer.annotate.conntrack import ConntrackTable

    host_inode = lab.netns_inode("host")  # type: ignore[attr-defined]
    with ConntrackTable({host_inode: str(tmp_path / "not-a-netns")}) as table:
        assert list(table.errors) == [host_inode] and not table.available(host_inode)
        ann = annotator(Topology.discover(), conntrack=table, refresh_s=None)
        paths = [ann(p) for p in replay_paths(lab, captured)]
    events = [ev for p in paths for ev in p.nat]
    assert events and all(ev.conntrack is None for ev in events)
    assert all(ev.rule is not None for ev in events)  # the rule still comes from the ruleset
    assert ann.without_conntrack == len(events)
    assert len(ann.notices) == 1 and ann.notices[0].startswith(f"conntrack unavailable in netns {host_inode}")


def test_live_topology_sees_a_namespace_added_while_running(lab: object, nsname: str) -> None:
    from tracer.topology import LiveTopology

    live = LiveTopology(0.2, initial=Topology.discover(docker=False, nat=False),
                        discover_fn=lambda: Topology.discover(docker=False, nat=False))
    ino = os.stat(f"/run/netns/{nsname}").st_ino
    assert live.current.namespace(ino) is not None  # created by the fixture before
    extra = f"{nsname}-x"
    subprocess.run(["ip", "netns", "add", extra], check=True)
    try:
        extra_ino = os.stat(f"/run/netns/{extra}").st_ino
        assert live.current.namespace(extra_ino) is None
        live.start()
        deadline = time.monotonic() + 10
        while live.current.namespace(extra_ino) is None:
            assert time.monotonic() < deadline, "the new namespace never showed up"
            time.sleep(0.05)
        assert live.current.name(extra_ino) == extra
    finally:
        live.stop()
        subprocess.run(["ip", "netns", "del", extra], check=False)
