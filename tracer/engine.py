"""Source -> the core's engine (``tracer._core.Stream``) -> sinks; the one loop every command shares.

The core joins sightings into paths, finishes them (NAT events, verdicts, flows), applies
the path filter and the count, and renders each batch's output as NDJSON lines. An NDJSON
sink takes those bytes as they are (``NdjsonLines``); the TUI, text output, ``probe``,
``report`` and ``lab demo`` get row views (``PacketPath.from_json``) built from them.

Single-threaded: the CLI runs it in the main thread, the TUI in a worker thread
(``stop()`` is the only call made from another thread).
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from tracer.model import Flow, HopLabel, ObsBatch, PacketPath, Stats

if TYPE_CHECKING:
    import numpy as np

    from tracer.flow_view import FlowTable
    from tracer.protocols import NatScope
    from tracer.sinks.output import Sink, TextOptions
    from tracer.sources.base import Source

Annotator = Callable[[PacketPath], PacketPath]
Event = PacketPath | Flow
#: A step a source fed the core's stream itself (``FeedsStream``): the sightings fed, then the
#: stream's output as ``Stream.feed`` returns it (NDJSON, its line index, the hops' extras).
RingStep = tuple[int, bytes, "np.ndarray[Any, Any]", "np.ndarray[Any, Any]"]

# Line kinds in a step's index (crates/hoptrace-py/src/stream.rs).
PATH_LINE, FLOW_LINE = 0, 1
LINKTYPE_RAW = 101  # frames that start at the IP header


class FramePrograms(Protocol):
    """A path filter as the core runs it: per link type, the program its frames are matched by
    (tracer/filter.py ``PathFilter``). A path is shown when any of its sightings matches."""

    def insns(self, linktype: int) -> bytes | None:
        """libpcap's ``struct bpf_insn`` bytes for frames of ``linktype``; None: never a match."""
        ...


@runtime_checkable
class TableAnnotator(Protocol):
    """An annotator whose answers the core keeps in tables (hoptrace_core::annotate): what it
    says of a path depends only on the path's shape (per hop its node, interface, namespace,
    ifindex, direction and ICMP echo id, and its IP ID when ``per_packet``; the NAT events)
    and on tables that change only when ``generation`` does. The core asks ``annotate`` once
    per shape not seen (a step's misses at once) and reuses the answer; with
    ``provisional(path)`` true (a table may still learn what it lacks: a conntrack entry)
    it asks again at the next step. ``without_conntrack``: NAT events it found no conntrack
    entry for, counted per path shown."""

    without_conntrack: int

    @property
    def generation(self) -> int: ...

    @property
    def per_packet(self) -> bool: ...

    def annotate(self, path: PacketPath) -> PacketPath: ...

    def provisional(self, path: PacketPath) -> bool: ...


class LocalAnswers(Protocol):
    """Who took the packets of paths that ended locally (tracer/annotate/local.py ``LocalWorker``):
    the core reports each key it has not seen as a miss record; ``submit`` takes a step's,
    ``take`` hands back the answers found since, ``(slot, epoch, json, text, record)`` each,
    off the hot path; ``settle`` waits (bounded) for what is pending, at the end of input."""

    def submit(self, misses: bytes) -> None: ...

    def take(self) -> list[tuple[int, int, bytes, bytes, bytes]]: ...

    def settle(self, timeout_s: float) -> None: ...


class RawSocketTable(Protocol):
    """Where and when raw ICMP sockets were open (tracer/annotate/raw_sockets.py ``RawSocketWatch``):
    ``spans()`` gives ``(netns, from_ns, to_ns)`` rows, ``generation`` changes when they do."""

    @property
    def generation(self) -> int: ...

    def spans(self) -> list[tuple[int, int, int]]: ...


@runtime_checkable
class RecordsRawSockets(Protocol):
    """A batch hook's owner (a recorder) that keeps the raw socket spans: called with every
    span (``RawSocketTable.spans``) each time they changed."""

    def on_raw_sockets(self, spans: list[tuple[int, int, int]]) -> None: ...


class _RawSockets:
    """The core's raw socket table, told only when the watch's spans changed (and the
    recorder among ``hooks``, when they differ from what it was told last)."""

    def __init__(self, table: RawSocketTable, stream: Any, hooks: list[Any] | None = None) -> None:
        self.table = table
        self.stream = stream
        self.seen: int | None = None
        self.hooks = [h for h in hooks or [] if isinstance(h, RecordsRawSockets)]
        self.told: list[tuple[int, int, int]] | None = None

    def refresh(self) -> None:
        gen = self.table.generation
        if gen != self.seen:
            self.seen = gen
            spans = self.table.spans()
            self.stream.set_raw_sockets(spans)
            if self.hooks and spans != self.told:
                self.told = spans
                for h in self.hooks:
                    h.on_raw_sockets(spans)


