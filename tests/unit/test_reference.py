"""tests/reference (the simplest correct Python engine: the oracle the core is held to)
against the Python engine it replaced (tracer.correlate with its caches, templates and
span paths, tracer.nat, tracer.output's templates), byte for byte.

Compared: the NDJSON lines (the stats line but its elapsed time), and the damage that
ended the input, on every fixture (with filters), a spread of the corpus (all 830 files
agree; the suite takes every 10th), merged files, ``--hop`` labels, generated multi-hop
NAT'd captures, and at the correlator's own interface on generated streams (shared
fingerprints, reused and missing skbs, late and out-of-order sightings, a hop seen twice,
drops, gaps beyond the window) in random batchings, with ticks, advances, end-of-input
slices and small limits (window, open rows, chunk, candidates per fingerprint, flow idle
time and size).
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracer.correlate as correlate_mod
from tests.conftest import CORPUS, FIXTURES
from tests.reference import correlate as ref_correlate
from tests.reference.render import flow_json, line, path_json
from tests.reference.replay import replay, replay_files
from tests.unit.conftest import MS, US
from tests.unit.test_core_engine import corpus_with_linktype, nat_stream, split_per_hop
from tests.unit.test_core_finish import varied
from tests.unit.test_core_join import LABELS, raw_stream
from tests.unit.test_lines import Batches, batches_of, flood, hostile, replicated
from tracer.engine import Engine, run
from tracer.filter import PathFilter
from tracer.model import Flow, ObsBatch, PacketPath
from tracer.output import NdjsonSink, path_line
from tracer.readers import FileSource
from tracer.replay import HeldErrorSource

_ELAPSED = re.compile(r', "elapsed_s": [0-9.e+-]+\}$')


def _comparable(lines: list[str]) -> list[str]:
    assert lines and _ELAPSED.search(lines[-1]), lines[-1:]
    return [_ELAPSED.sub("}", x) for x in lines]


def product(source: Any, expr: str | None = None) -> tuple[list[str], str | None]:
    """The Python engine as ``replay --json`` ran it (lines from templates where it could)."""
    path_filter = PathFilter(expr) if expr else None
    held = HeldErrorSource(source, path_filter)
    out = io.StringIO()
    run(Engine(held, path_filter=path_filter), [NdjsonSink(out)])
    return _comparable(out.getvalue().splitlines()), None if held.error is None else held.error.message


def reference(batches: Iterable[ObsBatch], expr: str | None = None) -> tuple[list[str], str | None]:
    got = replay(batches, expr=expr)
    return _comparable(got.lines), None if got.error is None else got.error.message


def assert_files(files: list[str], hops: list[tuple[str, str]] | None = None, expr: str | None = None,
                 ) -> list[str]:
    want = product(FileSource(files, hops or []), expr)
    got = replay_files(files, hops or [], expr=expr)
    assert (_comparable(got.lines), None if got.error is None else got.error.message) == want
    return want[0]


# ------------------------------------------------------------------ fixtures and the corpus

FIXTURE_NAMES = sorted(p.name for p in FIXTURES.glob("*.pcapng"))
FILTERS = [None, "icmp", "host 198.51.100.8", "udp and port 7", "tcp[13] & 2 != 0", "arp", "len > 100",
           "ether host 02:42:ac:11:00:02", "not icmp", "ip6"]


def test_there_are_fixtures() -> None:
    assert len(FIXTURE_NAMES) >= 10


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_every_fixture(fixture: str) -> None:
    f = str(FIXTURES / fixture)
    lines = assert_files([f])
    assert any(x.startswith('{"type": "path"') for x in lines)
    for expr in FILTERS[1:]:
        assert_files([f], expr=expr)


def test_the_fixtures_cover_what_the_engine_does() -> None:
    """NAT at each hook, every verdict, drops, flows, ARP, IPv6, ICMP errors: compared above."""
    text = "\n".join(x for f in FIXTURE_NAMES for x in replay_files([str(FIXTURES / f)]).lines)
    seen = set(re.findall(r'"verdict": "(\w+)"', text))
    seen |= {f"{k} {h}" for k, h in re.findall(r'"kind": "(\w+)", "node": "[^"]*", "hook": "(\w+)"', text)}
    for key in ('"drop_reason": "', '"type": "flow"', '"proto": "arp"', '"proto": "icmp6"', '"inner": {'):
        if key in text:
            seen.add(key)
    assert {"delivered", "dropped", "left", "snat POSTROUTING", "dnat PREROUTING", '"drop_reason": "',
            '"type": "flow"', '"proto": "arp"'} <= seen, seen


def corpus_files() -> list[str]:
    assert CORPUS.is_dir(), f"the tcpdump corpus is not at {CORPUS} (set HOPTRACE_CORPUS)"
    return sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


@pytest.mark.timeout(300)
def test_corpus_files() -> None:
    """Every 10th corpus file (all 830 agree: ``HOPTRACE_REFERENCE_ALL=1`` takes them all), damaged
    ones too: the paths read before the damage, then the same error; every 3rd with a filter."""
    import os

    names = corpus_files()
    assert len(names) == 830, CORPUS
    step = 1 if os.environ.get("HOPTRACE_REFERENCE_ALL") else 10
    failed, damaged = [], 0
    for k, name in enumerate(names[::step]):
        f = str(CORPUS / name)
        want = product(FileSource([f]))
        damaged += want[1] is not None
        got = replay_files([f])
        if (_comparable(got.lines), None if got.error is None else got.error.message) != want:
            failed.append(name)
        expr = FILTERS[1 + k % (len(FILTERS) - 1)]
        if k % 3 == 0 and product(FileSource([f]), expr)[0] != _comparable(replay_files([f], expr=expr).lines):
            failed.append(f"{name} --filter {expr}")
    assert damaged > 50 // step
    assert failed == []


def test_files_merged_and_a_damaged_one_among_them() -> None:
    files = [str(FIXTURES / n) for n in ("internet-ping.pcapng", "published-port.pcapng", "udp.pcapng")]
    assert_files(files)
    names = corpus_files()
    assert_files([str(CORPUS / n) for n in names[:: len(names) // 12]])
    # Linux cooked, raw IPv4 and raw IPv6 beside Ethernet, filtered: a program per link type.
    mixed = [files[2], *(corpus_with_linktype(lt) for lt in (113, 101, 229))]
    for expr in (None, "udp", "ip", "ether host 02:42:ac:11:00:02"):
        assert_files(mixed, expr=expr)


def test_hop_labels(tmp_path: Path) -> None:
    hops = split_per_hop(FIXTURES / "published-port.pcapng", tmp_path)
    assert len(hops) >= 4
    for expr in (None, "tcp", "dst port 80"):
        assert_files([], hops, expr)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), packets=st.integers(1, 150), dense=st.booleans())
def test_generated_captures(seed: int, packets: int, dense: bool) -> None:
    """Multi-hop NAT'd pcapng as hoptrace records it (tests/unit/test_core_engine.py's
    ``nat_stream``): rewrites both ways, replies, identical packets in flight, known, missing
    and reused skbs, hops without a direction, drops, late sightings, gaps past the window
    and the flows' idle time."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "gen.pcapng"
        f.write_bytes(nat_stream(seed, packets, dense))
        assert_files([str(f)])
        assert_files([str(f)], expr=FILTERS[1 + seed % (len(FILTERS) - 1)])


