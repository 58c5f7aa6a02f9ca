"""Engine: source -> the core's engine (filter, count) -> annotators -> events, and run() into sinks."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.conftest import MS, internet_ping, internet_pong
from tracer.engine import Engine, run
from tracer.errors import CaptureFileError
from tracer.model import Flow, ObsBatch, PacketPath
from tracer.sinks.output import NdjsonSink

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


class ListSource:
    """A Source over prepared batches; optionally fails like a truncated file, or idles forever."""

    kind = "file"

    def __init__(self, batches: list[ObsBatch], fail: Exception | None = None, idle: bool = False,
                 lost: int = 0) -> None:
        self._batches = batches
        self._fail = fail
        self._idle = idle
        self._stopped = threading.Event()
        self.started = False
        self.stops = 0
        self._lost = lost

    def start(self) -> None:
        self.started = True

    def batches(self) -> Iterator[ObsBatch]:
        yield from self._batches
        if self._fail is not None:
            raise self._fail
        now = 10_000 * MS
        while self._idle and not self._stopped.is_set():
            now += 100 * MS
            empty = ObsBatch.from_observations([])
            empty.now_ns = now
            time.sleep(0.01)
            yield empty

    def stop(self) -> None:
        self.stops += 1
        self._stopped.set()

    @property
    def lost_events(self) -> int:
        return self._lost


def two_pings() -> list[ObsBatch]:
    return [ObsBatch.from_observations(internet_ping(t0=1_000 * MS) + internet_pong(t0=1_001 * MS)),
            ObsBatch.from_observations(internet_ping(t0=3_000 * MS, ip_id=2, icmp_seq=2))]


def flatten(engine: Engine) -> list[PacketPath | Flow]:
    return [ev for evs in engine.events() for ev in evs]


def describe(events: list[PacketPath | Flow]) -> list[tuple[str, ...]]:
    return [(ev.id, ev.verdict) if isinstance(ev, PacketPath) else (ev.id, *ev.paths) for ev in events]


def test_events_per_batch_flush_and_stats() -> None:
    src = ListSource(two_pings(), lost=3)
    engine = Engine(src)
    per_batch = [describe(evs) for evs in engine.events()]
    # batch 1: nothing idle yet; batch 2 (2 s later) finishes p1, p2; the end flushes p3 and f1.
    assert per_batch == [[], [("p1", "delivered"), ("p2", "delivered")],
                         [("p3", "delivered"), ("f1", "p1", "p2", "p3")]]
    st = engine.stats()
    assert (st.observations, st.paths, st.lost_events, src.started, src.stops >= 1) == (15, 3, 3, True, True)


def test_count_stops_after_n_paths() -> None:
    engine = Engine(ListSource(two_pings()), count=1)
    assert [ev.id for ev in flatten(engine) if isinstance(ev, PacketPath)] == ["p1"]
    assert engine.stats().paths == 1


def test_filter_annotators_and_hooks() -> None:
    from tracer.filter import PathFilter

    seen: list[int] = []
    only_replies = PathFilter("icmp[0] = 0")
    engine = Engine(ListSource(two_pings()), path_filter=only_replies,
                    annotators=[lambda p: replace(p, verdict="left")])
    engine.batch_hooks.append(lambda b: seen.append(len(b)))
    # The flow keeps only the paths that passed the filter.
    assert describe(flatten(engine)) == [("p2", "left"), ("f1", "p2")]
    assert seen == [10, 5]


def test_source_error_flushes_first_then_raises() -> None:
    engine = Engine(ListSource(two_pings()[:1], fail=CaptureFileError("x.pcap: truncated block")))
    got: list[PacketPath | Flow] = []
    with pytest.raises(CaptureFileError, match="truncated"):
        for evs in engine.events():
            got += evs
    assert describe(got) == [("p1", "delivered"), ("p2", "delivered"), ("f1", "p1", "p2")]


def test_run_writes_stats_last_even_on_error() -> None:
    out = io.StringIO()
    engine = Engine(ListSource(two_pings()[:1], fail=CaptureFileError("bad")))
    with pytest.raises(CaptureFileError):
        run(engine, [NdjsonSink(out)])
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["type"] for x in lines] == ["path", "path", "flow", "stats"]
    assert {k: v for k, v in lines[-1].items() if k != "elapsed_s"} == {
        "type": "stats", "observations": 10, "paths": 2, "lost_events": 0}


def test_stop_from_another_thread_and_idle_advance() -> None:
    src = ListSource(two_pings()[:1], idle=True)
    engine = Engine(src)
    got: list[str] = []
    stopper = threading.Timer(0.3, engine.stop)
    stopper.start()
    for evs in engine.events():
        got += [ev.id for ev in evs]
    stopper.join()
    # The idle batches' now_ns finished both paths before stop; flows come out at the end.
    assert got == ["p1", "p2", "f1"]


def test_duration_ends_a_live_source() -> None:
    engine = Engine(ListSource([], idle=True), duration_s=0.2)
    assert flatten(engine) == []


def test_replay_of_a_lab_recording() -> None:
    from tracer.sources.files import FileSource

    events = flatten(Engine(FileSource([str(FIXTURES / "internet-ping.pcapng")])))
    icmp = [ev for ev in events if isinstance(ev, PacketPath) and ev.proto == "icmp"]
    assert [[(e.kind, e.node, e.hook) for e in p.nat] for p in icmp] == [
        [("snat", "host", "POSTROUTING")], [("dnat", "host", "PREROUTING")]]
    assert [p.verdict for p in icmp] == ["delivered", "delivered"]
    assert [f.paths for f in events if isinstance(f, Flow)] == [tuple(p.id for p in icmp)]


def test_flow_takes_the_conntrack_id_an_annotator_found() -> None:
    from tracer.model import ConntrackRef, Endpoints

    ct = ConntrackRef(id=4242, original=Endpoints("172.17.0.2", None, "198.51.100.8", None),
                      reply=Endpoints("198.51.100.8", None, "203.0.113.2", None))

    def with_ct(p: PacketPath) -> PacketPath:
        return replace(p, nat=tuple(replace(ev, conntrack=ct) for ev in p.nat))

    events = flatten(Engine(ListSource(two_pings()), annotators=[with_ct]))
    assert [(f.id, f.paths, f.conntrack_id) for f in events if isinstance(f, Flow)] == [
        ("f1", ("p1", "p2", "p3"), 4242)]


class Scope:
    """A NatScope (tracer.protocols): NAT rules or conntrack entries in these namespaces, as
    the attributor would say; changes between batches."""

    def __init__(self, *answers: frozenset[int]) -> None:
        self.answers = list(answers)
        self.asked = 0

    def nat_netns(self) -> frozenset[int]:
        self.asked += 1
        return self.answers[min(self.asked, len(self.answers)) - 1]


def test_live_a_rewrite_joins_only_where_nat_rules_or_conntrack_are() -> None:
    """The internet ping's MASQUERADE (host/docker0 rx -> host/eth0 tx): one path while host
    has NAT rules, two when only web has; told again when the answer changes."""
    host, web = frozenset({4026531840}), frozenset({4026532001})
    batches = [ObsBatch.from_observations(internet_ping(t0=1_000 * MS)),
               ObsBatch.from_observations(internet_ping(t0=3_000 * MS, ip_id=2, icmp_seq=2))]
    scope = Scope(host, web)
    paths = [ev for ev in flatten(Engine(ListSource(batches), nat_scope=scope)) if isinstance(ev, PacketPath)]
    assert [len(p.hops) for p in paths] == [5, 3, 2]
    assert [(e.kind, e.node) for e in paths[0].nat] == [("snat", "host")]
    assert scope.asked == 2
    # replay (no scope): any namespace
    paths = [ev for ev in flatten(Engine(ListSource(batches))) if isinstance(ev, PacketPath)]
    assert [len(p.hops) for p in paths] == [5, 5]
