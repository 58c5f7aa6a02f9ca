"""The topology pane (toggle `t`): bridges, veth <-> container, addresses, published ports."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static


class TopologyPane(VerticalScroll):
    DEFAULT_CSS = """
    TopologyPane { display: none; width: 44; border-left: solid $primary; padding: 0 1; }
    TopologyPane.-open { display: block; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.body = Static("", id="topology-text")

    def compose(self) -> ComposeResult:
        yield self.body

    def show(self, text: Text) -> None:
        self.body.update(text)
