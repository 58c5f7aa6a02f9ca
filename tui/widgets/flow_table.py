"""The flow view's pane: what the flood adds up to per flow, a few times a second.

A header (which view, why, the window's totals) and the busiest flows (tracer/flow_view.py
``ROWS`` at most), one line each and a second line for its NAT and drops, redrawn from each
table the core hands over (at most 1 / ``REFRESH_S`` a second). One ``Text`` in a
``Static``, not a ``DataTable``: refilling a DataTable four times a second cost the event
loop 70-140 ms a refill on this shared box (its layout and per-cell measuring), a Text a
few ms. Every name is ``term_safe`` and no text is read as markup.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tracer.flow_view import FlowTable, bytes_rate_text, latency_text, rate_text
from tracer.safe_text import term_safe

#: (title, width, right-aligned); the flow takes what is left.
COLUMNS = (("paths/s", 8, True), ("bytes/s", 10, True), ("p50", 9, True), ("p99", 9, True),
           ("drops", 7, True), ("flow", 0, False))
INDENT = sum(w + 1 for _, w, _ in COLUMNS[:-1]) + 1


def _cell(s: str, width: int, right: bool) -> str:
    return s.rjust(width) if right else s.ljust(width)


def body_text(table: FlowTable) -> Text:
    """The table as lines: a column header, then per flow its figures and flow, and under it
    its NAT and drops (names escaped)."""
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(" ".join(_cell(t, w, r) for t, w, r in COLUMNS) + "\n", style="bold")
    for r in table.rows:
        figures = (rate_text(r.paths_per_s), bytes_rate_text(r.bytes_per_s), latency_text(r.p50_ns),
                   latency_text(r.p99_ns))
        out.append(" ".join(_cell(v, w, True) for v, (_, w, _) in zip(figures, COLUMNS, strict=False)) + " ")
        out.append(_cell(f"{r.drops:,}", COLUMNS[4][1], True) + " ", style="bold red" if r.drops else "")
        out.append(term_safe(r.flow) + "\n")
        if r.nat or r.drops_text:
            out.append(" " * INDENT)
            if r.nat:
                out.append("NAT ", style="dim")
                out.append(term_safe(r.nat), style="bold")
            if r.drops_text:
                out.append("  drops " if r.nat else "drops ", style="dim")
                out.append(term_safe(r.drops_text), style="red")
            out.append("\n")
    if table.flows > len(table.rows):
        out.append(f"… and {table.flows - len(table.rows):,} quieter flows\n", style="dim")
    out.rstrip()
    return out


class FlowPane(Vertical):
    DEFAULT_CSS = """
    FlowPane > #flow-head { height: 2; background: $panel; }
    FlowPane > #flow-body { height: 1fr; overflow: hidden; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="flow-head")
        yield Static(id="flow-body")

    def on_mount(self) -> None:
        self.head = self.query_one("#flow-head", Static)
        self.body = self.query_one("#flow-body", Static)
        self.shown: FlowTable | None = None
        self._body = Text()

    def show(self, table: FlowTable, reason: str) -> None:
        """Redraw from ``table`` (the busiest flows first)."""
        self.shown = table
        self.head.update(Text.assemble(
            ("flow view", "bold black on magenta"), " ", (term_safe(reason), "bold"),
            ("; every path still goes to --json / --record\n", "dim"),
            (f"{table.flows:,} flows, {table.paths:,} paths in the last {table.span_s:.1f} s; "
             "latency = first to last hop", "dim"),
        ))  # fmt: skip
        self._body = body_text(table)
        self.body.update(self._body)

    def clear_flows(self) -> None:
        self.shown = None
        self._body = Text()
        self.body.update(self._body)

    def rows_text(self) -> list[str]:
        """The body's lines as plain text (tests)."""
        return self._body.plain.splitlines()
