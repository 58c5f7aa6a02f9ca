"""Snapshot tests (pytest-textual-snapshot) of the main screen and the path view.

Update only after looking at the report: ``pytest tests/tui/test_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import time
from typing import Any

from textual.pilot import Pilot

from tests.tui.scripted import ScriptedEngine, demo_events
from tui.app import make_app

SIZE = (120, 40)


async def _loaded(pilot: Pilot[None]) -> None:
    app: Any = pilot.app
    deadline = time.monotonic() + 10
    while not (app.status.finished and len(app.store.view) == 4):
        assert time.monotonic() < deadline, "paths did not arrive"
        await pilot.pause(0.02)
    await pilot.pause()


def test_main_screen(snap_compare: Any) -> None:
    app = make_app(ScriptedEngine(demo_events()))
    assert snap_compare(app, terminal_size=SIZE, run_before=_loaded)


def test_path_view_nat_hop(snap_compare: Any) -> None:
    async def select_request(pilot: Pilot[None]) -> None:
        await _loaded(pilot)
        await pilot.press("n", "n")  # the MASQUERADEd request
        await pilot.pause()

    app = make_app(ScriptedEngine(demo_events()))
    assert snap_compare(app, terminal_size=SIZE, run_before=select_request)


def test_path_view_drop_and_topology(snap_compare: Any) -> None:
    async def select_drop(pilot: Pilot[None]) -> None:
        await _loaded(pilot)
        await pilot.press("d", "t")
        await pilot.pause()

    app = make_app(ScriptedEngine(demo_events()))
    assert snap_compare(app, terminal_size=SIZE, run_before=select_drop)


def test_too_small(snap_compare: Any) -> None:
    app = make_app(ScriptedEngine(demo_events()))
    assert snap_compare(app, terminal_size=(60, 15), run_before=_loaded)
