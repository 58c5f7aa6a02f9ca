"""The selected path, hop by hop (text from tui.format.path_view)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from tracer.model import PacketPath
from tracer.sinks.output import numeric_path
from tui.format import path_view

EMPTY = Text("No path selected. Paths appear above as packets finish; ↑/↓ or the mouse select one.",
             style="dim")


class PathView(VerticalScroll):
    DEFAULT_CSS = """
    PathView { border-top: solid $primary; padding: 0 1; }
    PathView > #path-text { width: auto; }
    """

    def __init__(self, numeric: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.numeric = numeric  # -n: nodes as netns:<inode>
        self.body = Static(EMPTY, id="path-text")

    def compose(self) -> ComposeResult:
        yield self.body

    def show(self, path: PacketPath | None, flow_id: str | None = None, role: str | None = None,
             local: Mapping[str, Any] | None = None, relay: Mapping[str, Any] | None = None) -> None:
        if path is not None and self.numeric:
            path = numeric_path(path)
        self.body.update(EMPTY if path is None else path_view(path, flow_id, role, local, relay))
        self.border_title = f"path {path.id}" if path is not None else "path"
