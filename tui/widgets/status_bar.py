"""One line: backend, events/s, lost events (red when > 0), sampling (live --sample / --max-cpu: the
rate and what it skipped), paths, recording, filter, pause/follow."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from tracer.safe_text import term_safe
from tracer.sampling import SamplingState


@dataclass(slots=True)
class Status:
    backend: str = "?"
    events_per_s: float = 0.0
    lost: int = 0
    sampling: SamplingState | None = None
    kept: int = 0
    shown: int = 0
    recording: str | None = None
    filter_expr: str | None = None
    paused: bool = False
    follow: bool = True
    finished: bool = False
    error: str | None = None
    flow_view: bool = False  # the flow table instead of single paths (tracer/flow_view.py)
    flow_rate: float = 0.0
    flow_reason: str = ""


def status_text(s: Status) -> Text:
    # A recording's file name and a source error (which quotes file names) are untrusted text.
    sep = (" │ ", "dim")
    t = Text.assemble((" backend ", "dim"), (term_safe(s.backend), "bold"), sep,
                      (f"{s.events_per_s:,.0f}", "bold"), (" ev/s", "dim"), sep)
    t.append("lost ", style="dim")
    t.append(f"{s.lost:,}", style="bold white on red" if s.lost > 0 else "bold")
    if s.sampling is not None:
        sampled = s.sampling
        t.append_text(Text.assemble(sep, (sampled.label(), "bold yellow" if sampled.rate > 1 else "dim"),
                                    (f" ({sampled.sampled_out:,} skipped)", "dim")))
    t.append_text(Text.assemble(sep, (f"{s.shown:,}", "bold"), (f"/{s.kept:,} paths", "dim")))
    if s.recording:
        t.append_text(Text.assemble(sep, ("● REC ", "bold red"), (term_safe(s.recording), "")))
    if s.filter_expr:
        t.append_text(Text.assemble(sep, ("filter ", "dim"), (term_safe(s.filter_expr), "bold yellow")))
    if s.flow_view:
        t.append_text(Text.assemble(sep, ("flow view", "bold black on magenta"),
                                    (f" ({s.flow_rate:,.0f} paths/s)", "bold")))
        if s.filter_expr:
            t.append(" all paths, not filtered", style="yellow")
    t.append_text(Text.assemble(sep, ("⏸ PAUSED", "bold black on yellow") if s.paused
                                else ("▶ live", "green") if not s.finished else ("■ end of input", "cyan")))
    if not s.follow:
        t.append_text(Text.assemble(sep, ("follow off", "yellow")))
    if s.error:
        t.append_text(Text.assemble(sep, ("source error: ", "bold red"), (term_safe(s.error), "red")))
    return t


class StatusBar(Static):
    DEFAULT_CSS = "StatusBar { height: 1; background: $panel; }"

    def show(self, status: Status) -> None:
        self.update(status_text(status))