@runtime_checkable
class RelayAnswers(Protocol):
    """A ``LocalAnswers`` that also links the two legs of connections a userland proxy relayed
    (tracer/annotate/relay.py ``RelayWorker``): ``take_relays`` hands back the pairs found
    since, ``(inbound, outbound, by, text_in, text_out)`` each (``Stream.add_relays``)."""

    def take_relays(self) -> list[tuple[Any, ...]]: ...


@runtime_checkable
class RecordsLocal(Protocol):
    """A batch hook's owner (a recorder) that keeps what ``LocalAnswers`` found: one call per
    step that had answers, ``(record, json, text)`` each (``record``: the miss, i.e. the key)."""

    def on_local(self, answers: list[tuple[bytes, bytes, bytes]]) -> None: ...


@runtime_checkable
class RecordsRelays(Protocol):
    """A recorder that keeps the relayed connections ``RelayAnswers`` linked (one call per step
    that linked any, as ``Stream.add_relays`` takes them)."""

    def on_relays(self, pairs: list[tuple[Any, ...]]) -> None: ...


class StreamTables(Protocol):
    """What a source that feeds the core itself tells it through the engine (``_Feeder``)."""

    def learn(self, hops: list[HopLabel]) -> None:
        """The source's label table (one list, append-only): labels not told yet are added, in
        order, before any row that points to them is fed."""
        ...

    def name_reasons(self, reasons: dict[int, str]) -> None:
        """Drop reason names by code, for the rows' ``drop_reason``."""
        ...


@runtime_checkable
class FeedsStream(Protocol):
    """A source whose batches the core can take without Python (probes/skb_hops.py: the eBPF
    ring's, ``Stream.feed_ring``). ``stream_steps`` yields per step either a ``RingStep``
    (fed already) or, while ``batch_mode()``, an ObsBatch for the engine to feed; None: not
    now (tracer/pipeline.py: a sampler that works on rows), ``batches()`` then."""

    def stream_steps(self, stream: Any, tables: StreamTables,
                     batch_mode: Callable[[], bool]) -> Iterator[ObsBatch | RingStep] | None: ...


@runtime_checkable
class CountsSightings(Protocol):
    """A batch hook that needs only how many sightings a step had (tracer/sampling.py
    ``CpuBudget``): while every hook is one, a ``FeedsStream`` source feeds the core itself."""

    def tick(self, sightings: int = 0) -> None: ...


@runtime_checkable
class RecordsRing(Protocol):
    """A recorder whose blocks the core can make itself as it feeds a ``FeedsStream`` source's
    steps (tracer/sinks/record.py ``PcapngRecorder``): while its ``on_batch`` is the only batch
    hook that needs rows, the steps stay fed by the core (``Stream.set_recorder`` with its
    ``ring_recorder``), ``ring_sync`` before each step and ``ring_take`` after it."""

    @property
    def ring_active(self) -> bool: ...

    def on_batch(self, batch: ObsBatch) -> None: ...

    def ring_recorder(self, reasons: dict[int, str]) -> Any: ...

    def ring_learn(self, labels: list[HopLabel]) -> None: ...

    def ring_sync(self, labels: list[HopLabel]) -> None: ...

    def ring_take(self) -> None: ...


@runtime_checkable
class TextLines(Protocol):
    """A sink that takes the core's text (blocks and flow lines, tracer/sinks/output.py ``TextSink``)
    as it is, rendered with its ``text_options``."""

    @property
    def text_options(self) -> TextOptions: ...

    def on_text(self, data: bytes) -> None: ...


@runtime_checkable
class NdjsonLines(Protocol):
    """A sink that takes the core's NDJSON lines as they are (tracer/sinks/output.py ``NdjsonSink``)."""

    def on_ndjson(self, data: bytes) -> None: ...


@runtime_checkable
class NdjsonFd(Protocol):
    """An NDJSON sink on a descriptor (a file or a pipe) that the core may write its lines to
    itself, without the GIL: ``output_fd()`` writes what the sink holds and gives the fd
    (None: it has none)."""

    def output_fd(self) -> int | None: ...


