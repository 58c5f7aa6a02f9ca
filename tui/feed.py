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


class Feed:
    def __init__(self, engine: EngineLike, keep: int, wake: Callable[[], object]) -> None:
        self.engine = engine
        self._wake = wake
        self._lock = threading.Lock()
        self._paths: deque[tuple[PacketPath, PathFilterLike | None, bool]] = deque(maxlen=keep)
        self._flows: list[Flow] = []
        self._pending = False
        self.path_filter: PathFilterLike | None = None  # swapped whole by the UI thread
        self.dropped_by_ui = 0  # paths that fell out of a full buffer before the UI drained them

    def run(self) -> None:
        """The worker thread's body; returns when the engine ends or is stopped."""
        for events in self.engine.events():
            if not events:
                continue
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
