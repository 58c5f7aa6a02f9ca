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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracer.errors import CaptureFileError, HoptraceError

if TYPE_CHECKING:
    from tracer.attribution import Attributor
    from tracer.engine import Engine, Event
    from tracer.filter import PathFilter
    from tracer.model import ObsBatch, Stats
    from tracer.output import Sink
    from tracer.protocols import Annotator, BatchHook, Recorder
    from tracer.source import Source
    from tracer.topology import Topology


def compile_filter(expr: str | None) -> PathFilter | None:
    """``--filter EXPR`` compiled (a bad one is a FilterError, exit 2): before anything is
    attached or opened, so a typo costs nothing."""
    if not expr:
        return None
    from tracer.filter import PathFilter

    return PathFilter(expr)


def attribution(topo: Topology | None = None, source: object = None) -> tuple[Attributor, Topology]:
    """The attribution annotator (inferred NAT rules, conntrack entries: tracer.attribution)
    over ``topo``, discovered when None, and that topology. A started ``source`` that names
    hops itself (``NamesContainers``) gets the topology's container names."""
    from tracer.attribution import annotator
    from tracer.protocols import NamesContainers
    from tracer.topology import Topology

    if topo is None:
        topo = Topology.discover()
    if isinstance(source, NamesContainers):
        # container names for the hop labels, when the Docker API answered
        source.name_containers({c.netns: c.name for c in topo.containers if c.netns and c.name})
    return annotator(topo), topo


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
    #: Called with each batch (a progress line over files).
    progress: BatchHook | None = None
    count: int | None = None
    duration_s: float | None = None
    #: A capture file's error ends the input; it waits in ``Pipeline.error`` (files only).
    hold_errors: bool = False


class PipelineSource:
    """The config's source as the engine sees it: started once, teaching the path filter each
    new hop's link type, holding a capture error back when asked. A ``tracer.source.Source``
    and a ``tracer.protocols.HoldsError``."""

    def __init__(self, inner: Source, *, started: bool = False, path_filter: PathFilter | None = None,
                 hold_errors: bool = False) -> None:
        self.inner = inner
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

    def batches(self) -> Iterator[ObsBatch]:
        if not self._hold:
            yield from self._taught(self.inner.batches())
            return
        try:
            yield from self._taught(self.inner.batches())
        except CaptureFileError as exc:
            self.error = exc

    def _taught(self, batches: Iterator[ObsBatch]) -> Iterator[ObsBatch]:
        flt = self._filter
        for batch in batches:
            if flt is not None and len(batch.hops) > self._told:
                for h in batch.hops[self._told:]:
                    flt.learn_linktype(h.node, h.iface, h.linktype)
                self._told = len(batch.hops)
            yield batch


class Pipeline:
    """A built pipeline: ``run(sinks)`` drives it into sinks (the CLI), ``events()`` hands its
    batches of finished paths and flows to a caller (the TUI, report, probe), ``stop()``
    from any thread ends it with every open path flushed."""

    def __init__(self, config: PipelineConfig, source: PipelineSource, engine: Engine) -> None:
        self.config = config
        self.source = source
        self.engine = engine

    @property
    def recorder(self) -> Recorder | None:
        return self.config.recorder

    @property
    def error(self) -> HoptraceError | None:
        """The capture error held back (``hold_errors``), to raise once the output is out."""
        return self.source.error

    def events(self) -> Iterator[list[Event]]:
        return self.engine.events()

    def run(self, sinks: Sequence[Sink]) -> Stats:
        """The engine into ``sinks``, stats last (tracer.engine.run)."""
        from tracer.engine import run

        return run(self.engine, sinks)

    def stats(self) -> Stats:
        return self.engine.stats()

    def stop(self) -> None:
        self.engine.stop()


def build(config: PipelineConfig) -> Pipeline:
    """The pipeline ``config`` describes; nothing starts until it runs."""
    from tracer.engine import Engine

    source = PipelineSource(config.source, started=config.source_started, path_filter=config.path_filter,
                            hold_errors=config.hold_errors)
    engine = Engine(source, path_filter=config.path_filter, annotators=config.annotators, count=config.count,
                    duration_s=config.duration_s)
    hooks: list[BatchHook] = []
    if config.recorder is not None:
        hooks.append(config.recorder.on_batch)
    if config.progress is not None:
        hooks.append(config.progress)
    engine.batch_hooks.extend(hooks)
    return Pipeline(config, source, engine)


__all__ = ["Pipeline", "PipelineConfig", "PipelineSource", "attribution", "build", "compile_filter"]
