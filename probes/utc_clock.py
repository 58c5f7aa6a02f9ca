"""Kernel monotonic time (bpf_ktime_get_ns) -> UTC nanoseconds, never reordering.

The eBPF programs stamp sightings with CLOCK_MONOTONIC; every other source
and CONTRACT.md speak UTC nanoseconds. The offset realtime - monotonic is
sampled at start and re-sampled while tracing. It changes when NTP slews or
steps the wall clock; applied naively, a step back would date a later hop
before an earlier one. So the applied offset is one function of monotonic
time, only ever extended past the last re-sample (never rewritten where
sightings were already converted): a rise is applied at once (order is kept),
a fall is slewed at SLEW of monotonic time, so UTC = mono + offset(mono)
always advances with monotonic time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

SLEW = 0.5  # a fall of the offset is absorbed at most this fast (ns of offset per ns of monotonic time)
TRIES = 5  # samples per pick: the tightest monotonic bracket wins
KEEP_KNOTS = 32  # older knots go; sightings older than the oldest get its offset
RESAMPLE_NS = 1_000_000_000
DEADBAND_NS = 1_000  # changes smaller than this are the sampling's own jitter


def sample_offset(
    mono: Callable[[], int] | None = None,
    real: Callable[[], int] | None = None,
    tries: int = TRIES,
) -> int:
    """realtime - monotonic, from the read of realtime bracketed tightest by two monotonic reads."""
    mono = mono or (lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    real = real or time.time_ns
    best: tuple[int, int] | None = None
    for _ in range(max(1, tries)):
        m1 = mono()
        r = real()
        m2 = mono()
        gap = m2 - m1
        if best is None or gap < best[0]:
            best = (gap, r - (m1 + (gap >> 1)))
    assert best is not None
    return best[1]


class MonoToUtc:
    """The applied offset as a piecewise-linear function of monotonic time (knots, last one flat)."""

    def __init__(
        self,
        mono: Callable[[], int] | None = None,
        real: Callable[[], int] | None = None,
        *,
        slew: float = SLEW,
        resample_ns: int = RESAMPLE_NS,
    ) -> None:
        if not 0 < slew < 1:
            raise ValueError(f"slew {slew}: must be in (0, 1) so that time keeps advancing")
        self._mono = mono or (lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        self._real = real or time.time_ns
        self.slew = slew
        self.resample_ns = resample_ns
        now = self._mono()
        off = sample_offset(self._mono, self._real)
        self._base = off  # knot offsets are kept relative to it: small, exact in float64
        self._km: list[int] = [now]
        self._ko: list[int] = [0]
        self._next = now + resample_ns

    def offset_at(self, mono_ns: int) -> int:
        """The offset applied to a sighting stamped ``mono_ns``."""
        km, ko = self._km, self._ko
        if mono_ns <= km[0]:
            return self._base + ko[0]
        for i in range(1, len(km)):
            if mono_ns <= km[i]:
                m0, m1, o0, o1 = km[i - 1], km[i], ko[i - 1], ko[i]
                return self._base + o0 + int((o1 - o0) * (mono_ns - m0) // (m1 - m0))
        return self._base + ko[-1]

    def resample(self, now_mono: int | None = None) -> None:
        """Take a fresh offset; the function changes only after ``now_mono`` (no sighting there yet)."""
        now = self._mono() if now_mono is None else now_mono
        target = sample_offset(self._mono, self._real) - self._base
        cur = self.offset_at(now) - self._base
        self._next = now + self.resample_ns
        if self._km[-1] <= now and abs(target - cur) < DEADBAND_NS:
            return  # sampling jitter, not a change of the wall clock
        # drop the part of a ramp still in the future, keep the knot at now
        while len(self._km) > 1 and self._km[-1] > now:
            self._km.pop()
            self._ko.pop()
        if self._km[-1] < now:
            self._km.append(now)
            self._ko.append(cur)
        elif self._km[-1] == now:
            self._ko[-1] = cur
        if target > cur:
            # a rise: one nanosecond's ramp (order kept: the offset only grows)
            self._km.append(now + 1)
        else:
            self._km.append(now + max(1, int((cur - target) / self.slew) + 1))
        self._ko.append(target)
        if len(self._km) > KEEP_KNOTS:
            del self._km[: len(self._km) - KEEP_KNOTS]
            del self._ko[: len(self._ko) - KEEP_KNOTS]

    def knots(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """The function as ``(base, knot times, knot offsets)``: what the core converts with
        (``tracer._core.EbpfRing.set_clock``), equal to ``to_utc`` to the nanosecond."""
        return self._base, tuple(self._km), tuple(self._ko)

    def maybe_resample(self, now_mono: int) -> None:
        """Re-sample once a ``resample_ns`` has passed since the last one."""
        if now_mono >= self._next:
            self.resample(now_mono)

    def now_utc(self) -> int:
        """The source's clock now, on the same scale as converted sightings."""
        return int(self.to_utc([self._mono()])[0])

    def to_utc(self, mono: Any) -> Any:
        """A uint64/int64 numpy array of monotonic stamps -> int64 UTC nanoseconds."""
        import numpy as np

        m = np.asarray(mono).astype(np.int64)
        if len(self._km) == 1:
            return m + np.int64(self._base + self._ko[0])
        ref = self._km[0]
        x = (m - np.int64(ref)).astype(np.float64)
        kx = np.asarray([k - ref for k in self._km], dtype=np.float64)
        ky = np.asarray(self._ko, dtype=np.float64)
        rel = np.floor(np.interp(x, kx, ky)).astype(np.int64)
        return m + rel + np.int64(self._base)
