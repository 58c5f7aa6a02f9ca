"""Text output under a synthetic flood, as ``live`` writes it: ``python -m tests.tui.flood_text``.

4 s at ~4,000 paths/s, then 4 s at ~20 paths/s, then the end (stats). On a terminal the
flood shows as the flow view, then single paths again; piped, every path's block.
(tests/tui/test_flow_view_terminal.py runs it in tmux and through a pipe.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

from tests.tui.test_flow_view import STEP_S, FloodSource
from tracer.engine import Engine, run
from tracer.model import ObsBatch
from tracer.sinks.output import PLAIN, TextSink


class PacedFlood(FloodSource):
    """FloodSource in real time: a batch every STEP_S, straight through."""

    def __init__(self) -> None:
        super().__init__(burst=40, per_burst=200, calm_batches=40)
        self.calm.set()
        self.end.set()

    def batches(self) -> Iterator[ObsBatch]:
        for b in super().batches():
            time.sleep(STEP_S)
            yield b


def main() -> int:
    sink = TextSink(sys.stdout, PLAIN, flow_view=sys.stdout.isatty())
    run(Engine(PacedFlood()), [sink])
    return 0


if __name__ == "__main__":
    sys.exit(main())
