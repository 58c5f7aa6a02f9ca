"""The real thing in a real terminal: `hoptrace replay <fixture>` inside tmux, read back with capture-pane."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import FIXTURES, HOPTRACE, need_tool

FIXTURE = FIXTURES / "internet-ping.pcapng"


class Tmux:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True,
                              text=True, timeout=10).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "hop")

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen after {timeout}s:\n{screen}")
            time.sleep(0.2)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    need_tool("tmux")
    t = Tmux(f"hoptest-{uuid.uuid4().hex[:8]}")
    try:
        yield t
    finally:
        subprocess.run(["tmux", "-L", t.socket, "kill-server"], capture_output=True, check=False)


def test_replay_in_tmux_shows_the_path_and_its_nat(tmux: Tmux) -> None:
    if importlib.util.find_spec("tracer.engine") is None:
        pytest.skip("needs tracer.engine (the correlation engine) for hoptrace replay")
    if not FIXTURE.exists():
        pytest.skip(f"needs the lab fixture {FIXTURE.name} (make fixtures)")
    # A detached session takes default-size (80x24) whatever -x/-y say on tmux 3.3: set it first;
    # and COLUMNS/LINES inherited from the test runner would override the pane size.
    tmux("-f", "/dev/null", "start-server", ";", "set", "-g", "default-size", "120x40", ";",
         "new-session", "-d", "-s", "hop", "-x", "120", "-y", "40", "-e", "TERM=xterm-256color",
         f"env -u COLUMNS -u LINES {HOPTRACE[0]} replay {FIXTURE}; sleep 30")
    screen = tmux.wait_for("end of input")
    assert "SNAT" in screen, screen
    tmux("send-keys", "-t", "hop", "n")  # the next NATed path, into the path view
    # Replay has no live topology to attribute the rule: MASQUERADEd with one, SNATed without.
    screen = tmux.wait_for("ed to 203.0.113.2 on host/eth0")
    assert re.search(r"left client/eth0, crossed docker0, was (MASQUERADEd|SNATed) to 203\.0\.113\.2 on host/eth0",
                     screen), screen
    assert "SNAT" in screen and "POSTROUTING" in screen, screen
    assert "172.17.0.3 → 198.51.100.8  ⇒  203.0.113.2 → 198.51.100.8" in screen, screen
    tmux("send-keys", "-t", "hop", "q")
    deadline = time.monotonic() + 10
    while "end of input" in tmux.screen():
        assert time.monotonic() < deadline, "q did not quit"
        time.sleep(0.2)
