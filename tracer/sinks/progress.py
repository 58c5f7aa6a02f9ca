"""A progress line for slow work over files (``replay``, ``report``): on a terminal only.

``Progress`` asks a position callback for (bytes done, bytes total, records) and
rewrites one line on its stream with ``\\r`` at most every ``interval`` seconds:

    replay: 42% of 268.4 MB  1.20 M records  851 k records/s  ETA 0:12

and clears it at the end, so what stays on the terminal is the command's own
output. Nothing is written until ``delay`` has passed (a small file shows no
flash), and nothing at all when the stream is not a terminal (``for_terminal``):
a pipe or a log file gets no carriage returns.

When the command's output goes to the same terminal (``replay --no-tui`` on a
terminal), ``ClearingStream`` wraps it: whatever is written there first clears
the progress line, which the next update draws again below it.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: (bytes done, bytes total or 0 when unknown, records so far)
Position = Callable[[], tuple[int, int, int]]


def _si(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'; below 1000 as is."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            v = n / scale
            return f"{v:.{2 if v < 10 else 1 if v < 100 else 0}f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def _clock_text(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One line on ``stream``, redrawn from ``position()`` at most every ``interval`` s."""

    def __init__(
        self,
        position: Position,
        stream: TextIO,
        *,
        label: str = "reading",
        interval: float = 0.1,
        delay: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.position = position
        self.stream = stream
        self.label = label
        self.interval = interval
        self._clock = clock
        self._start = clock()
        self._next = self._start + delay
        self.shown = False
        self.draws = 0

    def update(self) -> None:
        """Cheap when called often (every batch): draws only when the interval has passed."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self.interval
        self.draw(now)

    def text(self, now: float) -> str:
        done, total, records = self.position()
        elapsed = max(now - self._start, 1e-9)
        parts = [f"{self.label}:"]
        if total > 0:
            frac = min(done / total, 1.0)
            parts.append(f"{frac * 100:.0f}% of {_si(total, 'B')}")
        else:
            parts.append(_si(done, "B"))
        parts.append(f"{_si(records)} records")
        parts.append(f"{_si(records / elapsed)} records/s")
        if total > 0 and 0 < done < total:
            parts.append(f"ETA {_clock_text((total - done) / (done / elapsed))}")
        elif total > 0 and done >= total:
            parts.append("finishing the last paths")
        return "  ".join(parts)

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80
        return columns or 80  # a pty nobody sized says 0

    def draw(self, now: float | None = None) -> None:
        text = self.text(self._clock() if now is None else now)
        # One line, never wrapped: a wrapped line cannot be taken back with \r.
        text = text[: max(self._columns() - 1, 1)]
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self.shown = True
        self.draws += 1

    def clear(self) -> None:
        """Take the line back (at the end, or before other output on the same terminal)."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def for_terminal(position: Position, label: str, stream: TextIO | None = None) -> Progress | None:
    """A Progress on ``stream`` (stderr) when it is a terminal; None when it is not."""
    stream = sys.stderr if stream is None else stream
    try:
        if not stream.isatty():
            return None
    except (ValueError, AttributeError):
        return None
    return Progress(position, stream, label=label)


class ClearingStream:
    """``stream`` for a sink whose output shares the terminal with a progress line: each write
    clears the line first (the next ``update`` draws it again)."""

    def __init__(self, stream: TextIO, progress: Progress) -> None:
        self.stream = stream
        self.progress = progress

    def write(self, text: str) -> int:
        if self.progress.shown:
            self.progress.clear()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        # Writers that go around write() to the descriptor (output.write_all) would skip
        # the clearing: they fall back to write() here.
        raise io.UnsupportedOperation("write through ClearingStream.write")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class FileProgress:
    """Progress over a source with ``progress() -> (bytes read, bytes total)`` (FileSource):
    an engine batch hook counts the records and updates the line."""

    def __init__(self, source: Any, label: str, stream: TextIO | None = None) -> None:
        self.records = 0
        self.source = source
        self.line = for_terminal(self._position, label, stream)

    def _position(self) -> tuple[int, int, int]:
        done, total = self.source.progress()
        return done, total, self.records

    def __call__(self, batch: Any) -> None:
        self.add(len(batch))

    def add(self, records: int) -> None:
        """``records`` more were read: the line is redrawn when its interval has passed."""
        self.records += records
        if self.line is not None:
            self.line.update()

    def clear(self) -> None:
        if self.line is not None:
            self.line.clear()

    def output(self, stream: TextIO) -> TextIO:
        """``stream``, or a ClearingStream over it when it is the progress line's terminal too."""
        if self.line is None:
            return stream
        try:
            same = stream.isatty()
        except (ValueError, AttributeError):
            same = False
        return ClearingStream(stream, self.line) if same else stream  # type: ignore[return-value]


__all__ = ["ClearingStream", "FileProgress", "Position", "Progress", "for_terminal"]
