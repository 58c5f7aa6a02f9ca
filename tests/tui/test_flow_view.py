"""The TUI's flow view over the real engine: a flood of paths switches to the per-flow table,
a calm period back to single paths (tracer/flow_view.py, tui/widgets/flow_table.py).

The rate is driven by synthetic batches on a fake clock that the source advances (0.1 s a
batch), so what switches is the number of paths per batch, never this machine's speed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from tests.tui.scripted import T0, masquerade_reply, masquerade_request, sync
from tests.tui.test_app import SIZE, wait_for
from tracer.engine import Engine
from tracer.model import ObsBatch
from tui.app import make_app
from tui.widgets.flow_table import FlowPane

STEP_S = 0.1


def template() -> ObsBatch:
    """One request and its reply (the lab's MASQUERADE ping): two paths, eight rows."""
    return ObsBatch.from_observations([*masquerade_request().hops, *masquerade_reply().hops])


class FloodSource:
    """``burst`` batches of ``per_burst`` path pairs, then (once ``calm`` is set) ``calm_batches``
    of one pair each, then waits for ``end``. Each batch moves the clock on by STEP_S."""

    kind = "synthetic"
    lost_events = 0

    def __init__(self, burst: int, per_burst: int, calm_batches: int) -> None:
        self.t = 0.0
        self.burst, self.per_burst, self.calm_batches = burst, per_burst, calm_batches
        self.calm = threading.Event()
        self.end = threading.Event()
        self._tpl = template()
        self._n = 0
        self._stopped = threading.Event()

    def clock(self) -> float:
        return self.t

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._stopped.set()
        self.calm.set()
        self.end.set()

    def _batch(self, pairs: int) -> ObsBatch:
        base = self._tpl.rows
        rows = np.tile(base, pairs)
        k = np.repeat(np.arange(self._n, self._n + pairs), len(base))
        self._n += pairs
        # Distinct packets (IP ID, ICMP seq), 20 us apart, at the clock's time.
        rows["ts_ns"] = rows["ts_ns"] - T0 + T0 + int(self.t * 1e9) + (k - k.min()) * 20_000
        rows["ip_id"] = (rows["ip_id"] + k * 3) & 0xFFFF
        rows["icmp_seq"] = k & 0xFFFF
        now = T0 + int(self.t * 1e9) + pairs * 20_000
        return ObsBatch(rows=rows, hops=self._tpl.hops, now_ns=now)

    def batches(self) -> Iterator[ObsBatch]:
        for _ in range(self.burst):
            self.t += STEP_S
            yield self._batch(self.per_burst)
        self.calm.wait()
        for _ in range(self.calm_batches):
            if self._stopped.is_set():
                return
            self.t += STEP_S
            yield self._batch(1)
        self.end.wait()


@sync
async def test_a_flood_switches_to_the_flow_view_and_calm_switches_back() -> None:
    # 20 batches of 200 pairs: 4,000 paths per 0.1 s = 40,000 paths/s on the source's clock.
    src = FloodSource(burst=20, per_burst=200, calm_batches=60)
    engine = Engine(src)
    app = make_app(engine, flow_view=True, flow_clock=src.clock)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(FlowPane)
        await wait_for(pilot, lambda: app.status.flow_view and pane.shown is not None, timeout=30)
        assert not app.query_one("#paths").display and pane.display
        status = str(app.status_bar.render())
        assert "flow view (" in status and "paths/s)" in status, status
        await wait_for(pilot, lambda: pane.shown is not None and len(pane.shown.rows) == 2, timeout=30)
        rows = "\n".join(pane.rows_text())
        # The request (MASQUERADEd on host) and its reply (un-NATed back), each its own flow.
        assert "icmp 172.17.0.2 → 198.51.100.8" in rows and "NAT snat 172.17.0.2 → 203.0.113.2 @ host" in rows, rows
        assert rows.splitlines()[0].split() == ["paths/s", "bytes/s", "p50", "p99", "drops", "flow"], rows
        assert "icmp 198.51.100.8 → 203.0.113.2" in rows, rows
        shown_before = len(app.store)
        src.calm.set()
        await wait_for(pilot, lambda: not app.status.flow_view, timeout=30)
        assert app.query_one("#paths").display and not pane.display
        assert "flow view" not in str(app.status_bar.render())
        # Single paths again: the calm period's paths reach the path table one by one.
        await wait_for(pilot, lambda: len(app.store) > shown_before, timeout=30)
        src.end.set()
        await pilot.press("q")
    assert app.feed.flow_watch is not None and app.feed.flow_watch.summarised >= 4000


@sync
async def test_without_flow_view_a_flood_stays_single_paths() -> None:
    """Replay's TUI (no ``flow_view``) never switches."""
    src = FloodSource(burst=5, per_burst=200, calm_batches=10)
    src.calm.set()
    engine = Engine(src)
    app = make_app(engine, flow_clock=src.clock)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(app.store) >= 1000, timeout=30)
        assert not app.status.flow_view and app.feed.flow_watch is None
        src.end.set()
        await pilot.press("q")