def test_a_dense_capture_across_reader_batches(tmp_path: Path) -> None:
    """Sightings up to 150 ms late across the readers' 4096-record batches: true first
    sightings that take back what a forwarded copy taught, every verdict, flows."""
    f = tmp_path / "dense.pcapng"
    f.write_bytes(nat_stream(7, 3000, dense=True))
    lines = assert_files([str(f)])
    text = "\n".join(lines)
    assert {"delivered", "dropped", "left", "incomplete"} <= set(re.findall(r'"verdict": "(\w+)"', text))
    assert sum(x.startswith('{"type": "flow"') for x in lines) > 50


# ------------------------------------------------------------------ generated batches, the engine


def batches_product(batches: list[ObsBatch], expr: str | None = None) -> list[str]:
    return product(Batches(batches), expr)[0]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_hostile_streams(n: int, seed: int, cuts: list[int]) -> None:
    obs = hostile(n, seed)
    assert reference(batches_of(obs, cuts))[0] == batches_product(batches_of(obs, cuts))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 150), max_size=4))
def test_varied_streams(n: int, seed: int, cuts: list[int]) -> None:
    """Every kind of packet (IPv4, IPv6, TCP, UDP, ICMP echo with rewritten ids, ICMP errors
    with rewritten quoted headers, ARP and other L2, fragments), rewritten at random in one
    namespace, drops with named and unnamed reasons, names that need escaping."""
    obs = varied(n, seed)
    assert reference(batches_of(obs, cuts))[0] == batches_product(batches_of(obs, cuts))


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_floods(n: int, seed: int, cuts: list[int]) -> None:
    obs = flood(n, seed)
    assert reference(batches_of(obs, cuts))[0] == batches_product(batches_of(obs, cuts))


