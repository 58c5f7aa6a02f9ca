"""tracer/engine.py on the core (``tracer._core.Stream``) against the Python engine
(tests/reference/engine.py over tests/reference/correlate.py), byte for byte.

Both run in-process over the same batches into an NDJSON sink; the lines must be the same
(the stats line's ``elapsed_s`` aside), and so must the row views ``events()`` hands the TUI,
text output, probe, report and lab demo (compared as their NDJSON objects). On every
fixture, every 16th corpus file (damaged ones: the paths before the damage, then the same
error), the batches cut at random places with idle ``now_ns`` batches between them, ``--count``
values, path filters, and annotators.
"""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tests.reference.engine as ref
from tests.conftest import CORPUS
from tracer.engine import Engine, Lines, run
from tracer.errors import HoptraceError
from tracer.filter import PathFilter
from tracer.model import Flow, ObsBatch, PacketPath
from tracer.sinks.output import NdjsonSink, TextSink, flow_json, path_json
from tracer.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
_ELAPSED = re.compile(r', "elapsed_s": [0-9.e+-]+\}$')


def fixtures() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.pcapng"))


class Batches:
    """A Source over batches in memory; optionally fails after them like a damaged file."""

    kind = "file"
    lost_events = 0

    def __init__(self, batches: Sequence[ObsBatch], fail: BaseException | None = None) -> None:
        self._batches = list(batches)
        self._fail = fail

    def start(self) -> None:
        pass

    def batches(self) -> Iterator[ObsBatch]:
        yield from self._batches
        if self._fail is not None:
            raise self._fail

    def stop(self) -> None:
        pass


def read(files: Sequence[str]) -> tuple[list[ObsBatch], HoptraceError | None]:
    """A capture's batches as FileSource yields them, and the error it ends with, if any."""
    src = FileSource(list(files))
    src.start()
    out: list[ObsBatch] = []
    try:
        for b in src.batches():
            out.append(b)
    except HoptraceError as exc:
        return out, exc
    finally:
        src.stop()
    return out, None


def ndjson(make: Callable[[], Any], runner: Callable[..., Any], sink: Callable[[io.StringIO], Any]
           ) -> tuple[list[str], str | None]:
    out = io.StringIO()
    error = None
    try:
        runner(make(), [sink(out)])
    except HoptraceError as exc:
        error = exc.message
    return [_ELAPSED.sub("}", x) for x in out.getvalue().splitlines()], error


def both(batches: Sequence[ObsBatch], fail: HoptraceError | None = None, **kw: Any
         ) -> tuple[tuple[list[str], str | None], tuple[list[str], str | None]]:
    """(core, reference): NDJSON lines and the error, of the same batches and settings."""
    flt = kw.pop("expr", None)

    def core() -> Engine:
        return Engine(Batches(batches, fail), path_filter=PathFilter(flt) if flt else None, **kw)

    def python() -> ref.Engine:
        return ref.Engine(Batches(batches, fail), path_filter=PathFilter(flt) if flt else None, **kw)

    return ndjson(core, run, NdjsonSink), ndjson(python, ref.run, ref.NdjsonSink)


def assert_same(batches: Sequence[ObsBatch], fail: HoptraceError | None = None, **kw: Any) -> list[str]:
    got, want = both(batches, fail, **kw)
    assert got == want
    return got[0]


def as_json(events: Sequence[PacketPath | Flow]) -> list[dict[str, Any]]:
    return [path_json(e) if isinstance(e, PacketPath) else flow_json(e) for e in events]


def test_there_are_fixtures() -> None:
    assert len(fixtures()) >= 10


@pytest.mark.parametrize("fixture", fixtures())
def test_fixture(fixture: str) -> None:
    batches, err = read([str(FIXTURES / fixture)])
    lines = assert_same(batches, err)
    assert any('"type": "path"' in x for x in lines)


def test_every_16th_corpus_file() -> None:
    names = sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert len(names) > 800, CORPUS
    failed, damaged, paths = [], 0, 0
    for name in names[::16]:
        try:
            batches, err = read([str(CORPUS / name)])
        except HoptraceError:
            continue  # not even a header: nothing reaches either engine
        damaged += err is not None
        got, want = both(batches, err)
        paths += sum('"type": "path"' in x for x in got[0])
        if got != want:
            failed.append(name)
    assert failed == []
    assert damaged > 0 and paths > 100


def recut(batches: Sequence[ObsBatch], rng: random.Random, idle: bool) -> list[ObsBatch]:
    """The same sightings in batches cut elsewhere (one label table, one frames buffer), with
    idle batches (no rows, a clock) between them when ``idle``."""
    hops = batches[-1].hops
    reasons: dict[int, str] = {}
    frames = bytearray()
    parts = []
    for b in batches:
        rows = b.rows.copy()
        rows["frame_off"] += len(frames)
        frames += bytes(b.frames)
        reasons.update(b.drop_reasons)
        parts.append(rows)
    rows = np.concatenate(parts) if parts else np.zeros(0, batches[0].rows.dtype)
    data = bytes(frames)
    cuts = sorted(rng.sample(range(1, len(rows)), min(len(rows) - 1, rng.randint(0, 12)))) if len(rows) > 1 else []
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True):
        out.append(ObsBatch(rows=rows[a:b], hops=hops, frames=data, drop_reasons=reasons))
        if idle and b > a and rng.random() < 0.5:
            top = int(rows["ts_ns"][a:b].max())
            empty = ObsBatch(rows=rows[:0], hops=hops, frames=b"", drop_reasons=reasons,
                             now_ns=top + rng.choice([0, 1_000_000, 600_000_000, 10_000_000_000]))
            out.append(empty)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_and_idle_clocks(seed: int) -> None:
    rng = random.Random(seed)
    for fixture in fixtures()[seed::3]:
        batches, _ = read([str(FIXTURES / fixture)])
        assert_same(recut(batches, rng, idle=True))


