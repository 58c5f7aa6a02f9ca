"""Issue 19 in a real terminal: the hostile-names fixture under tmux, text output and the TUI.

What reached the terminal is read back with ``capture-pane -e`` (the cells and their
attributes as escape sequences) and the pane's title: a raw SGR would colour a cell, a raw
ESC[2J would clear the lines above it, a raw OSC 0 would set the title to "PWNED".
"""

from __future__ import annotations

import re
import shlex
import time

from tests.conftest import HOPTRACE
from tests.hostile import FIXTURE
from tests.tui.conftest import Tmux

SIZE = (140, 35)  # as in the report
SGR = re.compile(r"\x1b\[[0-9;:]*m")  # what tmux itself writes for a cell's colours


def _start(tmux: Tmux, argv: list[str]) -> None:
    w, h = SIZE
    # As test_terminal.py: default-size first (tmux 3.3), and no inherited COLUMNS/LINES.
    tmux("-f", "/dev/null", "start-server", ";", "set", "-g", "default-size", f"{w}x{h}", ";",
         "new-session", "-d", "-s", "hop", "-x", str(w), "-y", str(h), "-e", "TERM=xterm-256color",
         f"env -u COLUMNS -u LINES {shlex.join(argv)}; sleep 30")


def _raw(tmux: Tmux) -> str:
    return tmux("capture-pane", "-p", "-e", "-t", "hop")


def _title(tmux: Tmux) -> str:
    return tmux("display-message", "-p", "-t", "hop", "#{pane_title}").strip()


def _assert_nothing_raw(screen_e: str) -> None:
    rest = SGR.sub("", screen_e)
    assert [c for c in rest if c in "\x1b\x07\x9b"] == [], repr(screen_e[:3000])


def test_text_output_in_tmux_shows_names_escaped(tmux: Tmux) -> None:
    assert FIXTURE.exists(), f"{FIXTURE} is committed (regenerate: python -m tests.hostile)"
    _start(tmux, [HOPTRACE[0], "replay", "--no-tui", "--color", "never", str(FIXTURE)])
    screen = tmux.wait_for("stats: 2 observations")
    raw = _raw(tmux)
    # Text without colour: any escape sequence on screen came from a name.
    assert "\x1b" not in raw and "\x07" not in raw, repr(raw)
    lines = screen.splitlines()
    assert lines[0].startswith("p1  icmp echo-request"), screen  # not cleared by ESC[2J
    assert lines[1].strip() == "\\x1b[31mweb\\x1b[0m/eth0\\x1b]0;PWNED\\x07 tx", screen
    assert lines[2].startswith("   → host/veth\\x1b[2J rx"), screen
    assert _title(tmux) != "PWNED"


def test_coloured_text_in_tmux_colours_only_what_hoptrace_colours(tmux: Tmux) -> None:
    """On a terminal, text is coloured (the verdict here): the only sequences are those colours."""
    assert FIXTURE.exists(), f"{FIXTURE} is committed (regenerate: python -m tests.hostile)"
    _start(tmux, [HOPTRACE[0], "replay", "--no-tui", str(FIXTURE)])
    screen = tmux.wait_for("stats: 2 observations")
    raw = _raw(tmux)
    assert SGR.search(raw) and "incomplete" in raw, repr(raw)  # auto: colour on a terminal
    _assert_nothing_raw(raw)
    assert screen.splitlines()[1].strip() == "\\x1b[31mweb\\x1b[0m/eth0\\x1b]0;PWNED\\x07 tx", screen
    assert _title(tmux) != "PWNED"


def test_tui_in_tmux_keeps_its_layout(tmux: Tmux) -> None:
    assert FIXTURE.exists(), f"{FIXTURE} is committed (regenerate: python -m tests.hostile)"
    _start(tmux, [HOPTRACE[0], "replay", str(FIXTURE)])
    screen = tmux.wait_for("end of input")
    time.sleep(0.5)  # the path view fills in on the next refresh
    screen = tmux.screen()
    _assert_nothing_raw(_raw(tmux))
    assert _title(tmux) != "PWNED"
    lines = screen.splitlines()
    assert len(lines) == SIZE[1], screen
    # The paths table header on top, the one path under it, the path view, the status bar.
    assert lines[0].startswith("time") and "original src → dst" in lines[0], screen
    assert "icmp echo" in lines[1] and "incomplete" in lines[1], screen
    assert any("path p1" in line for line in lines[2:-2]), screen
    assert "left \\x1b[31mweb\\x1b[0m/eth0\\x1b]0;PWNED\\x07" in screen, screen
    assert re.search(r"0 \\x1b\[31mweb\\ eth0\\x1b\]0;P tx ", screen), screen
    assert "backend file" in lines[-2] and "end of input" in lines[-2], screen
    tmux("send-keys", "-t", "hop", "q")
    deadline = time.monotonic() + 10
    while "end of input" in tmux.screen():
        assert time.monotonic() < deadline, "q did not quit"
        time.sleep(0.2)
