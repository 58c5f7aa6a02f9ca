"""The `/` filter: a pcap-filter expression, compiled as you type, the error shown inline."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Label


class FilterBar(Horizontal):
    DEFAULT_CSS = """
    FilterBar { height: auto; display: none; }
    FilterBar.-open { display: block; }
    FilterBar > Input { width: 1fr; }
    FilterBar > Input.-invalid { border: tall $error; }
    FilterBar > #filter-error { width: auto; max-width: 60%; color: $error; padding: 1 1 0 1; }
    """

    class Applied(Message):
        """Enter pressed on a valid expression ("" clears the filter)."""

        def __init__(self, expr: str) -> None:
            super().__init__()
            self.expr = expr

    class Closed(Message):
        pass

    def compose(self) -> ComposeResult:
        yield Input(placeholder='pcap-filter, e.g. host 198.51.100.8 and icmp   (Enter applies, Esc closes)',
                    id="filter-input")
        yield Label("", id="filter-error")
