"""tracer.pipeline: the one builder every command uses (config before start -> engine + hooks)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from io import StringIO
from typing import Any

import pytest

from tests.conftest import FIXTURES
from tracer.errors import CaptureFileError, FilterError
from tracer.model import ObsBatch, PacketPath
from tracer.pipeline import PipelineConfig, PipelineSource, attribution, build, compile_filter
from tracer.protocols import HoldsError, LiveSource, NamesContainers, Recorder
from tracer.sinks.output import NdjsonSink
from tracer.sources.base import BatchListSource
from tracer.sources.files import open_files

FIXTURE = str(FIXTURES / "internet-ping.pcapng")


def fixture_batches(path: str = FIXTURE) -> list[ObsBatch]:
    src = open_files([path], [])
    src.start()
    return list(src.batches())


class CountingSource(BatchListSource):
    def __init__(self, batches: list[ObsBatch], fail_after: BaseException | None = None) -> None:
        super().__init__(batches)
        self.starts = 0
        self.stops = 0
        self.fail_after = fail_after

    def start(self) -> None:
        self.starts += 1

    def stop(self) -> None:
        self.stops += 1

    def batches(self) -> Iterator[ObsBatch]:
        yield from super().batches()
        if self.fail_after is not None:
            raise self.fail_after


class TellingFilter:
    """A path filter that keeps everything and records what it was told, and when the engine
    asked it for a link type's program."""

    expr = "anything"
    KEEP_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0xFFFF)  # struct bpf_insn: ret #65535

    def __init__(self) -> None:
        self.told: list[tuple[str, str, int]] = []
        self.asked: list[tuple[int, int]] = []  # (link type, hops told by then)

    def learn_linktype(self, node: str, iface: str, linktype: int) -> None:
        self.told.append((node, iface, linktype))

    def insns(self, linktype: int) -> bytes:
        self.asked.append((linktype, len(self.told)))
        return self.KEEP_ALL

    def keep(self, path: PacketPath) -> bool:
        return True


class ListRecorder:
    def __init__(self) -> None:
        self.path = "mem.pcapng"
        self.batches: list[ObsBatch] = []
        self.closed = False

    def on_batch(self, batch: ObsBatch) -> None:
        self.batches.append(batch)

    def close(self) -> None:
        self.closed = True


def ndjson(pipeline: Any) -> list[dict[str, Any]]:
    out = StringIO()
    pipeline.run([NdjsonSink(out)])
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_started_source_is_not_started_again() -> None:
    batches = fixture_batches()
    for started, starts in ((False, 1), (True, 0)):
        src = CountingSource(batches)
        lines = ndjson(build(PipelineConfig(src, source_started=started)))
        assert (src.starts, lines[-1]["type"], lines[-1]["observations"]) == (starts, "stats",
                                                                            sum(map(len, batches)))
        assert src.stops >= 1


def test_the_filter_learns_every_hops_link_type_once_before_any_path_is_judged() -> None:
    batches = fixture_batches()
    hops = batches[-1].hops
    flt = TellingFilter()
    pipeline = build(PipelineConfig(CountingSource(batches), path_filter=flt))  # type: ignore[arg-type]
    lines = ndjson(pipeline)
    assert flt.told == [(h.node, h.iface, h.linktype) for h in hops]
    # Each hop's link type was asked for once, after a hop of it was told (101: the rebuilt
    # headers of sightings without frame bytes, asked first).
    assert sorted(lt for lt, _ in flt.asked) == sorted({101, *(h.linktype for h in hops)})
    assert all(any(t[2] == lt for t in flt.told[:n]) for lt, n in flt.asked if lt != 101)
    unfiltered = ndjson(build(PipelineConfig(CountingSource(fixture_batches()))))
    assert [x["type"] for x in lines].count("path") == [x["type"] for x in unfiltered].count("path") > 0


