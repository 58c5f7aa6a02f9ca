"""The hoptrace TUI: one App for live and replay, built by ``make_app(engine)``.

One thread worker runs the engine and fills ``tui.feed.Feed``; it only posts
messages. The UI drains the feed at most 20 times a second into a bounded
``PathStore`` and repaints the visible rows. Widgets live in ``tui/widgets``,
screens in ``tui/screens``, layout in ``app.tcss``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from tracer.errors import HoptraceError
from tracer.model import PacketPath
from tracer.protocols import HoldsError, Recorder
from tracer.safe_text import term_safe
from tui.feed import EngineLike, Feed, FlowViewState, PathFilterLike
from tui.heap import HeapFreezer
from tui.messages import EngineFinished, PathsReady, SourceFailed
from tui.screens.help import HelpScreen
from tui.store import PathStore
from tui.topo_text import seen_text, topology_text
from tui.widgets.filter_bar import FilterBar
from tui.widgets.flow_table import FlowPane
from tui.widgets.path_table import PathHeader, PathTable
from tui.widgets.path_view import PathView
from tui.widgets.status_bar import Status, StatusBar
from tui.widgets.topology_pane import TopologyPane

DRAIN_INTERVAL_S = 0.05  # at most 20 UI updates per second, however fast paths arrive
FLOOD_INTERVAL_S = 0.1  # 10 per second while a drain brings more than FLOOD_PATHS
FLOOD_PATHS = 500
FOLLOW_VIEW_S = 0.5  # while following, the path view changes at most twice a second
MIN_SIZE = (80, 20)


def _compile_filter(expr: str) -> PathFilterLike:
    from tracer.filter import PathFilter  # libpcap via ctypes; only when a filter is used

    return PathFilter(expr)


class HoptraceApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "hoptrace"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "open_filter", "Filter"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("c", "clear", "Clear"),
        Binding("r", "toggle_record", "Record"),
        Binding("t", "toggle_topology", "Topology"),
        Binding("n", "next_match('nat')", "Next NAT"),
        Binding("d", "next_match('drop')", "Next drop"),
        Binding("left_square_bracket", "step(1)", "Older", show=False),
        Binding("right_square_bracket", "step(-1)", "Newer", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        engine: EngineLike,
        *,
        keep: int = 10_000,
        backend_name: str | None = None,
        filter_expr: str | None = None,
        recorder: Recorder | None = None,
        recorder_factory: Callable[[], Recorder] | None = None,
        topology: Any = None,
        numeric: bool = False,
        flow_view: bool = False,
        flow_clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.numeric = numeric  # -n: namespaces by number in the path view
        self.engine = engine
        self.store = PathStore(keep)
        watch = None
        if flow_view and hasattr(engine, "chunks"):
            from tracer.flow_view import FlowWatch

            watch = FlowWatch(engine, clock=flow_clock or time.monotonic)
        self.feed = Feed(engine, keep, lambda: self.post_message(PathsReady()), flow_watch=watch)
        self.recorder_factory = recorder_factory
        self.topology = topology
        self.status = Status(backend=backend_name or _backend_of(engine))
        self._recorder: Recorder | None = None
        self._record_hook: Callable[[Any], None] | None = None
        self._last_drain = 0.0
        self._drain_timer: Any = None
        self._last_stats: tuple[float, int] | None = None
        self.heap = HeapFreezer()
        self._last_view = 0.0
        self._interval = DRAIN_INTERVAL_S
        self._view_timer: Any = None
        self._initial_filter = filter_expr
        if recorder is not None:
            # The CLI's recorder (--record), hooked into the engine already: it shows, and `r`
            # can stop it.
            self._recorder, self._record_hook = recorder, recorder.on_batch
            self.status.recording = str(recorder.path)

    # ---- layout ---------------------------------------------------------
    def compose(self) -> ComposeResult:
        # Held, not queried later: query_one() looks at the active screen, which may be a modal.
        self.filter_bar = FilterBar(id="filter-bar")
        self.table = PathTable(self.store, id="paths")
        self.path_view = PathView(id="path-view", numeric=self.numeric)
        self.topo_pane = TopologyPane(id="topology")
        self.status_bar = StatusBar(id="status")
        self.flow_pane = FlowPane(id="flows")
        yield self.filter_bar
        with Horizontal(id="main"):
            with Vertical(id="left") as self.left:
                yield PathHeader(id="path-header")
                yield self.table
                yield self.path_view
                yield self.flow_pane
            yield self.topo_pane
        yield Static(id="too-small")
        yield self.status_bar
        yield Footer()

    def on_mount(self) -> None:
        self.filter_input = self.query_one("#filter-input", Input)
        self.filter_error = self.query_one("#filter-error", Label)
        self.table.focus()
        if self._initial_filter:
            self._set_filter(self._initial_filter)
        self._update_too_small()
        self.set_interval(1.0, self._tick_stats)
        self._refresh_status()
        self._run_engine()

    def on_resize(self) -> None:
        self._update_too_small()

    def _update_too_small(self) -> None:
        w, h = self.size
        small = w < MIN_SIZE[0] or h < MIN_SIZE[1]
        self.screen.set_class(small, "-too-small")
        if small:
            self.query_one("#too-small", Static).update(
                f"Terminal too small: {w}×{h}.\nhoptrace needs at least {MIN_SIZE[0]}×{MIN_SIZE[1]}; "
                "enlarge the window (q quits)."
            )

    # ---- the engine's thread ---------------------------------------------
    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def _run_engine(self) -> None:
        stats = None
        try:
            self.feed.run()
        except HoptraceError as exc:
            self.post_message(SourceFailed(str(exc)))
        except Exception as exc:  # any source failure: shown, and what we have stays usable
            self.post_message(SourceFailed(f"internal error: {type(exc).__name__}: {exc}"))
        source = self.engine.source
        held = source.error if isinstance(source, HoldsError) else None
        if held is not None:
            # replay's source holds a damaged file's error back until the engine has flushed.
            self.post_message(SourceFailed(str(held)))
        try:
            stats = self.engine.stats()
        except Exception:  # stats are a nicety after a failure; the failure was already shown
            stats = None
        self.post_message(EngineFinished(stats))

    def on_paths_ready(self, _msg: PathsReady) -> None:
        wait = self._last_drain + self._interval - time.monotonic()
        if wait <= 0:
            self._drain()
        elif self._drain_timer is None:
            self._drain_timer = self.set_timer(wait, self._drain)

    def _drain(self) -> None:
        self._drain_timer = None
        self._last_drain = time.monotonic()
        paths, flows = self.feed.drain()
        # A table scrolling by at 20 frames/s reads no better than at 10, at twice the cost.
        self._interval = FLOOD_INTERVAL_S if len(paths) > FLOOD_PATHS else DRAIN_INTERVAL_S
        flt = self.feed.path_filter
        self.store.add_flows(flows)
        judged = ((p, shown if judge is flt else (flt is None or flt.keep(p))) for p, judge, shown in paths)
        self.store.add(judged, update_view=not self.status.paused)
        if paths:
            self.heap.after_drain()
        if not self.status.paused:
            self._rows_changed()
        view = self.feed.take_view()
        if view is not None:
            self._show_flow_view(view)
        self._refresh_status()

    def _show_flow_view(self, view: FlowViewState) -> None:
        """The worker's flow view state: the flow table instead of the paths, or back."""
        if view.on != self.status.flow_view:
            self.status.flow_view = view.on
            self.left.set_class(view.on, "-flows")
            if not view.on:
                self.flow_pane.clear_flows()
                self.notify(f"single paths again ({view.rate:,.0f} paths/s)", timeout=4)
        self.status.flow_rate = view.rate
        self.status.flow_reason = view.reason
        if view.on and view.table is not None and not self.status.paused:
            self.flow_pane.show(view.table, view.reason)

    def on_source_failed(self, msg: SourceFailed) -> None:
        self.status.error = msg.error
        self._notify_untrusted(msg.error, title="source error", severity="error", timeout=15)
        self._refresh_status()

    def _notify_untrusted(self, message: str, **kw: Any) -> None:
        """A toast whose text quotes file or interface names: escaped, and not read as markup
        (``[/]`` in a name would raise, ``[link=...]`` would make a link)."""
        self.notify(term_safe(message), markup=False, **kw)

    def on_engine_finished(self, msg: EngineFinished) -> None:
        self._drain()
        self.status.finished = True
        if msg.stats is not None:
            self.status.lost = msg.stats.lost_events
            self.status.sampling = msg.stats.sampling
        self._refresh_status()

    # ---- rows and the path view ------------------------------------------
    def _rows_changed(self) -> None:
        self.table.rows_changed(follow=self.status.follow)
        if self.topo_pane.has_class("-open"):
            self._refresh_topology()

    def on_path_table_highlighted(self, msg: PathTable.Highlighted) -> None:
        # Following a flood, the newest path changes on every drain; nobody reads a path
        # view that changes 20 times a second, and redrawing it is most of a frame's garbage.
        following = self.status.follow and not msg.user and msg.entry is not None
        wait = self._last_view + FOLLOW_VIEW_S - time.monotonic() if following else 0
        if wait <= 0:
            self._show_selected()
        elif self._view_timer is None:
            self._view_timer = self.set_timer(wait, self._show_selected)

    def _show_selected(self) -> None:
        self._view_timer = None
        self._last_view = time.monotonic()
        entry = self.table.selected
        if entry is None:
            self.path_view.show(None)
        else:
            self.path_view.show(entry.path, *self.store.flow_of(entry.path), local=self.store.local_of(entry.path),
                                relay=self.store.relay_of(entry.path))

    def on_path_table_user_moved(self, _msg: PathTable.UserMoved) -> None:
        if self.status.follow:
            self.status.follow = False
            self._refresh_status()

    # ---- status ------------------------------------------------------------
    def _tick_stats(self) -> None:
        try:
            stats = self.engine.stats()
        except Exception as exc:  # an engine mid-failure: keep the last figures
            self.log.warning(f"stats unavailable: {exc}")
            return
        now = time.monotonic()
        if self._last_stats is not None:
            t0, n0 = self._last_stats
            self.status.events_per_s = (stats.observations - n0) / max(now - t0, 1e-6)
        self._last_stats = (now, stats.observations)
        self.status.lost = stats.lost_events + self.feed.dropped_by_ui
        self.status.sampling = stats.sampling
        self._refresh_status()

    def _refresh_status(self) -> None:
        self.status.kept = len(self.store)
        self.status.shown = len(self.store.view)
        self.status_bar.show(self.status)

    # ---- actions -------------------------------------------------------------
    def action_toggle_pause(self) -> None:
        self.status.paused = not self.status.paused
        if not self.status.paused:
            self.store.refilter(self.feed.path_filter.keep if self.feed.path_filter else None)
            self._rows_changed()
        self._refresh_status()

    def action_toggle_follow(self) -> None:
        self.status.follow = not self.status.follow
        if self.status.follow:
            self.table.move_to(0, user=False)
        self._refresh_status()

    def action_clear(self) -> None:
        self.store.clear()
        self._rows_changed()
        self._refresh_status()

    def action_toggle_topology(self) -> None:
        pane = self.topo_pane
        pane.toggle_class("-open")
        if pane.has_class("-open"):
            self._refresh_topology()

    def _refresh_topology(self) -> None:
        pane = self.topo_pane
        recent = [e.path for e in self.store.view[-500:]]
        if self.topology is not None:
            pane.show(topology_text(self.topology, {h.netns for p in recent for h in p.hops}))
        else:
            pane.show(seen_text(recent))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_step(self, delta: int) -> None:
        table = self.table
        table.move_to(table.cursor_row + delta)

    def action_next_match(self, what: str) -> None:
        def pred(p: PacketPath) -> bool:
            return bool(p.nat) if what == "nat" else p.verdict == "dropped"

        table = self.table
        row = self.store.find(table.cursor_row, pred)
        if row is None:
            row = self.store.find(-1, pred)  # wrap around to the newest
        if row is None:
            self.notify(f"no {'NAT' if what == 'nat' else 'dropped'} path in the table", timeout=3)
            return
        table.move_to(row)

    async def action_quit(self) -> None:
        self.engine.stop()
        self._stop_recording()
        self.exit()

    def on_unmount(self) -> None:
        self.heap.close()
        self.engine.stop()
        self._stop_recording()

    # ---- recording --------------------------------------------------------------
    def action_toggle_record(self) -> None:
        if self._recorder is not None:
            name = self.status.recording
            self._stop_recording()
            self._notify_untrusted(f"recording stopped: {name}", timeout=4)
            return
        if self.recorder_factory is None:
            self.notify("recording is unavailable here (start with --record FILE.pcapng, "
                        "or use hoptrace live)", severity="warning", timeout=5)
            return
        try:
            recorder = self.recorder_factory()
        except HoptraceError as exc:
            self._notify_untrusted(str(exc), title="cannot record", severity="error", timeout=8)
            return
        self._recorder = recorder
        self._record_hook = recorder.on_batch
        self.engine.batch_hooks.append(self._record_hook)
        self.status.recording = str(recorder.path)
        self._refresh_status()

    def _stop_recording(self) -> None:
        if self._recorder is None:
            return
        if self._record_hook in self.engine.batch_hooks:
            self.engine.batch_hooks.remove(self._record_hook)
        self._recorder.close()
        self._recorder = None
        self._record_hook = None
        self.status.recording = None
        self._refresh_status()

    # ---- the filter -----------------------------------------------------------------
    def action_open_filter(self) -> None:
        bar = self.filter_bar
        bar.add_class("-open")
        inp = self.filter_input
        inp.value = self.status.filter_expr or ""
        inp.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "filter-input":
            return
        error = self._filter_error(event.value)
        event.input.set_class(error is not None, "-invalid")
        self.filter_error.update(Text(term_safe(error or "")))  # a Text: "[" in it is no markup

    def _filter_error(self, expr: str) -> str | None:
        if not expr.strip():
            return None
        try:
            _compile_filter(expr)
        except HoptraceError as exc:
            return exc.message
        return None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter-input":
            return
        if self._filter_error(event.value) is not None:
            self.bell()
            return
        self._set_filter(event.value)
        self._close_filter()

    def _set_filter(self, expr: str) -> None:
        expr = expr.strip()
        try:
            flt = _compile_filter(expr) if expr else None
        except HoptraceError as exc:
            self._notify_untrusted(str(exc), title="filter", severity="error")
            return
        self.feed.path_filter = flt
        self.status.filter_expr = expr or None
        self.store.refilter(flt.keep if flt else None)
        self._rows_changed()
        self._refresh_status()

    def _close_filter(self) -> None:
        self.filter_bar.remove_class("-open")
        self.table.focus()

    def on_key(self, event: Any) -> None:
        if event.key == "escape" and self.filter_bar.has_class("-open"):
            self._close_filter()
            event.stop()

    # ---- command palette ------------------------------------------------------------
    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Filter paths", "pcap-filter expression matched at any hop (/)", self.action_open_filter)
        yield SystemCommand("Pause / resume", "freeze the table; tracing goes on (space)", self.action_toggle_pause)
        yield SystemCommand("Auto-follow", "follow the newest path on / off (f)", self.action_toggle_follow)
        yield SystemCommand("Clear", "clear the table (c)", self.action_clear)
        yield SystemCommand("Record", "start / stop recording to pcapng (r)", self.action_toggle_record)
        yield SystemCommand("Topology", "show / hide the topology pane (t)", self.action_toggle_topology)
        yield SystemCommand("Next NAT", "jump to the next path that was NATed (n)",
                            lambda: self.action_next_match("nat"))
        yield SystemCommand("Next drop", "jump to the next dropped path (d)",
                            lambda: self.action_next_match("drop"))
        yield SystemCommand("Keys", "what every key does (?)", self.action_help)


