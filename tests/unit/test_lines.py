"""NDJSON lines rendered by the correlator (``Engine.render_lines``) equal the classic path lines.

When the engine's only sinks take lines, repeated path shapes are rendered from
templates (tracer.correlate, tracer.output.path_template). Every test here runs
the same input through both ways and compares the bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference.engine import Engine, NdjsonSink, _Annotate, run
from tests.unit.conftest import MS, NETNS, US, internet_ping, internet_pong
from tests.unit.streams import batches_of, flood, hostile, replicated
from tracer.attribution import annotator
from tracer.conntrack import ConntrackTable, CtTuple, Entry
from tracer.correlate import Correlator
from tracer.filter import PathFilter
from tracer.model import ConntrackRef, NatEvent, ObsBatch, Observation, PacketPath
from tracer.output import Rendered, path_line, path_template
from tracer.readers import FileSource
from tracer.topology import Interface, Namespace, Topology, parse_iptables_save

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
HOST = NETNS["host"]


class Batches:
    kind = "file"
    lost_events = 0

    def __init__(self, batches: list[ObsBatch], before: Callable[[int], None] | None = None) -> None:
        self._batches = batches
        self._before = before

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def batches(self) -> Iterator[ObsBatch]:
        for k, b in enumerate(self._batches):
            if self._before is not None:
                self._before(k)
            yield b


def ndjson(make_engine: Callable[[], Engine], lines: bool) -> list[str]:
    """The run's NDJSON without the stats line's elapsed time."""
    engine = make_engine()
    if not lines:
        engine.render_lines = lambda: False  # type: ignore[method-assign]
    out = io.StringIO()
    run(engine, [NdjsonSink(out)])
    text = out.getvalue().splitlines()
    assert text[-1].startswith('{"type": "stats"')
    return text[:-1]


def both(make_engine: Callable[[], Engine], expect_rendered: bool = True) -> list[str]:
    classic = ndjson(make_engine, False)
    rendered = ndjson(make_engine, True)
    assert rendered == classic
    if expect_rendered:
        e = make_engine()
        assert e.render_lines()
    return rendered


@pytest.mark.parametrize("expr", [None, "icmp", "host 198.51.100.8", "udp", "tcp port 8080"])
@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.pcapng")))
def test_every_fixture_renders_the_same_lines(fixture: str, expr: str | None) -> None:
    def make() -> Engine:
        return Engine(FileSource([str(FIXTURES / fixture)]), path_filter=PathFilter(expr) if expr else None)

    both(make)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_random_floods_render_the_same_lines(n: int, seed: int, cuts: list[int]) -> None:
    obs = flood(n, seed)
    lines = both(lambda: Engine(Batches(batches_of(obs, cuts))))
    assert len([x for x in lines if x.startswith('{"type": "path"')]) >= n


def test_templates_are_used_for_a_repeated_shape() -> None:
    obs = flood(30, 1)
    made: list[PacketPath] = []
    import tracer.correlate as correlate

    real = correlate.path_template

    def spy(path: PacketPath, *a: Any) -> Any:
        made.append(path)
        return real(path, *a)

    correlate.path_template = spy  # type: ignore[assignment]
    try:
        both(lambda: Engine(Batches([ObsBatch.from_observations(obs)])))
    finally:
        correlate.path_template = real
    # Built once per (shape, verdict, ...), on its second path, not per path.
    assert 0 < len(made) < 30


def test_path_template_slots_and_percent_signs() -> None:
    hops = tuple(internet_ping(ip_id=5, skb=0xABC, icmp_seq=9))
    hops = (replace(hops[0], node="we%b"), *hops[1:])  # a literal % must survive the format
    path = PacketPath("p3", hops, (), "left", "f2")
    made = path_template(path)
    assert made is not None
    fmt, order = made
    values: list[Any] = ["p3", "f2"]
    for h in hops:
        values += [h.ts_ns, h.ip_id, h.skb, h.icmp_seq, h.tcp_flags, h.tcp_seq, h.tcp_ack, h.length]
    assert fmt % tuple(values[i] for i in order) == path_line(path) + "\n"
    # Another packet of the shape: only the slots change.
    other = [replace(h, ts_ns=h.ts_ns + 7, ip_id=6, skb=0xDEF, icmp_seq=10) for h in hops]
    values = ["p4", "f2"]
    for h in other:
        values += [h.ts_ns, h.ip_id, h.skb, h.icmp_seq, h.tcp_flags, h.tcp_seq, h.tcp_ack, h.length]
    assert fmt % tuple(values[i] for i in order) == path_line(PacketPath("p4", tuple(other), (), "left", "f2")) + "\n"


class Renamer:
    """An annotator with state that changes while tracing: node names (slow) and a NAT rule
    that depends on a per-packet lookup (like conntrack)."""

    def __init__(self) -> None:
        self.generation = 0
        self.rule: dict[int, str] = {}
        self.without_conntrack = 0

    def volatile(self, hops: Sequence[Observation], nat: Sequence[NatEvent]) -> object:
        return tuple(self.rule.get(ev.after.src.count(".") + (hops[0].icmp_id or 0)) for ev in nat)

    def __call__(self, path: PacketPath) -> PacketPath:
        hops = tuple(replace(h, node=f"{h.node}-{self.generation}") for h in path.hops)
        nat = []
        for ev in path.nat:
            rule = self.rule.get(ev.after.src.count(".") + (path.hops[0].icmp_id or 0))
            if rule is None:
                self.without_conntrack += 1
            nat.append(replace(ev, rule=rule))
        return replace(path, hops=hops, nat=tuple(nat))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), changes=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3)),
                                                         max_size=6))
def test_annotations_that_change_while_tracing(seed: int, changes: list[tuple[int, int]]) -> None:
    obs = flood(40, seed)
    chunks = batches_of(obs, list(range(0, len(obs), max(1, len(obs) // 12))))
    counts = []

    def make() -> Engine:
        ren = Renamer()

        def before(k: int) -> None:
            for at, what in changes:
                if at == k:
                    if what == 0:
                        ren.generation += 1
                    else:
                        ren.rule[3 + 70 + what - 1] = f"-A POSTROUTING -j MASQUERADE #{at}/{what}"
        counts.append(ren)
        return Engine(Batches(chunks, before), annotators=[ren])

    both(make)
    # the per-path counter came out the same both ways
    assert counts[0].without_conntrack == counts[1].without_conntrack


def _topo() -> Topology:
    save = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            ":POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n")
    host = Namespace(HOST, "host", "/nonexistent", (
        Interface(HOST, 2, "eth0", "veth", None, "UP", 1500, ("203.0.113.2/24",)),
        Interface(HOST, 3, "docker0", "bridge", None, "UP", 1500, ("172.17.0.1/16",)),
    ), (), tuple(parse_iptables_save(save)), True)
    return Topology((host,))


def _entry(ct_id: int, icmp_id: int) -> Entry:
    orig = CtTuple(1, "172.17.0.2", "198.51.100.8", None, None, icmp_id)
    reply = CtTuple(1, "198.51.100.8", "203.0.113.2", None, None, icmp_id)
    return Entry(ConntrackRef(ct_id, orig.endpoints(), reply.endpoints(), ("SRC_NAT",)), orig, reply)


def test_conntrack_entries_that_appear_and_change_while_tracing() -> None:
    """The real annotator: a path rendered from a template names the entry the table has now."""
    table = ConntrackTable({HOST: "/nonexistent"})  # filled by hand: no threads
    ns_table = table._tables[HOST]
    # A second apart: each path finishes in the next batch, with what the table had then.
    pings = [internet_ping(t0=1_000 * MS + k * 1_000 * MS, ip_id=k, icmp_seq=k) for k in range(12)]

    def before(k: int) -> None:
        if k == 3:
            ns_table.put(_entry(41, 77))
        if k == 7:
            ns_table.put(_entry(42, 77))  # the entry was replaced (a new connection)

    outs = []
    for lines in (False, True):
        att = annotator(_topo(), conntrack=table, refresh_s=None)
        engine = Engine(Batches([ObsBatch.from_observations(p) for p in pings], before),
                        annotators=[att])
        if not lines:
            engine.render_lines = lambda: False  # type: ignore[method-assign]
        buf = io.StringIO()
        run(engine, [NdjsonSink(buf)])
        outs.append((buf.getvalue().splitlines()[:-1], att.without_conntrack))
        ns_table.by_key.clear()
    assert outs[0] == outs[1]
    cts = [line.count('"conntrack": {"id": 41') + 2 * line.count('"conntrack": {"id": 42')
           for line in outs[1][0] if line.startswith('{"type": "path"')]
    assert cts[:2] == [0, 0] and 1 in cts and 2 in cts
    assert outs[1][1] > 0  # paths before the entry existed count as without conntrack


def test_rendered_objects_reach_the_sink_and_flows_name_them() -> None:
    obs = [o for k in range(5) for o in (
        *internet_ping(t0=1_000 * MS + k * MS, ip_id=k, icmp_seq=k),
        *(replace(r, ip_id=900 + k) for r in internet_pong(t0=1_000 * MS + k * MS + 100 * US, icmp_seq=k)))]
    engine = Engine(Batches([ObsBatch.from_observations(obs)]))
    assert engine.render_lines()
    events = [ev for evs in engine.events() for ev in evs]
    rendered = [ev for ev in events if isinstance(ev, Rendered)]
    assert len(rendered) == 10 and all(r.line.endswith("}\n") for r in rendered)
    flows = [ev for ev in events if not isinstance(ev, Rendered)]
    assert [len(f.paths) for f in flows] == [10]  # type: ignore[union-attr]


def test_no_lines_when_something_downstream_needs_path_objects() -> None:
    class OldFilter:  # keep(path) only
        def keep(self, path: PacketPath) -> bool:
            return True

    assert not Engine(Batches([]), annotators=[lambda p: p]).render_lines()
    assert not Engine(Batches([]), path_filter=OldFilter()).render_lines()
    assert Engine(Batches([]), path_filter=PathFilter("icmp"), annotators=[Renamer()]).render_lines()
    # run() into a sink without on_rendered gets PacketPaths
    got: list[object] = []

    class Collect:
        def on_path(self, p: PacketPath) -> None:
            got.append(p)

        def on_flow(self, f: object) -> None:
            pass

        def on_stats(self, s: object) -> None:
            pass

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    run(Engine(Batches([ObsBatch.from_observations(internet_ping())])), [Collect()])
    assert [type(p) for p in got] == [PacketPath]


class PerSighting(Correlator):
    """The correlator with its span lane off: every sighting by the per-sighting rules."""

    def _groups(self, *args: Any) -> Any:
        go, starts, ends, fast, last, skb = super()._groups(*args)
        return go, starts, ends, np.zeros_like(fast), last, skb


def _run_corr(cls: type[Correlator], batches: list[ObsBatch], lines: bool) -> list[Any]:
    c = cls(window_ns=500 * MS)
    if lines:
        c.render_lines(_Annotate([]))
    out: list[Any] = []
    for b in batches:
        out += c.feed_batch(b)
        out += c.take_flows()
    while more := c.flush(7):
        out += more
    out += c.take_flows()
    return [x.line if isinstance(x, Rendered) else x for x in out]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 200), max_size=6),
       lines=st.booleans())
def test_span_paths_are_what_the_per_sighting_rules_make(n: int, seed: int, cuts: list[int], lines: bool) -> None:
    """A fingerprint's sightings in a chunk made into one path in one step (and finished from
    the chunk's columns) give exactly the paths, ids, verdicts and flows that the rules for
    one sighting at a time give, in any batching."""
    obs = hostile(n, seed)
    fast = _run_corr(Correlator, batches_of(obs, cuts), lines)
    assert fast == _run_corr(PerSighting, batches_of(obs, cuts), lines)
    assert len([x for x in fast if isinstance(x, (str, PacketPath))]) >= 1


def test_a_late_sighting_joins_a_span_path_of_an_earlier_batch() -> None:
    ping = internet_ping(t0=1_000 * MS, skb=0xA000)
    c = Correlator()
    c.feed_batch(ObsBatch.from_observations(ping[:2] + ping[3:]))
    assert c.open_paths == 1
    c.feed_batch(ObsBatch.from_observations([ping[2]]))  # host/docker0 rx, from another CPU's ring
    (p,) = c.flush()
    assert ([h.hop_name for h in p.hops], p.id) == ([o.hop_name for o in ping], "p1")


def test_one_fingerprint_beyond_the_window_in_one_batch_is_two_paths() -> None:
    # Same packet identity, different hops, 700 ms apart in one batch: no single path.
    a = internet_ping(t0=1_000 * MS)[:2]
    b = internet_ping(t0=1_700 * MS)[2:]
    for cls in (Correlator, PerSighting):
        c = cls(window_ns=500 * MS)
        paths = c.feed_batch(ObsBatch.from_observations(a + b)) + c.flush()
        assert [[h.hop_name for h in p.hops] for p in paths] == [[o.hop_name for o in a], [o.hop_name for o in b]]


@pytest.mark.parametrize("expr", [None, "icmp", "host 198.51.100.8", "udp", "tcp port 8080", "icmp[icmptype] == 0",
                                  "not (src net 172.17.0.0/16 or ip6)", "greater 90", "ip[8] == 63", "ip[2:2] > 70"])
@pytest.mark.parametrize("fixture", ["internet-ping.pcapng", "published-port.pcapng", "udp.pcapng"])
def test_a_filter_judges_template_paths_from_their_frames(fixture: str, expr: str | None) -> None:
    bs = replicated(fixture, 12)
    lines = both(lambda: Engine(Batches(bs), path_filter=PathFilter(expr) if expr else None))
    if expr is None:
        assert len([x for x in lines if x.startswith('{"type": "path"')]) >= 12


@pytest.mark.parametrize(("expr", "by_shape"), [
    ("icmp", True), ("host 198.51.100.8 and not port 53", True), ("(tcp or udp) && !(src net 10.0.0.0/8)", True),
    ("portrange 1000-2000 or ip6 host fe80::1", True), ("ip proto 17", True),
    ("icmp[icmptype] == 0", False), ("greater 90", False), ("len < 100", False), ("ether host 02:42:ac:11:00:02", False),
    ("tcp[tcpflags] & tcp-syn != 0", False), ("vlan and udp", False), ("ip multicast", False),
])  # fmt: skip
def test_which_filters_answer_once_per_shape(expr: str, by_shape: bool) -> None:
    assert PathFilter(expr).by_shape is by_shape
