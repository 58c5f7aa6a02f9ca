"""The eBPF source on the real kernel, in the lab (netns engine): hops, NAT, drops, lost events.

These check the probes themselves: sightings of one skb grouped by its
address, without the correlator, so a failure here is a probe failure.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tracer.model import Observation

pytestmark = [pytest.mark.root, pytest.mark.lab]

WEB, CLIENT = "172.17.0.2", "172.17.0.3"
HOST_UPLINK, SERVER = "203.0.113.2", "198.51.100.8"


def trace(lab: Any, scenario: str, kernel_filter: Any = None,
          also: tuple[str, ...] = ()) -> tuple[Any, list[Observation], Any]:
    """Run one lab scenario (then the ``also`` ones) under a fresh EbpfSource; every sighting
    they produced, and the source. The result is the first scenario's."""
    from probes.skb_hops import EbpfSource

    # only the lab's namespaces: the machine is shared, and other people's floods must not fill the ring
    lab_ns = {lab.netns_inode(n) for n in ("host", "inet", "client", "web")}
    src = EbpfSource(kernel_filter=kernel_filter, netns=lab_ns)
    result, obs = sightings(lab, src, scenario, also)
    return result, obs, src


def sightings(lab: Any, src: Any, scenario: str, also: tuple[str, ...] = ()) -> tuple[Any, list[Observation]]:
    """Start ``src``, run the scenario (then the ``also`` ones), stop it: the first scenario's
    result and every sighting ``src`` made meanwhile."""
    src.start()
    obs: list[Observation] = []

    def consume() -> None:
        for batch in src.batches():
            obs.extend(batch.observations())

    th = threading.Thread(target=consume)
    th.start()
    try:
        result = lab.run(scenario)
        for other in also:
            assert lab.run(other).ok, other
        time.sleep(0.3)  # > the 5 ms stage flush and the poll and hold (40 ms), with margin
    finally:
        src.stop()
        th.join(timeout=10)
    assert not th.is_alive()
    return result, obs


def lab_hops(lab: Any, obs: list[Observation]) -> list[Observation]:
    inodes = {lab.netns_inode(n) for n in ("host", "inet", "client", "web")}
    return [o for o in obs if o.netns in inodes]


def path_of(obs: list[Observation], first: Observation) -> list[Observation]:
    """All sightings of first's skb from first on, in time order, while the packet keeps its identity."""
    same = sorted((o for o in obs if o.skb == first.skb and o.ts_ns >= first.ts_ns), key=lambda o: o.ts_ns)
    # the skb address is reused after free: stop at the first sighting of another packet
    return [o for o in same if (o.ip_id, o.proto) == (first.ip_id, first.proto)]


def shape(path: list[Observation]) -> list[tuple[str, str, str | None]]:
    return [(o.node, "veth" if o.ifname.startswith("veth") else o.ifname, o.direction) for o in path]


def find(obs: list[Observation], **want: Any) -> Observation:
    for o in sorted(obs, key=lambda o: o.ts_ns):
        if all(getattr(o, k) == v for k, v in want.items()):
            return o
    raise AssertionError(f"no sighting with {want}; saw {[(o.hop_name, o.direction, o.src, o.dst) for o in obs]}")


def test_internet_ping_snat_and_reply_dnat(lab_netns: Any) -> None:
    result, obs, src = trace(lab_netns, "internet-ping")
    assert result.ok, result.detail
    obs = lab_hops(lab_netns, obs)
    req = path_of(obs, find(obs, node="client", ifname="eth0", direction="tx", icmp_type=8, dst=SERVER))
    assert shape(req)[:5] == [("client", "eth0", "tx"), ("host", "veth", "rx"), ("host", "docker0", "rx"),
                              ("host", "eth0", "tx"), ("inet", "eth0", "rx")]
    # MASQUERADE between docker0 rx and eth0 tx, and nowhere else
    assert [(o.src, o.dst) for o in req[:4]] == [(CLIENT, SERVER)] * 3 + [(HOST_UPLINK, SERVER)]
    assert len({o.skb for o in req}) == 1 and req[0].skb
    rep = path_of(obs, find(obs, node="inet", ifname="eth0", direction="tx", icmp_type=0, src=SERVER))
    assert shape(rep)[:5] == [("inet", "eth0", "tx"), ("host", "eth0", "rx"), ("host", "docker0", "tx"),
                              ("host", "veth", "tx"), ("client", "eth0", "rx")]
    assert [o.dst for o in rep[:5]] == [HOST_UPLINK, HOST_UPLINK, CLIENT, CLIENT, CLIENT]
    assert req[0].frame[12:14] == b"\x08\x00" and len(req[0].frame) == req[0].wire_len  # whole Ethernet frame
    assert src.lost_events == 0