@runtime_checkable
class FlowViewLines(Protocol):
    """A sink for people that shows the flow view (tracer/flow_view.py) while paths arrive
    faster than anyone reads, when ``wants_flow_view`` (text on a terminal): meanwhile it
    gets no lines, and ``on_flow_view(table, reason)`` at each refresh, then once with
    ``table`` None when single paths return."""

    @property
    def wants_flow_view(self) -> bool: ...

    def on_flow_view(self, table: FlowTable | None, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Lines:
    """One step's output: NDJSON ``data`` (each line ends with a newline) and its ``index``,
    one ``(offset, length, kind)`` row per line (kind: ``PATH_LINE`` or ``FLOW_LINE``)."""

    data: bytes
    index: np.ndarray[Any, Any]
    #: Per hop of each path line, in line order: ``(ifindex, source, digest, wire_len)``, what
    #: the line does not say (row views carry it).
    hops: np.ndarray[Any, Any] | None = None

    def then(self, other: Lines) -> Lines:
        """These lines followed by ``other``'s."""
        import numpy as np

        moved = other.index.copy()
        moved[:, 0] += len(self.data)
        hops = None if self.hops is None or other.hops is None else np.concatenate([self.hops, other.hops])
        return Lines(self.data + other.data, np.concatenate([self.index, moved]), hops)

    def events(self) -> list[Event]:
        """The row views of the lines (for sinks that need objects)."""
        data = self.data
        out: list[Event] = []
        loads = json.loads
        extras: list[list[int]] = [] if self.hops is None else self.hops.tolist()
        at = 0
        for off, length, kind in self.index.tolist():
            d = loads(data[off:off + length])
            if kind == PATH_LINE:
                n = len(d["hops"]) if extras else 0
                out.append(PacketPath.from_json(d, extras[at:at + n]))
                at += n
            else:
                out.append(Flow.from_json(d))
        return out


def _wtf8(name: str) -> bytes:
    # Names read from captures may carry lone surrogates (surrogateescape): the core takes them
    # as "surrogatepass" UTF-8 and writes them back as json.dumps writes the str.
    return name.encode("utf-8", "surrogatepass")


class Engine:
    """Pulls batches from ``source`` through the core; per batch, what finished.

    ``chunks()`` yields the core's NDJSON per batch, ``events()`` the same as row views. Both
    end at the end of input, after ``count`` paths were shown, after ``duration_s`` seconds,
    or after ``stop()``; they always end with the paths still open (flushed, in slices). If
    the source fails (an unreadable file), the paths found so far come first and the error is
    raised after them.
    """

    def __init__(
        self,
        source: Source,
        *,
        path_filter: FramePrograms | None = None,
        annotators: Sequence[Annotator] = (),
        count: int | None = None,
        duration_s: float | None = None,
        local: LocalAnswers | None = None,
        raw_sockets: RawSocketTable | None = None,
        nat_scope: NatScope | None = None,
    ) -> None:
        self.source = source
        self.local = local
        #: Where raw ICMP sockets were open (live): their replies' NO_SOCKET frees lost nothing.
        self.raw_sockets = raw_sockets
        #: What hears of each step's local answers besides the core (a recorder).
        self.local_hooks: list[RecordsLocal] = []
        # Live: where NAT can rewrite a header, told to the core when it changes (None: anywhere).
        self.nat_scope = nat_scope
        self.path_filter = path_filter
        self.annotators = list(annotators)
        self.count = count
        self.duration_s = duration_s
        self.batch_hooks: list[Callable[[ObsBatch], None]] = []
        self._stop = threading.Event()
        self._observations = 0
        self._t0: float | None = None
        self._t1: float | None = None
        self._stream: Any = None
        self._paths_base = 0  # paths shown by earlier runs of events() (a second call)
        # The stream's path count as the engine's thread last read it: another thread (the
        # TUI's stats tick) cannot read the stream while that thread feeds it (GIL released).
        self._paths_seen = 0
        # The core writes text for people with these options rather than NDJSON (render_text).
        self.text: TextOptions | None = None
        #: Aggregate every shown path per flow in the core too (tracer/flow_view.py), for
        #: ``flow_table()``; set before ``chunks()``.
        self.watch_flows = False
        self.flow_clock: Callable[[], float] = time.monotonic
        self._flow_view: Any = None
        #: The core writes every step's NDJSON to this descriptor itself (``run`` sets it for a
        #: lone NDJSON sink on a file or pipe): ``chunks()`` then yields empty lines. Not with
        #: annotators that are plain functions (they need the lines), text or a flow view.
        self.output_fd: int | None = None
        # The recorder the core records for as it feeds the steps (``_batch_mode``), and the
        # feeder of the current ``chunks()``.
        self._ring_rec: RecordsRing | None = None
        self._feeder: _Feeder | None = None

    def render_text(self, opts: TextOptions) -> bool:
        """Have the core write ``opts``' text instead of NDJSON lines (``chunks()``' data; no
        row views then). False when an annotator needs row views (a plain function)."""
        if self.annotators and not all(isinstance(a, TableAnnotator) for a in self.annotators):
            return False
        self.text = opts
        return True

    def stop(self) -> None:
        """Thread-safe: the current batch finishes, open paths are flushed, ``events()`` ends."""
        self._stop.set()
        self.source.stop()

    def stats(self) -> Stats:
        t0 = self._t0
        elapsed = 0.0 if t0 is None else (self._t1 or time.monotonic()) - t0
        paths = self.shown_paths()
        from tracer.protocols import ReportsSampling

        sampling = self.source.sampling() if isinstance(self.source, ReportsSampling) else None
        return Stats(observations=self._observations, paths=paths,
                     lost_events=int(self.source.lost_events), elapsed_s=elapsed, sampling=sampling)

    def shown_paths(self) -> int:
        """Paths shown so far (cheap: for a rate). From another thread while the engine's
        thread feeds the stream: the count it read after its last step."""
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(RuntimeError):  # borrowed by the feeding thread
                self._paths_seen = int(stream.paths)
        return self._paths_base + self._paths_seen

    def flow_table(self, now: float, limit: int) -> FlowTable | None:
        """The busiest ``limit`` flows over the flow view's window as of ``now`` (seconds of
        the clock ``chunks()`` started the view with: ``time.monotonic`` unless
        ``flow_clock`` says otherwise); None before ``chunks()`` or without ``watch_flows``.
        From the thread that runs ``chunks()``."""
        if self._flow_view is None:
            return None
        from tracer.flow_view import decode_table

        return decode_table(self._flow_view.snapshot(self._stream, int(now * 1e9), limit))

    def flow_reset(self, now: float) -> None:
        """The flow view forgets what it has: its window starts again at ``now`` (see
        ``flow_table``). From the thread that runs ``chunks()``."""
        if self._flow_view is not None:
            self._flow_view.reset(int(now * 1e9))

    def quiet_lines(self, quiet: bool) -> None:
        """While the flow view is all anyone reads: the core writes no line (so renders and
        annotates nothing) for the paths it still aggregates; False: lines again. From the
        thread that runs ``chunks()``; no effect without ``watch_flows``."""
        if self._flow_view is not None:
            self._flow_view.set_lines(self._stream, not quiet)

    def _done(self) -> bool:
        if self._stop.is_set() or self._stream.done:
            return True
        return (self.duration_s is not None and self._t0 is not None
                and time.monotonic() - self._t0 >= self.duration_s)

    def events(self) -> Iterator[list[Event]]:
        for lines in self.chunks():
            yield lines.events()

    def chunks(self) -> Iterator[Lines]:
        from tracer import _core  # type: ignore[attr-defined]  # the compiled core, no stub

        if self._stream is not None:
            self._paths_base += int(self._stream.paths)
        self._paths_seen = 0
        count = self.count
        text = None if self.text is None else (self.text.numeric, self.text.detail, self.text.color)
        stream = self._stream = _core.Stream(count=None if count is None else max(count, 0),
                                             filter=self.path_filter is not None, text=text)
        if self.watch_flows:
            from tracer.flow_view import WINDOW_NS

            self._flow_view = _core.FlowView(stream, window_ns=WINDOW_NS, now_ns=int(self.flow_clock() * 1e9))
        feeder = self._feeder = _Feeder(stream, self.path_filter)
        self._ring_rec = None
        locals_ = _Locals(self.local, stream, self.local_hooks) if self.local is not None else None
        nat_told: frozenset[int] | None = None
        tables = _Tables.of(self.annotators, stream)
        raw = _RawSockets(self.raw_sockets, stream, self.local_hooks) if self.raw_sockets is not None else None
        annotate = _Annotated(self.annotators) if self.annotators and tables is None else None
        direct = self.output_fd is not None and annotate is None and text is None and self._flow_view is None
        if direct:
            stream.set_output_fd(self.output_fd)
        self._t0 = time.monotonic()
        self._t1 = None
        self.source.start()

        def before() -> None:
            # what the tables, the local answers, the raw sockets and the NAT scope add
            nonlocal nat_told
            if tables is not None:
                tables.refresh()
            if locals_ is not None:
                locals_.answer()
            if raw is not None:
                raw.refresh()
            if self.nat_scope is not None:
                nat = self.nat_scope.nat_netns()
                if nat != nat_told:
                    stream.set_nat_namespaces(sorted(nat))
                    nat_told = nat

        def after() -> None:
            if tables is not None:
                tables.count()
            if locals_ is not None:
                locals_.ask()

        try:
            steps = None
            if isinstance(self.source, FeedsStream):
                steps = self.source.stream_steps(stream, feeder, self._batch_mode)
            fed = steps is not None
            batches: Iterator[ObsBatch | RingStep] = iter(steps if steps is not None else self.source.batches())
            if fed:
                before()  # a step is fed while the engine waits for it: its tables go first
            while not self._done():
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except BaseException:
                    # Print what was found before the damage, then report it.
                    yield from self._flush(stream, annotate, tables, locals_, raw)
                    raise
                if isinstance(batch, tuple):
                    n, data, index, hops = batch
                    self._observations += n
                    if self._ring_rec is not None:
                        self._ring_rec.ring_take()  # what the core recorded of the step
                    for hook in self.batch_hooks:
                        if isinstance(hook, CountsSightings):
                            hook.tick(n)  # a hook added since the step was taken sees the next
                    lines = Lines(data, index.reshape(-1, 3), hops.reshape(-1, 4))
                    self._paths_seen = int(stream.paths)
                    after()
                    before()
                    yield lines if annotate is None else annotate(lines)
                    continue
                self._observations += len(batch)
                for hook in self.batch_hooks:
                    hook(batch)
                before()
                lines = feeder.feed(batch)
                self._paths_seen = int(stream.paths)
                after()
                if fed:
                    before()
                yield lines if annotate is None else annotate(lines)
            yield from self._flush(stream, annotate, tables, locals_, raw)
        finally:
            self._t1 = time.monotonic()
            if direct:
                stream.set_output_fd(None)  # the core's duplicate of the descriptor closed
            if self._ring_rec is not None:
                stream.set_recorder(None)
                self._ring_rec = feeder.ring = None
            self.source.stop()

    def _batch_mode(self) -> bool:
        """A batch hook needs the rows (a recorder the core cannot record for, a second one, a
        plain function). Asked by a ``FeedsStream`` source before each step, so at a step
        boundary: a ``RecordsRing`` recorder (the TUI may start one at any step) is handed to
        the stream here when the core feeds the step, and taken back when rows are wanted."""
        ring: RecordsRing | None = None
        rows = False
        for hook in self.batch_hooks:
            if isinstance(hook, CountsSightings):
                continue
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, RecordsRing) and hook == owner.on_batch and not owner.ring_active:
                continue  # stopped (an error, closed): it takes nothing more
            if ring is None and isinstance(owner, RecordsRing) and hook == owner.on_batch:
                ring = owner
            else:
                rows = True
        self._record_ring(None if rows else ring)
        return rows

    def _record_ring(self, rec: RecordsRing | None) -> None:
        """The core records the next step for ``rec`` (None: for nobody)."""
        stream, feeder = self._stream, self._feeder
        if stream is None or feeder is None:
            return
        if rec is not self._ring_rec:
            if self._ring_rec is not None:
                stream.set_recorder(None)
                self._ring_rec = feeder.ring = None
            if rec is not None:
                stream.set_recorder(rec.ring_recorder(dict(feeder.reasons)))
                self._ring_rec = feeder.ring = rec
        if rec is not None:
            rec.ring_sync(feeder.table)

    @staticmethod
    def _flush(stream: Any, annotate: _Annotated | None, tables: _Tables | None = None,
               locals_: _Locals | None = None, raw: _RawSockets | None = None) -> Iterator[Lines]:
        """The paths still open, in slices: the end of a big input is streamed too. The last
        slice of paths comes with the flows (the core closes them in a step of their own).
        Local answers still pending get a bounded wait before each slice, so the flow lines
        carry them."""
        held: Lines | None = None
        more = True
        while more:
            if tables is not None:
                tables.refresh()
            if locals_ is not None:
                locals_.answer(settle=True)
            if raw is not None:
                raw.refresh()
            data, index, hops, more = stream.flush_slice()
            if tables is not None:
                tables.count()
            if locals_ is not None:
                locals_.ask()
            lines = Lines(data, index.reshape(-1, 3), hops.reshape(-1, 4))
            if held is not None:
                if more or (lines.index[:, 2] == PATH_LINE).any():
                    yield held if annotate is None else annotate(held)
                else:
                    lines = held.then(lines)
            held = lines
        if held is not None:
            yield held if annotate is None else annotate(held)


