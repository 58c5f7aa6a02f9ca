"""The reference correlator (tests/reference/correlate.py): one packet recognised at every hop,
and never two packets merged."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from itertools import pairwise

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference.correlate import Correlator, correlate
from tests.unit.conftest import MS, NETNS, US, internet_ping, internet_pong, make_obs
from tracer.model import (
    Endpoints,
    Flow,
    InnerHeader,
    NatEvent,
    ObsBatch,
    PacketPath,
)


def hops(p: PacketPath) -> list[tuple[str, str | None]]:
    return [(h.hop_name, h.direction) for h in p.hops]


def summary(paths: list[PacketPath]) -> list[tuple[str, str, str | None, list[tuple[str, str | None]]]]:
    return [(p.id, p.verdict, p.flow, hops(p)) for p in paths]


PING_HOPS = [("web/eth0", "tx"), ("host/veth1", "rx"), ("host/docker0", "rx"), ("host/eth0", "tx"),
             ("inet/eth0", "rx")]
PONG_HOPS = [("inet/eth0", "tx"), ("host/eth0", "rx"), ("host/docker0", "tx"), ("host/veth1", "tx"),
             ("web/eth0", "rx")]


def test_internet_ping_and_reply_with_masquerade() -> None:
    c = Correlator()
    paths = c.feed_batch(ObsBatch.from_observations(internet_ping() + internet_pong()))
    assert paths == []  # nothing idle yet
    paths = c.flush()
    assert summary(paths) == [("p1", "delivered", "f1", PING_HOPS), ("p2", "delivered", "f1", PONG_HOPS)]
    assert paths[0].nat == (NatEvent(
        kind="snat", node="host", hook="POSTROUTING",
        before=Endpoints("172.17.0.2", None, "198.51.100.8", None),
        after=Endpoints("203.0.113.2", None, "198.51.100.8", None), from_hop=2, to_hop=3),)
    assert paths[1].nat == (NatEvent(
        kind="dnat", node="host", hook="PREROUTING",
        before=Endpoints("198.51.100.8", None, "203.0.113.2", None),
        after=Endpoints("198.51.100.8", None, "172.17.0.2", None), from_hop=1, to_hop=2),)
    assert c.take_flows() == [Flow(
        id="f1", proto="icmp", original=Endpoints("172.17.0.2", None, "198.51.100.8", None),
        reply=Endpoints("198.51.100.8", None, "203.0.113.2", None), paths=("p1", "p2"))]
    # The row view survives the batch round trip unchanged.
    assert paths[0].hops == tuple(internet_ping())


def test_hops_in_time_order_whatever_the_arrival_order() -> None:
    obs = internet_ping()
    shuffled = [obs[3], obs[0], obs[4], obs[2], obs[1]]
    (p,) = correlate(shuffled)
    assert hops(p) == PING_HOPS
    # Across batches too (per-CPU rings deliver late); the two sides of the rewrite arrive
    # first, then the hops before and after them (a rewrite joins only between the hops where
    # it happened: see test_a_rewrite_seen_before_the_hops_between_it_splits).
    late = [obs[3], obs[2], obs[0], obs[4], obs[1]]
    c = Correlator()
    c.feed_batch(ObsBatch.from_observations(late[:2]))
    c.feed_batch(ObsBatch.from_observations(late[2:]))
    (p,) = c.flush()
    assert hops(p) == PING_HOPS


def test_equal_timestamps_keep_batch_order() -> None:
    a = make_obs(at="host/veth1", direction="rx", ts_ns=5 * MS)
    b = make_obs(at="host/docker0", direction="rx", ts_ns=5 * MS)
    (p,) = correlate([a, b])
    assert hops(p) == [("host/veth1", "rx"), ("host/docker0", "rx")]
    (p,) = correlate([b, a])
    assert hops(p) == [("host/docker0", "rx"), ("host/veth1", "rx")]


def test_repeated_identical_pings_are_never_merged() -> None:
    # Same id, seq, IP ID and payload: two packets, back to back (well within the window).
    first = internet_ping(t0=1_000 * MS)
    second = internet_ping(t0=1_000 * MS + 50 * US)
    interleaved = sorted(first + second, key=lambda o: o.ts_ns)
    paths = correlate(interleaved)
    # Nobody answered, so nothing says 198.51.100.8 lives in inet: incomplete.
    assert summary(paths) == [("p1", "incomplete", "f1", PING_HOPS), ("p2", "incomplete", "f1", PING_HOPS)]
    assert [h.ts_ns for h in paths[0].hops] == [o.ts_ns for o in first]
    assert [h.ts_ns for h in paths[1].hops] == [o.ts_ns for o in second]


def test_tcp_retransmission_is_a_new_path() -> None:
    seg = dict(proto=6, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, sport=40000,
               dport=80, tcp_flags=0x18, tcp_seq=1000, tcp_ack=2000, length=120, digest=0xC0FFEE,
               ip_id=None, family=6, src="fd00::2", dst="fd00:1::8", flow_label=0x12345)
    sent = [make_obs(at="web/eth0", direction="tx", ts_ns=t, **seg) for t in (1 * MS, 201 * MS, 202 * MS)]
    fwd = [make_obs(at="host/veth1", direction="rx", ts_ns=t + 5 * US, **seg) for t in (1 * MS, 201 * MS)]
    paths = correlate(sorted(sent + fwd, key=lambda o: o.ts_ns))
    assert [(p.id, hops(p)) for p in paths] == [
        ("p1", [("web/eth0", "tx"), ("host/veth1", "rx")]),
        ("p2", [("web/eth0", "tx"), ("host/veth1", "rx")]),
        ("p3", [("web/eth0", "tx")]),
    ]
    assert [p.hops[0].ts_ns for p in paths] == [1 * MS, 201 * MS, 202 * MS]


def test_ip_id_wraparound() -> None:
    # 65535 then 0: different packets; 65536 packets later 65535 comes back: a new packet again.
    obs = []
    for k, (ip_id, t0) in enumerate([(65535, 1 * MS), (0, 1 * MS + 3 * US), (65535, 900 * MS)]):
        obs += [make_obs(at="web/eth0", ip_id=ip_id, icmp_seq=k, ts_ns=t0),
                make_obs(at="host/veth1", direction="rx", ip_id=ip_id, icmp_seq=k, ts_ns=t0 + 10 * US)]
    obs.append(make_obs(at="web/eth0", ip_id=65535, icmp_seq=0, ts_ns=1_000 * MS))  # same seq too
    paths = correlate(sorted(obs, key=lambda o: o.ts_ns))
    assert [(p.hops[0].ip_id, p.hops[0].icmp_seq, len(p.hops)) for p in paths] == [
        (65535, 0, 2), (0, 1, 2), (65535, 2, 2), (65535, 0, 1)]


def test_ttl_decrement_is_not_nat() -> None:
    obs = [make_obs(at="host/eth0", direction="rx", ttl=64, src="198.51.100.8", dst="172.17.0.2"),
           make_obs(at="host/docker0", direction="tx", ttl=63, src="198.51.100.8", dst="172.17.0.2",
                    ts_ns=1_000 * MS + 5 * US)]
    (p,) = correlate(obs)
    assert (len(p.hops), p.nat) == (2, ())


def test_icmp_error_with_nated_quoted_header() -> None:
    # web sent UDP 172.17.0.2:38760 -> 198.51.100.8:7 (MASQUERADEd); inet answers port unreachable.
    udp = dict(proto=17, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, sport=38760,
               dport=7, length=33, digest=0xAA, ip_id=1)
    req = [make_obs(at="web/eth0", ts_ns=1 * MS, **udp),
           make_obs(at="host/docker0", direction="rx", ts_ns=1 * MS + 5 * US, **udp),
           make_obs(at="host/eth0", ts_ns=1 * MS + 9 * US, **{**udp, "src": "203.0.113.2"}),
           make_obs(at="inet/eth0", direction="rx", ts_ns=1 * MS + 15 * US, **{**udp, "src": "203.0.113.2"})]
    q_masq = InnerHeader("203.0.113.2", "198.51.100.8", 17, 38760, 7)
    q_orig = InnerHeader("172.17.0.2", "198.51.100.8", 17, 38760, 7)
    err = dict(icmp_type=3, icmp_code=3, icmp_id=None, icmp_seq=None, ip_id=555, length=61,
               digest=0xBB, src="198.51.100.8", dst="203.0.113.2", inner=q_masq)
    rep = [make_obs(at="inet/eth0", direction="tx", ts_ns=2 * MS, **err),
           make_obs(at="host/eth0", direction="rx", ts_ns=2 * MS + 4 * US, **err),
           make_obs(at="host/docker0", direction="tx", ts_ns=2 * MS + 9 * US,
                    **{**err, "dst": "172.17.0.2", "inner": q_orig}),
           make_obs(at="web/eth0", direction="rx", ts_ns=2 * MS + 14 * US,
                    **{**err, "dst": "172.17.0.2", "inner": q_orig})]
    c = Correlator()
    c.feed_batch(ObsBatch.from_observations(req + rep))
    p_req, p_err = c.flush()
    assert (p_req.verdict, p_err.verdict, p_req.flow, p_err.flow) == ("delivered", "delivered", "f1", "f1")
    assert p_err.nat == (
        NatEvent(kind="dnat", node="host", hook="PREROUTING",
                 before=Endpoints("198.51.100.8", None, "203.0.113.2", None),
                 after=Endpoints("198.51.100.8", None, "172.17.0.2", None), from_hop=1, to_hop=2),
        NatEvent(kind="dnat", node="host", hook="PREROUTING",
                 before=Endpoints("203.0.113.2", 38760, "198.51.100.8", 7),
                 after=Endpoints("172.17.0.2", 38760, "198.51.100.8", 7), from_hop=1, to_hop=2),
    )
    assert [(f.id, f.paths) for f in c.take_flows()] == [("f1", ("p1", "p2"))]


def test_fragments_are_never_merged() -> None:
    common = dict(proto=17, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, ip_id=7777)
    first = dict(common, is_fragment=True, more_fragments=True, frag_offset=0, sport=5000, dport=53,
                 length=1500, digest=0x1)
    later = dict(common, is_fragment=True, more_fragments=False, frag_offset=1480, length=548, digest=0x2)
    # A second datagram whose later fragment has the same length and offset but another IP ID.
    other = dict(later, ip_id=7778)
    obs = []
    for k, f in enumerate((first, later, other)):
        obs += [make_obs(at="web/eth0", ts_ns=1 * MS + k * US, **f),
                make_obs(at="host/veth1", direction="rx", ts_ns=1 * MS + 10 * US + k * US, **f)]
    paths = correlate(sorted(obs, key=lambda o: o.ts_ns))
    assert [(p.hops[0].ip_id, p.hops[0].frag_offset, p.hops[0].more_fragments, len(p.hops))
            for p in paths] == [(7777, 0, True, 2), (7777, 1480, False, 2), (7778, 1480, False, 2)]
    assert all(len({(h.frag_offset, h.ip_id) for h in p.hops}) == 1 for p in paths)


def test_ipv6_uses_flow_label_and_payload() -> None:
    v6 = dict(family=6, proto=58, src="fd00::2", dst="fd00:1::8", ip_id=None, icmp_type=128,
              length=104, icmp_seq=1)
    obs = []
    for k, (label, digest) in enumerate([(0x11111, 0x5), (0x22222, 0x5), (0x11111, 0x6)]):
        obs += [make_obs(at="web/eth0", flow_label=label, digest=digest, ts_ns=1 * MS + k * US, **v6),
                make_obs(at="host/veth1", direction="rx", flow_label=label, digest=digest,
                         ts_ns=1 * MS + 10 * US + k * US, **v6)]
    paths = correlate(sorted(obs, key=lambda o: o.ts_ns))
    assert [(p.hops[0].flow_label, p.hops[0].digest, len(p.hops), p.proto, p.first.src) for p in paths] == [
        (0x11111, 0x5, 2, "icmp6", "fd00::2"), (0x22222, 0x5, 2, "icmp6", "fd00::2"),
        (0x11111, 0x6, 2, "icmp6", "fd00::2")]


def test_arp_paths_are_l2_only() -> None:
    arp = dict(family=0, proto=0, ethertype=0x0806, src="172.17.0.2", dst="172.17.0.1", length=28,
               ip_id=None, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, ttl=0, digest=0x99)
    obs = [make_obs(at="web/eth0", ts_ns=1 * MS, **arp),
           make_obs(at="host/veth1", direction="rx", ts_ns=1 * MS + 3 * US, **arp),
           make_obs(at="host/docker0", direction="rx", ts_ns=1 * MS + 4 * US, **arp),
           # Another ARP request, to another address: its own path.
           make_obs(at="web/eth0", ts_ns=1 * MS + 5 * US, **{**arp, "dst": "172.17.0.3"})]
    paths = correlate(obs)
    assert [(p.id, p.proto, p.verdict, p.flow, p.nat, len(p.hops), p.first.dst) for p in paths] == [
        ("p1", "arp", "delivered", None, (), 3, "172.17.0.1"),
        ("p2", "arp", "left", None, (), 1, "172.17.0.3")]


def test_skb_tells_identical_packets_in_flight_apart() -> None:
    a1 = make_obs(at="web/eth0", skb=0xA0, ts_ns=1 * MS)
    b1 = make_obs(at="client/eth0", skb=0xB0, ts_ns=1 * MS + 1 * US)
    b2 = make_obs(at="host/docker0", direction="rx", skb=0xB0, ts_ns=1 * MS + 2 * US)
    a2 = make_obs(at="host/docker0", direction="rx", skb=0xA0, ts_ns=1 * MS + 3 * US)
    paths = correlate([a1, b1, b2, a2])
    assert [[(h.hop_name, h.skb) for h in p.hops] for p in paths] == [
        [("web/eth0", 0xA0), ("host/docker0", 0xA0)], [("client/eth0", 0xB0), ("host/docker0", 0xB0)]]


def test_skb_address_reused_after_free_starts_a_new_path() -> None:
    a = make_obs(at="web/eth0", skb=0xA0, ts_ns=1 * MS)
    # Same buffer address, another packet (other IP ID): not the same path.
    b = make_obs(at="host/veth1", direction="rx", skb=0xA0, ts_ns=1 * MS + 5 * US, ip_id=1)
    paths = correlate([a, b])
    assert [len(p.hops) for p in paths] == [1, 1]


def test_paths_finish_when_idle_in_observation_time() -> None:
    c = Correlator(window_ns=100 * MS)
    assert c.feed_batch(ObsBatch.from_observations(internet_ping(t0=1_000 * MS))) == []
    assert c.advance(1_000 * MS + 99 * MS) == []
    (p,) = c.advance(1_000 * MS + 131 * MS)
    assert (p.id, len(p.hops), c.open_paths) == ("p1", 5, 0)
    # A later batch also advances the clock, and its ``now_ns`` too.
    c.feed_batch(ObsBatch.from_observations(internet_pong(t0=2_000 * MS)))
    batch = ObsBatch.from_observations([])
    batch.now_ns = 2_200 * MS
    (p2,) = c.feed_batch(batch)
    assert p2.id == "p2"
    # Flows finish later (flow_idle_ns), or at flush.
    assert c.take_flows() == []
    assert c.flush() == []
    assert [f.paths for f in c.take_flows()] == [("p1", "p2")]


def test_nat_hooks_hairpin_and_output() -> None:
    tcp = dict(proto=6, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, tcp_flags=2,
               tcp_seq=1, tcp_ack=0, length=60, digest=0x7)
    # client -> host's published port: DNAT to web:80 and MASQUERADE (hairpin) between two hops.
    req = [make_obs(at="client/eth0", src="172.17.0.3", sport=41224, dst="203.0.113.2", dport=8080,
                    ts_ns=1 * MS, **tcp),
           make_obs(at="host/docker0", direction="rx", src="172.17.0.3", sport=41224, dst="203.0.113.2",
                    dport=8080, ts_ns=1 * MS + 5 * US, **tcp),
           make_obs(at="host/veth1", direction="tx", src="172.17.0.1", sport=41224, dst="172.17.0.2",
                    dport=80, ts_ns=1 * MS + 9 * US, **tcp)]
    (p,) = correlate(req)
    assert p.nat == (
        NatEvent(kind="dnat", node="host", hook="PREROUTING",
                 before=Endpoints("172.17.0.3", 41224, "203.0.113.2", 8080),
                 after=Endpoints("172.17.0.3", 41224, "172.17.0.2", 80), from_hop=1, to_hop=2),
        NatEvent(kind="snat", node="host", hook="POSTROUTING",
                 before=Endpoints("172.17.0.3", 41224, "172.17.0.2", 80),
                 after=Endpoints("172.17.0.1", 41224, "172.17.0.2", 80), from_hop=1, to_hop=2),
    )
    # A packet born in host is rewritten at OUTPUT before any device sends it: a destination
    # that differs between two tx hops is another packet (tests/unit/test_nat.py names such a
    # change OUTPUT when given the hops).
    out = [make_obs(at="host/docker0", direction="tx", src="172.17.0.1", sport=5, dst="203.0.113.2",
                    dport=8080, ts_ns=1 * MS, **tcp),
           make_obs(at="host/veth1", direction="tx", src="172.17.0.1", sport=5, dst="172.17.0.2",
                    dport=80, ts_ns=1 * MS + 2 * US, **tcp)]
    assert [(len(p.hops), p.nat) for p in correlate(out)] == [(1, ()), (1, ())]


def test_icmp_id_rewrite_is_snat_with_ids() -> None:
    obs = internet_ping()
    obs[3] = replace(obs[3], icmp_id=1024)
    obs[4] = replace(obs[4], icmp_id=1024)
    (p,) = correlate(obs)
    assert [(e.kind, e.hook, e.icmp_id_before, e.icmp_id_after, e.after.src) for e in p.nat] == [
        ("snat", "POSTROUTING", 77, 1024, "203.0.113.2")]


def test_cross_namespace_hops_never_nat() -> None:
    # A veth pair: whatever differs between web/eth0 tx and host/veth1 rx is not NAT, and two
    # sightings that differ so are two packets.
    obs = [make_obs(at="web/eth0", ts_ns=1 * MS),
           make_obs(at="host/veth1", direction="rx", ts_ns=1 * MS + 2 * US, dst="198.51.100.9")]
    assert [(hops(p), p.nat) for p in correlate(obs)] == [([("web/eth0", "tx")], ()),
                                                          ([("host/veth1", "rx")], ())]


def test_verdicts_dropped_left_incomplete() -> None:
    drop = [make_obs(at="web/eth0", ts_ns=1 * MS),
            make_obs(at="host/veth1", direction="rx", ts_ns=1 * MS + 2 * US),
            make_obs(at="host/docker0", direction="drop", ts_ns=1 * MS + 5 * US,
                     drop_reason="NETFILTER_DROP")]
    (p,) = correlate(drop)
    assert (p.verdict, p.last.drop_reason) == ("dropped", "NETFILTER_DROP")
    # Last seen leaving host/eth0, which leads nowhere traced: left.
    left = internet_ping()[:4]
    (p,) = correlate(left)
    assert p.verdict == "left"
    # Once host/veth1 tx is known to lead to web/eth0, a packet last seen there is incomplete;
    # one last seen received where its destination does not live is incomplete too.
    c = Correlator()
    paths = c.feed_batch(ObsBatch.from_observations(internet_ping(t0=1 * MS) + internet_pong(t0=2 * MS)))
    paths += c.feed_batch(ObsBatch.from_observations(internet_pong(t0=5_000 * MS)[:4]))
    paths += c.feed_batch(ObsBatch.from_observations(internet_ping(t0=9_000 * MS)[:2]))
    paths += c.flush()
    assert [(p.id, p.verdict, len(p.hops)) for p in paths] == [
        ("p1", "delivered", 5), ("p2", "delivered", 5), ("p3", "incomplete", 4),
        ("p4", "incomplete", 2)]


def test_learned_address_makes_delivered() -> None:
    c = Correlator()
    c.learn_address(NETNS["inet"], "198.51.100.8")
    c.feed_batch(ObsBatch.from_observations(internet_ping()))
    (p,) = c.flush()
    assert p.verdict == "delivered"


def test_flows_pair_request_and_reply_and_split_at_the_cap() -> None:
    c = Correlator(max_flow_paths=2)
    for k in range(3):
        c.feed_batch(ObsBatch.from_observations(internet_ping(t0=(1 + k) * 1_000 * MS, icmp_seq=k)))
    c.flush()
    assert [(f.id, f.paths) for f in c.take_flows()] == [("f1", ("p1", "p2")), ("f2", ("p3",))]


def test_flow_bookkeeping_is_per_flow_not_per_path() -> None:
    # A long flood in one flow, split at the path cap: what waits for flow_idle_ns is one
    # entry per flow, and a closed flow keeps no path list.
    c = Correlator(max_flow_paths=10, window_ns=10 * MS)
    for k in range(400):
        c.feed_batch(ObsBatch.from_observations(internet_ping(t0=(1 + k) * 1 * MS, ip_id=k, icmp_seq=k)))
    taken = c.take_flows()
    waiting = list(c.flows_open.values())
    assert len(waiting) <= 1 and sum(len(fs.paths) for fs in waiting) <= 10
    assert sum(len(f.paths) for f in taken) + sum(len(fs.paths) for fs in waiting) <= 400


def test_a_batch_larger_than_a_chunk() -> None:
    n = 20_000  # > the correlator's internal chunk
    base = ObsBatch.from_observations(internet_ping())
    rows = np.tile(base.rows, n // 5)
    k = np.repeat(np.arange(n // 5), 5)
    rows["ts_ns"] += (k * 10_000).astype(np.uint64)
    rows["ip_id"] = k & 0xFFFF
    rows["icmp_seq"] = k & 0xFFFF
    c = Correlator()
    paths = c.feed_batch(ObsBatch(rows=rows, hops=base.hops)) + c.flush()
    # Nobody answered: 198.51.100.8 is not known to live in inet.
    assert (len(paths), {len(p.hops) for p in paths}, {p.verdict for p in paths}) == (
        n // 5, {5}, {"incomplete"})
    assert [p.id for p in paths[:3]] == ["p1", "p2", "p3"]
    assert all(len(p.nat) == 1 and p.nat[0].kind == "snat" for p in paths)


def test_no_bcc_or_textual_imported() -> None:
    code = ("import sys, tests.reference.correlate, tests.reference.replay, tracer.engine, tracer.sinks.output;"
            "print(sorted(m for m in ('bcc', 'textual', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_rows_are_bounded() -> None:
    # 100 pings' first two hops within one window: with room for 40 sightings, the
    # longest-idle paths finish early, so memory stays bounded whatever the rate.
    obs = []
    for k in range(100):
        obs += [make_obs(at="web/eth0", ip_id=k, ts_ns=1 * MS + k * US),
                make_obs(at="host/veth1", direction="rx", ip_id=k, ts_ns=1 * MS + k * US + 500)]
    c = Correlator(max_open_rows=40)
    early = c.feed_batch(ObsBatch.from_observations(obs))
    assert (len(early), c.open_paths) == (80, 20)
    assert [p.hops[0].ip_id for p in early[:3]] == [0, 1, 2]
    assert {len(p.hops) for p in early + c.flush()} == {2}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 60), max_size=4))
def test_any_arrival_order_and_batching_gives_the_same_paths(n: int, seed: int, cuts: list[int]) -> None:
    """Per-CPU rings and several taps deliver out of order and in arbitrary batches: no path holds
    hops of two packets; a NATed packet may come out in pieces when
    sightings on either side of its rewrite were joined before the hops between them came
    (test_a_rewrite_seen_before_the_hops_between_it_splits). In time order, one path each."""
    rng = random.Random(seed)
    obs = []
    for k in range(n):
        # Packets overlap in time (8 µs apart, hops 10 µs apart); half of them carry an skb.
        common = dict(ip_id=k, icmp_seq=k, skb=(0xA000 + k) if k % 2 else None)
        obs += internet_ping(t0=1_000 * MS + k * 8 * US, **common)
    expected = sorted(tuple((o.hop_name, o.ts_ns) for o in obs[5 * k : 5 * k + 5]) for k in range(n))
    rng.shuffle(obs)
    bounds = sorted({0, len(obs), *(min(c, len(obs)) for c in cuts)})
    c = Correlator()
    paths = []
    for a, b in pairwise(bounds):
        paths += c.feed_batch(ObsBatch.from_observations(obs[a:b]))
    paths += c.flush()
    assert unsplit(paths, expected) == expected
    assert all({e.kind for e in p.nat} <= {"snat"} for p in paths)
    # in one batch, sorted: every packet one path
    assert sorted(tuple((h.hop_name, h.ts_ns) for h in p.hops) for p in correlate(obs)) == expected


def unsplit(paths: list[PacketPath], packets: list[tuple[tuple[str, int], ...]]) -> list[tuple[tuple[str, int], ...]]:
    """Each packet (of ``packets``, its hops) as the hops of the paths that hold its hops, after
    checking that no path holds hops of two packets."""
    of = {hop: k for k, hops in enumerate(packets) for hop in hops}
    got: dict[int, list[tuple[str, int]]] = {}
    for p in paths:
        seq = [(h.hop_name, h.ts_ns) for h in p.hops]
        ks = {of[h] for h in seq}
        assert len(ks) == 1, f"{p.id} holds hops of {len(ks)} packets"
        got.setdefault(ks.pop(), []).extend(seq)
    return sorted(tuple(sorted(hops, key=lambda h: h[1])) for hops in got.values())


def test_nat_events_per_path_shape() -> None:
    # Same hops and rewrite: equal events; another translated address: its own events.
    a = internet_ping(t0=1_000 * MS)
    b = internet_ping(t0=2_000 * MS, ip_id=2)
    c = [replace(o, ip_id=3, ts_ns=o.ts_ns + 2_000 * MS,
                 src="203.0.113.9" if o.src == "203.0.113.2" else o.src) for o in a]
    pa, pb, pc = correlate(a + b + c)
    assert pa.nat == pb.nat
    assert [(e.kind, e.after.src) for e in pc.nat] == [("snat", "203.0.113.9")]
    # One observation per batch (each with its own label table) changes nothing.
    k = Correlator()
    for o in a:
        k.feed(o)
    (p,) = k.flush()
    assert (hops(p), p.nat) == (PING_HOPS, pa.nat)


def test_flows_finish_when_idle() -> None:
    c = Correlator(flow_idle_ns=1_000 * MS, window_ns=100 * MS)
    c.feed_batch(ObsBatch.from_observations(internet_ping(t0=1_000 * MS) + internet_pong(t0=1_001 * MS)))
    assert [p.id for p in c.advance(1_200 * MS)] == ["p1", "p2"]
    assert c.take_flows() == []
    c.advance(1_950 * MS)
    assert c.take_flows() == []  # its last packet was 0.95 s ago
    c.advance(2_050 * MS)
    assert [(f.id, f.paths) for f in c.take_flows()] == [("f1", ("p1", "p2"))]
    assert (c.flush(), c.take_flows()) == ([], [])


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 40), max_size=8), idle=st.booleans())
def test_batching_does_not_change_paths_verdicts_or_flows(cuts: list[int], idle: bool) -> None:
    """Live (small batches, idle ticks) and a replay of its recording (one batch) agree."""
    obs = [*internet_ping(t0=1_000 * MS), *internet_pong(t0=1_001 * MS),
           # a reply that ends at host/veth1 tx: incomplete once that link is known, else left
           *(replace(o, ip_id=7) for o in internet_pong(t0=1_050 * MS)[:4]),
           *internet_ping(t0=1_120 * MS, ip_id=8, icmp_seq=8)[:4],
           *(replace(o, ip_id=9) for o in internet_pong(t0=1_300 * MS))]
    whole = correlate(obs)
    c = Correlator()
    paths: list[PacketPath] = []
    bounds = sorted({0, len(obs), *(min(k, len(obs)) for k in cuts)})
    for a, b in pairwise(bounds):
        batch = ObsBatch.from_observations(obs[a:b])
        if idle:
            batch.now_ns = obs[b - 1].ts_ns + 60 * MS
        paths += c.feed_batch(batch)
    paths += c.flush()
    assert [(p.id, p.verdict, p.flow, hops(p)) for p in paths] == [
        (p.id, p.verdict, p.flow, hops(p)) for p in whole]


def test_finish_order_is_idle_order_in_any_batching() -> None:
    # T (first seen first) teaches that host/veth1 tx leads to web/eth0; L (seen later, idle
    # earlier) ends at host/veth1 tx. A live tick between their idle times finishes L alone:
    # a replay in one batch must judge L the same way.
    t0 = 1_000 * MS
    teacher = [make_obs(at="inet/eth0", ip_id=1, ts_ns=t0, src="198.51.100.8", dst="172.17.0.2"),
               make_obs(at="host/veth1", ip_id=1, ts_ns=t0 + 30 * US, src="198.51.100.8", dst="172.17.0.2"),
               make_obs(at="web/eth0", direction="rx", ip_id=1, ts_ns=t0 + 40 * US, src="198.51.100.8",
                        dst="172.17.0.2")]
    learner = [make_obs(at="inet/eth0", ip_id=2, ts_ns=t0 + 10 * US, src="198.51.100.8", dst="172.17.0.2"),
               make_obs(at="host/veth1", ip_id=2, ts_ns=t0 + 20 * US, src="198.51.100.8", dst="172.17.0.2")]
    obs = sorted(teacher + learner, key=lambda o: o.ts_ns)
    live = Correlator()
    live.feed_batch(ObsBatch.from_observations(obs))
    got = live.advance(t0 + 100 * MS + 25 * US) + live.flush()
    replay = correlate(obs)
    # (T is incomplete: nothing taught that 172.17.0.2 lives in web.)
    assert sorted((p.id, p.verdict) for p in got) == [(p.id, p.verdict) for p in replay] == [
        ("p1", "incomplete"), ("p2", "left")]


def test_same_addresses_after_a_long_silence_are_a_new_flow() -> None:
    obs = [*internet_ping(t0=1_000 * MS), *internet_ping(t0=3_000 * MS, ip_id=2),
           *internet_ping(t0=9_000 * MS, ip_id=3)]
    c = Correlator(flow_idle_ns=5_000 * MS)
    paths = c.feed_batch(ObsBatch.from_observations(obs)) + c.flush()  # one batch: no take_flows between
    assert [(p.id, p.flow) for p in paths] == [("p1", "f1"), ("p2", "f1"), ("p3", "f2")]
    assert [(f.id, f.paths) for f in c.take_flows()] == [("f1", ("p1", "p2")), ("f2", ("p3",))]


def test_delivered_uses_only_what_was_known_when_the_path_went_idle() -> None:
    # The first sign that 198.51.100.8 lives in inet is its reply. Within the window it
    # counts; a reply after the path went idle does not (live, the path was out by then).
    soon = correlate(internet_ping(t0=1_000 * MS) + internet_pong(t0=1_050 * MS), window_ns=100 * MS)
    late = correlate(internet_ping(t0=1_000 * MS) + internet_pong(t0=1_150 * MS), window_ns=100 * MS)
    assert [p.verdict for p in soon] == ["delivered", "delivered"]
    assert [p.verdict for p in late] == ["incomplete", "delivered"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_out_of_order_batches_give_the_same_verdicts(seed: int, cuts: list[int]) -> None:
    """eBPF live: per-CPU rings deliver out of order across batches; its replay is sorted. A
    live path holds hops of one replay path (a NATed packet may come in pieces:
    test_a_rewrite_seen_before_the_hops_between_it_splits); when none came in pieces, the
    verdicts and NAT are replay's."""
    t0 = 1_000 * MS
    obs = [*internet_ping(t0=t0), *internet_pong(t0=t0 + 1 * MS),
           *(replace(o, ip_id=7) for o in internet_pong(t0=t0 + 50 * US)[:4]),  # ends at veth1 tx
           *(replace(o, ip_id=8) for o in internet_pong(t0=t0 + 5 * US)[:2]),
           *internet_ping(t0=t0 + 20 * US, ip_id=9, icmp_seq=9)[:4]]

    def view(paths: list[PacketPath]) -> list[tuple[object, ...]]:
        return sorted((tuple((h.hop_name, h.ts_ns) for h in p.hops), p.verdict, p.nat) for p in paths)

    replay = correlate(sorted(obs, key=lambda o: o.ts_ns))
    rng = random.Random(seed)
    bounds = sorted({0, len(obs), *(min(k, len(obs)) for k in cuts)})
    arrival = sorted(obs, key=lambda o: o.ts_ns)
    # Rows reach the correlator up to 15 µs late, in batches.
    arrival.sort(key=lambda o: o.ts_ns + rng.randrange(0, 15 * US))
    c = Correlator()
    live: list[PacketPath] = []
    for a, b in pairwise(bounds):
        batch = ObsBatch.from_observations(arrival[a:b])
        live += c.feed_batch(batch)
    live += c.flush()
    whole = {tuple((h.hop_name, h.ts_ns) for h in p.hops): p for p in replay}
    unsplit(live, sorted(whole))
    if all(tuple((h.hop_name, h.ts_ns) for h in p.hops) in whole for p in live):
        assert view(live) == view(replay)  # (a piece's first sighting teaches what the whole's would not)
    # sightings that arrive no later than the batch they belong in: the same paths
    c = Correlator()
    in_time = sorted(obs, key=lambda o: o.ts_ns)
    live = []
    for a, b in pairwise(bounds):
        live += c.feed_batch(ObsBatch.from_observations(in_time[a:b]))
    live += c.flush()
    assert view(live) == view(replay)