@pytest.mark.parametrize("expr", [None, "icmp[icmptype] == 0", "greater 90", "ip[2:2] > 70", "host 198.51.100.8"])
def test_repeated_shapes_with_filters(expr: str | None) -> None:
    """A fixture's packets again and again (the product renders them from templates, judges
    the filter once per shape where it can): the same lines."""
    bs = replicated("internet-ping.pcapng", 12) + replicated("published-port.pcapng", 5)
    assert reference(bs, expr)[0] == batches_product(bs, expr)


# ------------------------------------------------------------------ the correlator's interface


@dataclass
class Config:
    window_ns: int = ref_correlate.DEFAULT_WINDOW_NS
    max_open_rows: int = ref_correlate.DEFAULT_MAX_OPEN_ROWS
    chunk: int = ref_correlate.CHUNK
    max_same_fp: int = ref_correlate.MAX_SAME_FP
    flow_idle_ns: int = ref_correlate.DEFAULT_FLOW_IDLE_NS
    max_flow_paths: int = ref_correlate.DEFAULT_MAX_FLOW_PATHS


def test_the_defaults_are_the_products() -> None:
    assert (Config().window_ns, Config().max_open_rows, Config().chunk, Config().max_same_fp, Config().flow_idle_ns,
            Config().max_flow_paths) == (
        correlate_mod.DEFAULT_WINDOW_NS, correlate_mod.DEFAULT_MAX_OPEN_ROWS, correlate_mod._CHUNK,
        correlate_mod._MAX_SAME_FP, correlate_mod.DEFAULT_FLOW_IDLE_NS, correlate_mod.DEFAULT_MAX_FLOW_PATHS)


Op = tuple[str, Any]  # ("feed", batch) | ("advance", now_ns) | ("flush", max_paths)


def _drive(corr: Any, ops: list[Op], render: Callable[[PacketPath], str],
           render_flow: Callable[[Flow], str]) -> list[list[str]]:
    """Per call, the lines of what it handed out, then of the flows taken after it."""
    out = []
    for kind, arg in ops:
        if kind == "feed":
            paths = corr.feed_batch(arg)
        elif kind == "advance":
            paths = corr.advance(arg)
        else:
            paths = corr.flush(arg)
        out.append([render(p) for p in paths] + [render_flow(f) for f in corr.take_flows()])
    return out


def check(ops: list[Op], cfg: Config) -> list[list[str]]:
    kw = dict(window_ns=cfg.window_ns, max_open_rows=cfg.max_open_rows, flow_idle_ns=cfg.flow_idle_ns,
              max_flow_paths=cfg.max_flow_paths)
    with mock.patch.object(correlate_mod, "_CHUNK", cfg.chunk), \
            mock.patch.object(correlate_mod, "_MAX_SAME_FP", cfg.max_same_fp):  # fmt: skip
        want = _drive(correlate_mod.Correlator(**kw), ops, path_line, lambda f: line(flow_json(f)))
    ref = ref_correlate.Correlator(chunk=cfg.chunk, max_same_fp=cfg.max_same_fp, **kw)
    got = _drive(ref, ops, lambda p: line(path_json(p)), lambda f: line(flow_json(f)))
    assert got == want
    assert not ref.open and not ref.flows_open
    return want