@pytest.mark.parametrize("count", [0, 1, 3, 7])
def test_count(count: int) -> None:
    shown = 0
    for k, fixture in enumerate(fixtures()):
        batches, _ = read([str(FIXTURES / fixture)])
        if k % 2:  # cut otherwise, the count still stops at the same paths
            batches = recut(batches, random.Random(count), idle=False)
        lines = assert_same(batches, count=count)
        n = sum('"type": "path"' in x for x in lines)
        assert n <= count
        shown += n
    assert shown > 0 or count == 0


@pytest.mark.parametrize("expr", ["icmp", "host 198.51.100.8", "tcp[13] & 2 != 0", "len > 100"])
def test_filters(expr: str) -> None:
    for k, fixture in enumerate(fixtures()):
        batches, _ = read([str(FIXTURES / fixture)])
        assert_same(batches, expr=expr, count=2 if k % 3 == 0 else None)


def test_a_filter_on_sightings_without_frame_bytes() -> None:
    """A synthetic source's sightings carry no frame bytes: matched by their rebuilt headers."""
    from tests.unit.conftest import MS, internet_ping, internet_pong

    batches = [ObsBatch.from_observations(internet_ping(t0=1_000 * MS) + internet_pong(t0=1_001 * MS)),
               ObsBatch.from_observations(internet_ping(t0=3_000 * MS, ip_id=2, icmp_seq=2))]
    for expr in ("icmp[0] = 0", "icmp", "host 203.0.113.2", "udp", "icmp[icmptype] = icmp-echo"):
        lines = assert_same(batches, expr=expr)
        assert lines[-1].startswith('{"type": "stats"')
    assert len(assert_same(batches, expr="icmp[0] = 0")) == 3  # the pong, its flow, the stats


def test_plain_function_annotators() -> None:
    """An annotator that is just a function of a path (tests, notebooks) sees every shown path."""

    def left(p: PacketPath) -> PacketPath:
        return replace(p, verdict="left", nat=tuple(replace(e, rule=f"rule of {p.id}") for e in p.nat))

    for fixture in ("internet-ping.pcapng", "udp.pcapng"):
        batches, _ = read([str(FIXTURES / fixture)])
        lines = assert_same(batches, annotators=[left])
        assert '"verdict": "left"' in lines[0]


@pytest.mark.parametrize("fixture", ["internet-ping.pcapng", "udp.pcapng", "blocked.pcapng", "hairpin.pcapng"])
def test_row_views_are_the_reference_objects(fixture: str) -> None:
    """events(): the row views built from the core's lines are the Python engine's paths and
    flows (as their NDJSON objects), batch by batch."""
    batches, _ = read([str(FIXTURES / fixture)])
    got = [as_json(evs) for evs in Engine(Batches(batches)).events()]
    want = [as_json([e for e in evs if not isinstance(e, str)]) for evs in ref.Engine(Batches(batches)).events()]
    assert [x for x in got if x] == [x for x in want if x]

    def unframed(evs: Sequence[Any]) -> list[Any]:
        return [replace(e, hops=tuple(replace(h, frame=b"") for h in e.hops)) if isinstance(e, PacketPath) else e
                for e in evs]

    # As objects too: what a line does not say (interface index, source, digest, wire length)
    # comes with it; only the frame bytes stay behind.
    objs = [e for evs in Engine(Batches(batches)).events() for e in evs]
    assert objs == unframed([e for evs in ref.Engine(Batches(batches)).events() for e in evs])


def test_text_output_from_row_views() -> None:
    for fixture in fixtures():
        batches, _ = read([str(FIXTURES / fixture)])
        got = io.StringIO()
        run(Engine(Batches(batches)), [TextSink(got)])
        want = io.StringIO()
        ref.run(ref.Engine(Batches(batches)), [TextSink(want)])
        assert got.getvalue().splitlines()[:-1] == want.getvalue().splitlines()[:-1], fixture


def test_from_json_is_path_json_inverse() -> None:
    for fixture in fixtures():
        batches, _ = read([str(FIXTURES / fixture)])
        for evs in ref.Engine(Batches(batches)).events():
            for ev in evs:
                if isinstance(ev, PacketPath):
                    d = json.loads(json.dumps(path_json(ev)))
                    assert path_json(PacketPath.from_json(d)) == d
                elif isinstance(ev, Flow):
                    d = json.loads(json.dumps(flow_json(ev)))
                    assert flow_json(Flow.from_json(d)) == d


def test_lines_index_and_kinds() -> None:
    batches, _ = read([str(FIXTURES / "internet-ping.pcapng")])
    chunks: list[Lines] = list(Engine(Batches(batches)).chunks())
    kinds = []
    for c in chunks:
        assert c.index.shape[1:] == (3,)
        at = 0
        for off, length, kind in c.index.tolist():
            assert off == at
            assert c.data[off + length:off + length + 1] == b"\n"
            assert json.loads(c.data[off:off + length])["type"] == ("path", "flow")[kind]
            at = off + length + 1
            kinds.append(kind)
        assert at == len(c.data)
    assert 0 in kinds and 1 in kinds
