"""NAT events and verdicts from the hops of one path (tests/reference/nat.py, pure)."""

from __future__ import annotations

from dataclasses import replace

from tests.reference.nat import infer_nat, is_inner_event, same_namespace, verdict
from tests.unit.conftest import MS, NETNS, US, internet_ping, internet_pong, make_obs
from tracer.model import Endpoints, InnerHeader, NatEvent

UDP = dict(proto=17, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, length=40)


def test_masquerade_and_its_reply() -> None:
    assert [(e.kind, e.node, e.hook, e.from_hop, e.to_hop) for e in infer_nat(internet_ping())] == [
        ("snat", "host", "POSTROUTING", 2, 3)]
    assert [(e.kind, e.node, e.hook, e.from_hop, e.to_hop) for e in infer_nat(internet_pong())] == [
        ("dnat", "host", "PREROUTING", 1, 2)]


def test_published_port_dnat_with_ports() -> None:
    hops = [make_obs(at="inet/eth0", src="203.0.113.1", sport=5555, dst="203.0.113.2", dport=8080, **UDP),
            make_obs(at="host/eth0", direction="rx", src="203.0.113.1", sport=5555, dst="203.0.113.2",
                     dport=8080, **UDP),
            make_obs(at="host/docker0", direction="tx", src="203.0.113.1", sport=5555, dst="172.17.0.2",
                     dport=80, **UDP)]
    assert infer_nat(hops) == (NatEvent(
        kind="dnat", node="host", hook="PREROUTING",
        before=Endpoints("203.0.113.1", 5555, "203.0.113.2", 8080),
        after=Endpoints("203.0.113.1", 5555, "172.17.0.2", 80), from_hop=1, to_hop=2),)


def test_port_only_rewrite_is_snat() -> None:
    a = make_obs(at="host/docker0", direction="rx", sport=1000, dport=53, **UDP)
    b = make_obs(at="host/eth0", direction="tx", sport=1001, dport=53, **{**UDP})
    b = replace(b, src="203.0.113.2")
    (ev,) = infer_nat([a, b])
    assert (ev.kind, ev.hook, ev.before.sport, ev.after.sport, ev.after.src) == (
        "snat", "POSTROUTING", 1000, 1001, "203.0.113.2")


def test_echo_reply_id_rewrite_alone_is_dnat() -> None:
    a = make_obs(at="host/eth0", direction="rx", icmp_type=0, icmp_id=1024)
    b = make_obs(at="host/docker0", direction="tx", icmp_type=0, icmp_id=77)
    (ev,) = infer_nat([a, b])
    assert (ev.kind, ev.hook, ev.icmp_id_before, ev.icmp_id_after) == ("dnat", "PREROUTING", 1024, 77)


def test_only_ttl_changed_no_event() -> None:
    a = make_obs(at="host/docker0", direction="rx", ttl=64)
    b = make_obs(at="host/eth0", direction="tx", ttl=63)
    assert infer_nat([a, b]) == ()


def test_output_hook_needs_a_packet_born_here() -> None:
    born = [make_obs(at="host/docker0", direction="tx", dst="203.0.113.2"),
            make_obs(at="host/veth1", direction="tx", dst="172.17.0.2")]
    assert [e.hook for e in infer_nat(born)] == ["OUTPUT"]
    # Same change after the packet came from another namespace: PREROUTING.
    came = [make_obs(at="web/eth0"), *born]
    assert [(e.hook, e.from_hop) for e in infer_nat(came)] == [("PREROUTING", 1)]


def test_quoted_header_event_and_is_inner() -> None:
    q1 = InnerHeader("203.0.113.2", "198.51.100.8", 1, 1024, 0)
    q2 = InnerHeader("172.17.0.2", "198.51.100.8", 1, 77, 0)
    err = dict(icmp_type=11, icmp_code=0, icmp_id=None, icmp_seq=None, src="198.51.100.1")
    hops = [make_obs(at="host/eth0", direction="rx", dst="203.0.113.2", inner=q1, **err),
            make_obs(at="host/docker0", direction="tx", dst="172.17.0.2", inner=q2, **err)]
    outer, inner = infer_nat(hops)
    assert (outer.kind, outer.hook, outer.before.dst, outer.after.dst) == (
        "dnat", "PREROUTING", "203.0.113.2", "172.17.0.2")
    assert inner == NatEvent(
        kind="dnat", node="host", hook="PREROUTING",
        before=Endpoints("203.0.113.2", None, "198.51.100.8", None),
        after=Endpoints("172.17.0.2", None, "198.51.100.8", None), from_hop=0, to_hop=1,
        icmp_id_before=1024, icmp_id_after=77)
    assert (is_inner_event(hops, outer), is_inner_event(hops, inner)) == (False, True)


def test_file_hops_without_netns_compare_nodes() -> None:
    a = make_obs(at="host/docker0", direction=None, netns=0)
    b = make_obs(at="host/eth0", direction=None, netns=0, src="203.0.113.2", ts_ns=1 * MS + 5 * US)
    c = make_obs(at="inet/eth0", direction=None, netns=0, src="203.0.113.2")
    assert (same_namespace(a, b), same_namespace(b, c)) == (True, False)
    assert [(e.kind, e.hook) for e in infer_nat([a, b, c])] == [("snat", "POSTROUTING")]


def test_verdict_rules() -> None:
    owned = {"198.51.100.8": NETNS["inet"]}
    ping = internet_ping()
    assert verdict(ping, owned, set()) == "delivered"
    assert verdict(ping, {}, set()) == "incomplete"
    assert verdict(ping[:4], owned, set()) == "left"
    assert verdict(ping[:4], owned, {(NETNS["host"], "host", "eth0")}) == "incomplete"
    dropped = [*ping[:2], make_obs(at="host/docker0", direction="drop", drop_reason="NO_SOCKET")]
    assert verdict(dropped, owned, set()) == "dropped"


def test_unknown_direction_dnat_is_prerouting() -> None:
    # Per-hop captures without direction (plain pcap on host/eth0 and host/docker0).
    hops = [make_obs(at="host/eth0", direction=None, dst="203.0.113.2"),
            make_obs(at="host/docker0", direction=None, dst="172.17.0.2")]
    assert [(e.kind, e.hook) for e in infer_nat(hops)] == [("dnat", "PREROUTING")]