def ops_of(batches: list[ObsBatch], ticks: list[int | None], advances: list[int], flush_slice: int | None,
           ) -> list[Op]:
    ops: list[Op] = []
    for k, b in enumerate(batches):
        tick = ticks[k % len(ticks)] if ticks else None
        if tick is not None and len(b.rows):
            b = ObsBatch(b.rows, b.hops, b.frames, int(b.rows["ts_ns"].max()) + tick, b.drop_reasons)
        ops.append(("feed", b))
        if k < len(advances) and len(b.rows):
            ops.append(("advance", int(b.rows["ts_ns"].min()) + advances[k]))
    slices: list[Op] = [("flush", flush_slice)] * 3 if flush_slice else []
    return [*ops, *slices, ("flush", None), ("flush", None)]


def cut(rows: np.ndarray[Any, Any], hops: Any, cuts: list[int]) -> list[ObsBatch]:
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    return [ObsBatch(rows[a:b], hops) for a, b in pairwise(bounds)]


CFG = st.builds(Config, window_ns=st.sampled_from([500 * MS, 100 * MS, 1 * MS, 5 * US]),
                max_open_rows=st.sampled_from([300_000, 30, 3, 0]), chunk=st.sampled_from([16384, 7, 2, 1]),
                max_same_fp=st.sampled_from([64, 2, 1]), flow_idle_ns=st.sampled_from([5_000 * MS, 50 * MS]),
                max_flow_paths=st.sampled_from([1000, 3, 1]))
TICKS = st.lists(st.sampled_from([None, None, 0, 5 * US, 200 * MS, 900 * MS]), max_size=3)
ADVANCES = st.lists(st.sampled_from([0, 1 * MS, 600 * MS, 3_000 * MS, 9_000 * MS]), max_size=3)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 150), max_size=6),
       cfg=CFG, ticks=TICKS, advances=ADVANCES, flush_slice=st.sampled_from([None, 1, 3]))
def test_raw_streams(n: int, seed: int, cuts: list[int], cfg: Config, ticks: list[int | None],
                     advances: list[int], flush_slice: int | None) -> None:
    """Rows straight in OBS_DTYPE (tests/unit/test_core_join.py's ``raw_stream``): few packet
    identities, IPv4, IPv6 and non-IP, reused and missing skbs, hops without a direction, a
    hop seen twice, equal times, late and out-of-order arrival."""
    check(ops_of(cut(raw_stream(n, seed), LABELS, cuts), ticks, advances, flush_slice), cfg)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 200), max_size=6),
       cfg=CFG, ticks=TICKS, advances=ADVANCES, kind=st.sampled_from(["hostile", "varied", "flood"]),
       flush_slice=st.sampled_from([None, 1, 3]))
def test_streams_at_the_correlator(n: int, seed: int, cuts: list[int], cfg: Config, ticks: list[int | None],
                                   advances: list[int], kind: str, flush_slice: int | None) -> None:
    """Each batch with a label table of its own (hop indices differ from batch to batch)."""
    obs = {"hostile": hostile, "varied": varied, "flood": flood}[kind](n, seed)
    check(ops_of(batches_of(obs, cuts), ticks, advances, flush_slice), cfg)


def test_a_fixture_in_any_batching_with_small_limits() -> None:
    src = FileSource([str(FIXTURES / "published-port.pcapng")])
    rows = np.concatenate([b.rows for b in src.batches()])
    rng = random.Random(5)
    for _ in range(20):
        cfg = Config(window_ns=rng.choice([500 * MS, 1 * MS, 20 * US]), max_open_rows=rng.choice([300_000, 4, 0]),
                     chunk=rng.choice([16384, 3, 1]), max_same_fp=rng.choice([64, 1]),
                     max_flow_paths=rng.choice([1000, 2]))
        cuts = [rng.randrange(len(rows) + 1) for _ in range(rng.randrange(6))]
        check(ops_of(cut(rows, src.hops, cuts), [None, 0], [], rng.choice([None, 1])), cfg)
