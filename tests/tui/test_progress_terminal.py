"""Progress seen in a real terminal (tmux): report and replay of a big file show records/s,
% and ETA on one line while they work, and leave nothing of it behind; in a pipe, nothing."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from tests.conftest import HOPTRACE
from tests.tui.conftest import Tmux
from tests.unit.test_progress import big_pcap


def start(tmux: Tmux, command: str) -> None:
    tmux("-f", "/dev/null", "start-server", ";", "set", "-g", "default-size", "120x40", ";",
         "new-session", "-d", "-s", "hop", "-x", "120", "-y", "40", "-e", "TERM=xterm-256color",
         f"env -u COLUMNS -u LINES {command}; echo EXIT=$?; sleep 60")


def watch(tmux: Tmux, timeout: float = 240) -> tuple[list[str], str]:
    """Every screen until the command has ended, and the last one."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        screen = tmux.screen()
        seen.append(screen)
        if "EXIT=" in screen:
            return seen, screen
        assert time.monotonic() < deadline, screen
        time.sleep(0.1)


def test_report_shows_progress_on_a_terminal_and_clears_it(tmux: Tmux, tmp_path: Path) -> None:
    # report runs on the core: 300k records take about the progress line's delay; 1.2M keep
    # it on screen for a second.
    cap = big_pcap(tmp_path / "big.pcap", 1_200_000)
    out = tmp_path / "report.txt"
    start(tmux, f"{HOPTRACE[0]} report {cap} > {out}")
    seen, last = watch(tmux)
    lines = [line for s in seen for line in s.splitlines() if "records/s" in line]
    assert lines, "no progress line seen"
    assert any(re.search(r"\d% of 13\d MB .* ETA", line) for line in lines), lines
    assert all(line.startswith("report: ") for line in lines), lines
    assert "EXIT=0" in last and "records/s" not in last, last
    assert last.splitlines()[0].startswith("EXIT=0")  # the line was taken back, not left above
    assert "1200000 paths" in out.read_text()


def test_replay_text_on_the_same_terminal_keeps_paths_clean(tmux: Tmux, tmp_path: Path) -> None:
    # Replay's text runs on the core, faster than the progress line's 0.25 s delay on any file
    # size worth writing here: the capture comes through a FIFO, slowly.
    src = big_pcap(tmp_path / "src.pcap", 1_200_000)
    cap = tmp_path / "big.pcap"
    os.mkfifo(cap)
    script = tmp_path / "run.sh"
    script.write_text(
        # 4 MB every 0.3 s: the reader's batches keep coming for some 8 s (at 10 MB, 4 s, one
        # run in four drew no line: a batch of the reader can hold most of a second's input),
        # so the line is drawn after its delay, redrawn, and stays until the end
        f"python3 -c 'import sys, time\nwith open(sys.argv[1], \"rb\") as f, open(sys.argv[2], \"wb\") as o:\n"
        f"    while b := f.read(4_000_000):\n        o.write(b); o.flush(); time.sleep(0.3)' {src} {cap} &\n"
        # -q: one line a path, a filter that keeps a few: most of the time only progress is drawn
        f"exec {HOPTRACE[0]} replay --no-tui -q {cap} -- icmp[7] = 0 and ip[5] = 0 and ip[4] = 0\n")
    start(tmux, f"sh {script}")
    seen, last = watch(tmux)
    assert any("records/s" in s for s in seen), "no progress line seen"
    assert "EXIT=0" in last and "records/s" not in last, last
    body = [line for line in last.splitlines() if line.strip()]
    paths = [line for line in body if line.startswith("p")]
    assert paths and all(line.endswith("big/if0") for line in paths), body
    assert body[-2].startswith("stats: 1200000 observations"), body


def test_no_progress_when_stderr_is_piped_on_a_terminal(tmux: Tmux, tmp_path: Path) -> None:
    cap = big_pcap(tmp_path / "big.pcap", 300_000)
    err = tmp_path / "err.txt"
    start(tmux, f"{HOPTRACE[0]} report {cap} 2>&1 >/dev/null | cat > {err}")
    seen, last = watch(tmux)
    assert "EXIT=0" in last
    assert not any("records/s" in s for s in seen)
    assert err.read_text() == ""
