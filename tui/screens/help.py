"""`?`: what every key does."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("/", "filter: pcap-filter expression (tcpdump syntax), matched at any hop; Enter applies, Esc closes"),
    ("space", "pause / resume the display (tracing goes on; the last N paths are kept)"),
    ("f", "auto-follow the newest path on / off"),
    ("↑↓ PgUp/Dn Home/End", "select a path (or click it); the path view below shows its hops"),
    ("[  ]", "step to the previous / next path in time"),
    ("n / d", "jump to the next path with NAT / the next dropped path"),
    ("c", "clear the table"),
    ("r", "start / stop recording to pcapng"),
    ("t", "topology pane"),
    ("ctrl+p", "command palette"),
    ("q", "quit"),
]


def help_text() -> Text:
    t = Text("hoptrace — keys\n\n", style="bold")
    for key, what in KEYS:
        t.append(f"{key:>19}  ", style="bold cyan")
        t.append(what + "\n")
    t.append("\nRows: time, flow (→ request, ← reply; a pair shares its colour), protocol, "
             "addresses before and after NAT, hops, NAT badges, verdict, end-to-end latency.\n", style="dim")
    return t


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 110; max-width: 95%; height: auto; max-height: 90%;
                                  border: thick $primary; background: $surface; padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(help_text())