class _Locals:
    """The core's local table (hoptrace_core::local) and who fills it: misses out after each
    step, answers in before the next (never a wait on the hot path; at the end of input a
    bounded one, ``SETTLE_S`` in all)."""

    SETTLE_S = 1.0

    def __init__(self, local: LocalAnswers, stream: Any, hooks: Sequence[RecordsLocal]) -> None:
        self.local = local
        self.stream = stream
        self.hooks = list(hooks)
        self._settle_left = self.SETTLE_S
        self._asked = False
        stream.enable_locals()
        self.relays = local if isinstance(local, RelayAnswers) else None
        if self.relays is not None:
            stream.enable_relays()

    def ask(self) -> None:
        misses = self.stream.take_local_misses()
        if misses:
            self._asked = True
            self.local.submit(misses)

    def answer(self, settle: bool = False) -> None:
        if settle and self._asked and self._settle_left > 0:
            t0 = time.monotonic()
            self.local.settle(self._settle_left)
            self._settle_left -= time.monotonic() - t0
            self._asked = False
        got = self.local.take()
        if self.relays is not None:
            pairs = self.relays.take_relays()
            if pairs:
                self.stream.add_relays(pairs)
                for h in self.hooks:
                    if isinstance(h, RecordsRelays):
                        h.on_relays(pairs)
        if not got:
            return
        self.stream.set_locals([a[:4] for a in got])
        if self.hooks:
            keyed = [(a[4], a[2], a[3]) for a in got]
            for h in self.hooks:
                h.on_local(keyed)


