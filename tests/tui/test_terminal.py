"""The real thing in a real terminal: `hoptrace replay <fixture>` inside tmux, read back with capture-pane."""

from __future__ import annotations

import re
import time

from tests.conftest import FIXTURES, HOPTRACE
from tests.tui.conftest import Tmux

FIXTURE = FIXTURES / "internet-ping.pcapng"


def test_replay_in_tmux_shows_the_path_and_its_nat(tmux: Tmux) -> None:
    assert FIXTURE.exists(), f"the committed fixture {FIXTURE} is missing"
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
