"""The paths table: newest first, rendered line by line, only the rows on screen.

A Line-API widget rather than ``DataTable``: at 20,000 paths/s with 10,000
kept, DataTable's per-row bookkeeping (``remove_row`` re-indexes every later
row; new rows are measured cell by cell) cannot keep up, and it cannot insert
at the top. Here a refresh costs only the ~40 visible rows, formatted lazily
from the store.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from tui.format import (
    VERDICT_STYLE,
    cell,
    duration_text,
    flow_cell,
    join_cells,
    nat_badges,
    original_text,
    proto_text,
    translated_text,
    ts_text,
)
from tui.store import Entry, PathStore

# (title, width); None = shares what is left between the address columns.
FIXED = [("time", 12), ("flow", 5), ("proto", 10)]
STRIP_CACHE = 400  # rendered rows kept: a few screens' worth
TAIL = [("hop", 3), ("NAT", 9), ("verdict", 10), ("latency", 8)]
ORIGINAL_NEED = 45  # "255.255.255.255:65535 → 255.255.255.255:65535"
AFTER_NAT_MAX = 51  # "src [" + the longest IPv6 text (39) + "]:65535"; the rest is the original column's


def column_widths(total: int) -> list[tuple[str, int]]:
    fixed = sum(w for _, w in FIXED + TAIL) + len(FIXED) + len(TAIL) + 1
    free = max(total - fixed, 24)
    # "after NAT" names only the rewritten side, the original column both: the original gets
    # what a worst IPv4 pair needs first, and "after NAT" grows past 20 cells only beyond it
    # ("src 203.0.113.2:38675" is 21: a 200-column terminal cut it while the original sat half
    # empty).
    trans = min(AFTER_NAT_MAX, max(min(20, free * 2 // 5), free - ORIGINAL_NEED))
    return [*FIXED, ("original src → dst", free - trans), ("after NAT", trans), *TAIL]


def row_text(store: PathStore, entry: Entry, width: int) -> Text:
    path = entry.path
    cols = column_widths(width)
    widths = [w for _, w in cols]
    flow = flow_cell(*store.flow_of(path))
    cells = [
        Text(cell(ts_text(path.first.ts_ns, 3), widths[0])),
        Text(cell(flow.plain, widths[1]), style=flow.style),
        Text(cell(proto_text(path), widths[2])),
        Text(cell(original_text(path), widths[3])),
        Text(cell(translated_text(path), widths[4]), style="bold"),
        Text(cell(str(len(path.hops)), widths[5])),
    ]
    badges = nat_badges(path)
    badges.pad_right(widths[6] - badges.cell_len)
    cells.append(badges)
    cells.append(Text(cell(path.verdict, widths[7]), style=VERDICT_STYLE.get(path.verdict, "")))
    cells.append(Text(cell(duration_text(path.latency_ns), widths[8])))
    return join_cells(cells)


def header_text(width: int) -> Text:
    return Text(" ".join(cell(title, w) for title, w in column_widths(width)), style="bold")


class PathHeader(Static):
    DEFAULT_CSS = "PathHeader { height: 1; background: $panel; }"

    def on_resize(self, event: events.Resize) -> None:
        self.update(header_text(event.size.width - 1))


class PathTable(ScrollView, can_focus=True):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"path-table--cursor"}
    DEFAULT_CSS = """
    PathTable { overflow-x: hidden; overflow-y: auto; }
    PathTable > .path-table--cursor { background: $accent 50%; text-style: bold; }
    PathTable:focus > .path-table--cursor { background: $accent; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "Newest", show=False),
        Binding("end", "jump(-1)", "Oldest", show=False),
    ]

    cursor_row: reactive[int] = reactive(0, always_update=True)

    class Highlighted(Message):
        """The cursor moved onto a row (or the row under it changed)."""

        def __init__(self, entry: Entry | None, user: bool) -> None:
            super().__init__()
            self.entry = entry
            self.user = user  # moved by a key or the mouse, not by arriving rows

    class UserMoved(Message):
        """The user moved the cursor away from the newest row (auto-follow stops)."""

    def __init__(self, store: PathStore, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.store = store
        self._cursor_seq: int | None = None
        self._strips: dict[tuple[Any, ...], Strip] = {}

    # ---- data changes -----------------------------------------------
    def rows_changed(self, *, follow: bool) -> None:
        """The store's view changed: keep the cursor on its path unless following the newest."""
        n = len(self.store.view)
        self.virtual_size = Size(self.size.width, n)
        if follow or self._cursor_seq is None:
            row = 0
        else:
            found = self.store.row_of_seq(self._cursor_seq)
            row = found if found is not None else min(self.cursor_row, max(n - 1, 0))
        old_row = self.cursor_row
        if not follow and row != old_row:
            # Keep the selected path where it was on screen while rows are added above it.
            self.scroll_to(y=self.scroll_offset.y + (row - old_row), animate=False, immediate=True)
        self._set_cursor(row)
        self.refresh()

    def _set_cursor(self, row: int, user: bool = False) -> None:
        n = len(self.store.view)
        row = max(0, min(row, n - 1)) if n else 0
        entry = self.store.row(row) if n else None
        changed = (entry.seq if entry else None) != self._cursor_seq
        self._cursor_seq = entry.seq if entry else None
        self.cursor_row = row
        if changed:
            self.post_message(self.Highlighted(entry, user))

    @property
    def selected(self) -> Entry | None:
        if not self.store.view:
            return None
        return self.store.row(self.cursor_row)

    def move_to(self, row: int, *, user: bool = True) -> None:
        self._set_cursor(row, user)
        self.scroll_to_region(Region(0, self.cursor_row, 1, 1), animate=False, immediate=True)
        self.refresh()
        if user and self.cursor_row != 0:
            self.post_message(self.UserMoved())

    # ---- actions -------------------------------------------------------
    def action_cursor(self, delta: int) -> None:
        self.move_to(self.cursor_row + delta)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor_row + direction * max(self.size.height - 1, 1))

    def action_jump(self, row: int) -> None:
        self.move_to(row if row >= 0 else len(self.store.view) - 1)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        row = int(self.scroll_offset.y) + offset.y
        if row < len(self.store.view):
            self.move_to(row)

    # ---- rendering -------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width = self.size.width
        row = int(self.scroll_offset.y) + y
        base = self.rich_style
        if row >= len(self.store.view):
            return Strip.blank(width, base)
        entry = self.store.row(row)
        is_cursor = row == self.cursor_row
        # Rows move down as paths arrive but do not change: reuse their strips across frames.
        # (Each Strip drags cyclic caches along; rebuilding ~40 per frame at 20 frames/s fed
        # the cyclic GC ~1 MB/s.) The flow is in the key: a Flow arriving later adds the arrow.
        key = (entry.seq, width, is_cursor, self.store.flow_of(entry.path), base)
        strip = self._strips.get(key)
        if strip is None:
            text = row_text(self.store, entry, width)
            pad = base
            if is_cursor:
                cursor = self.get_component_rich_style("path-table--cursor")
                text.stylize(cursor)
                pad = base + Style(bgcolor=cursor.bgcolor)
            strip = Strip(text.render(self.app.console), text.cell_len).crop_extend(0, width, pad)
            if len(self._strips) >= STRIP_CACHE:
                self._strips.pop(next(iter(self._strips)))
            self._strips[key] = strip
        return strip