def test_a_late_first_sighting_corrects_who_owns_the_source() -> None:
    # client -> web through the bridge; another CPU's ring delivers client's own tx last,
    # so host/veth2 tx first looks like where 172.17.0.3 comes from.
    c2w = dict(src="172.17.0.3", dst="172.17.0.2", ip_id=11)
    req = [make_obs(at="client/eth0", ts_ns=1 * MS + 10 * US, **c2w),
           make_obs(at="host/veth1", direction="rx", ts_ns=1 * MS + 12 * US, **c2w),
           make_obs(at="host/veth2", direction="tx", ts_ns=1 * MS + 15 * US, **c2w),
           make_obs(at="web/eth0", direction="rx", ts_ns=1 * MS + 20 * US, **c2w)]
    w2c = dict(src="172.17.0.2", dst="172.17.0.3", ip_id=12, icmp_type=0)
    rep = [make_obs(at="web/eth0", ts_ns=1 * MS + 100 * US, **w2c),
           make_obs(at="host/veth2", direction="rx", ts_ns=1 * MS + 102 * US, **w2c),
           make_obs(at="host/veth1", direction="tx", ts_ns=1 * MS + 105 * US, **w2c),
           make_obs(at="client/eth0", direction="rx", ts_ns=1 * MS + 110 * US, **w2c)]
    c = Correlator()
    c.feed_batch(ObsBatch.from_observations(req[2:]))
    c.feed_batch(ObsBatch.from_observations(req[:2] + rep))
    assert [(p.verdict, hops(p)[0]) for p in c.flush()] == [
        ("delivered", ("client/eth0", "tx")), ("delivered", ("web/eth0", "tx"))]


