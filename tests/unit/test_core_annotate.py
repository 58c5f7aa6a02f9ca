"""Live's annotators through the core's tables (hoptrace_core::annotate) against the reference
engine running the same annotators on every path, byte for byte.

The real ``Attributor`` over a fixed ``Topology`` (NAT rules, renamed namespaces) and a
conntrack table filled by hand, and a ``RuleTrace`` whose log is a dict; NAT fixtures and
generated eBPF-shaped NAT streams in random batchings, with the topology and conntrack
entries changing mid-stream; and the provider asked once per path shape.
"""

from __future__ import annotations

import io
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tests.reference.engine as ref
from tests.unit.test_core_stream import FIXTURES, read, recut
from tracer.annotate.attribution import Attributor
from tracer.annotate.conntrack import ConntrackTable, CtTuple, Entry
from tracer.annotate.nftrace import RuleTrace
from tracer.engine import Engine, TableAnnotator, run
from tracer.model import ConntrackRef, ObsBatch, PacketPath
from tracer.sinks.output import NdjsonSink, TextOptions, TextSink
from tracer.topology import Interface, Namespace, Topology, parse_iptables_save

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import record_bench

WEB, HOST, INET = (h.netns for h in (record_bench.HOPS[0], record_bench.HOPS[1], record_bench.HOPS[4]))
_ELAPSED = re.compile(r', "elapsed_s": [0-9.e-]+}$')


def topology(host_name: str = "dockerhost", rules: bool = True) -> Topology:
    save = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]", ":DOCKER - [0:0]",
            "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER"]
    if rules:
        save.append("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")
    save += ["-A DOCKER -i docker0 -j RETURN",
             "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
             "COMMIT"]
    host = Namespace(HOST, host_name, "/nonexistent", (
        Interface(HOST, 1, "lo", None, None, "UNKNOWN", 65536, ("127.0.0.1/8",)),
        Interface(HOST, 2, "eth0", "veth", None, "UP", 1500, ("203.0.113.2/24",)),
        Interface(HOST, 3, "docker0", "bridge", None, "UP", 1500, ("172.17.0.1/16",)),
        Interface(HOST, 4, "veth1a2b3c", "veth", None, "UP", 1500, (), master=3),
    ), (), tuple(parse_iptables_save("\n".join(save) + "\n")), True)
    web = Namespace(WEB, "web-1", "/nonexistent", (
        Interface(WEB, 2, "eth0", "veth", None, "UP", 1500, ("172.17.0.2/16",)),), (), (), False)
    # A fixture's "host" node is found by name (its netns is not this one).
    return Topology((host, web))


def entry(flow: int, ct_id: int, status: tuple[str, ...] = ("SRC_NAT",)) -> Entry:
    """The conntrack entry of generated flow ``flow`` (UDP 172.17.x.y:30000+flow -> 198.51.100.8:53)."""
    src = f"172.17.{(flow >> 8) & 0xFF}.{flow & 0xFF}"
    orig = CtTuple(17, src, "198.51.100.8", 30000 + flow, 53)
    reply = CtTuple(17, "198.51.100.8", "203.0.113.2", 53, 30000 + flow)
    return Entry(ConntrackRef(ct_id, orig.endpoints(), reply.endpoints(), status), orig, reply)


def conntrack() -> ConntrackTable:
    table = ConntrackTable({HOST: "/nonexistent"})  # filled by hand: no threads
    for flow in range(0, 2000, 3):
        table._tables[HOST].put(entry(flow, 1000 + flow))
    return table


class Trace(RuleTrace):
    """A RuleTrace whose log is a dict: every fifth IP ID was traced."""

    def __init__(self) -> None:
        self.logs = {}

    def find(self, netns: int, kind: str, src: str, dst: str, sport: int | None, dport: int | None,
             ip_id: int | None) -> Any:
        if ip_id is None or ip_id % 5:
            return None
        return type("T", (), {"label": f"-t nat -A POSTROUTING (trace of {ip_id}, {src} -> {dst})"})()