class _Feeder:
    """Tells the core what a batch adds to the source's tables (hops, drop reasons, the filter's
    programs for new link types), then feeds it."""

    def __init__(self, stream: Any, path_filter: FramePrograms | None) -> None:
        self.stream = stream
        self.path_filter = path_filter
        # The source's label table (shared and append-only: ObsBatch), how much of it the core
        # has, and the core's index of each (position, label) (for batches with tables of their
        # own: as to the Python engine, a hop is where its label sits in its batch's table).
        self._table: list[HopLabel] | None = None
        self._hops = 0
        self._index: dict[tuple[int, HopLabel], int] = {}
        self._count = 0  # labels the core has
        self._reasons: dict[int, str] = {}  # the core's drop reason names by code
        self._aliases: dict[str, int] = {}  # names the core has under a code of its own
        #: The recorder the core records for as it feeds (Engine._batch_mode): told new labels.
        self.ring: RecordsRing | None = None
        if path_filter is not None:
            # A sighting without frame bytes is matched by its header rebuilt from its fields.
            stream.set_program(LINKTYPE_RAW, path_filter.insns(LINKTYPE_RAW))

    def learn(self, hops: list[HopLabel]) -> None:
        """``StreamTables.learn``: the labels of ``hops`` (the source's one table) not told yet."""
        if self._table is None:
            self._table = hops
        if hops is not self._table:
            raise RuntimeError("a source that feeds the core itself keeps one label table")
        for k in range(self._hops, len(hops)):
            self._add(k, hops[k])
        self._hops = len(hops)
        if self._count != len(hops):
            raise RuntimeError("the core's hop labels are out of step with the source's")
        if self.ring is not None:
            self.ring.ring_learn(hops)
        if self.path_filter is not None:
            for lt in self.stream.linktypes_without_program():
                self.stream.set_program(lt, self.path_filter.insns(lt))

    @property
    def table(self) -> list[HopLabel]:
        """The source's label table (empty before the first ``learn``)."""
        return self._table if self._table is not None else []

    @property
    def reasons(self) -> dict[int, str]:
        """The drop reason names told to the core, by code."""
        return self._reasons

    def name_reasons(self, reasons: dict[int, str]) -> None:
        """``StreamTables.name_reasons``: codes the core does not name yet. A code no row can
        carry (a mask the kernel's enum has, negative) names nothing, as in ``feed``."""
        for code, name in reasons.items():
            if 0 < code <= 0xFFFF_FFFF and code not in self._reasons:
                self._reasons[code] = name
                self.stream.set_drop_reason(code, _wtf8(name))

    def feed(self, batch: ObsBatch) -> Lines:
        stream = self.stream
        hops = batch.hops
        rows = batch.rows
        if self._table is None:
            self._table = hops
        if hops is self._table:
            for k in range(self._hops, len(hops)):
                self._add(k, hops[k])
            self._hops = len(hops)
        elif len(rows):
            # A batch with a label table of its own (ObsBatch.from_observations): its rows'
            # hop indices in the core's table.
            import numpy as np

            remap = np.array([self._add(k, h) for k, h in enumerate(hops)], dtype=np.uint32)
            rows = rows.copy()
            rows["hop"] = remap[rows["hop"]]
        if len(rows) and rows["drop_reason"].any():
            rows = self._reasons_of(rows, batch.drop_reasons)
        if batch.local_notes:
            stream.preset_locals(batch.local_notes)
        if batch.relay_notes:
            stream.enable_relays()
            stream.add_relays(batch.relay_notes)
        if batch.raw_sockets is not None:
            stream.set_raw_sockets(batch.raw_sockets)
        frames: bytes = b""
        if self.path_filter is not None:
            for lt in stream.linktypes_without_program():
                stream.set_program(lt, self.path_filter.insns(lt))
            frames = batch.frames if type(batch.frames) is bytes else bytes(batch.frames)
        data, index, hops = stream.feed(rows, frames, batch.now_ns)
        return Lines(data, index.reshape(-1, 3), hops.reshape(-1, 4))

    def _reasons_of(self, rows: np.ndarray[Any, Any], names: dict[int, str]) -> np.ndarray[Any, Any]:
        """``rows`` with drop reason codes the core names as ``names`` does (a code the batch
        does not name is ``UNKNOWN(code)``); a code that an earlier batch named otherwise gets a
        code of its own in the core."""
        import numpy as np

        col = rows["drop_reason"]
        remap: dict[int, int] = {}
        for code in np.unique(col).tolist():
            if not code:
                continue
            name = names.get(code, f"UNKNOWN({code})")
            have = self._reasons.get(code)
            if have == name:
                continue
            if have is None:
                self._reasons[code] = name
                self.stream.set_drop_reason(code, _wtf8(name))
                continue
            alias = self._aliases.get(name)
            if alias is None:
                alias = self._aliases[name] = 0x8000_0000 + len(self._aliases)
                self._reasons[alias] = name
                self.stream.set_drop_reason(alias, _wtf8(name))
            remap[code] = alias
        if not remap:
            return rows
        rows = rows.copy()
        col = rows["drop_reason"]
        for code, alias in remap.items():
            col[col == code] = alias
        return rows

    def _add(self, position: int, label: HopLabel) -> int:
        """The core's index of ``label`` at ``position`` of a batch's table, told when new."""
        key = (position, label)
        got = self._index.get(key)
        if got is None:
            got = self._index[key] = self._count
            self._count += 1
            self.stream.add_hop(_wtf8(label.node), _wtf8(label.iface), label.linktype)
        return got


