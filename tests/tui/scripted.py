"""TUI test data: the lab's MASQUERADE example as paths, and an engine that hands them out on cue.

``ScriptedEngine`` stands in for tracer.engine.Engine where a test must
control *when* paths arrive (pause, errors); it implements exactly the part of
the Engine API the UI uses (events/stats/stop/batch_hooks). Tests that need
the real chain use tracer.engine with a synthetic Source (test_engine_chain.py).
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import replace
from typing import Any

from tracer.model import ConntrackRef, Endpoints, Flow, NatEvent, Observation, PacketPath, Stats

T0 = 1_795_813_200_000_000_000  # 2026-11-27 21:00:00 UTC (a pcap wall clock)
MASQ_RULE = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
DNAT_RULE = "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"


def make_obs(**overrides: Any) -> Observation:
    base: dict[str, Any] = dict(
        ts_ns=T0, netns=4026532466, ifindex=2, ifname="eth0", node="web", direction="tx",
        source="file", family=4, proto=1, src="172.17.0.2", dst="198.51.100.8", length=84,
        ttl=64, ip_id=19776, icmp_type=8, icmp_code=0, icmp_id=7, icmp_seq=1,
    )
    base.update(overrides)
    return Observation(**base)


def masquerade_request(pid: str = "p1", t0: int = T0, seq: int = 1) -> PacketPath:
    """web/eth0 -> host/veth -> host/docker0 -> host/eth0, MASQUERADEd to 203.0.113.2."""
    host = dict(node="host", netns=4026531840)
    hops = (
        make_obs(ts_ns=t0, icmp_seq=seq),
        make_obs(ts_ns=t0 + 9_000, ifname="veth1a2b3c", ifindex=5, direction="rx", icmp_seq=seq, **host),
        make_obs(ts_ns=t0 + 15_000, ifname="docker0", ifindex=3, direction="rx", icmp_seq=seq, **host),
        make_obs(ts_ns=t0 + 31_000, ifname="eth0", ifindex=2, direction="tx", src="203.0.113.2",
                 ttl=63, icmp_id=1024, icmp_seq=seq, **host),
    )
    ct = ConntrackRef(
        id=3141592,
        original=Endpoints("172.17.0.2", None, "198.51.100.8", None),
        reply=Endpoints("198.51.100.8", None, "203.0.113.2", None),
        status=("SRC_NAT", "SEEN_REPLY"),
    )
    nat = NatEvent(
        kind="snat", node="host", hook="POSTROUTING",
        before=Endpoints("172.17.0.2", None, "198.51.100.8", None),
        after=Endpoints("203.0.113.2", None, "198.51.100.8", None),
        from_hop=2, to_hop=3, rule=MASQ_RULE, rule_source="inferred", conntrack=ct,
        icmp_id_before=7, icmp_id_after=1024,
    )
    return PacketPath(id=pid, hops=hops, nat=(nat,), verdict="left", flow="f1")


def masquerade_reply(pid: str = "p2", t0: int = T0 + 400_000_000, seq: int = 1) -> PacketPath:
    host = dict(node="host", netns=4026531840)
    reply = dict(src="198.51.100.8", icmp_type=0, icmp_seq=seq, ttl=63)
    hops = (
        make_obs(ts_ns=t0, ifname="eth0", direction="rx", dst="203.0.113.2", icmp_id=1024, **host,
                 **{**reply, "ttl": 64}),
        make_obs(ts_ns=t0 + 12_000, ifname="docker0", ifindex=3, direction="tx", dst="172.17.0.2",
                 **host, **reply),
        make_obs(ts_ns=t0 + 14_000, ifname="veth1a2b3c", ifindex=5, direction="tx", dst="172.17.0.2",
                 **host, **reply),
        make_obs(ts_ns=t0 + 21_000, direction="rx", dst="172.17.0.2", **reply),
    )
    nat = NatEvent(
        kind="dnat", node="host", hook="PREROUTING",
        before=Endpoints("198.51.100.8", None, "203.0.113.2", None),
        after=Endpoints("198.51.100.8", None, "172.17.0.2", None),
        from_hop=0, to_hop=1,
    )
    return PacketPath(id=pid, hops=hops, nat=(nat,), verdict="delivered", flow="f1")


def dropped_path(pid: str = "p3", t0: int = T0 + 900_000_000) -> PacketPath:
    hops = (
        make_obs(ts_ns=t0, node="client", netns=4026532500, src="172.17.0.3", dst="198.51.100.9",
                 proto=17, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None,
                 sport=40000, dport=53, length=40),
        make_obs(ts_ns=t0 + 8_000, node="host", netns=4026531840, ifname="veth9f8e7d", direction="rx",
                 src="172.17.0.3", dst="198.51.100.9", proto=17, icmp_type=None, icmp_code=None,
                 icmp_id=None, icmp_seq=None, sport=40000, dport=53, length=40),
        make_obs(ts_ns=t0 + 11_000, node="host", netns=4026531840, ifname="docker0", direction="drop",
                 src="172.17.0.3", dst="198.51.100.9", proto=17, icmp_type=None, icmp_code=None,
                 icmp_id=None, icmp_seq=None, sport=40000, dport=53, length=40,
                 drop_reason="NETFILTER_DROP"),
    )
    return PacketPath(id=pid, hops=hops, nat=(), verdict="dropped", flow="f2")


def bridged_path(pid: str, t0: int) -> PacketPath:
    host = dict(node="host", netns=4026531840, dst="172.17.0.2", src="172.17.0.3")
    hops = (
        make_obs(ts_ns=t0, node="client", netns=4026532500, src="172.17.0.3", dst="172.17.0.2"),
        make_obs(ts_ns=t0 + 6_000, ifname="veth9f8e7d", direction="rx", **host),
        make_obs(ts_ns=t0 + 9_000, ifname="veth1a2b3c", direction="tx", **host),
        make_obs(ts_ns=t0 + 13_000, direction="rx", src="172.17.0.3", dst="172.17.0.2"),
    )
    return PacketPath(id=pid, hops=hops, nat=(), verdict="delivered")


def demo_events() -> list[list[PacketPath | Flow]]:
    """What a replay of the MASQUERADE scenario yields, in engine order (one list per batch)."""
    flow = Flow(
        id="f1", proto="icmp",
        original=Endpoints("172.17.0.2", None, "198.51.100.8", None),
        reply=Endpoints("198.51.100.8", None, "203.0.113.2", None),
        paths=("p1", "p2"), conntrack_id=3141592,
    )
    return [
        [masquerade_request()],
        [masquerade_reply(), flow],
        [bridged_path("p4", T0 + 600_000_000)],
        [dropped_path()],
    ]


class ScriptedEngine:
    """Yields scripted event lists; with ``gated`` each list waits for ``release()``."""

    def __init__(self, events: Sequence[list[Any]], *, gated: bool = False,
                 fail_with: BaseException | None = None, kind: str = "file") -> None:
        self._events = list(events)
        self._gated = gated
        self._gate: queue.Queue[int] = queue.Queue()
        self._fail = fail_with
        self._stop = threading.Event()
        self.batch_hooks: list[Any] = []
        self.path_filter: Any = None
        self.count: int | None = None
        self.yielded = 0
        self.observations = 0
        self.source = type("Src", (), {"kind": kind})()

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._gate.put(1)

    def events(self) -> Iterator[list[Any]]:
        for ev in self._events:
            while self._gated and not self._stop.is_set():
                try:
                    self._gate.get(timeout=0.05)
                    break
                except queue.Empty:
                    continue
            if self._stop.is_set():
                return
            self.yielded += 1
            self.observations += sum(len(p.hops) for p in ev if isinstance(p, PacketPath))
            yield ev
        if self._fail is not None:
            raise self._fail

    def stats(self) -> Stats:
        return Stats(observations=self.observations, paths=self.yielded, lost_events=0, elapsed_s=0.0)

    def stop(self) -> None:
        self._stop.set()


def renumber(path: PacketPath, pid: str, dt_ns: int) -> PacketPath:
    return replace(path, id=pid, hops=tuple(replace(h, ts_ns=h.ts_ns + dt_ns) for h in path.hops))


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async (Pilot) test with asyncio.run: no pytest-asyncio plugin needed."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> None:
        asyncio.run(fn(*args, **kw))

    return wrapper
