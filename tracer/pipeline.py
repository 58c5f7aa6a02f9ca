"""The one pipeline every command builds: source -> engine -> sinks, configured before start.

live, replay, report, probe and the lab demo fill a ``PipelineConfig`` (the source, the
``--filter`` expression compiled, annotators, a recorder, a progress hook, --count,
--duration) and ``build()`` it, as pwru fills its config before load. The built
``Pipeline`` is the engine (tracer.engine.Engine) over the config's source, wrapped once so
that

- the path filter learns each hop's link type as the source first labels it (only the
  source knows it; libpcap compiles the expression per link type);
- a source that the command attached already (the ready file, a probe, the demo) is not
  attached twice when the engine starts;
- with ``hold_errors`` (capture files), a damaged file ends the input cleanly: the paths
  read before the damage come out, then the error waits in ``pipeline.error``.

Nothing here imports the engine, numpy or libpcap until ``build()``/``compile_filter()``
runs: ``replay --json`` (the core's engine) goes without them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from tracer.errors import CaptureFileError, HoptraceError
from tracer.protocols import ReportsProgress

if TYPE_CHECKING:
    from tracer.annotate.attribution import Attributor
    from tracer.engine import Engine, Event, LocalAnswers, RawSocketTable, RingStep, StreamTables
    from tracer.filter import PathFilter
    from tracer.model import HopLabel, ObsBatch, Stats
    from tracer.protocols import Annotator, NatScope, Recorder
    from tracer.sampling import Sampler, SamplingState
    from tracer.sinks.output import Sink
    from tracer.sinks.progress import FileProgress
    from tracer.sources.base import Source
    from tracer.topology import Topology


def compile_filter(expr: str | None) -> PathFilter | None:
    """``--filter EXPR`` compiled (a bad one is a FilterError, exit 2): before anything is
    attached or opened, so a typo costs nothing."""
    if not expr:
        return None
    from tracer.filter import PathFilter

    return PathFilter(expr)


def attribution(topo: Topology | None = None, source: object = None) -> tuple[Attributor, Topology]:
    """The attribution annotator (inferred NAT rules, conntrack entries: tracer.annotate.attribution)
    over ``topo``, discovered when None, and that topology. A started ``source`` that names
    hops itself (``NamesContainers``) gets the topology's container names."""
    from tracer.annotate.attribution import annotator
    from tracer.topology import Topology

    if topo is None:
        topo = Topology.discover()
    name_containers(topo, source)
    return annotator(topo), topo


def name_containers(topo: Topology, source: object) -> None:
    """A started ``source`` that names hops itself (``NamesContainers``) gets the topology's
    container names, when the Docker API answered."""
    from tracer.protocols import NamesContainers

    if isinstance(source, NamesContainers):
        source.name_containers({c.netns: c.name for c in topo.containers if c.netns and c.name})