def test_the_same_address_in_two_namespaces() -> None:
    # Two labs (or Docker hosts) on one machine: 172.17.0.2 lives in both "web"s.
    other = 4026539999
    mine = internet_ping(t0=1_000 * MS) + internet_pong(t0=1_001 * MS)
    theirs = [replace(o, netns=other if o.node == "web" else o.netns, ip_id=o.ip_id + 1,
                      ts_ns=o.ts_ns + 10 * MS) for o in mine]
    paths = correlate(sorted(mine + theirs, key=lambda o: o.ts_ns))
    assert [(p.verdict, p.last.netns) for p in paths] == [
        ("delivered", NETNS["inet"]), ("delivered", NETNS["web"]),
        ("delivered", NETNS["inet"]), ("delivered", other)]


def test_flush_in_slices() -> None:
    c = Correlator()
    c.feed_batch(ObsBatch.from_observations(
        [o for k in range(5) for o in internet_ping(t0=1_000 * MS + k * US, ip_id=k, icmp_seq=k)]))
    sizes = []
    while True:
        part = c.flush(2)
        if not part:
            break
        sizes.append([p.id for p in part])
        if len(sizes) < 3:
            assert c.take_flows() == []  # flows wait for the last path
    assert sizes == [["p1", "p2"], ["p3", "p4"], ["p5"]]
    assert [f.paths for f in c.take_flows()] == [("p1", "p2", "p3", "p4", "p5")]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 60), max_size=4))
