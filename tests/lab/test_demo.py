"""`lab demo`: every scenario captured and (when the engine exists) replayed; lab removed after."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import assert_lab_gone, need_tool
from tracer.lab import SCENARIOS
from tracer.lab.demo import demo

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]


def test_demo_netns(fresh_lab_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_tool("tcpdump")
    assert demo("netns", fresh_lab_prefix, out_dir=tmp_path) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert f"=== {name}: ok:" in out
        assert (tmp_path / f"{name}.pcapng").stat().st_size > 0
    assert_lab_gone(fresh_lab_prefix)


def test_demo_keep_leaves_the_lab_up(fresh_lab_prefix: str, tmp_path: Path) -> None:
    need_tool("tcpdump")
    from tracer.lab import Lab

    assert demo("netns", fresh_lab_prefix, keep=True, out_dir=tmp_path) == 0
    lab = Lab("netns", fresh_lab_prefix)
    assert lab.status().exists and lab.run("gateway-ping").ok
    # fresh_lab_prefix takes it down and checks nothing is left.