class Discovery:
    """``attribution()`` on a thread of its own, begun before the source attaches: bcc's
    compile and the kernel's verifier (most of the second before ``live`` is ready) run in C
    without the GIL, so the discovery (~0.25 s of CPU, pyroute2's import most of it) takes
    the other CPU meanwhile instead of the first quarter second of tracing, when nothing
    reads the kernel's ring yet. ``result(source)`` waits for it, names the source's
    containers and hands the annotator over; ``close()`` stops an annotator nobody took (the
    source failed to start) and is a no-op after ``result``."""

    def __init__(self) -> None:
        import threading

        self._answer: tuple[Attributor, Topology] | None = None
        self._error: BaseException | None = None
        self._taken = False
        self._thread = threading.Thread(target=self._run, name="hoptrace-discovery", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._answer = attribution()
        except BaseException as exc:  # re-raised on the caller's thread by result()
            self._error = exc

    def result(self, source: object = None) -> tuple[Attributor, Topology]:
        self._thread.join()
        self._taken = True
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        attributor, topo = self._answer
        name_containers(topo, source)
        return attributor, topo

    def close(self) -> None:
        if self._taken:
            return
        self._taken = True
        self._thread.join()
        if self._answer is not None:
            self._answer[0].close()


def core_filter(expr: str | None) -> Callable[[int], bytes | None] | None:
    """``--filter EXPR`` as the core's engine asks for it: libpcap's program for a link type
    (asked once per new link type, between batches), None where the expression means nothing
    (valid for Ethernet, not for raw IP: never a match). A bad expression fails here, before
    any file is opened; None without a filter."""
    if not expr:
        return None
    from tracer.errors import FilterError
    from tracer.libpcap import compile_insns

    compile_filter(expr)

    def program(linktype: int) -> bytes | None:
        try:
            return compile_insns(expr, linktype)
        except FilterError:
            return None

    return program


class CoreRun:
    """A run of the core's engine over capture files (``tracer._core.replay_ndjson``,
    ``tracer._core.report``), set up as every such command does: the files opened (bad
    names fail here), ``--filter`` as ``core_filter`` gives it, a progress line on stderr
    (a terminal) fed by the core's batches, the core's capture error as a CaptureFileError.
    ``with`` it: the progress line is cleared at the end."""

    def __init__(self, files: Sequence[str], hop_args: Sequence[str], filter_expr: str | None,
                 label: str) -> None:
        from tracer.sinks.progress import FileProgress
        from tracer.sources.files import open_files

        self.program = core_filter(filter_expr)
        self.source = open_files(files, hop_args)
        self.source.start()
        self._bytes_read = 0
        self._meter = FileProgress(self, label)

    def progress(self) -> tuple[int, int]:
        """Bytes read (as the core reports them), of the inputs' size (``ReportsProgress``)."""
        return self._bytes_read, self.source.progress()[1]

    @property
    def on_batch(self) -> Callable[[int, int], None] | None:
        """What the core calls after each batch (records, bytes read); None without a line."""
        return None if self._meter.line is None else self._on_batch

    def _on_batch(self, records: int, bytes_read: int) -> None:
        self._bytes_read = bytes_read
        self._meter.add(records)

    def before_write(self, stream: TextIO) -> Callable[[], None] | None:
        """What the core calls before it writes to ``stream``: the progress line taken back
        when both are the same terminal."""
        line = self._meter.line
        return line.clear if line is not None and stream.isatty() else None

    def error(self, got: tuple[int, str] | None) -> CaptureFileError | None:
        """The core's (input index, problem) as the one line a user sees."""
        if got is None:
            return None
        index, problem = got
        return CaptureFileError(f"{self.source.input_path(index)}: {problem}")

    def __enter__(self) -> CoreRun:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._meter.clear()


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Everything a pipeline runs with, fixed before it starts."""

    source: Source
    #: The source is attached already: the engine's start must not attach it again.
    source_started: bool = False
    path_filter: PathFilter | None = None
    annotators: tuple[Annotator, ...] = ()
    #: Every batch to a capture file (``--record``); closed by whoever made it.
    recorder: Recorder | None = None
    #: A progress line on stderr (when it is a terminal) labelled so, over a source that knows
    #: how far it is (``ReportsProgress``: files); cleared when the run ends.
    progress_label: str | None = None
    count: int | None = None
    duration_s: float | None = None
    #: A capture file's error ends the input; it waits in ``Pipeline.error`` (files only).
    hold_errors: bool = False
    #: ``live --sample``: one packet path in N (tracer.sampling), in the source when it can.
    sampler: Sampler | None = None
    #: ``live --max-cpu``: percent of one core; over it the sampler's rate goes up (None: no budget).
    max_cpu_pct: float | None = None
    #: Who took the packets of paths that ended locally (live: tracer.annotate.local.LocalWorker).
    local: LocalAnswers | None = None
    #: Where and when raw ICMP sockets were open (live: tracer.annotate.raw_sockets.RawSocketWatch).
    raw_sockets: RawSocketTable | None = None
    #: Live: where NAT can rewrite a header (the join accepts a rewrite only there); None: in
    #: any namespace, as in replay.
    nat_scope: NatScope | None = None


class PipelineSource:
    """The config's source as the engine sees it: started once, teaching the path filter each
    new hop's link type, holding a capture error back when asked. A ``tracer.sources.base.Source``
    and a ``tracer.protocols.HoldsError``. With a ``sampler`` that the source cannot take itself,
    each batch is sampled here, before the engine, the recorder or the filter see it."""

    def __init__(self, inner: Source, *, started: bool = False, path_filter: PathFilter | None = None,
                 hold_errors: bool = False, sampler: Sampler | None = None) -> None:
        self.inner = inner
        self.sampler = sampler
        self.kind = inner.kind
        self.error: CaptureFileError | None = None
        self._started = started
        self._filter = path_filter
        self._hold = hold_errors
        self._told = 0  # hops whose link type the filter was told (sources only append hops)

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    @property
    def lost_events(self) -> int:
        return int(self.inner.lost_events)

    def sampling(self) -> SamplingState | None:
        return None if self.sampler is None else self.sampler.state()

    def batches(self) -> Iterator[ObsBatch]:
        if not self._hold:
            yield from self._taught(self.inner.batches())
            return
        try:
            yield from self._taught(self.inner.batches())
        except CaptureFileError as exc:
            self.error = exc

    def stream_steps(self, stream: Any, tables: StreamTables,
                     batch_mode: Callable[[], bool]) -> Iterator[ObsBatch | RingStep] | None:
        """The source's own ``stream_steps`` (tracer.engine ``FeedsStream``) when it has them and
        no sampler here works on rows (the source samples itself); None otherwise. The path
        filter learns each new hop's link type before the core asks for its program."""
        inner = getattr(self.inner, "stream_steps", None)
        if inner is None or self._hold or (self.sampler is not None and not self.sampler.attach(self.inner)):
            return None
        steps = inner(stream, _Teaching(self, tables), batch_mode)
        return None if steps is None else self._taught_steps(steps)

    def _taught_steps(self, steps: Iterator[ObsBatch | RingStep]) -> Iterator[ObsBatch | RingStep]:
        for step in steps:
            if not isinstance(step, tuple):
                if self.sampler is not None:
                    step = self.sampler.apply(step)
                self._teach(step.hops)
            yield step

    def _taught(self, batches: Iterator[ObsBatch]) -> Iterator[ObsBatch]:
        sampler = self.sampler
        for batch in batches:
            if sampler is not None:
                batch = sampler.apply(batch)
            self._teach(batch.hops)
            yield batch

    def _teach(self, hops: list[HopLabel]) -> None:
        flt = self._filter
        if flt is not None and len(hops) > self._told:
            for h in hops[self._told:]:
                flt.learn_linktype(h.node, h.iface, h.linktype)
            self._told = len(hops)


class _Teaching:
    """The engine's ``StreamTables`` with the path filter taught each new hop's link type first."""

    def __init__(self, source: PipelineSource, tables: StreamTables) -> None:
        self.source = source
        self.tables = tables

    def learn(self, hops: list[HopLabel]) -> None:
        self.source._teach(hops)
        self.tables.learn(hops)

    def name_reasons(self, reasons: dict[int, str]) -> None:
        self.tables.name_reasons(reasons)


class Pipeline:
    """A built pipeline: ``run(sinks)`` drives it into sinks (the CLI), ``events()`` hands its
    batches of finished paths and flows to a caller (the TUI, report, probe), ``stop()``
    from any thread ends it with every open path flushed."""

    def __init__(self, config: PipelineConfig, source: PipelineSource, engine: Engine,
                 progress: FileProgress | None = None) -> None:
        self.config = config
        self.source = source
        self.engine = engine
        self.progress = progress

    @property
    def recorder(self) -> Recorder | None:
        return self.config.recorder

    @property
    def error(self) -> HoptraceError | None:
        """The capture error held back (``hold_errors``), to raise once the output is out."""
        return self.source.error

    def output(self, stream: TextIO) -> TextIO:
        """``stream`` for a sink: one that takes the progress line back before each write when
        both go to the same terminal."""
        return stream if self.progress is None else self.progress.output(stream)

    def events(self) -> Iterator[list[Event]]:
        try:
            yield from self.engine.events()
        finally:
            self._clear()

    def run(self, sinks: Sequence[Sink]) -> Stats:
        """The engine into ``sinks``, stats last (tracer.engine.run)."""
        from tracer.engine import run

        try:
            return run(self.engine, sinks)
        finally:
            self._clear()

    def _clear(self) -> None:
        if self.progress is not None:
            self.progress.clear()

    def stats(self) -> Stats:
        return self.engine.stats()

    def stop(self) -> None:
        self.engine.stop()


def build(config: PipelineConfig) -> Pipeline:
    """The pipeline ``config`` describes; nothing starts until it runs."""
    from tracer.engine import Engine, RecordsLocal

    sampler = config.sampler
    if sampler is None and config.max_cpu_pct:
        from tracer.sampling import Sampler

        sampler = Sampler()
    if sampler is not None:
        sampler.attach(config.source)
    source = PipelineSource(config.source, started=config.source_started, path_filter=config.path_filter,
                            hold_errors=config.hold_errors, sampler=sampler)
    engine = Engine(source, path_filter=config.path_filter, annotators=config.annotators, count=config.count,
                    duration_s=config.duration_s, local=config.local, raw_sockets=config.raw_sockets,
                    nat_scope=config.nat_scope)
    if sampler is not None and config.max_cpu_pct:
        from tracer.sampling import CpuBudget

        engine.batch_hooks.append(CpuBudget(sampler, config.max_cpu_pct, lost=lambda: source.lost_events))
    if config.recorder is not None:
        engine.batch_hooks.append(config.recorder.on_batch)
        if isinstance(config.recorder, RecordsLocal):
            engine.local_hooks.append(config.recorder)
    progress = None
    if config.progress_label is not None and isinstance(config.source, ReportsProgress):
        from tracer.sinks.progress import FileProgress

        progress = FileProgress(config.source, config.progress_label)
        engine.batch_hooks.append(progress)
    return Pipeline(config, source, engine, progress)


__all__ = ["CoreRun", "Pipeline", "PipelineConfig", "PipelineSource", "attribution", "build", "compile_filter",
           "core_filter"]