def test_any_arrival_order_of_unrewritten_packets_gives_the_same_paths(n: int, seed: int, cuts: list[int]) -> None:
    """Container to container: no hop rewrites the header, any arrival order and batching."""
    rng = random.Random(seed)
    obs = []
    for k in range(n):
        common = dict(ip_id=k, icmp_seq=k, skb=(0xA000 + k) if k % 2 else None)
        obs += [replace(o, src="172.17.0.2", dst="172.17.0.3")
                for o in internet_ping(t0=1_000 * MS + k * 8 * US, **common)]
    expected = sorted(tuple((o.hop_name, o.ts_ns) for o in obs[5 * k : 5 * k + 5]) for k in range(n))
    rng.shuffle(obs)
    bounds = sorted({0, len(obs), *(min(c, len(obs)) for c in cuts)})
    c = Correlator()
    paths = []
    for a, b in pairwise(bounds):
        paths += c.feed_batch(ObsBatch.from_observations(obs[a:b]))
    paths += c.flush()
    assert sorted(tuple((h.hop_name, h.ts_ns) for h in p.hops) for p in paths) == expected


def test_a_rewrite_seen_before_the_hops_between_it_splits() -> None:
    """The known cost of judging a rewrite by the neighbouring sightings when they come:
    web/eth0 tx, then host/eth0 tx (after MASQUERADE) in one batch, the host hops between
    them in the next (arriving more than a batch late) — two sightings in two namespaces
    with different sources, adjacent when they are joined: two paths (docs/correlation.md)."""
    obs = internet_ping()
    c = Correlator()
    c.feed_batch(ObsBatch.from_observations([obs[0], obs[3]]))
    c.feed_batch(ObsBatch.from_observations([obs[1], obs[2], obs[4]]))
    assert [hops(p) for p in c.flush()] == [PING_HOPS[:3], PING_HOPS[3:]]
