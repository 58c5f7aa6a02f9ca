"""tui.format and tui.store: pure code, no app."""

from __future__ import annotations

from dataclasses import replace

from tests.tui.scripted import (
    bridged_path,
    dropped_path,
    make_obs,
    masquerade_reply,
    masquerade_request,
    renumber,
)
from tracer.model import Endpoints, Flow, InnerHeader, NatEvent, PacketPath
from tui.format import (
    duration_text,
    nat_badges,
    original_text,
    path_view,
    proto_text,
    summary,
    translated_text,
    ts_text,
)
from tui.store import PathStore


def test_cells_of_a_masqueraded_request() -> None:
    p = masquerade_request()
    assert (proto_text(p), original_text(p), translated_text(p), nat_badges(p).plain) == (
        "icmp echo", "172.17.0.2 → 198.51.100.8", "src 203.0.113.2", "SNAT")


def test_proto_text_tcp_flags_and_icmp_kinds() -> None:
    p = masquerade_request()
    syn_ack = replace(p, hops=(replace(p.first, proto=6, tcp_flags=0x12, icmp_type=None),))
    unreach6 = replace(p, hops=(replace(p.first, proto=58, family=6, icmp_type=1),))
    assert (proto_text(syn_ack), proto_text(unreach6), proto_text(masquerade_reply())) == (
        "tcp SA", "icmp6 unreach", "icmp reply")


def test_summaries() -> None:
    assert summary(dropped_path()) == "left client/eth0, was dropped at host/docker0 (NETFILTER_DROP)"
    assert summary(masquerade_reply()) == (
        "left host/eth0, was DNATed to 172.17.0.2 on host/docker0, arrived at web/eth0")
    assert summary(bridged_path("p9", 0)) == "left client/eth0, arrived at web/eth0"


def port_unreachable_reply() -> PacketPath:
    """inet's ICMP port unreachable for a MASQUERADEd datagram (client 172.17.0.3:37749 ->
    198.51.100.8:9), as live traced it in the lab: host translates the error back, and the
    header it quotes (the datagram, addresses the other way round) with it."""
    quoted = InnerHeader("203.0.113.2", "198.51.100.8", 17, 37749, 9)
    err = dict(src="198.51.100.8", icmp_type=3, icmp_code=3, icmp_id=None, icmp_seq=None)
    hops = (
        make_obs(node="host", ifname="eth0", direction="rx", dst="203.0.113.2", inner=quoted, **err),
        make_obs(node="host", ifname="docker0", direction="tx", dst="172.17.0.3",
                 inner=replace(quoted, src="172.17.0.3"), **err),
        make_obs(node="client", direction="rx", dst="172.17.0.3", inner=replace(quoted, src="172.17.0.3"), **err),
    )
    rule = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    outer = NatEvent(kind="dnat", node="host", hook="PREROUTING", from_hop=0, to_hop=1, rule=rule,
                     before=Endpoints("198.51.100.8", None, "203.0.113.2", None),
                     after=Endpoints("198.51.100.8", None, "172.17.0.3", None))
    inner = NatEvent(kind="dnat", node="host", hook="PREROUTING", from_hop=0, to_hop=1,
                     before=Endpoints("203.0.113.2", 37749, "198.51.100.8", 9),
                     after=Endpoints("172.17.0.3", 37749, "198.51.100.8", 9))
    return PacketPath(id="p7", hops=hops, nat=(outer, inner), verdict="delivered", flow="f7")


def test_an_icmp_errors_quoted_header_is_told_apart_and_by_the_side_it_changed() -> None:
    """The quoted header's event (kind dnat: the error was translated back at PREROUTING)
    changed its *source*, the datagram's; the summary once said 'was translated back to
    198.51.100.8:9', the address nothing rewrote."""
    path = port_unreachable_reply()
    assert summary(path) == (
        "left host/eth0, was translated back to 172.17.0.3 on host/docker0 (reply to MASQUERADE), "
        "its quoted header was rewritten to 172.17.0.3:37749 on host/docker0, arrived at client/eth0")
    # the table's "after NAT" cell: the error's own header, not a mix of the two
    assert translated_text(path) == "dst 172.17.0.3"
    text = path_view(path).plain
    assert "DNAT  translated back on host at PREROUTING" in text
    assert "DNAT  quoted header rewritten on host at PREROUTING: 203.0.113.2:37749" in text