def test_published_port_dnat(lab_netns: Any) -> None:
    result, obs, src = trace(lab_netns, "published-port")
    assert result.ok, result.detail
    obs = lab_hops(lab_netns, obs)
    syn = find(obs, node="host", ifname="eth0", direction="rx", dport=8080, tcp_flags=0x02)
    p = path_of(obs, syn)
    assert shape(p)[:4] == [("host", "eth0", "rx"), ("host", "docker0", "tx"), ("host", "veth", "tx"),
                            ("web", "eth0", "rx")]
    assert [(o.dst, o.dport) for o in p[:4]] == [(HOST_UPLINK, 8080), (WEB, 80), (WEB, 80), (WEB, 80)]
    assert src.lost_events == 0


def test_container_ping_is_bridged_without_nat(lab_netns: Any) -> None:
    result, obs, src = trace(lab_netns, "container-ping")
    assert result.ok, result.detail
    obs = lab_hops(lab_netns, obs)
    p = path_of(obs, find(obs, node="client", ifname="eth0", direction="tx", icmp_type=8, dst=WEB))
    assert shape(p)[:4] == [("client", "eth0", "tx"), ("host", "veth", "rx"), ("host", "veth", "tx"),
                            ("web", "eth0", "rx")]
    assert p[1].ifname != p[2].ifname
    assert {(o.src, o.dst) for o in p} == {(CLIENT, WEB)}
    assert src.lost_events == 0


def test_blocked_shows_the_drop_and_its_reason(lab_netns: Any) -> None:
    result, obs, src = trace(lab_netns, "blocked")
    assert result.ok, result.detail
    obs = lab_hops(lab_netns, obs)
    p = path_of(obs, find(obs, node="client", ifname="eth0", direction="tx", icmp_type=8, dst=SERVER))
    assert shape(p) == [("client", "eth0", "tx"), ("host", "veth", "rx"), ("host", "docker0", "rx"),
                        ("host", "docker0", "drop")]
    assert p[-1].drop_reason == "NETFILTER_DROP"
    assert src.lost_events == 0


def test_kernel_filter_keeps_the_flow_across_nat(lab_netns: Any) -> None:
    from probes.skb_hops import kernel_filter_from_pcap

    kf = kernel_filter_from_pcap(f"icmp and host {SERVER}")
    # container-ping is traffic the filter must leave out (warm ARP caches leave nothing else)
    result, obs, src = trace(lab_netns, "internet-ping", kernel_filter=kf, also=("container-ping",))
    assert result.ok, result.detail
    assert obs, "the filter kept nothing"
    assert {o.proto for o in obs} == {1}
    assert all(SERVER in (o.src, o.dst) for o in obs)
    counters = src.counters()
    assert counters["filtered"] > 0 and counters["lost"] == 0
    lab = lab_hops(lab_netns, obs)
    req = path_of(lab, find(lab, node="client", ifname="eth0", direction="tx", icmp_type=8))
    assert shape(req)[:4] == [("client", "eth0", "tx"), ("host", "veth", "rx"), ("host", "docker0", "rx"),
                              ("host", "eth0", "tx")]
    # The reply's last hops are the last events the filter lets through: they reach
    # userspace only through the stage flush that the loader runs on every CPU.
    rep = path_of(lab, find(lab, node="inet", ifname="eth0", direction="tx", icmp_type=0))
    assert shape(rep)[:5] == [("inet", "eth0", "tx"), ("host", "eth0", "rx"), ("host", "docker0", "tx"),
                              ("host", "veth", "tx"), ("client", "eth0", "rx")]


def test_kernel_filter_follows_the_skb_through_dnat(lab_netns: Any) -> None:
    """`port 8080` matches only before DNAT; the tracked skb keeps its later hops (dport 80)."""
    from probes.skb_hops import kernel_filter_from_pcap

    result, obs, src = trace(lab_netns, "published-port", kernel_filter=kernel_filter_from_pcap("tcp and port 8080"))
    assert result.ok, result.detail
    obs = lab_hops(lab_netns, obs)
    syn = find(obs, node="host", ifname="eth0", direction="rx", dport=8080, tcp_flags=0x02)
    p = path_of(obs, syn)
    assert [(o.hop_name, o.dport) for o in p[:2]] == [("host/eth0", 8080), ("host/docker0", 80)]
    assert src.counters()["filtered"] > 0


