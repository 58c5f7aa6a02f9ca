"""The progress line: its text, its pace (at most ~10 draws a second), its silence in a pipe,
and FileSource.progress() that feeds it. tests/tui/test_progress_terminal.py sees it in tmux."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

from tests.conftest import FIXTURES, HOPTRACE, ROOT
from tracer.sinks.progress import ClearingStream, FileProgress, Progress, for_terminal
from tracer.sources.files import FileSource


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_draws_at_most_ten_times_a_second_and_not_before_the_delay() -> None:
    clock, out = Clock(), Tty()
    state = [0, 1000, 0]
    p = Progress(lambda: tuple(state), out, label="replay", clock=clock)  # type: ignore[arg-type,return-value]
    for _ in range(20):  # the first 0.2 s: a small file shows nothing
        clock.now += 0.01
        p.update()
    assert out.getvalue() == "" and not p.shown
    for _ in range(1000):  # 10 s of updates every 10 ms
        clock.now += 0.01
        state[0] = min(state[0] + 1, 1000)
        state[2] += 7
        p.update()
    assert 95 <= p.draws <= 101
    assert out.getvalue().count("\r") == p.draws


def test_the_line_says_percent_rate_and_eta_then_clears() -> None:
    clock, out = Clock(), Tty()
    p = Progress(lambda: (25_000_000, 100_000_000, 50_000), out, label="report", clock=clock)
    clock.now += 2.0
    p.draw()
    line = out.getvalue()
    assert line.startswith("\rreport:") and line.endswith("\x1b[K") and "\n" not in line
    assert "25% of 100 MB" in line and "50.0 k records" in line and "25.0 k records/s" in line
    assert "ETA 0:06" in line  # 75 MB left at 12.5 MB/s
    p.clear()
    assert out.getvalue().endswith("\r\x1b[K") and not p.shown
    p.clear()  # twice: nothing more
    assert out.getvalue().count("\r\x1b[K") == 1


def test_unknown_total_shows_bytes_and_rate_only() -> None:
    clock, out = Clock(), Tty()
    p = Progress(lambda: (3_000_000, 0, 1_500), out, clock=clock)
    clock.now += 1.0
    assert p.text(clock.now) == "reading:  3.00 MB  1.50 k records  1.50 k records/s"


def test_long_lines_are_cut_to_the_terminal_width() -> None:
    out = Tty()
    p = Progress(lambda: (1, 2, 3), out, label="x" * 500)
    p.draw()
    assert len(out.getvalue()) <= len("\r") + 79 + len("\x1b[K")


def test_nothing_when_not_a_terminal() -> None:
    assert for_terminal(lambda: (0, 0, 0), "replay", io.StringIO()) is None
    fp = FileProgress(FileSource([]), "replay", io.StringIO())
    assert fp.line is None
    fp([])  # counts, draws nothing
    out = io.StringIO()
    assert fp.output(out) is out


def test_output_on_the_same_terminal_clears_the_line_first() -> None:
    err = Tty()
    p = Progress(lambda: (1, 2, 3), err)
    p.draw()
    out = ClearingStream(Tty(), p)
    out.write("p1  icmp ...\n")
    assert err.getvalue().endswith("\r\x1b[K") and not p.shown


def test_filesource_progress_reaches_the_files_size(tmp_path: Path) -> None:
    files = [str(FIXTURES / "internet-ping.pcapng"), str(FIXTURES / "published-port.pcapng")]
    src = FileSource(files)
    total = sum(Path(f).stat().st_size for f in files)
    assert src.progress() == (0, total)
    seen = []
    for _batch in src.batches():
        seen.append(src.progress()[0])
    assert seen == sorted(seen) and src.progress() == (total, total)


def big_pcap(path: Path, n: int) -> Path:
    """``n`` ICMP echo requests, one hop (a single-interface Ethernet pcap): slow enough work."""
    eth = bytes.fromhex("02420a000002" "02420a000001" "0800")
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        payload = bytes(56)
        for i in range(n):
            ident = i & 0xFFFF
            icmp = struct.pack("!BBHHH", 8, 0, 0, 7, ident) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0,
                             bytes([172, 17, 0, 3]), bytes([198, 51, 100, 8]))
            frame = eth + ip + icmp
            ts = 1_700_000_000_000_000 + i * 10
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)) + frame)
    return path


def test_no_progress_in_a_pipe(tmp_path: Path) -> None:
    cap = big_pcap(tmp_path / "big.pcap", 20_000)
    for cmd in (["report", str(cap)], ["replay", "--json", str(cap)]):
        r = subprocess.run([*HOPTRACE, *cmd], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert r.stderr == "" and "\r" not in r.stdout and "records/s" not in r.stdout
