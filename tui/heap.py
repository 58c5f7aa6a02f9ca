"""Keeping CPython's cyclic garbage collector off the kept paths.

Paths are immutable and acyclic, so refcounting frees them when the store
evicts them; but while kept, every gen-2 pass re-scans them (10,000 paths ~
200k objects): 250-430 ms p99 frame lag at 20k paths/s on this box
(bench/tui_bench.py with HOPTRACE_GC_THAW_S=0). Frozen objects are skipped.
Textual's per-frame strips and caches form cycles that die after a freeze,
so the heap is thawed and collected (one full pass) every ``thaw_s`` seconds:
RSS stays flat, and the pause is paid once per period instead of every second.
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque

GC_THAW_S = float(os.environ.get("HOPTRACE_GC_THAW_S", "10"))  # 0: leave the collector alone


class HeapFreezer:
    def __init__(self, thaw_s: float = GC_THAW_S) -> None:
        self.thaw_s = thaw_s
        self._last_thaw = time.monotonic()
        self.thaw_ms: deque[float] = deque(maxlen=100)  # pauses, for bench/tui_bench.py

    def after_drain(self) -> None:
        """Called after new paths went into the store."""
        if self.thaw_s <= 0:
            return
        now = time.monotonic()
        if now - self._last_thaw >= self.thaw_s:
            self._last_thaw = now
            gc.unfreeze()
            gc.collect()  # now, or the next freeze would keep the garbage frozen
            self.thaw_ms.append((time.monotonic() - now) * 1000)
            return
        # Young cyclic garbage goes first, so that what gets frozen is what survives.
        gc.collect(1)
        gc.freeze()

    def close(self) -> None:
        gc.unfreeze()