def test_kernel_filter_changes_while_running(lab_netns: Any) -> None:
    from probes.skb_hops import EbpfSource, KernelFilter

    src = EbpfSource()
    src.start()
    obs: list[Observation] = []

    def consume() -> None:
        for batch in src.batches():
            obs.extend(batch.observations())

    th = threading.Thread(target=consume)
    th.start()
    try:
        host = lab_netns.netns_inode("host")
        src.set_filter(KernelFilter(protos=frozenset({6})))  # TCP only: the ping is filtered out
        t1 = time.time_ns()
        assert lab_netns.run("internet-ping").ok
        src.set_filter(KernelFilter(netns=frozenset({host})))  # every protocol, host namespace only
        t2 = time.time_ns()
        assert lab_netns.run("internet-ping").ok
        time.sleep(0.3)
    finally:
        src.stop()
        th.join(timeout=10)
    first = [o for o in obs if t1 <= o.ts_ns < t2 and o.proto == 1 and SERVER in (o.src, o.dst)]
    second = [o for o in obs if o.ts_ns >= t2 and o.proto == 1 and SERVER in (o.src, o.dst)]
    assert first == []
    assert second and {o.netns for o in second} == {host}
    assert {o.hop_name for o in second} >= {"host/docker0", "host/eth0"}


def test_netns_set_inline_and_beyond_it(lab_netns: Any) -> None:
    """Up to NETNS_INLINE namespaces are compared inline in the config value, more go to the
    netns_set hash: both keep exactly the namespaces asked for."""
    from probes.skb_hops import NETNS_INLINE, EbpfSource

    client, host = lab_netns.netns_inode("client"), lab_netns.netns_inode("host")
    # inodes no namespace has (the kernel's start at 0xF0000000): they only fill the set
    fillers = {1000 + i for i in range(NETNS_INLINE)}
    for wanted in ({client, host}, {client, host} | fillers):
        src = EbpfSource(netns=wanted)
        result, obs = sightings(lab_netns, src, "internet-ping")
        assert result.ok
        pings = [o for o in obs if o.proto == 1 and SERVER in (o.src, o.dst)]
        assert {o.netns for o in pings} == {client, host}, len(wanted)
        assert src.lost_events == 0


def _together(lab: Any, filters: dict[str, Any], scenario: str,
              also: tuple[str, ...] = ()) -> tuple[Any, dict[str, list[Observation]]]:
    """Start one EbpfSource per kernel filter, all attached at once, run the scenario (then the
    ``also`` ones) and stop them: the first scenario's result and each source's sightings
    stamped while the scenarios ran. Two filters compared this way see the same packets; two
    runs one after the other do not (real TCP: a late segment a socket drops in one run only)."""
    from probes.skb_hops import EbpfSource

    srcs: dict[str, Any] = {}
    seen: dict[str, list[Observation]] = {name: [] for name in filters}
    threads: list[threading.Thread] = []
    try:
        for name, kf in filters.items():
            srcs[name] = EbpfSource(kernel_filter=kf)
            srcs[name].start()

        def consume(src: Any, into: list[Observation]) -> None:
            for batch in src.batches():
                into.extend(batch.observations())

        threads = [threading.Thread(target=consume, args=(srcs[n], seen[n])) for n in srcs]
        for th in threads:
            th.start()
        time.sleep(0.2)
        t0 = time.time_ns()
        result = lab.run(scenario)
        for other in also:
            assert lab.run(other).ok, other
        time.sleep(0.3)  # > the 5 ms stage flush and the poll and hold (40 ms), with margin
        t1 = time.time_ns()
    finally:
        for src in srcs.values():
            src.stop()
        for th in threads:
            th.join(timeout=10)
    assert not any(th.is_alive() for th in threads)
    for name, src in srcs.items():
        assert src.lost_events == 0, name
    return result, {n: [o for o in obs if t0 <= o.ts_ns < t1] for n, obs in seen.items()}


def test_port_and_address_sets_inline_and_beyond_them(lab_netns: Any) -> None:
    """Up to SET_INLINE ports and addresses are compared inline in the config value, more go to
    the port_set / addr_set hashes: both keep the same sightings, what matches and what the
    tracked skb carries through NAT, and nothing else (an IPv6 key among the inline addresses)."""
    from probes.skb_hops import SET_INLINE, KernelFilter

    lab_ns = frozenset(lab_netns.netns_inode(n) for n in ("host", "inet", "client", "web"))
    fill_ports = frozenset(range(9000, 9000 + SET_INLINE))
    fill_addrs = frozenset(f"192.0.2.{i}" for i in range(1, SET_INLINE + 1))
    got = {}
    for scenario, filters in (
            ("published-port", {
                "ports inline": KernelFilter(netns=lab_ns, protos=frozenset({6}), ports=frozenset({8080})),
                "ports hashed": KernelFilter(netns=lab_ns, protos=frozenset({6}),
                                             ports=frozenset({8080}) | fill_ports)}),
            ("internet-ping", {
                "addrs inline": KernelFilter(netns=lab_ns, protos=frozenset({1}),
                                             addrs=frozenset({SERVER, "2001:db8::8"})),
                "addrs hashed": KernelFilter(netns=lab_ns, protos=frozenset({1}),
                                             addrs=frozenset({SERVER}) | fill_addrs)})):
        # container-ping: ICMP to no address in the sets, which both must leave out
        result, seen = _together(lab_netns, filters, scenario, also=("container-ping",))
        assert result.ok, (scenario, result.detail)
        for name, obs in seen.items():
            # the same packets, sighting for sighting (the clock apart: two programs on one
            # tracepoint read it apart)
            got[name] = Counter((o.hop_name, o.direction, o.proto, o.src, o.dst, o.sport, o.dport, o.icmp_type,
                                 o.ip_id, o.drop_reason) for o in obs)
    assert got["ports inline"] == got["ports hashed"]
    assert got["addrs inline"] == got["addrs hashed"]
    syn = [g for g in got["ports inline"] if g[6] == 8080]
    assert syn, got["ports inline"]
    # the DNATed hops (dport 80) are there only through the tracked skb
    assert any(g[6] == 80 for g in got["ports inline"])
    pings = got["addrs inline"]
    assert sum(pings.values()) >= 8 and all(SERVER in (g[3], g[4]) or g[3] == HOST_UPLINK or g[4] == HOST_UPLINK
                                            for g in pings), pings


