"""TUI fixtures (the data and the scripted engine live in scripted.py)."""

from __future__ import annotations

import pytest

from tests.tui.scripted import ScriptedEngine, demo_events


@pytest.fixture
def demo_engine() -> ScriptedEngine:
    return ScriptedEngine(demo_events())