class Counting(Attributor):
    """Counts what the core asks: a path shape at most once (while nothing changes)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.shapes: list[tuple[Any, ...]] = []

    def annotate(self, path: PacketPath) -> PacketPath:
        self.shapes.append((tuple((h.node, h.ifname, h.netns, h.ifindex, h.direction, h.icmp_id, h.proto)
                                  for h in path.hops),
                            tuple((e.kind, e.hook, e.before, e.after, e.from_hop) for e in path.nat)))
        return super().annotate(path)


class Source:
    """Batches, with ``before(k)`` called as batch k is handed out (a table changing mid-stream)."""

    lost_events = 0
    kind = "ebpf"

    def __init__(self, batches: Sequence[ObsBatch], before: Callable[[int], None] | None = None) -> None:
        self._batches = list(batches)
        self._before = before

    def start(self) -> None:
        pass

    def batches(self) -> Iterator[ObsBatch]:
        for k, b in enumerate(self._batches):
            if self._before is not None:
                self._before(k)
            yield b

    def stop(self) -> None:
        pass


Make = Callable[[], tuple[list[Any], Callable[[int], None] | None]]


def both(batches: Sequence[ObsBatch], make: Make) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """(core, reference): NDJSON lines and the annotators' without_conntrack counts."""
    outs = []
    for engine, runner, sink in ((Engine, run, NdjsonSink), (ref.Engine, ref.run, ref.NdjsonSink)):
        anns, before = make()
        buf = io.StringIO()
        # The reference applies each annotator to every path as a plain function (not its own
        # shape templates, which would take RuleTrace's per-packet answers for a shape's).
        plain = anns if engine is Engine else [(lambda p, a=a: a(p)) for a in anns]
        runner(engine(Source(batches, before), annotators=plain), [sink(buf)])
        lines = [_ELAPSED.sub("}", x) for x in buf.getvalue().splitlines()]
        outs.append((lines, [getattr(a, "without_conntrack", 0) for a in anns]))
    return outs[0], outs[1]


def assert_same(batches: Sequence[ObsBatch], make: Make) -> list[str]:
    got, want = both(batches, make)
    assert got == want
    return got[0]


def test_the_annotators_are_table_annotators() -> None:
    assert isinstance(Attributor(topology()), TableAnnotator)
    assert isinstance(Trace(), TableAnnotator)
    assert not isinstance(lambda p: p, TableAnnotator)


@pytest.mark.parametrize("fixture", ["internet-ping-ebpf", "published-port", "hairpin", "internet-ping",
                                     "udp", "blocked-ebpf"])
def test_nat_fixtures(fixture: str) -> None:
    batches, _ = read([str(FIXTURES / f"{fixture}.pcapng")])
    lines = assert_same(batches, lambda: ([Attributor(topology()), Trace()], None))
    assert lines and lines[-1].startswith('{"type": "stats"')
    assert_same(batches, lambda: ([Attributor(topology(), conntrack())], None))


def generated(n: int = 24_000, size: int = 1500, seed: int = 1) -> list[ObsBatch]:
    return record_bench.make_batches(n, size, seed)


def test_generated_nat_stream_names_rules_and_conntrack_entries() -> None:
    lines = assert_same(generated(), lambda: ([Attributor(topology(), conntrack())], None))
    paths = [x for x in lines if x.startswith('{"type": "path"')]
    assert len(paths) == 24_000 // 5
    assert all('"node": "dockerhost"' in x and '"node": "web-1"' in x for x in paths)
    assert all('"rule_source": "inferred"' in x for x in paths)
    assert 0 < sum('"conntrack": {"id": ' in x for x in paths) < len(paths)
    assert any('"conntrack_id": ' in x for x in lines if x.startswith('{"type": "flow"'))


@pytest.mark.parametrize("seed", range(4))
def test_random_batchings_with_tables_changing_mid_stream(seed: int) -> None:
    rng = random.Random(seed)
    batches = recut(generated(8_000, 4096, seed), rng, idle=True)
    switch = rng.randrange(1, max(2, len(batches)))

    def make() -> tuple[list[Any], Callable[[int], None]]:
        table = conntrack()
        snapshots = [topology(), topology("host-renamed", rules=False)]
        att = Attributor(lambda: snapshots[0], table)

        def before(k: int) -> None:
            if k == switch:
                snapshots.reverse()  # a new snapshot: a new generation
            if k == switch // 2:
                table._tables[HOST].put(entry(3, 1003, ("SRC_NAT", "SEEN_REPLY")))  # an entry changes
                table._tables[HOST].put(entry(1, 7001))  # an entry appears

        anns: list[Any] = [att, Trace()] if seed % 2 else [att]
        return anns, before

    lines = assert_same(batches, make)
    assert any("host-renamed" in x for x in lines)


