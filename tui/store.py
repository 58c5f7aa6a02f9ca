"""The paths the UI holds: the last ``keep`` paths, the filtered view of them, flow pairing.

Pure Python (no Textual), so memory bounds and filtering are unit-tested
directly. Rows are shown newest first; ``view`` is kept oldest first so that
appending is O(1) and display row ``r`` is ``view[-1 - r]``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tracer.model import Flow, PacketPath
from tui.format import role_of

KeepFn = Callable[[PacketPath], bool]


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int  # arrival order, strictly increasing
    path: PacketPath


class PathStore:
    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._all: deque[Entry] = deque(maxlen=keep)
        self.view: list[Entry] = []
        self._seq = 0
        self.flows: dict[str, Flow] = {}
        self._flow_of: dict[str, str] = {}  # path id -> flow id
        self._role: dict[str, str] = {}
        self.total_seen = 0

    def __len__(self) -> int:
        return len(self._all)

    # ---- feeding --------------------------------------------------------
    def add(self, paths: Iterable[tuple[PacketPath, bool]], *, update_view: bool = True) -> int:
        """Store paths (with whether the active filter keeps each); returns rows added to the view."""
        added = 0
        for path, shown in paths:
            self._seq += 1
            self.total_seen += 1
            entry = Entry(self._seq, path)
            self._all.append(entry)
            if path.flow:
                self._flow_of[path.id] = path.flow
            if update_view and shown:
                self.view.append(entry)
                added += 1
        self._trim()
        return added

    def add_flows(self, flows: Iterable[Flow]) -> None:
        for flow in flows:
            self.flows[flow.id] = flow
            for pid in flow.paths:
                self._flow_of[pid] = flow.id
                self._role.pop(pid, None)

    def _trim(self) -> None:
        if not self._all:
            self.view.clear()
            return
        oldest = self._all[0].seq
        if self.view and self.view[0].seq < oldest:
            del self.view[: bisect_left(self.view, oldest, key=lambda e: e.seq)]
        # Flow maps may only mention kept paths; rebuilt rarely (at 2x), so amortised O(1).
        if len(self._flow_of) > 2 * self.keep + 64:
            kept = {e.path.id for e in self._all}
            self._flow_of = {p: f for p, f in self._flow_of.items() if p in kept}
            self._role = {p: r for p, r in self._role.items() if p in kept}
            live_flows = set(self._flow_of.values())
            self.flows = {f: fl for f, fl in self.flows.items() if f in live_flows}

    def refilter(self, keep_fn: KeepFn | None) -> None:
        """Rebuild the view from every kept path (filter changed, or resumed after a pause)."""
        if keep_fn is None:
            self.view = list(self._all)
        else:
            self.view = [e for e in self._all if keep_fn(e.path)]

    def clear(self) -> None:
        self._all.clear()
        self.view.clear()
        self.flows.clear()
        self._flow_of.clear()
        self._role.clear()

    # ---- reading --------------------------------------------------------
    def row(self, r: int) -> Entry:
        return self.view[-1 - r]

    def row_of_seq(self, seq: int) -> int | None:
        i = bisect_left(self.view, seq, key=lambda e: e.seq)
        if i < len(self.view) and self.view[i].seq == seq:
            return len(self.view) - 1 - i
        return None

    def flow_of(self, path: PacketPath) -> tuple[str | None, str | None]:
        fid = self._flow_of.get(path.id) or path.flow
        if fid is None:
            return None, None
        role = self._role.get(path.id)
        if role is None:
            flow = self.flows.get(fid)
            if flow is None:
                return fid, None
            role = role_of(path, flow.original)
            self._role[path.id] = role
        return fid, role

    def local_of(self, path: PacketPath) -> dict[str, Any] | None:
        """Who took ``path``: its own ``"local"``, else its flow's when it delivered the flow's
        request (the flow line came later and knew)."""
        if path.local is not None or path.verdict != "delivered":
            return path.local
        fid, role = self.flow_of(path)
        flow = self.flows.get(fid) if fid is not None else None
        return flow.local if flow is not None and role == "request" else None

    def relay_of(self, path: PacketPath) -> dict[str, Any] | None:
        """The relay ``path``'s connection is a leg of: its own ``"relay"``, else its flow's (the
        flow line came later and knew)."""
        if path.relay is not None:
            return path.relay
        fid, _role = self.flow_of(path)
        flow = self.flows.get(fid) if fid is not None else None
        return flow.relay if flow is not None else None

    def find(self, start_row: int, pred: Callable[[PacketPath], bool], *, older: bool = True) -> int | None:
        """The next row after ``start_row`` whose path matches (older = down the table)."""
        n = len(self.view)
        rows = range(start_row + 1, n) if older else range(start_row - 1, -1, -1)
        for r in rows:
            if pred(self.view[-1 - r].path):
                return r
        return None