class _Tables:
    """The provider the core asks about path shapes it has not seen (``Stream.set_notes``):
    each shape's path as a row view, through every annotator in turn, answered as the
    fields the annotators changed, rendered as tracer/sinks/output.py renders them."""

    def __init__(self, annotators: Sequence[TableAnnotator], stream: Any) -> None:
        self.annotators = list(annotators)
        self.stream = stream
        self._generations = [a.generation for a in self.annotators]

    @classmethod
    def of(cls, annotators: Sequence[Annotator], stream: Any) -> _Tables | None:
        """Tables for ``annotators`` when every one implements ``TableAnnotator``."""
        tabled: list[TableAnnotator] = []
        for a in annotators:
            if not isinstance(a, TableAnnotator):
                return None
            tabled.append(cast(TableAnnotator, a))
        if not tabled:
            return None
        tables = cls(tabled, stream)
        stream.set_notes(tables, per_packet=any(a.per_packet for a in tabled))
        return tables

    def refresh(self) -> None:
        """Before a step: a table that changed makes the core ask every shape again."""
        gens = [a.generation for a in self.annotators]
        if gens != self._generations:
            self._generations = gens
            self.stream.forget_notes()

    def count(self) -> None:
        """After a step: the NAT events its paths showed without a conntrack entry."""
        for a, n in zip(self.annotators, self.stream.take_note_counts(), strict=False):
            a.without_conntrack += n

    def __call__(self, data: bytes, extras: np.ndarray[Any, Any]) -> list[tuple[Any, ...]]:
        from tracer.sinks.output import nat_notes_json, nat_notes_text

        hops: list[list[int]] = extras.reshape(-1, 4).tolist()
        out: list[tuple[Any, ...]] = []
        at = 0
        for line in data.split(b"\n")[:-1]:
            d = json.loads(line)
            n = len(d["hops"])
            path = PacketPath.from_json(d, hops[at:at + n])
            at += n
            counted = [a.without_conntrack for a in self.annotators]
            got = path
            for a in self.annotators:
                got = a.annotate(got)
            provisional = any(a.provisional(got) for a in self.annotators)
            counts = []
            for a, before in zip(self.annotators, counted, strict=True):
                # The core counts per path shown; this path is only a shape's example.
                counts.append(a.without_conntrack - before)
                a.without_conntrack = before
            hop_nodes = [None if h.node == o.node else _wtf8(h.node)
                         for h, o in zip(got.hops, path.hops, strict=True)]
            nat = [(None if ev.node == was.node else _wtf8(ev.node), _wtf8(nat_notes_json(ev)),
                    _wtf8(nat_notes_text(ev)), ev.conntrack.id if ev.conntrack is not None else None)
                   for ev, was in zip(got.nat, path.nat, strict=True)]
            out.append((hop_nodes, nat, counts, provisional))
        return out


