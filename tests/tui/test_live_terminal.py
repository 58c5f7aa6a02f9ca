"""`hoptrace live` opens the TUI on a terminal (tmux): lab traffic appears live, NAT hop and all."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HOPTRACE, need_root
from tests.tui.conftest import Tmux

pytestmark = [pytest.mark.root, pytest.mark.lab]


def wait_ready(ready: Path, tmux: Tmux) -> None:
    """Until ``live`` has attached its probes (it writes its ready file then)."""
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline, f"no ready file after 60 s:\n{tmux.screen()}"
        time.sleep(0.1)


def test_live_tui_shows_lab_traffic(lab_netns: Any, tmux: Tmux, tmp_path: Path) -> None:
    need_root()
    ready = tmp_path / f"ready-{uuid.uuid4().hex[:6]}"
    tmux("-f", "/dev/null", "start-server", ";", "set", "-g", "default-size", "120x40", ";",
         "new-session", "-d", "-s", "hop", "-x", "120", "-y", "40", "-e", "TERM=xterm-256color",
         f"env -u COLUMNS -u LINES {HOPTRACE[0]} live --backend ebpf --ready-file {ready}"
         f" --filter 'icmp and host 198.51.100.8'; sleep 30")
    wait_ready(ready, tmux)
    screen = tmux.wait_for("backend ebpf")
    assert "▶ live" in screen and "filter icmp and host 198.51.100.8" in screen, screen
    result = lab_netns.run("internet-ping")
    assert result.ok, result.detail
    screen = tmux.wait_for("SNAT", timeout=20)
    # Other labs on this machine may trace too: step through the NAT paths to the request.
    request = re.compile(r"crossed docker0, was (MASQUERADEd|SNATed) to 203\.0\.113\.2 on host/eth0")
    for _ in range(20):
        tmux("send-keys", "-t", "hop", "n")
        time.sleep(0.3)
        screen = tmux.screen()
        if request.search(screen):
            break
    assert request.search(screen), screen
    assert "POSTROUTING" in screen and "⇒  203.0.113.2 → 198.51.100.8" in screen, screen
    tmux("send-keys", "-t", "hop", "q")
    deadline = time.monotonic() + 20
    while ready.exists():  # live removes its ready file on the way out
        assert time.monotonic() < deadline, f"q did not end hoptrace live:\n{tmux.screen()}"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["terminal closed", "SIGTERM"])
def test_live_tui_ends_when_its_terminal_goes_or_on_sigterm(lab_netns: Any, tmux: Tmux, tmp_path: Path,
                                                            how: str) -> None:
    """A closed terminal (SIGHUP) or SIGTERM ends the TUI and detaches: it once stayed alive
    on a dead terminal at 100% CPU with its probes attached."""
    need_root()
    import os
    import signal

    ready = tmp_path / f"ready-{uuid.uuid4().hex[:6]}"
    client = lab_netns.netns_inode("client")
    tmux("-f", "/dev/null", "start-server", ";", "new-session", "-d", "-s", "hop", "-x", "120", "-y", "40",
         "-e", "TERM=xterm-256color",
         f"env -u COLUMNS -u LINES {HOPTRACE[0]} live --backend ebpf --ready-file {ready}"
         f" --iface netns:{client}/eth0")
    wait_ready(ready, tmux)
    pid = int(ready.read_text().split()[0])
    tmux.wait_for("backend ebpf")
    if how == "SIGTERM":
        os.kill(pid, signal.SIGTERM)
    else:
        tmux("kill-server")
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"hoptrace live (pid {pid}) still running 20 s after: {how}")
        time.sleep(0.2)
    assert not ready.exists()
