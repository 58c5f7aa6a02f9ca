"""live's text output under a flood: on a terminal (tmux) the flow view, then single paths
again; piped, one block per path as always (CONTRACT.md). Driven by tests/tui/flood_text.py."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from tests.tui.conftest import Tmux

ROOT = Path(__file__).resolve().parents[2]
MODULE = f"{sys.executable} -m tests.tui.flood_text"


def test_text_on_a_terminal_switches_to_the_flow_view_and_back(tmux: Tmux) -> None:
    tmux("-f", "/dev/null", "start-server", ";", "new-session", "-d", "-s", "hop", "-x", "150", "-y", "40",
         "-e", "TERM=xterm-256color", f"cd {ROOT} && env -u COLUMNS -u LINES {MODULE}; sleep 30")
    screen = tmux.wait_for("hoptrace: flow view —", timeout=30)
    assert "every path still goes to --json/--record" in screen, screen
    screen = tmux.wait_for("icmp 198.51.100.8 → 203.0.113.2", timeout=10)
    assert "icmp 172.17.0.2 → 198.51.100.8" in screen and "NAT snat 172.17.0.2 → 203.0.113.2 @ host" in screen
    assert "paths/s" in screen and "p99" in screen, screen
    tmux.wait_for("stats: ", timeout=40)  # the stats line, last
    screen = tmux("capture-pane", "-p", "-t", "hop", "-S", "-100000")  # and the scrollback
    lines = [ln for ln in screen.splitlines() if ln.strip()]
    back = [i for i, ln in enumerate(lines) if ln.startswith("hoptrace: single paths again — ")]
    assert len(back) == 1 and "the flow view summarised" in lines[back[0]], screen[-3000:]
    assert any(re.match(r"p\d+  icmp", ln) for ln in lines[back[0] + 1:]), "single paths after it"
    # The table was drawn on the alternate screen: none of it is left in the scrollback.
    assert not any("hoptrace: flow view —" in ln for ln in lines), screen[-3000:]


def test_piped_text_is_every_path() -> None:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "tests.tui.flood_text"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "flow view" not in out and "\x1b" not in out
    # 40 batches of 200 pairs and 40 of one: every path's block, each starting with its id.
    blocks = [ln for ln in out.splitlines() if re.match(r"p\d+  ", ln)]
    assert len(blocks) == 2 * (40 * 200 + 40), (len(blocks), out[-500:], time.monotonic() - t0)