class _Annotated:
    """Annotators that are plain functions of a path (tests, notebooks): each step's lines as
    row views, annotated, rendered again. A flow takes the conntrack entry the first of its
    paths' NAT events names."""

    def __init__(self, annotators: Sequence[Annotator]) -> None:
        self.annotators = list(annotators)
        self._flow_ct: dict[str, int] = {}

    def __call__(self, lines: Lines) -> Lines:
        import numpy as np

        from tracer.sinks.output import flow_line, path_line

        if not len(lines.index):
            return lines
        parts: list[str] = []
        kinds: list[int] = []
        for ev in lines.events():
            if isinstance(ev, PacketPath):
                p = ev
                for annotate in self.annotators:
                    p = annotate(p)
                if p.flow is not None:
                    for nat in p.nat:
                        if nat.conntrack is not None and nat.conntrack.id is not None:
                            self._flow_ct.setdefault(p.flow, nat.conntrack.id)
                parts.append(path_line(p))
                kinds.append(PATH_LINE)
            else:
                ct = self._flow_ct.pop(ev.id, ev.conntrack_id)
                if ct != ev.conntrack_id:
                    ev = Flow(id=ev.id, proto=ev.proto, original=ev.original, reply=ev.reply,
                              paths=ev.paths, conntrack_id=ct, local=ev.local)
                parts.append(flow_line(ev))
                kinds.append(FLOW_LINE)
        encoded = [(p + "\n").encode("utf-8", "surrogatepass") for p in parts]
        index = np.zeros((len(encoded), 3), dtype=np.uint64)
        at = 0
        for k, (b, kind) in enumerate(zip(encoded, kinds, strict=True)):
            index[k] = (at, len(b) - 1, kind)
            at += len(b)
        return Lines(b"".join(encoded), index, lines.hops)


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

    NDJSON sinks get the core's lines as bytes; text sinks (all of one look, and no other sink)
    the core's text; the others row views. Runs under ``gc_policy()``.
    """
    with gc_policy():
        return _run(engine, sinks)


def _run(engine: Engine, sinks: Sequence[Sink]) -> Stats:
    texts = [s for s in sinks if isinstance(s, TextLines)]
    text = (bool(texts) and len(texts) == len(sinks) and len({s.text_options for s in texts}) == 1
            and engine.render_text(texts[0].text_options))
    raw = [s for s in sinks if isinstance(s, NdjsonLines)]
    objs = [s for s in sinks if not isinstance(s, NdjsonLines)]
    flood = [s for s in sinks if isinstance(s, FlowViewLines) and s.wants_flow_view]
    watch = None
    if flood:
        from tracer.flow_view import FlowWatch

        # Lines are not written while the view is on when no other sink reads them.
        watch = FlowWatch(engine, clock=engine.flow_clock, quiet=len(flood) == len(sinks))
    elif not text and len(sinks) == 1 and raw and isinstance(raw[0], NdjsonFd):
        # A lone NDJSON sink on a descriptor: the core writes the lines there itself.
        engine.output_fd = raw[0].output_fd()
    try:
        for lines in engine.chunks():
            if watch is not None:
                changed, table = watch.step()
                if table is not None or changed:
                    reason = watch.switch.reason()
                    if not watch.on:
                        reason += f"; the flow view summarised {watch.summarised:,} paths"
                    for f in flood:
                        f.on_flow_view(table, reason)
                if watch.on:
                    # The flow view's sinks get no lines meanwhile (every other sink does).
                    texts = [t for t in texts if t not in flood]
                    objs = [o for o in objs if o not in flood]
                elif changed:
                    texts = [s for s in sinks if isinstance(s, TextLines)]
                    objs = [s for s in sinks if not isinstance(s, NdjsonLines)]
            if text:
                if lines.data:
                    for t in texts:
                        t.on_text(lines.data)
            elif lines.data:
                for r in raw:
                    r.on_ndjson(lines.data)
                if objs:
                    for ev in lines.events():
                        if isinstance(ev, PacketPath):
                            for s in objs:
                                s.on_path(ev)
                        else:
                            for s in objs:
                                s.on_flow(ev)
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


__all__ = ["Annotator", "CountsSightings", "Engine", "Event", "FeedsStream", "FlowViewLines", "FramePrograms", "Lines", "LocalAnswers", "NdjsonFd",
           "NdjsonLines", "RecordsLocal", "RecordsRawSockets", "RecordsRelays", "RelayAnswers", "RingStep", "StreamTables", "TableAnnotator", "TextLines", "gc_policy",
           "run"]
