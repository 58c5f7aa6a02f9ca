"""The flow view: when finished paths arrive faster than anyone reads, per flow what they add up to.

Above ``ENTER_RATE`` shown paths per second (measured over ``RATE_WINDOW_S``), the TUI and
``live``'s text output on a terminal stop showing single paths and show, per flow, paths
and bytes per second, the p50/p99 latency through the hops (first to last sighting), the
NAT its latest path saw, and its drops per reason and hop; below ``LEAVE_RATE`` for
``CALM_S`` they show single paths again (hysteresis: a rate near the threshold does not
flap). Every path still goes to ``--json`` and ``--record``, which never switch.

The figures come from the core (``tracer._core.FlowView``, crates/hoptrace-core/src/
flow_view.rs), which hears of every shown path in Rust; Python takes one small table
per refresh (at most 1 / ``REFRESH_S`` a second), never a row view per path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracer.safe_text import term_safe

ENTER_RATE = 1000.0  # shown paths/s that switch the flow view on
LEAVE_RATE = 500.0  # below this for CALM_S, single paths again
CALM_S = 2.0
RATE_WINDOW_S = 0.5  # the rate is measured over at least this long
REFRESH_S = 0.25  # the table is redrawn at most 4 times a second
WINDOW_NS = 2_000_000_000  # the table's figures are over the last 2 s
ROWS = 50  # flows in a table (the busiest)

#: Figures per row of a core snapshot (crates/hoptrace-py/src/flow_view.rs).
_COLUMNS = 8


@dataclass(frozen=True, slots=True)
class FlowRow:
    """One flow over the window. Texts are as the core names them: untrusted (``term_safe``)."""

    flow: str
    paths: int
    bytes: int
    paths_per_s: float
    bytes_per_s: float
    timed: int  # paths with two sightings or more (a latency)
    p50_ns: int | None
    p99_ns: int | None
    drops: int
    nat: str
    drops_text: str


@dataclass(frozen=True, slots=True)
class FlowTable:
    """The busiest flows over the last ``span_s`` seconds (``flows`` in all)."""

    span_s: float
    paths: int
    bytes: int
    flows: int
    rows: tuple[FlowRow, ...]

    @property
    def paths_per_s(self) -> float:
        return self.paths / self.span_s if self.span_s > 0 else 0.0


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def decode_table(snapshot: tuple[Any, ...]) -> FlowTable:
    """A ``tracer._core.FlowView.snapshot`` as a ``FlowTable``."""
    span_ns, paths, nbytes, flows, figures, texts, offsets = snapshot
    nums = figures.reshape(-1, _COLUMNS).tolist()
    offs = offsets.tolist()
    rows = []
    for r, f in enumerate(nums):
        a, b, c, d = offs[3 * r:3 * r + 4]
        rows.append(FlowRow(
            flow=_text(texts[a:b]), paths=int(f[0]), bytes=int(f[1]), paths_per_s=f[2], bytes_per_s=f[3],
            timed=int(f[4]), p50_ns=None if math.isnan(f[5]) else int(f[5]),
            p99_ns=None if math.isnan(f[6]) else int(f[6]), drops=int(f[7]), nat=_text(texts[b:c]),
            drops_text=_text(texts[c:d]),
        ))  # fmt: skip
    return FlowTable(span_ns / 1e9, int(paths), int(nbytes), int(flows), tuple(rows))


class RateSwitch:
    """On above ``enter`` paths/s, off after ``calm_s`` below ``leave``; ``update`` with a
    clock (seconds) and the paths shown so far, as often as convenient. The rate is measured
    over ``window_s``; on as soon as more than a window's worth at ``enter`` arrived."""

    def __init__(self, enter: float = ENTER_RATE, leave: float = LEAVE_RATE, calm_s: float = CALM_S,
                 window_s: float = RATE_WINDOW_S) -> None:
        self.enter = enter
        self.leave = leave
        self.calm_s = calm_s
        self.window_s = window_s
        self.on = False
        self.rate = 0.0  # the last measured paths/s
        self._mark: tuple[float, int] | None = None
        self._calm_since: float | None = None

    def update(self, now: float, paths: int) -> bool:
        """Measure; True when the view changed."""
        if self._mark is None:
            self._mark = (now, paths)
            return False
        t0, n0 = self._mark
        if now - t0 < self.window_s:
            if self.on or paths - n0 <= self.enter * self.window_s:
                return False
            # More paths already than the threshold allows a whole window: on now, not after
            # the window (a live source's batch can hold thousands: no row view for them).
            now = t0 + self.window_s
        self.rate = (paths - n0) / (now - t0)
        self._mark = (now, paths)
        if not self.on:
            if self.rate > self.enter:
                self.on = True
                self._calm_since = None
                return True
            return False
        if self.rate >= self.leave:
            self._calm_since = None
            return False
        if self._calm_since is None:
            self._calm_since = t0  # calm since the start of this measurement
        if now - self._calm_since >= self.calm_s:
            self.on = False
            return True
        return False

    def reason(self) -> str:
        """Why the flow view is on (or off), for a status bar or a header line."""
        if self.on:
            return (f"{self.rate:,.0f} paths/s, over {self.enter:,.0f}/s; single paths return "
                    f"below {self.leave:,.0f}/s")
        return f"{self.rate:,.0f} paths/s"


