"""The reference engine: source -> tests/reference/correlate.py -> (filter, annotators) -> events.

What tracer/engine.py (on the core: ``_core.Stream``) is held to, byte for byte, in the
simplest correct form: each batch fed to the reference correlator (an empty one only moves
its clock, if it carries one) and the flows taken after it; the end of input, ``count``
paths, ``duration_s`` or ``stop()`` ends it with the open paths flushed in slices of
``FLUSH_SLICE``, then the flows. A path the filter does not keep is not shown or counted
(it still took its number and flow); annotators run on each shown path; a flow lists the
shown paths only (none: no flow), with the first conntrack entry an annotator found on
them. If the source fails (an unreadable file), what was found before is handed out
first and the error raised after it. ``NdjsonSink`` writes CONTRACT.md's lines by
``json.dumps`` (tests/reference/render.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from tests.reference.correlate import Correlator
from tests.reference.render import flow_json, line, path_json, stats_json
from tracer.model import Flow, ObsBatch, PacketPath, Stats

if TYPE_CHECKING:
    from typing import TextIO

Annotator = Callable[[PacketPath], PacketPath]
Event = PacketPath | Flow
FLUSH_SLICE = 4096


class PathFilter(Protocol):
    def keep(self, path: PacketPath) -> bool: ...


class Engine:
    """Pulls batches from ``source`` and yields, per batch, the paths and flows that finished."""

    def __init__(self, source: Any, *, path_filter: PathFilter | None = None, annotators: Sequence[Annotator] = (),
                 count: int | None = None, duration_s: float | None = None,
                 correlator: Correlator | None = None) -> None:
        self.source = source
        self.path_filter = path_filter
        self.annotators = list(annotators)
        self.count = count
        self.duration_s = duration_s
        self.correlator = correlator or Correlator()
        self.batch_hooks: list[Callable[[ObsBatch], None]] = []
        self._stop = threading.Event()
        self.observations = 0
        self.paths = 0
        self._t0: float | None = None
        self._t1: float | None = None
        self._shown: set[str] = set()  # shown paths with a flow, until their flow is handed out
        self._flow_ct: dict[str, int] = {}  # flow -> the first conntrack entry its shown paths named

    def stop(self) -> None:
        self._stop.set()
        self.source.stop()

    def stats(self) -> Stats:
        elapsed = 0.0 if self._t0 is None else (self._t1 or time.monotonic()) - self._t0
        return Stats(observations=self.observations, paths=self.paths, lost_events=int(self.source.lost_events),
                     elapsed_s=elapsed)

    def _counted_out(self) -> bool:
        return self.count is not None and self.paths >= self.count

    def _done(self) -> bool:
        return self._stop.is_set() or self._counted_out() or (
            self.duration_s is not None and self._t0 is not None and time.monotonic() - self._t0 >= self.duration_s)

    def _events(self, paths: list[PacketPath], flows: list[Flow]) -> list[Event]:
        out: list[Event] = []
        for p in paths:
            if self._counted_out():
                break
            if self.path_filter is not None and not self.path_filter.keep(p):
                continue
            for annotate in self.annotators:
                p = annotate(p)
            self.paths += 1
            if p.flow is not None:
                self._shown.add(p.id)
                ct = next((ev.conntrack.id for ev in p.nat if ev.conntrack is not None and ev.conntrack.id is not None),
                          None)
                if ct is not None:
                    self._flow_ct.setdefault(p.flow, ct)
            out.append(p)
        for f in flows:
            shown = tuple(pid for pid in f.paths if pid in self._shown)
            self._shown.difference_update(f.paths)
            ct = self._flow_ct.pop(f.id, f.conntrack_id)
            if shown:
                out.append(Flow(id=f.id, proto=f.proto, original=f.original, reply=f.reply, paths=shown,
                                conntrack_id=ct))
        return out

    def _flush(self) -> Iterator[list[Event]]:
        corr = self.correlator
        paths = corr.flush(FLUSH_SLICE)
        while True:
            more = corr.flush(FLUSH_SLICE) if paths else []
            if not more:
                yield self._events(paths, corr.take_flows())
                return
            yield self._events(paths, [])
            paths = more

    def events(self) -> Iterator[list[Event]]:
        corr = self.correlator
        self._t0, self._t1 = time.monotonic(), None
        self.source.start()
        try:
            batches = iter(self.source.batches())
            while not self._done():
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except BaseException:
                    yield from self._flush()  # what was found before the damage, then the damage
                    raise
                self.observations += len(batch)
                for hook in self.batch_hooks:
                    hook(batch)
                if len(batch):
                    paths = corr.feed_batch(batch)
                else:
                    paths = corr.advance(batch.now_ns) if batch.now_ns is not None else []
                yield self._events(paths, corr.take_flows())
            yield from self._flush()
        finally:
            self._t1 = time.monotonic()
            self.source.stop()


class Sink(Protocol):
    def on_path(self, path: PacketPath) -> None: ...
    def on_flow(self, flow: Flow) -> None: ...
    def on_stats(self, stats: Stats) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def run(engine: Engine, sinks: Sequence[Sink]) -> Stats:
    """Drive ``engine`` into ``sinks``, flushed after each batch; the stats go last, also when
    the source failed."""
    try:
        for events in engine.events():
            for ev in events:
                for s in sinks:
                    if isinstance(ev, PacketPath):
                        s.on_path(ev)
                    else:
                        s.on_flow(ev)
            for s in sinks:
                s.flush()
    finally:
        stats = engine.stats()
        try:
            for s in sinks:
                s.on_stats(stats)
        finally:
            for s in sinks:
                s.close()
    return stats


class NdjsonSink:
    """One JSON object per line (CONTRACT.md), by ``json.dumps``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def on_path(self, path: PacketPath) -> None:
        self.stream.write(line(path_json(path)) + "\n")

    def on_flow(self, flow: Flow) -> None:
        self.stream.write(line(flow_json(flow)) + "\n")

    def on_stats(self, stats: Stats) -> None:
        self.stream.write(line(stats_json(stats.observations, stats.paths, stats.lost_events, stats.elapsed_s)) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


__all__ = ["Annotator", "Engine", "Event", "NdjsonSink", "run"]
