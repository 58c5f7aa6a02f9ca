"""Snapshot tests (pytest-textual-snapshot) of the main screen and the path view.

Update only after looking at the report: ``pytest tests/tui/test_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from textual.pilot import Pilot

from tests.tui.scripted import ScriptedEngine, demo_events
from tracer.model import PacketPath
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


def test_hostile_names(snap_compare: Any) -> None:
    """Issue 19: names that recolour, retitle and clear a terminal, from the committed fixture
    and from a generated capture (markup, OSC 52, C1 CSI, bidi, CR LF, a hostile drop reason):
    all shown escaped, the layout as with any names."""
    from tests.hostile import FIXTURE, HOSTILE_DROP_REASON, HOSTILE_NAMES, capture, replay_events

    generated = [replace(ev, id=ev.id.replace("1", "2"), flow="f2") if isinstance(ev, PacketPath)
                 else replace(ev, id="f2", paths=("p2",))  # both captures number from p1/f1
                 for ev in replay_events(capture(HOSTILE_NAMES, HOSTILE_DROP_REASON))]
    events = replay_events(FIXTURE.read_bytes()) + generated

    async def loaded(pilot: Pilot[None]) -> None:
        app: Any = pilot.app
        deadline = time.monotonic() + 10
        while not (app.status.finished and len(app.store.view) == 2):
            assert time.monotonic() < deadline, "paths did not arrive"
            await pilot.pause(0.02)
        await pilot.press("t")  # the topology pane, from the hops seen
        await pilot.pause()

    app = make_app(ScriptedEngine([events]))
    assert snap_compare(app, terminal_size=(140, 35), run_before=loaded)
