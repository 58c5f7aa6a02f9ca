"""Sightings that come in time order join alike in any batching, in the core and in the
reference (tests/reference/correlate.py), and the two agree.

Issue #15: "idle-ordered finishing so output never depends on batching". The core's
proptest ``correlate::tests::sightings_in_time_order_join_alike_in_any_batching`` found a
case (crates/hoptrace-core/proptest-regressions/correlate/tests.txt) where a path idle
longer than the window still counted against ``max_same_fp`` when expiry had not reached
it yet, and not when a tick had finished it: which path a later sighting joined depended
on when expiry ran. Here: many sightings of one or two fingerprints over a few hops, at
times a window apart give or take a nanosecond, fed whole and cut into batches with
ticks and advances (each no later than the next sighting) and in small chunks.
"""

from __future__ import annotations

import random
from itertools import pairwise
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.conftest import MS, US
from tests.unit.test_core_join import HOPS, LABELS, Config, Op, Paths, check, closing, tagged
from tracer.model import ObsBatch, obs_dtype


def grid_stream(n: int, window: int, seed: int) -> np.ndarray[Any, Any]:
    """``n`` sightings in time order at (a few windows) + (-1, 0, 1 ns or a few µs): many
    pairs exactly a window apart, or a nanosecond more or less. Mostly one fingerprint,
    hops from a few (so one hop is seen again: a new path), skbs mostly unknown."""
    rng = random.Random(seed)
    small = [0, 1, 2, window // 4, window // 2]
    times = sorted(1_000 * MS + rng.randrange(4) * window + rng.choice([-1, 0, 1]) + rng.choice(small)
                   for _ in range(n))
    rows = np.zeros(n, dtype=obs_dtype())
    rows["family"], rows["proto"], rows["length"], rows["ttl"] = 4, 1, 84, 64
    rows["ts_ns"] = times
    rows["ip_id"] = [rng.choice([1, 1, 1, 2]) for _ in range(n)]
    rows["skb"] = [rng.choice([0, 0, 0, 0xA000, 0xB000]) for _ in range(n)]
    for r in rows:
        r["netns"], r["hop"], r["ifindex"], r["dir"] = HOPS[rng.choice([0, 1, 2, 3, 4, 7])]
    return tagged(rows, 0)


def batched(rows: np.ndarray[Any, Any], cuts: list[int], ticks: list[int | None],
            advances: list[int | None]) -> list[Op]:
    """``rows`` cut at ``cuts``; after batch k a tick (the batch's ``now_ns``) and an advance,
    each ``ticks[k]``/``advances[k]`` ns before the next batch's first sighting (none: None);
    after the last batch, as far past its last sighting."""
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    ops: list[Op] = []
    for k, (a, b) in enumerate(pairwise(bounds)):
        nxt = int(rows["ts_ns"][b]) if b < len(rows) else None

        def at(back: int | None, nxt: int | None = nxt, b: int = b) -> int | None:
            if back is None:
                return None
            return nxt - back if nxt is not None else int(rows["ts_ns"][b - 1]) + back

        tick = ticks[k % len(ticks)] if ticks else None
        ops.append(("feed", ObsBatch(rows[a:b], LABELS, b"", at(tick))))
        adv = at(advances[k % len(advances)] if advances else None)
        if adv is not None:
            ops.append(("advance", adv))
    return ops


def in_finish_order(result: list[tuple[Paths, list[int]]]) -> Paths:
    """Every path (number, sightings) in the order the join finished them (the idle order)."""
    by_num = {int(pid[1:]): (pid, hops) for paths, _order in result for pid, hops in paths}
    return [by_num[num] for _paths, order in result for num in order]


W = st.sampled_from([100 * MS, 5 * US, 3])
BACK = st.lists(st.sampled_from([None, 0, 1, 2, 2 * US, 200 * MS]), max_size=4)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 40), window=W, seed=st.integers(0, 2**32 - 1),
       cuts=st.lists(st.integers(0, 40), max_size=8), ticks=BACK, advances=BACK,
       chunk=st.sampled_from([16384, 5, 1]), max_same_fp=st.sampled_from([64, 3, 2, 1]))
def test_sightings_in_time_order_join_alike_in_any_batching(n: int, window: int, seed: int, cuts: list[int],
                                                            ticks: list[int | None], advances: list[int | None],
                                                            chunk: int, max_same_fp: int) -> None:
    rows = grid_stream(n, window, seed)
    whole = Config(window_ns=window, max_same_fp=max_same_fp, join_window_ns=window)
    # check(): the core and the reference hand out the same paths, call by call
    want = in_finish_order(check(closing([("feed", ObsBatch(rows, LABELS))]), whole))
    assert sorted(i for _pid, hops in want for i in hops) == list(range(n))
    cut = check(closing(batched(rows, cuts, ticks, advances)), Config(window_ns=window, chunk=chunk,
                                                                       max_same_fp=max_same_fp, join_window_ns=window))
    assert in_finish_order(cut) == want


def test_the_saved_core_case_joins_alike_whole_and_ticked() -> None:
    """The proptest's saved case (window 100 ms, max_same_fp 2, a cut at row 16 with a tick at
    its time): one packet identity opened twice at one hop 5 µs apart, seen again at other hops
    a window (+5 µs) later. The second path is idle past the window before the fourth
    sighting's path opens, finished by the tick or not: it does not count, so the first path,
    the oldest candidate, takes the last sighting."""
    t, w = 1_000 * MS, 100 * MS
    at = [(3, t + 5 * US), (3, t + 10 * US), (0, t + w + 5 * US), (4, t + w + 10 * US), (2, t + w + 15 * US),
          (2, t + w + 20 * US), (1, t + w + 40 * US)]
    rows = np.zeros(len(at), dtype=obs_dtype())
    rows["family"], rows["proto"], rows["length"], rows["ttl"] = 0, 1, 84, 63
    for r, (h, ts) in zip(rows, at, strict=True):
        r["netns"], r["hop"], r["ifindex"], r["dir"] = HOPS[h]
        r["ts_ns"] = ts
    rows = tagged(rows, 0)
    cfg = Config(window_ns=w, max_same_fp=2, join_window_ns=w)
    want = [("p2", (1,)), ("p3", (5,)), ("p1", (0, 2, 3, 4, 6))]
    assert in_finish_order(check(closing([("feed", ObsBatch(rows, LABELS))]), cfg)) == want
    ticked = [("feed", ObsBatch(rows[:4], LABELS, b"", int(rows["ts_ns"][4]))), ("feed", ObsBatch(rows[4:], LABELS))]
    assert in_finish_order(check(closing(ticked), cfg)) == want