class FlowWatch:
    """The flow view of an engine (``tracer.engine.Engine`` with ``watch_flows`` set): ``step()``
    between its chunks, from the thread that runs it."""

    def __init__(self, engine: Any, *, clock: Callable[[], float] = time.monotonic,
                 switch: RateSwitch | None = None, refresh_s: float = REFRESH_S, rows: int = ROWS,
                 quiet: bool = True) -> None:
        self.engine = engine
        #: The flow view is all anyone reads while it is on: the core writes no line meanwhile.
        self.quiet = quiet
        self.clock = clock
        engine.watch_flows = True
        engine.flow_clock = clock
        self.switch = switch or RateSwitch()
        self.refresh_s = refresh_s
        self.rows = rows
        self._last = -math.inf
        self._reset = clock()
        #: Paths shown while the view was on (summarised, not shown one by one).
        self.summarised = 0
        self._on_at = 0

    @property
    def on(self) -> bool:
        return self.switch.on

    def step(self) -> tuple[bool, FlowTable | None]:
        """(the view changed, a table when one is due: on, and ``refresh_s`` since the last)."""
        now = self.clock()
        shown = self.engine.shown_paths()
        changed = self.switch.update(now, shown)
        if changed:
            if self.quiet:
                self.engine.quiet_lines(self.switch.on)
            if self.switch.on:
                self._on_at = shown
                self._last = -math.inf
            else:
                self.summarised += shown - self._on_at
        if not self.switch.on:
            if now - self._reset >= WINDOW_NS / 1e9:
                # Nobody reads the view: it keeps only the last window or so (bounded memory;
                # when it turns on, its figures are those of the last seconds).
                self._reset = now
                self.engine.flow_reset(now)
            return changed, None
        if now - self._last < self.refresh_s:
            return changed, None
        self._last = now
        return changed, self.engine.flow_table(now, self.rows)


# ---- text for a terminal ------------------------------------------------------------


def rate_text(v: float) -> str:
    """``12.3k`` style: a column that stays narrow."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.1f}{unit}"
    return f"{v:.0f}" if v >= 10 or v == 0 else f"{v:.1f}"


def bytes_rate_text(v: float) -> str:
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if v >= div:
            return f"{v / div:.1f} {unit}"
    return f"{v:.0f} B"


def latency_text(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns < 1_000:
        return f"{ns} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f} ms"
    return f"{ns / 1e9:.2f} s"


HEADER = ("paths/s", "bytes/s", "p50", "p99", "drops", "flow", "NAT / drops")


def _cut(s: str, width: int) -> str:
    return s if len(s) <= width else s[:max(width - 1, 0)] + "…"


def table_lines(table: FlowTable, reason: str, width: int, height: int) -> list[str]:
    """The flow view as lines of at most ``width`` cells (``height`` lines at most), names
    escaped: a header line saying which view is on and why, then the busiest flows."""
    head = term_safe(f"hoptrace: flow view — {reason}; every path still goes to --json/--record")
    summary = (f"{table.flows:,} flows, {table.paths:,} paths in the last {table.span_s:.1f} s"
               f" ({rate_text(table.paths_per_s)} paths/s); latency = first to last hop")
    cols = f"{HEADER[0]:>8} {HEADER[1]:>10} {HEADER[2]:>9} {HEADER[3]:>9} {HEADER[4]:>6}  {HEADER[5]}"
    lines = [_cut(head, width), _cut(summary, width), "", _cut(cols, width)]
    for r in table.rows:
        if len(lines) >= height - 1:
            break
        flow = term_safe(r.flow)
        lines.append(_cut(f"{rate_text(r.paths_per_s):>8} {bytes_rate_text(r.bytes_per_s):>10} "
                          f"{latency_text(r.p50_ns):>9} {latency_text(r.p99_ns):>9} {r.drops:>6,}  {flow}", width))
        extra = [f"NAT {term_safe(r.nat)}"] if r.nat else []
        if r.drops_text:
            extra.append(f"drops {term_safe(r.drops_text)}")
        if extra and len(lines) < height - 1:
            lines.append(_cut(" " * 48 + " │ ".join(extra), width))
    if table.flows > len(table.rows) and len(lines) < height:
        lines.append(f"… and {table.flows - len(table.rows):,} quieter flows")
    return lines[:height]


__all__ = ["CALM_S", "ENTER_RATE", "LEAVE_RATE", "REFRESH_S", "ROWS", "WINDOW_NS", "FlowRow", "FlowTable",
           "FlowWatch", "RateSwitch", "decode_table", "latency_text", "rate_text", "table_lines"]