def test_proto_set_bits_above_31(lab_netns: Any) -> None:
    """The protocol set is a 256-bit map in the config value: sctp (132) and icmp6 (58) live in
    other words than icmp (1); a set of only those keeps no ICMPv4 ping, adding icmp keeps it."""
    from probes.skb_hops import EbpfSource, KernelFilter

    lab_ns = frozenset(lab_netns.netns_inode(n) for n in ("host", "inet", "client", "web"))
    counts = []
    for protos in ({58, 132}, {1, 58, 132}):
        src = EbpfSource(kernel_filter=KernelFilter(netns=lab_ns, protos=frozenset(protos)))
        result, obs = sightings(lab_netns, src, "internet-ping")
        assert result.ok
        assert {o.proto for o in obs} <= protos
        counts.append(sum(1 for o in obs if o.proto == 1))
    assert counts[0] == 0 and counts[1] >= 8  # request and reply, 4+ hops each


def test_a_panic_in_the_core_reader_ends_the_source_with_its_probes_detached(lab_netns: Any) -> None:
    """A panic in the core's ring reader thread reaches the consumer of batches() as pyo3's
    PanicException (tracer/cli.py: one line, exit 1), after the source drained and detached:
    the process holds none of its BPF programs any more."""
    from probes.skb_hops import EbpfSource
    from tests.probes.test_live_cli import prog_ids

    src = EbpfSource(netns={lab_netns.netns_inode(n) for n in ("host", "inet", "client", "web")})
    src.start()
    mine = prog_ids(os.getpid())
    batches = src.batches()
    assert next(batches) is not None  # the reader runs (an idle batch at least)
    src._ring._panic_for_tests()
    with pytest.raises(BaseException, match="as the test asked") as info:
        for _ in batches:
            pass
    assert type(info.value).__name__ == "PanicException"
    assert src._bpf is None and mine and not (mine & prog_ids(os.getpid()))


def test_a_lone_packet_on_each_cpu_comes_out_while_tracing(lab_netns: Any) -> None:
    """The reader thread flushes the stage of a CPU that went quiet (only a stage that holds
    events: it reads the per-CPU stage map first): a datagram sent from each CPU alone is
    read within a poll and a hold, long before the source stops."""
    from probes.skb_hops import EbpfSource, _online_cpus

    lab_ns = {lab_netns.netns_inode(n) for n in ("host", "inet", "client", "web")}
    src = EbpfSource(netns=lab_ns)
    src.start()
    seen: list[tuple[float, Observation]] = []

    def consume() -> None:
        for batch in src.batches():
            now = time.monotonic()
            seen.extend((now, o) for o in batch.observations())

    th = threading.Thread(target=consume)
    th.start()
    sent: dict[int, float] = {}
    try:
        time.sleep(0.2)
        for cpu in _online_cpus():
            payload = f"lone-cpu-{cpu}"
            r = lab_netns.exec("client", ["taskset", "-c", str(cpu), "bash", "-c",
                                          f"echo {payload} > /dev/udp/{SERVER}/9"])
            assert r.returncode == 0, r.stderr
            sent[cpu] = time.monotonic()
            time.sleep(0.5)  # each alone: nothing else on that CPU flushes its stage
    finally:
        src.stop()
        th.join(timeout=10)
    assert not th.is_alive()
    for cpu, t_sent in sent.items():
        tx = [t for t, o in seen if o.node == "client" and o.direction == "tx" and o.frame
              and f"lone-cpu-{cpu}".encode() in bytes(o.frame)]
        assert tx, f"the datagram sent from CPU {cpu} was not seen"
        assert tx[0] - t_sent < 0.4, f"CPU {cpu}'s datagram came out {tx[0] - t_sent:.3f} s after it was sent"