def test_the_recorder_sees_every_batch_and_stays_open() -> None:
    batches = fixture_batches()
    rec = ListRecorder()
    pipeline = build(PipelineConfig(CountingSource(batches), recorder=rec))
    ndjson(pipeline)
    assert rec.batches == batches
    assert pipeline.recorder is rec and isinstance(rec, Recorder)
    assert not rec.closed  # whoever made it closes it


def test_progress_over_a_source_that_knows_how_far_it_is() -> None:
    src = open_files([FIXTURE], [])
    pipeline = build(PipelineConfig(src, progress_label="replay"))
    ndjson(pipeline)
    assert pipeline.progress is not None
    assert (pipeline.progress.records, src.progress()[0]) == (pipeline.stats().observations, src.progress()[1])
    # batches in memory know no position: no progress line
    assert build(PipelineConfig(CountingSource([]), progress_label="replay")).progress is None


def test_count_and_duration_reach_the_engine() -> None:
    batches = fixture_batches()
    pipeline = build(PipelineConfig(CountingSource(batches), count=1, duration_s=30.0))
    assert (pipeline.engine.count, pipeline.engine.duration_s) == (1, 30.0)
    lines = ndjson(pipeline)
    assert [x["type"] for x in lines].count("path") == 1


def test_a_held_capture_error_comes_after_the_paths() -> None:
    batches = fixture_batches()
    boom = CaptureFileError("x.pcapng: truncated record")
    pipeline = build(PipelineConfig(CountingSource(batches, fail_after=boom), hold_errors=True))
    lines = ndjson(pipeline)
    assert [x["type"] for x in lines].count("path") >= 1 and lines[-1]["type"] == "stats"
    assert pipeline.error is boom and isinstance(pipeline.source, HoldsError)


def test_an_unheld_capture_error_is_raised_after_the_paths() -> None:
    boom = CaptureFileError("x.pcapng: truncated record")
    pipeline = build(PipelineConfig(CountingSource(fixture_batches(), fail_after=boom)))
    out = StringIO()
    with pytest.raises(CaptureFileError):
        pipeline.run([NdjsonSink(out)])
    types = [json.loads(line)["type"] for line in out.getvalue().splitlines()]
    assert "path" in types and types[-1] == "stats" and pipeline.error is None


def test_the_same_lines_as_the_engine_built_by_hand() -> None:
    from tracer.engine import Engine
    from tracer.engine import run as run_engine

    batches = fixture_batches()
    expr = "icmp"
    by_hand = compile_filter(expr)
    assert by_hand is not None
    for h in batches[-1].hops:
        by_hand.learn_linktype(h.node, h.iface, h.linktype)
    out = StringIO()
    run_engine(Engine(BatchListSource(batches), path_filter=by_hand), [NdjsonSink(out)])
    built = ndjson(build(PipelineConfig(CountingSource(batches), path_filter=compile_filter(expr))))
    want = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [x for x in built if x["type"] != "stats"] == [x for x in want if x["type"] != "stats"]
    assert sum(x["type"] == "path" for x in built) >= 1


def test_compile_filter() -> None:
    assert compile_filter(None) is None and compile_filter("") is None
    flt = compile_filter("icmp")
    assert flt is not None and flt.expr == "icmp"
    with pytest.raises(FilterError):
        compile_filter("hots 1.2.3.4")


def test_pipeline_source_is_a_source_with_its_capabilities() -> None:
    src = PipelineSource(CountingSource([]), started=True)
    assert (src.kind, src.lost_events, src.error) == ("file", 0, None)
    src.start()
    src.stop()
    assert (src.inner.starts, src.inner.stops) == (0, 1)  # type: ignore[attr-defined]


class NamingSource(BatchListSource):
    def __init__(self) -> None:
        super().__init__([])
        self.names: dict[int, str] = {}

    def name_containers(self, names: Mapping[int, str]) -> None:
        self.names.update(names)