def _backend_of(engine: EngineLike) -> str:
    return str(engine.source.kind or "?")


def make_app(
    engine: EngineLike,
    *,
    keep: int = 10_000,
    backend_name: str | None = None,
    filter_expr: str | None = None,
    recorder: Recorder | None = None,
    recorder_factory: Callable[[], Recorder] | None = None,
    topology: Any = None,
    numeric: bool = False,
    flow_view: bool = False,
    flow_clock: Callable[[], float] | None = None,
) -> HoptraceApp:
    """The TUI over an engine (live or replay); ``.run()`` it on a terminal, ``.run_test()`` in tests.

    ``recorder`` is one the CLI hooked into the engine already (--record): it shows and `r`
    stops it. ``recorder_factory()`` returns a ``tracer.protocols.Recorder`` (e.g.
    ``tracer.sinks.record.PcapngRecorder``): `r` starts it as an engine batch hook and stops it. ``topology`` is a
    ``tracer.topology.Topology``; without it the pane shows the hops seen.
    ``filter_expr`` is the initial display filter (editable with `/`); an engine's
    ``path_filter`` is taken over as that filter when no ``count`` is set. ``numeric`` (-n)
    shows nodes as ``netns:<inode>`` in the path view. ``flow_view`` (live): while paths arrive
    faster than anyone reads, the per-flow table (tracer/flow_view.py) instead of single paths;
    ``flow_clock`` is its clock (tests drive it).
    """
    engine_filter = engine.path_filter
    if engine_filter is not None and engine.count is None and filter_expr in (None, engine_filter.expr):
        # --filter given to the engine: the UI takes it over, so `/` can edit or clear it and
        # what it hides stays in the store. (With --count the engine must keep counting kept paths.)
        filter_expr = engine_filter.expr
        engine.path_filter = None
    return HoptraceApp(engine, keep=keep, backend_name=backend_name, filter_expr=filter_expr, recorder=recorder,
                       recorder_factory=recorder_factory, topology=topology, numeric=numeric,
                       flow_view=flow_view, flow_clock=flow_clock)
