"""The status bar says when live samples (--sample, --max-cpu) and how much it skipped; without
sampling it says nothing about it."""

from __future__ import annotations

from tracer.sampling import SamplingState
from tui.widgets.status_bar import Status, status_text


def test_sampling_by_the_budget_is_shown_with_what_it_skipped() -> None:
    text = status_text(Status(backend="ebpf", sampling=SamplingState(rate=8, sampled_out=12345, by_budget=True)))
    assert "│ sampling 1 in 8 (CPU budget) (12,345 skipped) │" in text.plain
    asked = status_text(Status(backend="ebpf", sampling=SamplingState(rate=4, sampled_out=7, by_budget=False)))
    assert "│ sampling 1 in 4 (7 skipped) │" in asked.plain


def test_sampling_that_ended_still_shows_what_it_skipped() -> None:
    text = status_text(Status(backend="ebpf", sampling=SamplingState(rate=1, sampled_out=99, by_budget=False)))
    assert "│ sampling off (99 skipped) │" in text.plain


def test_no_sampling_no_mention() -> None:
    assert "sampl" not in status_text(Status(backend="ebpf")).plain
