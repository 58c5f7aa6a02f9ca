"""NDJSON exactly as CONTRACT.md says, and text a person reads at a glance."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from tests.reference.correlate import correlate
from tests.unit.conftest import NETNS, internet_ping, internet_pong
from tracer.model import ConntrackRef, Endpoints, Flow, PacketPath, Stats
from tracer.sinks.output import (
    PLAIN,
    NdjsonSink,
    TextSink,
    flow_json,
    nat_text,
    path_json,
    path_line,
    path_text,
    stats_json,
)


def ping_path() -> PacketPath:
    obs = internet_ping()
    obs[0] = replace(obs[0], skb=0xFFFF888108472600)
    p, _ = correlate(obs + internet_pong())
    return p


def test_path_json_shape() -> None:
    d = path_json(ping_path())
    assert d["hops"][0] == {
        "ts_ns": 1_000_000_000, "node": "web", "netns": NETNS["web"], "iface": "eth0", "dir": "tx",
        "src": "172.17.0.2", "dst": "198.51.100.8", "sport": None, "dport": None, "ip_id": 4242,
        "ttl": 64, "skb": "0xffff888108472600", "drop_reason": None,
        # extra keys
        "proto": "icmp", "length": 84, "icmp_type": 8, "icmp_code": 0, "icmp_id": 77, "icmp_seq": 1,
    }
    assert d["hops"][1]["skb"] is None
    assert {k: v for k, v in d.items() if k != "hops"} == {
        "type": "path", "id": "p1", "flow": "f1", "proto": "icmp", "verdict": "delivered",
        "nat": [{"kind": "snat", "node": "host", "hook": "POSTROUTING",
                 "before": {"src": "172.17.0.2", "sport": None, "dst": "198.51.100.8", "dport": None},
                 "after": {"src": "203.0.113.2", "sport": None, "dst": "198.51.100.8", "dport": None},
                 "from_hop": 2, "to_hop": 3, "rule": None}],
    }
    # JSON-serialisable as is.
    assert json.loads(json.dumps(d)) == d


def test_nat_json_and_text_with_rule_and_conntrack() -> None:
    p = ping_path()
    ct = ConntrackRef(id=42, original=Endpoints("172.17.0.2", None, "198.51.100.8", None),
                      reply=Endpoints("198.51.100.8", None, "203.0.113.2", None), status=("SRC_NAT",))
    rule = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    ev = replace(p.nat[0], rule=rule, rule_source="inferred", conntrack=ct)
    p = replace(p, nat=(ev,))
    nat = path_json(p)["nat"][0]
    assert (nat["rule"], nat["rule_source"], nat["conntrack"]) == (rule, "inferred", {
        "id": 42, "original": ct.original.to_json(), "reply": ct.reply.to_json(),
        "status": ["SRC_NAT"], "zone": 0})
    assert nat_text(ev) == (f"172.17.0.2 → 203.0.113.2  SNAT @ host POSTROUTING  rule: {rule} (inferred)"
                            "  ct 42")


def test_path_text_block() -> None:
    assert path_text(ping_path()) == "\n".join([
        "p1  icmp echo-request id 77 seq 1  172.17.0.2 → 198.51.100.8  delivered  30 µs  flow f1",
        "     web/eth0 tx",
        "   → host/veth1 rx    +10 µs",
        "   → host/docker0 rx  +2.0 µs",
        "   → host/eth0 tx     +8.0 µs",
        "        172.17.0.2 → 203.0.113.2  SNAT @ host POSTROUTING",
        "   → inet/eth0 rx     +10 µs",
    ])


def test_sinks_write_stats_last() -> None:
    paths = correlate(internet_ping() + internet_pong())
    flow = Flow(id="f1", proto="icmp", original=Endpoints("172.17.0.2", None, "198.51.100.8", None),
                reply=Endpoints("198.51.100.8", None, "203.0.113.2", None), paths=("p1", "p2"))
    stats = Stats(observations=10, paths=2, lost_events=0, elapsed_s=0.01234)
    out = io.StringIO()
    sink = NdjsonSink(out)
    for p in paths:
        sink.on_path(p)
    sink.on_flow(flow)
    sink.on_stats(stats)
    sink.close()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["type"] for x in lines] == ["path", "path", "flow", "stats"]
    assert lines[2] == flow_json(flow) == {
        "type": "flow", "id": "f1", "proto": "icmp",
        "original": {"src": "172.17.0.2", "sport": None, "dst": "198.51.100.8", "dport": None},
        "reply": {"src": "198.51.100.8", "sport": None, "dst": "203.0.113.2", "dport": None},
        "paths": ["p1", "p2"]}
    assert lines[3] == stats_json(stats) == {"type": "stats", "observations": 10, "paths": 2,
                                             "lost_events": 0, "elapsed_s": 0.012}
    text = io.StringIO()
    ts = TextSink(text)
    ts.on_path(paths[1])
    ts.on_flow(flow)
    ts.on_stats(stats)
    lines_t = text.getvalue().splitlines()
    assert lines_t[0].startswith("p2  icmp echo-reply id 77 seq 1  198.51.100.8 → 203.0.113.2  delivered")
    assert "        203.0.113.2 → 172.17.0.2  DNAT @ host PREROUTING" in lines_t
    assert lines_t[-2:] == [
        "f1  icmp  172.17.0.2 → 198.51.100.8  reply 198.51.100.8 → 203.0.113.2  paths p1 p2",
        "stats: 10 observations, 2 paths, 0 lost events, 0.012 s"]


def test_drop_and_ports_in_text() -> None:
    from tests.unit.conftest import make_obs

    tcp = dict(proto=6, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, tcp_flags=0x02,
               tcp_seq=1, tcp_ack=0, sport=41000, dport=80, family=6, src="fd00::2", dst="fd00:1::8",
               ip_id=None)
    (p,) = correlate([make_obs(at="web/eth0", **tcp),
                      make_obs(at="host/veth1", direction="drop", drop_reason="NETFILTER_DROP",
                               ts_ns=1_000_000_000 + 1500, **tcp)])
    assert path_text(p).splitlines() == [
        "p1  tcp [S]  [fd00::2]:41000 → [fd00:1::8]:80  dropped  1.5 µs  flow f1",
        "     web/eth0 tx",
        "   → host/veth1 drop  +1.5 µs  DROPPED: NETFILTER_DROP — dropped by a netfilter rule (iptables/nftables DROP)",
    ]
    assert path_json(p)["hops"][1]["drop_reason"] == "NETFILTER_DROP"


def test_path_line_is_json_dumps_of_path_json() -> None:
    from tests.unit.conftest import make_obs
    from tracer.model import InnerHeader

    odd = dict(node='we"b\\1', ifname="eth0é")
    variants = [
        make_obs(at="web/eth0"),
        make_obs(proto=6, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, tcp_flags=0x12,
                 tcp_seq=5, tcp_ack=6, sport=1, dport=2, skb=0xABC, **odd),
        make_obs(family=6, src="fd00::1", dst="fd00::2", ip_id=None, flow_label=7, icmp_type=128),
        make_obs(proto=17, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, is_fragment=True,
                 frag_offset=1480, more_fragments=False),
        make_obs(icmp_type=3, icmp_code=3, icmp_id=None, icmp_seq=None, direction="drop",
                 drop_reason="NETFILTER_DROP", inner=InnerHeader("172.17.0.2", "198.51.100.8", 17, 9, 7)),
        make_obs(direction=None),
    ]
    paths = [*correlate(variants), *correlate(internet_ping() + internet_pong())]
    assert len(paths) >= 7
    for p in paths:
        assert path_line(p) == json.dumps(path_json(p))


def test_echo_reply_freed_with_no_socket_is_delivered_where_a_raw_socket_was_open() -> None:
    """busybox ping (a raw socket) gets a copy of each reply; the original is freed with
    NO_SOCKET. Where the source saw a raw ICMP socket open then, that free lost nothing."""
    from tests.reference.correlate import Correlator
    from tests.unit.conftest import make_obs
    from tracer.model import ObsBatch
    from tui.format import path_view

    pong = internet_pong()
    last = pong[-1]
    free = replace(last, direction="drop", drop_reason="NO_SOCKET", ts_ns=last.ts_ns + 700)
    (dropped,) = correlate([*pong, free])
    assert dropped.verdict == "dropped"
    assert path_text(dropped).splitlines()[-1].endswith(
        "DROPPED: NO_SOCKET — no socket listens for it (closed port, or no ping socket for an echo reply)")
    c = Correlator()
    c.raw_sockets = {NETNS["web"]: [(free.ts_ns - 10, free.ts_ns)]}
    (p,) = [*c.feed_batch(ObsBatch.from_observations([*pong, free])), *c.flush()]
    assert p.verdict == "delivered"
    text = path_text(p)
    assert text.splitlines()[-1].endswith(
        "freed: NO_SOCKET — a raw socket (ping) got a copy; the original found no ping socket")
    assert "a raw socket (ping) got a copy" in path_view(p).plain
    assert "web/eth0 freed NO_SOCKET" in path_text(p, replace(PLAIN, detail=-1))
    # NO_SOCKET of other packets (a UDP datagram to a closed port) stays a loss, raw socket or not.
    udp = make_obs(at="web/eth0", direction="rx", proto=17, icmp_type=None, icmp_code=None, icmp_id=None,
                   icmp_seq=None, sport=5000, dport=53)
    c = Correlator()
    c.raw_sockets = {NETNS["web"]: [(0, 2**63)]}
    (q,) = [*c.feed_batch(ObsBatch.from_observations(
        [udp, replace(udp, direction="drop", drop_reason="NO_SOCKET", ts_ns=udp.ts_ns + 5)])), *c.flush()]
    assert q.verdict == "dropped"
    assert "DROPPED: NO_SOCKET" in path_text(q).splitlines()[-1]


def test_frees_after_delivery_keep_the_path_delivered_and_say_what_happened() -> None:
    """A TCP segment that reached its socket, freed unread when the socket closed."""
    from tests.unit.conftest import make_obs

    tcp = dict(proto=6, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, tcp_flags=0x18,
               tcp_seq=1, tcp_ack=1, sport=41000, dport=80)
    seg = [make_obs(at="host/veth1", direction="tx", **tcp),
           make_obs(at="web/eth0", direction="rx", ts_ns=1_000_000_000 + 1000, **tcp)]
    purge = make_obs(node="?", ifname="?", netns=0, ifindex=0, direction="drop", drop_reason="QUEUE_PURGE",
                     ts_ns=1_000_000_000 + 9000, **tcp)
    (p,) = correlate([*seg, purge])
    assert p.verdict == "delivered"
    assert [(h.node, h.ifname, h.netns) for h in p.hops][2] == ("web", "(no device)", NETNS["web"])
    assert path_text(p).splitlines()[-1].endswith(
        "web/(no device) drop  +8.0 µs  freed: QUEUE_PURGE — discarded unread when its socket's queue was purged (socket closed)")
    # The same reason where the packet never arrived (a neighbour queue on the way) is a loss.
    (q,) = correlate([seg[0], replace(purge, ts_ns=seg[0].ts_ns + 5)])
    assert q.verdict == "dropped"
    assert [(h.node, h.ifname) for h in q.hops][1] == ("host", "(no device)")
