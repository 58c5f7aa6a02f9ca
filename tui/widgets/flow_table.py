"""The flow view's pane: what the flood adds up to per flow, a few times a second.

A header line (which view, why, the window's totals) and a ``DataTable`` of the busiest
flows (tracer/flow_view.py ``ROWS`` at most), refilled from each table the core hands over
(at most 1 / ``REFRESH_S`` a second): a few dozen rows, so the stock widget is cheap here.
Every text is a ``Text`` of ``term_safe`` names: never read as markup.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tracer.flow_view import FlowTable, bytes_rate_text, latency_text, rate_text
from tracer.safe_text import term_safe

COLUMNS = ("paths/s", "bytes/s", "p50", "p99", "drops", "flow", "NAT", "drops by reason @ hop")


class FlowPane(Vertical):
    DEFAULT_CSS = """
    FlowPane > #flow-head { height: 2; background: $panel; }
    FlowPane > DataTable { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="flow-head")
        table: DataTable[Any] = DataTable(id="flow-table", cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        self.table = self.query_one("#flow-table", DataTable)
        self.head = self.query_one("#flow-head", Static)
        for i, title in enumerate(COLUMNS):
            self.table.add_column(title, key=str(i))
        self.shown: FlowTable | None = None

    def show(self, table: FlowTable, reason: str) -> None:
        """Refill from ``table`` (the busiest flows first)."""
        self.shown = table
        self.head.update(Text.assemble(
            ("flow view", "bold black on magenta"), " ", (term_safe(reason), "bold"),
            ("; every path still goes to --json / --record\n", "dim"),
            (f"{table.flows:,} flows, {table.paths:,} paths in the last {table.span_s:.1f} s; "
             "latency = first to last hop", "dim"),
        ))  # fmt: skip
        t = self.table
        t.clear()
        t.add_rows(
            (
                Text(rate_text(r.paths_per_s), justify="right"),
                Text(bytes_rate_text(r.bytes_per_s), justify="right"),
                Text(latency_text(r.p50_ns), justify="right"),
                Text(latency_text(r.p99_ns), justify="right"),
                Text(f"{r.drops:,}", justify="right", style="bold red" if r.drops else ""),
                Text(term_safe(r.flow)),
                Text(term_safe(r.nat), style="bold"),
                Text(term_safe(r.drops_text), style="red"),
            )
            for r in table.rows
        )

    def clear_flows(self) -> None:
        self.shown = None
        self.table.clear()

    def rows_text(self) -> list[str]:
        """The table's rows as plain text (tests)."""
        t = self.table
        return [" ".join(c.plain if isinstance(c, Text) else str(c) for c in t.get_row_at(i))
                for i in range(t.row_count)]
