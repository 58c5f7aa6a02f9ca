"""Pilot tests: the real App, driven by keys and the mouse, over scripted engines."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import Input, Label, Static

from tests.tui.scripted import ScriptedEngine, demo_events, masquerade_request, renumber, sync
from tracer.errors import CaptureFileError
from tui.app import HoptraceApp, make_app
from tui.widgets.path_table import PathTable
from tui.widgets.path_view import PathView

SIZE = (120, 40)


async def wait_for(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


def view_text(app: HoptraceApp) -> str:
    return str(app.query_one(PathView).query_one("#path-text", Static).render())


def shown_ids(app: HoptraceApp) -> list[str]:
    return [app.store.row(r).path.id for r in range(len(app.store.view))]


@sync
async def test_rows_newest_first_and_select_shows_nat_hop(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and len(app.store.view) == 4)
        assert shown_ids(app) == ["p3", "p4", "p2", "p1"]
        table = app.query_one(PathTable)
        # The request is the oldest row: click it (header is outside the table, rows start at y=0).
        await pilot.click(PathTable, offset=(3, 3))
        await pilot.pause()
        assert table.selected is not None and table.selected.path.id == "p1"
        text = view_text(app)
        assert "left web/eth0, crossed docker0, was MASQUERADEd to 203.0.113.2 on host/eth0" in text
        assert "SNAT" in text and "POSTROUTING" in text
        assert "172.17.0.2 → 198.51.100.8  ⇒  203.0.113.2 → 198.51.100.8" in text
        assert "MASQUERADE" in text and "id 3141592" in text
        # Moving the cursor away from the newest row turned auto-follow off.
        assert app.status.follow is False


@sync
async def test_drop_hop_and_jumps(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and len(app.store.view) == 4)
        table = app.query_one(PathTable)
        await pilot.press("n")
        assert table.selected is not None and table.selected.path.id == "p2"
        await pilot.press("n")
        assert table.selected.path.id == "p1"
        await pilot.press("d")
        assert table.selected.path.id == "p3"
        text = view_text(app)
        assert "dropped: NETFILTER_DROP" in text
        assert "was dropped at host/docker0 (NETFILTER_DROP)" in text
        await pilot.press("right_square_bracket")  # newer: already the newest
        assert table.selected.path.id == "p3"
        await pilot.press("left_square_bracket")  # one step back in time
        assert table.selected.path.id == "p4"


@sync
async def test_flow_pairs_request_and_reply(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and len(app.store.view) == 4)
        p1 = app.store.row(3).path
        p2 = app.store.row(2).path
        assert (app.store.flow_of(p1), app.store.flow_of(p2)) == (("f1", "request"), ("f1", "reply"))


@sync
async def test_filter_filters_and_rejects_bad_expression(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and len(app.store.view) == 4)
        await pilot.press("slash")
        inp = app.query_one("#filter-input", Input)
        assert inp.has_focus
        # A bad expression: error inline, Enter does not apply it.
        await pilot.press(*"host and")
        await pilot.pause()
        error = str(app.query_one("#filter-error", Label).render())
        assert "syntax error" in error or "bad --filter" in error
        assert inp.has_class("-invalid")
        await pilot.press("enter")
        assert app.status.filter_expr is None and len(app.store.view) == 4
        # A good one: the MASQUERADEd copy's address keeps both paths of flow f1.
        inp.value = ""
        await pilot.press(*"host 203.0.113.2")
        await pilot.pause()
        assert not inp.has_class("-invalid")
        assert str(app.query_one("#filter-error", Label).render()) == ""
        await pilot.press("enter")
        await pilot.pause()
        assert app.status.filter_expr == "host 203.0.113.2"
        assert shown_ids(app) == ["p2", "p1"]
        assert app.query_one(PathTable).has_focus
        # Clearing it shows everything again.
        await pilot.press("slash")
        inp.value = ""
        await pilot.press("enter")
        await pilot.pause()
        assert app.status.filter_expr is None and len(app.store.view) == 4


@sync
async def test_filter_applies_to_paths_arriving_later() -> None:
    engine = ScriptedEngine(demo_events(), gated=True)
    app = make_app(engine, filter_expr="udp")
    async with app.run_test(size=SIZE) as pilot:
        engine.release(4)
        await wait_for(pilot, lambda: app.status.finished)
        assert shown_ids(app) == ["p3"]
        assert len(app.store) == 4


@sync
async def test_pause_stops_updates_and_resume_catches_up() -> None:
    engine = ScriptedEngine(demo_events(), gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        engine.release(1)
        await wait_for(pilot, lambda: len(app.store.view) == 1)
        await pilot.press("space")
        assert app.status.paused
        engine.release(3)
        await wait_for(pilot, lambda: app.status.finished)
        await pilot.pause(0.1)
        assert shown_ids(app) == ["p1"]
        assert len(app.store) == 4  # still collected while paused
        await pilot.press("space")
        await pilot.pause()
        assert shown_ids(app) == ["p3", "p4", "p2", "p1"]


@sync
async def test_follow_off_keeps_the_selected_path() -> None:
    engine = ScriptedEngine(demo_events(), gated=True)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        engine.release(2)
        await wait_for(pilot, lambda: len(app.store.view) == 2)
        table = app.query_one(PathTable)
        await pilot.press("down")
        assert table.selected is not None and table.selected.path.id == "p1"
        assert not app.status.follow
        engine.release(2)
        await wait_for(pilot, lambda: app.status.finished)
        await pilot.pause()
        assert table.selected.path.id == "p1" and table.cursor_row == 3
        await pilot.press("f")  # follow again: back to the newest
        assert table.selected.path.id == "p3"


@sync
async def test_keep_bounds_memory() -> None:
    batches = [[renumber(masquerade_request(), f"q{i}", i * 1_000_000)] for i in range(50)]
    app = make_app(ScriptedEngine(batches), keep=10)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished)
        assert len(app.store) == 10 and len(app.store.view) == 10
        assert shown_ids(app)[0] == "q49" and shown_ids(app)[-1] == "q40"


@sync
async def test_clear(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and len(app.store.view) == 4)
        await pilot.press("c")
        assert len(app.store.view) == 0
        assert "No path selected" in view_text(app)


@sync
async def test_source_error_is_shown_and_app_stays_usable() -> None:
    err = CaptureFileError("broken.pcapng: truncated block at offset 4096")
    app = make_app(ScriptedEngine(demo_events(), fail_with=err))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished)
        assert app.status.error == "broken.pcapng: truncated block at offset 4096"
        assert any("truncated block" in str(n.message) for n in app._notifications)
        assert len(app.store.view) == 4
        await pilot.press("n")
        assert "was DNATed to 172.17.0.2 on host/docker0" in view_text(app)


@sync
async def test_source_error_naming_a_hostile_file_is_shown_escaped() -> None:
    """Issue 19: a file name with markup and controls, in the toast and the status bar."""
    name = "[/]x[link=http://evil]\x1b]0;PWNED\x07.pcapng"
    app = make_app(ScriptedEngine(demo_events(), fail_with=CaptureFileError(f"{name}: empty file")))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and bool(app._notifications))
        await pilot.pause()
        shown = [(n.message, n.markup) for n in app._notifications]
        assert shown == [("[/]x[link=http://evil]\\x1b]0;PWNED\\x07.pcapng: empty file", False)]
        bar = str(app.status_bar.render())
        assert "[/]x[link=http://evil]\\x1b]0;PWNED\\x07.pcapng: empty file" in bar, bar


@sync
async def test_record_unavailable_without_factory(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        assert any("recording is unavailable" in str(n.message) for n in app._notifications)
        assert app.status.recording is None and demo_engine.batch_hooks == []


@sync
async def test_record_starts_and_stops_a_recorder(demo_engine: ScriptedEngine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tracer.sinks import record
    out = tmp_path / "ui.pcapng"
    made = []

    def factory():  # type: ignore[no-untyped-def]
        made.append(record.PcapngRecorder(str(out)))
        return made[-1]

    app = make_app(demo_engine, recorder_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        assert demo_engine.batch_hooks == [made[0].on_batch]
        assert app.status.recording is not None and "ui.pcapng" in app.status.recording
        await pilot.press("r")
        assert demo_engine.batch_hooks == [] and app.status.recording is None
    assert out.exists()


@sync
async def test_topology_pane_from_hops(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished)
        await pilot.press("t")
        text = str(app.query_one("#topology-text", Static).render())
        assert "from the hops seen" in text
        assert "web\n  eth0  172.17.0.2\n      → host/veth1a2b3c\n" in text
        assert "  docker0\n      → host/eth0\n      → host/veth1a2b3c\n" in text
        await pilot.press("t")
        assert not app.query_one("#topology").has_class("-open")


@sync
async def test_terminal_too_small(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=(60, 15)) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-too-small")
        assert "Terminal too small: 60×15" in str(app.query_one("#too-small", Static).render())
        assert not app.query_one("#main").display


@sync
async def test_help_and_quit_stop_the_engine(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert app.screen.__class__.__name__ == "HelpScreen"
        await pilot.press("escape")
        assert app.screen.__class__.__name__ != "HelpScreen"
        await pilot.press("q")
    assert demo_engine._stop.is_set()


def test_one_request_path_renders_without_app() -> None:
    from tui.format import summary

    assert summary(masquerade_request()) == (
        "left web/eth0, crossed docker0, was MASQUERADEd to 203.0.113.2 on host/eth0, "
        "left the traced network via host/eth0"
    )


@sync
async def test_command_palette_offers_the_actions(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and len(app.store.view) == 4)
        await pilot.press("n")  # p2, away from the newest
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"Next drop")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.table.selected is not None and app.table.selected.path.id == "p3"


@sync
async def test_a_cli_recorder_shows_and_r_stops_it(demo_engine: ScriptedEngine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tracer.sinks import record
    rec = record.PcapngRecorder(str(tmp_path / "cli.pcapng"))
    demo_engine.batch_hooks.append(rec.on_batch)  # what `hoptrace live --record` does
    app = make_app(demo_engine, recorder=rec)
    async with app.run_test(size=SIZE) as pilot:
        assert app.status.recording is not None and app.status.recording.endswith("cli.pcapng")
        await pilot.press("r")
        assert demo_engine.batch_hooks == [] and app.status.recording is None and rec._closed