def test_the_provider_is_asked_once_per_shape() -> None:
    att = Counting(topology())
    buf = io.StringIO()
    run(Engine(Source(recut(generated(), random.Random(7), idle=True)), annotators=[att]), [NdjsonSink(buf)])
    assert 2 <= len(att.shapes) < 4_000  # 2000 flows (some share a shape only per flow)
    assert len(att.shapes) == len(set(att.shapes))
    # The answers reached the lines.
    assert buf.getvalue().count('"rule_source": "inferred"') == 24_000 // 5


def test_a_provider_error_is_raised_from_the_step() -> None:
    class Broken(Attributor):
        def annotate(self, path: PacketPath) -> PacketPath:
            raise RuntimeError("provider failed")

    with pytest.raises(RuntimeError, match="provider failed"):
        run(Engine(Source(generated(2_000, 500)), annotators=[Broken(topology())]), [NdjsonSink(io.StringIO())])


_SECONDS = re.compile(r"[0-9.]+ s$")


@pytest.mark.parametrize("opts", [TextOptions(), TextOptions(numeric=True, detail=1, color=True),
                                  TextOptions(detail=-1), TextOptions(detail=2)])
def test_text_rendered_by_the_core_with_annotations(opts: TextOptions) -> None:
    """live's text (TextSink): the core writes it, annotations included, as the reference's
    TextSink writes the reference engine's annotated paths."""
    batches = [*generated(6_000, 1000), *read([str(FIXTURES / "published-port.pcapng")])[0]]
    outs = []
    for engine, runner in ((Engine, run), (ref.Engine, ref.run)):
        anns: list[Any] = [Attributor(topology(), conntrack()), Trace()]
        plain = anns if engine is Engine else [(lambda p, a=a: a(p)) for a in anns]
        e = engine(Source(batches), annotators=plain)
        buf = io.StringIO()
        runner(e, [TextSink(buf, opts)])
        outs.append(([_SECONDS.sub("s", x) for x in buf.getvalue().splitlines()], anns[0].without_conntrack))
        if engine is Engine:
            assert e.text == opts  # the core rendered it
    assert outs[0] == outs[1]
    assert any("  ct 10" in x for x in outs[0][0])  # flows name their conntrack entry
    if opts.detail >= 0:  # -q shows no NAT event lines
        assert any("rule: " in x and "(inferred)" in x for x in outs[0][0])
        assert any("(trace)" in x for x in outs[0][0])
    assert any("dockerhost" in x for x in outs[0][0]) or opts.numeric


def test_text_from_row_views_with_plain_function_annotators() -> None:
    e = Engine(Source(generated(2_000, 500)), annotators=[lambda p: p])
    run(e, [TextSink(io.StringIO())])
    assert e.text is None


def test_a_flow_closed_by_its_path_count_names_its_conntrack_entry() -> None:
    """One flow of 1200 paths finishing together: it closes at its 1000th path, while its
    paths are judged, and still names the entry its paths' NAT events got."""
    batches = generated(6_000, 6_000)
    for b in batches:
        rows = b.rows
        # every packet from 172.17.0.0 (S16 drops trailing zero bytes: IPv4 is the first four) ...
        rows["src"] = np.array([v[:2] + b"\0\0" if v[:1] == b"\xac" else v for v in rows["src"].tolist()],
                               dtype="S16")
        rows["sport"][:] = 30000  # ... port 30000: flow 0's
    lines = assert_same(batches, lambda: ([Attributor(topology(), conntrack())], None))
    flows = [x for x in lines if x.startswith('{"type": "flow"')]
    assert len(flows) == 2 and all('"conntrack_id": 1000' in x for x in flows)
