"""probes.utc_clock: kernel monotonic time -> UTC ns, with the offset re-sampled and never reordering."""

from __future__ import annotations

import time

import numpy as np
import pytest

from probes.utc_clock import MonoToUtc, sample_offset

UTC0 = 1_765_000_000_000_000_000


class FakeClocks:
    """A monotonic and a wall clock the test moves by hand; each monotonic read costs `step` ns."""

    def __init__(self, mono: int = 5_000_000_000, offset: int = UTC0) -> None:
        self.m = mono
        self.offset = offset  # realtime - monotonic
        self.step = 10

    def mono(self) -> int:
        self.m += self.step
        return self.m

    def real(self) -> int:
        return self.m + self.offset


def test_sample_keeps_the_tightest_bracket() -> None:
    # brackets of width 900, 40, 500 ns; the realtime read sits 7 ns after the first monotonic one
    monos = iter([1000, 1900, 3000, 3040, 5000, 5500])
    reals = iter([UTC0 + 1007 + 300, UTC0 + 3007, UTC0 + 5007 - 200])
    off = sample_offset(lambda: next(monos), lambda: next(reals), tries=3)
    assert off == UTC0 + 3007 - 3020  # the 40 ns bracket, read at its middle


def test_sample_of_the_real_clocks_is_close() -> None:
    off = sample_offset()
    m = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert abs(m + off - time.time_ns()) < 50_000_000


def test_steady_clock_is_a_constant_offset() -> None:
    c = FakeClocks()
    conv = MonoToUtc(c.mono, c.real)
    m = np.array([c.m - 1000, c.m, c.m + 10**9], dtype=np.uint64)
    out = conv.to_utc(m)
    assert out.dtype == np.int64
    offs = set((out - m.astype(np.int64)).tolist())
    assert len(offs) == 1 and abs(offs.pop() - UTC0) <= 10  # a fake monotonic read takes 10 ns
    for _ in range(5):  # re-sampling an unchanged clock adds nothing
        c.m += 10**9
        conv.maybe_resample(c.mono())
    assert conv.to_utc(m).tolist() == out.tolist()
    assert len(conv._km) == 1
    assert abs(conv.now_utc() - (c.m + UTC0)) <= 100


def test_ntp_step_forward_applies_at_once_and_keeps_order() -> None:
    c = FakeClocks()
    conv = MonoToUtc(c.mono, c.real)
    before = np.array([c.m - 500, c.m], dtype=np.uint64)
    utc_before = conv.to_utc(before)
    c.offset += 3 * 10**9  # the wall clock jumps 3 s ahead
    now = c.mono()
    conv.resample(now)
    assert conv.to_utc(before).tolist() == utc_before.tolist()  # what was converted stays
    later = np.array([now + 10, now + 10**6], dtype=np.uint64)
    out = conv.to_utc(later)
    assert out[0] > utc_before[-1]
    assert abs(int(out[1]) - (now + 10**6 + c.offset)) < 1000  # the new offset, right away


def test_ntp_step_back_never_goes_backwards_and_converges() -> None:
    c = FakeClocks()
    conv = MonoToUtc(c.mono, c.real)
    t0 = c.m
    first = conv.to_utc(np.array([t0], dtype=np.uint64))
    c.offset -= 2 * 10**9  # the wall clock steps 2 s back
    now = c.mono()
    conv.resample(now)
    # hops of one path, 1 us apart, straddling the re-sample: their UTC order is their kernel order
    hops = np.arange(t0 - 50_000, now + 10 * 10**9, 1_000, dtype=np.uint64)
    out = conv.to_utc(hops)
    assert (np.diff(out) >= 0).all()
    assert int(conv.to_utc(np.array([t0], dtype=np.uint64))[0]) == int(first[0])
    # slewed: after (2 s / SLEW) of monotonic time the new offset is fully applied
    far = now + 5 * 10**9
    assert abs(int(conv.to_utc(np.array([far], dtype=np.uint64))[0]) - (far + c.offset)) < 1000
    # and the scalar path (idle batches' now_ns) agrees with the array path
    assert abs(conv.offset_at(now + 10**9) - int(conv.to_utc(np.array([now + 10**9]))[0] - (now + 10**9))) <= 1


def test_repeated_steps_stay_ordered() -> None:
    rng = np.random.default_rng(7)
    c = FakeClocks()
    conv = MonoToUtc(c.mono, c.real, resample_ns=10**9)
    last = None
    for _ in range(60):
        start = c.m
        c.m += int(rng.integers(10**8, 2 * 10**9))
        stamps = np.sort(rng.integers(start, c.m, 200, dtype=np.int64)).astype(np.uint64)
        out = conv.to_utc(stamps)
        assert (np.diff(out) >= 0).all()
        if last is not None:
            assert out[0] >= last
        last = int(out[-1])
        c.offset += int(rng.integers(-3 * 10**9, 3 * 10**9))  # NTP steps either way
        conv.maybe_resample(c.mono())
    assert len(conv._km) <= 32


def test_slew_must_let_time_advance() -> None:
    with pytest.raises(ValueError):
        MonoToUtc(slew=1.0)