def test_attribution_names_containers_on_a_source_that_takes_them() -> None:
    from tracer.topology import Container, Topology

    topo = Topology(namespaces=(), containers=(Container("id1", "web", 4026532001, 1), Container("id2", "gone", None, None)))
    src = NamingSource()
    assert isinstance(src, NamesContainers) and not isinstance(BatchListSource([]), NamesContainers)
    att, got = attribution(topo, src)
    try:
        assert got is topo and src.names == {4026532001: "web"}
        assert isinstance(att.notices, list)
    finally:
        att.close()


def test_discovery_runs_on_its_own_thread_and_hands_over_or_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    """live's Discovery: attribution() on another thread, begun before the source attaches;
    result() names the source's containers and hands the annotator over, an error is raised
    on the caller's thread, and an annotator nobody took is closed."""
    import threading

    import tracer.pipeline as pipeline
    from tracer.topology import Container, Topology

    topo = Topology(namespaces=(), containers=(Container("id1", "web", 4026532001, 1),))

    class Att:
        closed = 0

        def close(self) -> None:
            self.closed += 1

    threads: list[str] = []

    def fake(topo_: Any = None, source: object = None) -> tuple[Any, Topology]:
        threads.append(threading.current_thread().name)
        return Att(), topo

    monkeypatch.setattr(pipeline, "attribution", fake)
    taken = pipeline.Discovery()
    src = NamingSource()
    att, got = taken.result(src)
    taken.close()  # after result(): the annotator is the caller's to close
    assert got is topo and src.names == {4026532001: "web"} and att.closed == 0
    assert threads == ["hoptrace-discovery"]

    left = pipeline.Discovery()
    left.close()  # the source failed to start: nobody takes it
    left.close()
    assert left._answer is not None and left._answer[0].closed == 1

    def broken(topo_: Any = None, source: object = None) -> tuple[Any, Topology]:
        raise PermissionError("no netlink")

    monkeypatch.setattr(pipeline, "attribution", broken)
    with pytest.raises(PermissionError, match="no netlink"):
        pipeline.Discovery().result(src)


def test_the_live_sources_declare_what_live_asks_of_them() -> None:
    from probes.skb_hops import EbpfSource
    from tracer.sources.taps import TapSource

    ebpf = EbpfSource(netns={5, 6})
    taps = TapSource(["host/eth0"])
    assert isinstance(ebpf, LiveSource) and isinstance(taps, LiveSource)
    assert isinstance(ebpf, NamesContainers) and not isinstance(taps, NamesContainers)
    assert (ebpf.traced_netns, taps.traced_netns) == (frozenset({5, 6}), frozenset())
    assert (taps.attachments().count, taps.attachments().what) == (0, "taps")


def test_core_filter_asks_libpcap_per_link_type() -> None:
    from tracer.libpcap import compile_insns
    from tracer.pipeline import core_filter

    assert core_filter(None) is None and core_filter("") is None
    with pytest.raises(FilterError):
        core_filter("hots 1.2.3.4")  # before any file is opened
    program = core_filter("ether host 02:42:ac:11:00:02")
    assert program is not None
    assert program(1) == compile_insns("ether host 02:42:ac:11:00:02", 1)
    assert program(101) is None  # raw IP has no MAC addresses: never a match


def test_a_core_run_opens_the_files_and_names_the_cores_errors() -> None:
    from tracer.pipeline import CoreRun

    with CoreRun([FIXTURE], [], "icmp", "replay") as run:
        assert run.program is not None and len(run.source.core_inputs()) == 1
        assert run.on_batch is None  # stderr is no terminal here: no progress line to feed
        assert run.before_write(StringIO()) is None
        assert run.progress() == (0, run.source.progress()[1])
    assert run.error(None) is None
    err = run.error((0, "truncated record"))
    assert isinstance(err, CaptureFileError) and err.message == f"{FIXTURE}: truncated record"
