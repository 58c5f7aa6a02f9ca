"""The pure parts of `hoptrace probe`: parsing what the user typed, and the verdict."""

from __future__ import annotations

import errno

import pytest

from tracer.commands.reach import Sent, Target, judge, parse_target
from tracer.errors import UsageError
from tracer.model import InnerHeader, Observation, PacketPath

CLIENT_NS, HOST_NS, INET_NS = 11, 22, 33


def obs(node: str, netns: int, iface: str, direction: str, src: str, dst: str, ts: int,
        **kw: object) -> Observation:
    base: dict[str, object] = dict(
        ts_ns=ts, netns=netns, ifindex=2, ifname=iface, node=node, direction=direction,
        source="file", family=4, proto=1, src=src, dst=dst, length=84, ttl=64,
    )
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def path(pid: str, *hops: Observation, verdict: str = "delivered", flow: str | None = "f1") -> PacketPath:
    return PacketPath(id=pid, hops=hops, nat=(), verdict=verdict, flow=flow)  # type: ignore[arg-type]


ICMP_T = Target("198.51.100.8", 4, None, "icmp")


def echo_request(ident: int = 0x5000) -> PacketPath:
    icmp = dict(icmp_type=8, icmp_code=0, icmp_id=ident, icmp_seq=1)
    return path(
        "p1",
        obs("client", CLIENT_NS, "eth0", "tx", "172.17.0.3", "198.51.100.8", 1, **icmp),
        obs("host", HOST_NS, "veth1", "rx", "172.17.0.3", "198.51.100.8", 2, **icmp),
        obs("host", HOST_NS, "eth0", "tx", "203.0.113.2", "198.51.100.8", 3, **icmp),
        verdict="left",
    )


@pytest.mark.parametrize(
    ("text", "proto", "expected"),
    [
        ("198.51.100.8", None, Target("198.51.100.8", 4, None, "icmp")),
        ("203.0.113.2:8080", None, Target("203.0.113.2", 4, 8080, "tcp")),
        ("203.0.113.2:53", "udp", Target("203.0.113.2", 4, 53, "udp")),
        ("2001:db8::1", None, Target("2001:db8::1", 6, None, "icmp")),
        ("[2001:db8::1]:80", None, Target("2001:db8::1", 6, 80, "tcp")),
    ],
)
def test_parse_target(text: str, proto: str | None, expected: Target) -> None:
    assert parse_target(text, proto) == expected


@pytest.mark.parametrize(
    "text,proto",
    [("web", None), ("1.2.3.4:0", None), ("1.2.3.4:70000", None), ("1.2.3.4:http", None),
     ("$(reboot)", None), ("1.2.3.4", "tcp"), ("1.2.3.4:80", "icmp"), ("[::1", None), ("x" * 4096, None)],
)
def test_parse_target_rejects(text: str, proto: str | None) -> None:
    with pytest.raises(UsageError):
        parse_target(text, proto)


def test_reachable_when_the_echo_reply_comes_back() -> None:
    reply_icmp = dict(icmp_type=0, icmp_code=0, icmp_id=0x5000, icmp_seq=1)
    reply = path(
        "p2",
        obs("host", HOST_NS, "eth0", "rx", "198.51.100.8", "203.0.113.2", 10, **reply_icmp),
        obs("client", CLIENT_NS, "eth0", "rx", "198.51.100.8", "172.17.0.3", 12, **reply_icmp),
    )
    r = judge(ICMP_T, Sent(ident=0x5000, seqs=[1]), CLIENT_NS, [echo_request(), reply])
    assert (r.verdict, r.ok, [p.id for p in r.requests], [p.id for p in r.replies]) == (
        "reachable", True, ["p1"], ["p2"])


def test_dropped_names_the_hop_and_reason() -> None:
    icmp = dict(icmp_type=8, icmp_code=0, icmp_id=0x5000, icmp_seq=1)
    p = path(
        "p1",
        obs("client", CLIENT_NS, "eth0", "tx", "172.17.0.3", "198.51.100.8", 1, **icmp),
        obs("host", HOST_NS, "veth1", "drop", "172.17.0.3", "198.51.100.8", 2,
            drop_reason="NETFILTER_DROP", **icmp),
        verdict="dropped",
    )
    r = judge(ICMP_T, Sent(ident=0x5000, seqs=[1]), CLIENT_NS, [p])
    assert (r.verdict, r.ok, r.detail) == (
        "dropped", False, "dropped at host/veth1 (host), reason NETFILTER_DROP")


def test_rst_is_rejected_from_where_it_came() -> None:
    t = Target("203.0.113.2", 4, 9090, "tcp")
    syn = path("p1", obs("client", CLIENT_NS, "eth0", "tx", "172.17.0.3", "203.0.113.2", 1,
                         proto=6, sport=50000, dport=9090, tcp_flags=0x02), verdict="left")
    rst = path("p2",
               obs("host", HOST_NS, "veth1", "tx", "203.0.113.2", "172.17.0.3", 5,
                   proto=6, sport=9090, dport=50000, tcp_flags=0x14),
               obs("client", CLIENT_NS, "eth0", "rx", "203.0.113.2", "172.17.0.3", 6,
                   proto=6, sport=9090, dport=50000, tcp_flags=0x14))
    r = judge(t, Sent(ident=50000, seqs=[1], socket_error=errno.ECONNREFUSED), CLIENT_NS, [syn, rst])
    assert (r.verdict, r.ok) == ("rejected", False)
    assert "TCP RST from 203.0.113.2:9090 (first seen at host/veth1)" in r.detail


def test_icmp_unreachable_quoting_the_probe_is_no_route() -> None:
    t = Target("198.51.100.99", 4, 53, "udp")
    err = path("p2", obs("client", CLIENT_NS, "eth0", "rx", "172.17.0.1", "172.17.0.3", 5,
                         icmp_type=3, icmp_code=1,
                         inner=InnerHeader("172.17.0.3", "198.51.100.99", 17, 40000, 53)))
    r = judge(t, Sent(ident=40000, seqs=[1]), CLIENT_NS, [err])
    assert (r.verdict, r.ok) == ("no route", False)


def test_no_reply_says_where_the_request_was_last_seen() -> None:
    r = judge(ICMP_T, Sent(ident=0x5000, seqs=[1]), CLIENT_NS, [echo_request()])
    assert (r.verdict, r.detail) == (
        "no reply", "the request last reached host/eth0 (tx); no reply was seen anywhere")


def test_socket_says_no_route() -> None:
    r = judge(ICMP_T, Sent(ident=1, socket_error=errno.ENETUNREACH), CLIENT_NS, [])
    assert (r.verdict, r.ok) == ("no route", False)


def test_other_probes_are_not_mistaken_for_ours() -> None:
    r = judge(ICMP_T, Sent(ident=0x6000, seqs=[1]), CLIENT_NS, [echo_request(0x5000)])
    assert (r.verdict, r.requests) == ("no reply", ())
