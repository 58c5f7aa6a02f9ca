"""The bridge from the engine's thread to the UI: a locked buffer and a "there is more" flag.

The worker thread runs ``engine.events()`` and appends into the buffer; it
posts one ``PathsReady`` only when none is pending, so a flood costs the UI one
message per drain, however many paths arrived (the UI rate-limits drains to
20/s). The buffer holds at most ``keep`` paths: older ones would be evicted
from the store on arrival anyway.

The active filter is applied here, on the worker thread, so libpcap matching
never runs on the UI thread at live rates; each buffered path carries the
filter it was judged by, and the UI re-judges the few that raced a change.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from tracer.flow_view import FlowTable, FlowWatch
from tracer.model import Flow, PacketPath, Stats


class PathFilterLike(Protocol):
    def keep(self, path: PacketPath) -> bool: ...


class SourceLike(Protocol):
    """A ``tracer.sources.base.Source`` as the UI sees it (maybe a ``tracer.protocols.HoldsError``)."""

    kind: str


class EngineLike(Protocol):
    """The part of ``tracer.engine.Engine`` the UI uses."""

    batch_hooks: list[Callable[[Any], None]]
    #: The engine's --filter (a tracer.filter.PathFilter) or None: the UI takes it over.
    path_filter: Any
    count: int | None

    @property
    def source(self) -> SourceLike: ...

    def events(self) -> Any: ...  # Iterator[list[PacketPath | Flow]]

    def stats(self) -> Stats: ...

    def stop(self) -> None: ...


class FlowViewState:
    """What the worker says of the flow view: on or off, why, and its latest table."""

    __slots__ = ("on", "rate", "reason", "table")

    def __init__(self, on: bool, rate: float, reason: str, table: FlowTable | None) -> None:
        self.on = on
        self.rate = rate
        self.reason = reason
        self.table = table


class Feed:
    """``flow_watch`` (a ``tracer.flow_view.FlowWatch`` over an engine with ``chunks()``): while
    paths arrive faster than anyone reads, the worker builds no row views (the core's per-flow
    table comes instead, ``take_view()``); else every path is a row view, as without it."""

    def __init__(self, engine: EngineLike, keep: int, wake: Callable[[], object],
                 flow_watch: FlowWatch | None = None) -> None:
        self.engine = engine
        self.flow_watch = flow_watch
        self._view: FlowViewState | None = None
        self._wake = wake
        self._lock = threading.Lock()
        self._paths: deque[tuple[PacketPath, PathFilterLike | None, bool]] = deque(maxlen=keep)
        self._flows: list[Flow] = []
        self._pending = False
        self.path_filter: PathFilterLike | None = None  # swapped whole by the UI thread
        self.dropped_by_ui = 0  # paths that fell out of a full buffer before the UI drained them

    def run(self) -> None:
        """The worker thread's body; returns when the engine ends or is stopped."""
        if self.flow_watch is not None:
            self._run_watched(self.flow_watch)
            return
        for events in self.engine.events():
            self._events(events)

    def _run_watched(self, watch: FlowWatch) -> None:
        chunks: Any = self.engine.chunks()  # type: ignore[attr-defined]
        for lines in chunks:
            changed, table = watch.step()
            if changed or table is not None:
                self._push_view(FlowViewState(watch.on, watch.switch.rate, watch.switch.reason(), table))
            if watch.on or not len(lines.index):
                continue  # summarised by the core's table: no row view per path
            self._events(lines.events())

    def _push_view(self, state: FlowViewState) -> None:
        with self._lock:
            if state.table is None and self._view is not None and self._view.on == state.on:
                state.table = self._view.table  # a change of reason only: keep the table not yet shown
            self._view = state
            if self._pending:
                return
            self._pending = True
        self._wake()

    def take_view(self) -> FlowViewState | None:
        """The flow view's latest state since the last call, if any."""
        with self._lock:
            view, self._view = self._view, None
        return view

    def _events(self, events: list[PacketPath | Flow]) -> None:
        if events:
            flt = self.path_filter
            paths: list[tuple[PacketPath, PathFilterLike | None, bool]] = []
            flows: list[Flow] = []
            for ev in events:
                if isinstance(ev, PacketPath):
                    paths.append((ev, flt, True if flt is None else flt.keep(ev)))
                elif isinstance(ev, Flow):
                    flows.append(ev)
            self._push(paths, flows)

    def _push(self, paths: list[tuple[PacketPath, PathFilterLike | None, bool]], flows: list[Flow]) -> None:
        with self._lock:
            room = self._paths.maxlen or 0
            overflow = len(self._paths) + len(paths) - room
            if overflow > 0:
                self.dropped_by_ui += overflow
            self._paths.extend(paths)
            self._flows.extend(flows)
            if self._pending:
                return
            self._pending = True
        self._wake()

    def drain(self) -> tuple[list[tuple[PacketPath, PathFilterLike | None, bool]], list[Flow]]:
        with self._lock:
            paths = list(self._paths)
            self._paths.clear()
            flows, self._flows = self._flows, []
            self._pending = False
        return paths, flows
