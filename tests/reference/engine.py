"""The Python engine, the reference tracer/engine.py (on the core) is held to byte for byte.

What tracer/engine.py was before the core ran every command: tracer/correlate.py's
``Correlator`` with its line templates (``render_lines``), the path filter's ``keep`` and the
annotators run per path in Python. ``NdjsonSink`` here is the NDJSON sink of those days
(lines as str, ``on_rendered``).

Source -> correlator -> (annotators, filter) -> events.

Pure Python and single-threaded: the CLI runs it in the main thread, the TUI in
a worker thread (``stop()`` is the only call made from another thread).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from tracer.correlate import Correlator
from tracer.model import Flow, NatEvent, ObsBatch, Observation, PacketPath, Stats
from tracer.output import Rendered, flow_json, path_line, stats_json, write_all

if TYPE_CHECKING:
    from typing import TextIO

    from tracer.output import Sink
    from tracer.source import Source

Annotator = Callable[[PacketPath], PacketPath]
_FLUSH_SLICE = 4096
Event = PacketPath | Flow | Rendered


class _PathFilter(Protocol):
    def keep(self, path: PacketPath) -> bool: ...


class Engine:
    """Pulls batches from ``source`` and yields, per batch, the paths and flows that finished.

    ``events()`` ends at the end of input, after ``count`` paths, after
    ``duration_s`` seconds, or after ``stop()``; it always ends with the paths
    still open (flushed). If the source fails (an unreadable file), the paths
    found so far are yielded first and the error is raised after them.
    """

    def __init__(
        self,
        source: Source,
        *,
        path_filter: _PathFilter | None = None,
        annotators: Sequence[Annotator] = (),
        count: int | None = None,
        duration_s: float | None = None,
        correlator: Correlator | None = None,
    ) -> None:
        self.source = source
        self.path_filter = path_filter
        self.annotators = list(annotators)
        self.count = count
        self.duration_s = duration_s
        self.correlator = correlator or Correlator()
        self.batch_hooks: list[Callable[[ObsBatch], None]] = []
        self._stop = threading.Event()
        self._observations = 0
        self._paths = 0
        self._t0: float | None = None
        self._t1: float | None = None
        # Flows name only the paths that were kept (the filter may drop some).
        self._kept: set[str] = set()
        # flow id -> the conntrack entry an annotator found on one of its paths' NAT events.
        self._flow_ct: dict[str, int] = {}
        self._annotated = False  # the correlator annotates (render_lines)

    def stop(self) -> None:
        """Thread-safe: the current batch finishes, open paths are flushed, ``events()`` ends."""
        self._stop.set()
        self.source.stop()

    def stats(self) -> Stats:
        t0 = self._t0
        elapsed = 0.0 if t0 is None else (self._t1 or time.monotonic()) - t0
        return Stats(observations=self._observations, paths=self._paths,
                     lost_events=int(self.source.lost_events), elapsed_s=elapsed)

    def _done(self) -> bool:
        if self._stop.is_set():
            return True
        if self.count is not None and self._paths >= self.count:
            return True
        return (self.duration_s is not None and self._t0 is not None
                and time.monotonic() - self._t0 >= self.duration_s)

    def render_lines(self) -> bool:
        """Hand out finished paths as NDJSON lines (``Rendered``) when nothing downstream needs
        them as objects: the path filter (if any) can judge rows (``keep_row``), and every
        annotator can tell when its answers may have changed (``generation``). The correlator then renders repeated path shapes from
        templates. True if turned on; call before ``events()``."""
        filt = self.path_filter
        if filt is not None and not hasattr(filt, "keep_row"):
            return False
        if not all(hasattr(a, "generation") for a in self.annotators):
            return False
        self.correlator.render_lines(_Annotate(self.annotators), filt)  # type: ignore[arg-type]
        self._annotated = True
        return True

    def _events(self, paths: list[PacketPath], flows: list[Flow]) -> list[Event]:
        out: list[Event] = []
        annotators = () if self._annotated else self.annotators
        for p in paths:
            if self.count is not None and self._paths >= self.count:
                break
            if p is None:  # filtered out by the correlator (render_lines)
                continue
            if type(p) is Rendered:  # filtered and annotated already (render_lines)
                r: Rendered = p
                self._paths += 1
                if r.flow is not None:
                    self._kept.add(r.id)
                    if r.conntrack_id is not None:
                        self._flow_ct.setdefault(r.flow, r.conntrack_id)
                out.append(r)
                continue
            if self.path_filter is not None and not self.path_filter.keep(p):
                continue
            for annotate in annotators:
                p = annotate(p)
            self._paths += 1
            if p.flow is not None:
                self._kept.add(p.id)
                for ev in p.nat:
                    if ev.conntrack is not None and ev.conntrack.id is not None:
                        self._flow_ct.setdefault(p.flow, ev.conntrack.id)
            out.append(p)
        kept = self._kept
        for f in flows:
            ids = tuple(pid for pid in f.paths if pid in kept)
            kept.difference_update(f.paths)
            ct = self._flow_ct.pop(f.id, f.conntrack_id)
            if not ids:
                continue
            if len(ids) != len(f.paths) or ct != f.conntrack_id:
                f = Flow(id=f.id, proto=f.proto, original=f.original, reply=f.reply, paths=ids,
                         conntrack_id=ct)
            out.append(f)
        return out

    def _flush(self) -> Iterator[list[Event]]:
        """The paths still open, in slices: the end of a big input is streamed too."""
        corr = self.correlator
        paths = corr.flush(_FLUSH_SLICE)
        while True:
            more = corr.flush(_FLUSH_SLICE) if paths else []
            if not more:
                yield self._events(paths, corr.take_flows())
                return
            yield self._events(paths, [])
            paths = more

    def events(self) -> Iterator[list[Event]]:
        corr = self.correlator
        self._t0 = time.monotonic()
        self._t1 = None
        self.source.start()
        try:
            batches = iter(self.source.batches())
            while not self._done():
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except BaseException:
                    # Print what was found before the damage, then report it.
                    yield from self._flush()
                    raise
                self._observations += len(batch)
                for hook in self.batch_hooks:
                    hook(batch)
                paths = corr.feed_batch(batch) if len(batch) else (
                    corr.advance(batch.now_ns) if batch.now_ns is not None else [])
                yield self._events(paths, corr.take_flows())
            yield from self._flush()
        finally:
            self._t1 = time.monotonic()
            self.source.stop()


class _Annotate:
    """The engine's annotators as the correlator's ``LineRenderer``."""

    def __init__(self, annotators: Sequence[Annotator]) -> None:
        self.annotators = list(annotators)
        # Counters an annotator keeps per path (Attributor.without_conntrack): a path rendered
        # from a template adds what the path it was made from added.
        self._counted = [a for a in self.annotators if isinstance(getattr(a, "without_conntrack", None), int)]
        self._volatile = [a for a in self.annotators if hasattr(a, "volatile")]

    def annotate(self, path: PacketPath) -> PacketPath:
        for a in self.annotators:
            path = a(path)
        return path

    def generation(self) -> object:
        return tuple(a.generation for a in self.annotators)  # type: ignore[attr-defined]

    def volatile(self, hops: Sequence[Observation], nat: Sequence[NatEvent]) -> object:
        if not self._volatile:
            return None
        return tuple(a.volatile(hops, nat) for a in self._volatile)  # type: ignore[attr-defined]

    def counters(self) -> tuple[int, ...]:
        return tuple(a.without_conntrack for a in self._counted)  # type: ignore[attr-defined]

    def effects(self, before: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(n - b for n, b in zip(self.counters(), before, strict=True))

    def replay(self, effects: tuple[int, ...]) -> None:
        for a, d in zip(self._counted, effects, strict=True):
            if d:
                a.without_conntrack += d  # type: ignore[attr-defined]


# gen0 threshold for the CLI pipelines (CPython's default: 700). See gc_policy().
_GC_GEN0 = 100_000


@contextmanager
def gc_policy() -> Iterator[None]:
    """CPython's cyclic GC tuned for a CLI pipeline (replay, report, live without the TUI).

    The data (rows, paths, NDJSON strings) is acyclic: refcounting frees it. But the
    default gen0 threshold (700 allocations) makes the collector re-scan the open
    window and everything start-up imported (numpy, scapy, ...) hundreds of times:
    ~20% of replay's CPU. So start-up's objects are frozen (never scanned again), and
    collections run every 100k net allocations instead of 700 — still collections,
    so the rare cycle (an exception's traceback) is freed and memory stays bounded.
    Not for the TUI, which has its own policy (tui/heap.py) in the main thread.
    """
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_GEN0, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def run(engine: Engine, sinks: Sequence[Sink]) -> Stats:
    """Drive ``engine`` into ``sinks``; the stats go last, also when the source failed.

    Runs under ``gc_policy()``.
    """
    if sinks and all(hasattr(s, "on_rendered") for s in sinks):
        engine.render_lines()
    with gc_policy():
        return _run(engine, sinks)


def _run(engine: Engine, sinks: Sequence[Sink]) -> Stats:
    try:
        for events in engine.events():
            if not events:
                continue
            for ev in events:
                if type(ev) is Rendered:
                    for s in sinks:
                        s.on_rendered(ev)  # type: ignore[attr-defined]
                elif isinstance(ev, PacketPath):
                    for s in sinks:
                        s.on_path(ev)
                else:
                    for s in sinks:
                        s.on_flow(ev)  # type: ignore[arg-type]
            for s in sinks:
                s.flush()  # once per batch: what finished is out within the batch interval
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
    """One JSON object per line, as str (with ``on_rendered``: the correlator's templates)."""

    def __init__(self, stream: TextIO) -> None:
        import json

        self.stream = stream
        self._dumps = json.JSONEncoder(separators=(", ", ": ")).encode
        self._buf: list[str] = []

    def on_path(self, path: PacketPath) -> None:
        self._buf.append(path_line(path) + "\n")

    def on_rendered(self, path: Rendered) -> None:
        self._buf.append(path.line)

    def on_flow(self, flow: Flow) -> None:
        self._buf.append(self._dumps(flow_json(flow)) + "\n")

    def flush(self) -> None:
        if self._buf:
            text = "".join(self._buf)
            self._buf.clear()
            write_all(self.stream, text)
        self.stream.flush()

    def on_stats(self, stats: Stats) -> None:
        self._buf.append(self._dumps(stats_json(stats)) + "\n")
        self.flush()

    def close(self) -> None:
        self.flush()


__all__ = ["Annotator", "Engine", "Event", "NdjsonSink", "gc_policy", "run"]