def test_time_and_duration_text() -> None:
    assert (ts_text(1_795_813_200_123_456_789), ts_text(12_345_678_901), duration_text(9_000),
            duration_text(31_000), duration_text(2_500_000), duration_text(3_200_000_000)) == (
        "21:00:00.123456", "12.345679", "9.0 µs", "31 µs", "2.5 ms", "3.20 s")


def test_store_keeps_the_last_n_and_trims_the_view() -> None:
    store = PathStore(keep=3)
    paths = [renumber(masquerade_request(), f"q{i}", i) for i in range(5)]
    assert store.add((p, i % 2 == 0) for i, p in enumerate(paths)) == 3
    assert [e.path.id for e in store._all] == ["q2", "q3", "q4"]
    assert [store.row(r).path.id for r in range(len(store.view))] == ["q4", "q2"]
    assert store.row_of_seq(store.view[0].seq) == 1


def test_store_flow_roles_and_find() -> None:
    store = PathStore(keep=10)
    store.add([(masquerade_request(), True), (masquerade_reply(), True), (dropped_path(), True)])
    store.add_flows([Flow("f1", "icmp", Endpoints("172.17.0.2", None, "198.51.100.8", None),
                          Endpoints("198.51.100.8", None, "203.0.113.2", None), ("p1", "p2"))])
    assert [store.flow_of(store.row(r).path) for r in range(3)] == [
        ("f2", None), ("f1", "reply"), ("f1", "request")]
    assert store.find(-1, lambda p: p.verdict == "left") == 2
    assert store.find(0, lambda p: bool(p.nat)) == 1
    assert store.find(2, lambda p: True) is None


def test_a_relayed_connection_is_one_story_in_the_path_view() -> None:
    """The relay a path's flow is a leg of: its own ``"relay"``, else its flow's (the flow line came
    later and knew), shown under the path's summary."""
    from tui.format import path_view

    relay = {"by": {"pid": 4242, "comm": "docker-proxy"}, "peer_flow": "f2", "peer_paths": ["p4"],
             "leg": "accepted", "peer": {"src": "172.17.0.1", "sport": 35216, "dst": "172.17.0.2", "dport": 80},
             "peer_node": "web"}
    p = replace(bridged_path("p1", 1_000), flow="f1")
    store = PathStore(keep=10)
    store.add([(p, True)])
    assert store.relay_of(p) is None
    store.add_flows([Flow(id="f1", proto="tcp", original=Endpoints("172.17.0.3", 40000, "203.0.113.2", 8080),
                          reply=Endpoints("203.0.113.2", 8080, "172.17.0.3", 40000), paths=(p.id,), relay=relay)])
    assert store.relay_of(p) == relay
    shown = path_view(p, "f1", "request", None, store.relay_of(p)).plain
    assert "\u2192 docker-proxy relays to web:80 from 172.17.0.1:35216" in shown
    own = replace(p, relay={**relay, "peer_node": "api"})
    assert "relays to api:80" in path_view(own, "f1", "request", None, relay).plain


def test_after_nat_is_not_cut_where_the_terminal_has_room() -> None:
    """A MASQUERADEd port was cut to "src 203.0.113.2:386…" on a 200-column terminal while the
    original column sat half empty."""
    from tui.widgets.path_table import column_widths

    def widths(total: int) -> dict[str, int]:
        return dict(column_widths(total))

    assert widths(160)["after NAT"] >= len("src 203.0.113.2:38675")
    assert widths(160)["original src → dst"] >= len("255.255.255.255:65535 → 255.255.255.255:65535")
    assert widths(200)["after NAT"] >= len("src [2001:db8::ffff:ffff:ffff:ffff]:65535")
    for total in (80, 120, 200, 400):
        w = widths(total)
        assert w["original src → dst"] >= w["after NAT"], total
        assert sum(w.values()) + len(w) - 1 <= max(total, 89), total
