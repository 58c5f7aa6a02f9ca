"""TUI under load: a synthetic engine yields 20,000 paths/s; is the UI still responsive, is memory flat?

Measured in one run, for hoptrace's TUI and for a peer — the same feed into
Textual's stock ``DataTable`` (rows appended, oldest removed beyond --keep),
the widget one would reach for first:

* frame time: the event loop's lag, sampled by a 20 ms timer (how late each
  tick fires = how long drain + layout + render blocked the UI), max and p99;
* drain: time to move a batch from the feed into the table;
* RSS every second (first and last 5 s compared: flat or growing);
* throughput: paths that reached the UI per second, and paths the feed
  had to shed because the UI fell behind.

    .venv/bin/python bench/tui_bench.py                  # 20 s each (hoptrace, then DataTable peer)
    .venv/bin/python bench/tui_bench.py --seconds 5 --rate 20000 --no-peer
    .venv/bin/python bench/tui_bench.py --core           # 100k paths/s through the core, 20 s

``--core`` (issue 16, "the TUI bench, fed through the core"): eBPF-shaped rows (five hops a
packet, MASQUERADE; bench/record_bench.make_batches) offered at ``--rate`` (default then
100,000) paths/s in 10 ms batches to the real engine (tracer.engine.Engine: the core joins,
finishes, renders and aggregates per flow) under ``hoptrace live``'s TUI, flow view on.
Reports the same frame lag and RSS, the paths the core finished per second, how long the
flow view was on and how many tables it drew, and the process's CPU; targets: frame p99
< 100 ms, RSS flat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tui.scripted import demo_events
from tracer.model import Flow, PacketPath, Stats

TICK_S = 0.02
OURS: dict[str, float] = {}  # hoptrace's figures, for the peer's watchdog to print ratios
PEER_GRACE_S = 15.0  # after its input ends, how long the peer may still take
BATCH_S = 0.01  # the engine yields every 10 ms, like a live source's drain timer


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def path_pool(n: int) -> list[PacketPath]:
    """n distinct paths (ids, times, ICMP seq) cycled by the engine; building them is not measured."""
    templates = [p for batch in demo_events() for p in batch if isinstance(p, PacketPath)]
    pool = []
    for i in range(n):
        t = templates[i % len(templates)]
        dt = i * 50_000
        hops = tuple(replace(h, ts_ns=h.ts_ns + dt, icmp_seq=(i & 0xFFFF) if h.icmp_seq is not None else None)
                     for h in t.hops)
        pool.append(replace(t, id=f"p{i}", hops=hops, flow=f"f{i // 2}"))
    return pool


class PacedEngine:
    """The Engine API the TUI uses, yielding ``rate`` paths/s from a pool for ``seconds``."""

    def __init__(self, pool: list[PacketPath], rate: int, seconds: float) -> None:
        self.pool = pool
        self.rate = rate
        self.seconds = seconds
        self.batch_hooks: list[Any] = []
        self.yielded = 0
        self._stop = threading.Event()
        self.source = type("Src", (), {"kind": "synthetic"})()
        self.path_filter = None  # no --filter for the UI to take over
        self.count: int | None = None

    def events(self) -> Iterator[list[PacketPath | Flow]]:
        per_batch = max(1, int(self.rate * BATCH_S))
        start = time.monotonic()
        i = 0
        n = len(self.pool)
        while not self._stop.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= self.seconds:
                return
            due = int(elapsed * self.rate)
            if self.yielded >= due:
                time.sleep(BATCH_S)
                continue
            take = min(per_batch, due - self.yielded)
            out: list[PacketPath | Flow] = [self.pool[(i + k) % n] for k in range(take)]
            i += take
            self.yielded += take
            yield out

    def stats(self) -> Stats:
        return Stats(observations=self.yielded * 4, paths=self.yielded, lost_events=0, elapsed_s=0.0)

    def stop(self) -> None:
        self._stop.set()


class Probe:
    """Samples loop lag and RSS inside the app's event loop."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.rss: list[tuple[float, float]] = []
        self._last = 0.0
        self._t0 = 0.0

    def start(self, app: Any) -> None:
        self._t0 = self._last = time.monotonic()
        app.set_interval(TICK_S, self.tick)
        app.set_interval(1.0, lambda: self.rss.append((time.monotonic() - self._t0, rss_mb())))

    def tick(self) -> None:
        now = time.monotonic()
        self.lags_ms.append(max(0.0, (now - self._last - TICK_S) * 1000))
        self._last = now


def summarize(name: str, probe: Probe, seconds: float, delivered: int, shed: int,
              drains_ms: list[float]) -> dict[str, float]:
    lags = sorted(probe.lags_ms) or [0.0]
    rss = [m for _, m in probe.rss] or [rss_mb()]
    head = statistics.mean(rss[:5])
    tail = statistics.mean(rss[-5:])
    out = {
        "frame_lag_max_ms": lags[-1],
        "frame_lag_p99_ms": lags[int(len(lags) * 0.99) - 1 if len(lags) > 1 else 0],
        "frame_lag_median_ms": statistics.median(lags),
        "drain_max_ms": max(drains_ms or [0.0]),
        "rss_first5s_mb": head,
        "rss_last5s_mb": tail,
        "rss_max_mb": max(rss),
        "paths_per_s_to_ui": delivered / seconds,
        "shed": shed,
    }
    print(f"\n== {name}")
    for k, v in out.items():
        print(f"  {k:22} {v:12,.1f}")
    print("  rss_every_5s_mb        " + " ".join(f"{m:.0f}" for _, m in probe.rss[::5]))
    return out


async def run_hoptrace(pool: list[PacketPath], rate: int, seconds: float, keep: int) -> dict[str, float]:
    from tui.app import make_app

    engine = PacedEngine(pool, rate, seconds)
    app = make_app(engine, keep=keep)
    probe = Probe()
    drains: list[float] = []
    orig = app._drain

    def timed_drain() -> None:
        t = time.perf_counter()
        orig()
        drains.append((time.perf_counter() - t) * 1000)

    app._drain = timed_drain  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)) as pilot:
        probe.start(app)
        t0 = time.monotonic()
        while not app.status.finished:
            await pilot.pause(0.2)
        elapsed = time.monotonic() - t0
        delivered = app.store.total_seen
        shed = app.feed.dropped_by_ui
        kept = len(app.store)
    res = summarize("hoptrace TUI (line-API table)", probe, elapsed, delivered, shed, drains)
    res["kept"] = kept
    print(f"  {'kept':22} {kept:12,}")
    thaws = list(app.heap.thaw_ms)
    if thaws:
        print(f"  {'gc_thaw_ms':22} n={len(thaws)} median {statistics.median(thaws):.0f} max {max(thaws):.0f}")
    return res


async def run_datatable(pool: list[PacketPath], rate: int, seconds: float, keep: int) -> dict[str, float]:
    """The peer: the same feed and rate limit, rows into a stock DataTable."""
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from tui.feed import Feed
    from tui.format import original_text, translated_text

    engine = PacedEngine(pool, rate, seconds)
    drains: list[float] = []
    state: dict[str, Any] = {"finished": False, "delivered": 0, "in_drain": None}
    probe = Probe()

    def watchdog() -> None:
        # A DataTable drain can block the event loop for minutes (remove_row re-indexes every
        # later row): report what the peer managed by now, counting the drain in progress.
        t0 = time.monotonic() - seconds - PEER_GRACE_S
        started = state["in_drain"]
        if started is not None:
            blocked = (time.perf_counter() - started) * 1000
            drains.append(blocked)
            probe.lags_ms.append(blocked)
        peer = summarize("peer: Textual DataTable (stopped by the watchdog, still blocked)", probe,
                         time.monotonic() - t0, state["delivered"], engine.yielded - state["delivered"], drains)
        if OURS:
            print_ratios(OURS, peer)
        sys.stdout.flush()
        os._exit(0)

    timer = threading.Timer(seconds + PEER_GRACE_S, watchdog)
    timer.daemon = True
    timer.start()

    class Peer(App[None]):
        def compose(self) -> ComposeResult:
            yield DataTable(id="t")

        def on_mount(self) -> None:
            self.table = self.query_one(DataTable)
            self.table.add_columns("id", "proto", "original", "translated", "hops", "verdict")
            self.feed = Feed(engine, keep, lambda: None)
            self.set_interval(0.05, self.drain)
            threading.Thread(target=self._run, daemon=True).start()

        def _run(self) -> None:
            self.feed.run()
            state["finished"] = True

        def drain(self) -> None:
            t = state["in_drain"] = time.perf_counter()
            paths, _ = self.feed.drain()
            for p, _f, _s in paths:
                key = f"{p.id}-{state['delivered']}"
                self.table.add_row(p.id, p.proto, original_text(p), translated_text(p),
                                   str(len(p.hops)), p.verdict, key=key)
                state["delivered"] += 1
            excess = self.table.row_count - keep
            if excess > 0:
                for row_key in list(self.table.rows)[:excess]:
                    self.table.remove_row(row_key)
            drains.append((time.perf_counter() - t) * 1000)
            state["in_drain"] = None

    app = Peer()
    async with app.run_test(size=(120, 40)) as pilot:
        probe.start(app)
        t0 = time.monotonic()
        while not state["finished"]:
            await pilot.pause(0.2)
        await pilot.pause(0.2)
        elapsed = time.monotonic() - t0
        shed = app.feed.dropped_by_ui
    timer.cancel()
    return summarize("peer: Textual DataTable", probe, elapsed, state["delivered"], shed, drains)


class CoreFlood:
    """A live-like Source: eBPF-shaped rows offered at ``rate`` paths/s for ``seconds``, in
    10 ms batches cut from a pool built up front (not measured), times 10 us a packet apart."""

    kind = "synthetic"
    lost_events = 0

    def __init__(self, rate: int, seconds: float, pool_paths: int = 20_000) -> None:
        import numpy as np

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from record_bench import HOPS, make_batches

        self.rate = rate
        self.seconds = seconds
        per = max(1, int(rate * BATCH_S))
        hops = len(HOPS)
        self.pool = make_batches(pool_paths * hops, per * hops)
        self.pool_paths = pool_paths
        self.base_ts: list[Any] = []
        at = 0
        for b in self.pool:
            k = np.arange(at, at + len(b.rows))
            self.base_ts.append((k // hops) * 10_000 + (k % hops) * 7_000)
            at += len(b.rows)
        self.offered = 0
        self._stop = threading.Event()
        self.t0_ns = time.time_ns()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self._stop.set()

    def batches(self) -> Iterator[Any]:
        from dataclasses import replace as dc_replace

        start = time.monotonic()
        i = cycle = 0
        while not self._stop.is_set():
            elapsed = time.monotonic() - start
            if elapsed >= self.seconds:
                return
            if self.offered >= elapsed * self.rate:
                time.sleep(BATCH_S / 2)
                continue
            b = self.pool[i]
            rows = b.rows.copy()
            rows["ts_ns"] = self.t0_ns + cycle * self.pool_paths * 10_000 + self.base_ts[i]
            self.offered += len(rows) // 5
            i += 1
            if i == len(self.pool):
                i, cycle = 0, cycle + 1
            yield dc_replace(b, rows=rows, now_ns=int(rows["ts_ns"].max()))


async def run_core(rate: int, seconds: float, keep: int) -> dict[str, float]:
    from tracer.engine import Engine
    from tui.app import make_app

    src = CoreFlood(rate, seconds)
    engine = Engine(src)
    app = make_app(engine, keep=keep, flow_view=True)
    probe = Probe()
    drains: list[float] = []
    orig = app._drain
    on_samples: list[bool] = []
    tables: list[int] = [0]

    def timed_drain() -> None:
        t = time.perf_counter()
        orig()
        drains.append((time.perf_counter() - t) * 1000)
        on_samples.append(app.status.flow_view)

    app._drain = timed_drain  # type: ignore[method-assign]
    cpu0 = os.times()
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.flow_pane
        orig_show = pane.show

        def counted_show(*a: Any) -> None:
            tables[0] += 1
            orig_show(*a)

        pane.show = counted_show  # type: ignore[method-assign]
        probe.start(app)
        t0 = time.monotonic()
        while not app.status.finished:
            await pilot.pause(0.2)
        elapsed = time.monotonic() - t0
        finished = engine.stats().paths
        in_store = app.store.total_seen
    cpu1 = os.times()
    res = summarize("hoptrace TUI fed through the core (flow view)", probe, elapsed, in_store,
                    app.feed.dropped_by_ui, drains)
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    extra = {
        "offered_paths_per_s": src.offered / seconds,
        "core_paths_per_s": finished / elapsed,
        "flow_view_on_share": sum(on_samples) / max(len(on_samples), 1),
        "flow_tables_drawn": tables[0],
        "tables_per_s": tables[0] / elapsed,
        "cpu_s_per_s": cpu / elapsed,
    }
    for k, v in extra.items():
        print(f"  {k:22} {v:12,.2f}")
    res.update(extra)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=20_000, help="paths per second (default 20000)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--peer-seconds", type=float, default=10.0)
    ap.add_argument("--keep", type=int, default=10_000)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--core", action="store_true", help="feed the TUI through the core (default rate 100000)")
    args = ap.parse_args()
    if args.core:
        rate = args.rate if "--rate" in sys.argv else 100_000
        print(f"core: offered {rate:,} paths/s for {args.seconds:.0f} s, keep {args.keep:,}, 120x40 headless, "
              f"load {os.getloadavg()[0]:.1f}")
        asyncio.run(run_core(rate, args.seconds, args.keep))
        print(f"  {'load_after':22} {os.getloadavg()[0]:12,.1f}")
        return 0
    # As many distinct paths as the app keeps: the heap the collector scans is what a real
    # engine's fresh paths would make it (a bigger pool would inflate every gen-2 pass).
    pool = path_pool(args.keep)
    thaw = os.environ.get("HOPTRACE_GC_THAW_S", "10")
    print(f"input {args.rate:,} paths/s for {args.seconds:.0f} s, keep {args.keep:,}, 120x40 headless,"
          f" HOPTRACE_GC_THAW_S={thaw} (0 = the app leaves the GC alone), load {os.getloadavg()[0]:.1f}")
    ours = asyncio.run(run_hoptrace(pool, args.rate, args.seconds, args.keep))
    OURS.update(ours)
    if args.no_peer:
        return 0
    print(f"\n(peer: {args.peer_seconds:.0f} s of input, then at most {PEER_GRACE_S:.0f} s to catch up)")
    peer = asyncio.run(run_datatable(pool, args.rate, args.peer_seconds, args.keep))
    print_ratios(ours, peer)
    return 0


def print_ratios(ours: dict[str, float], peer: dict[str, float]) -> None:
    print("\n== ratios (peer / hoptrace; > 1 means the peer is worse)")
    for k in ("frame_lag_max_ms", "frame_lag_p99_ms", "frame_lag_median_ms", "drain_max_ms"):
        print(f"  {k:22} {peer[k] / max(ours[k], 0.1):8.1f}x")
    print(f"  {'paths_per_s_to_ui':22} {ours['paths_per_s_to_ui'] / max(peer['paths_per_s_to_ui'], 1):8.2f}x"
          " (hoptrace / peer)")


if __name__ == "__main__":
    sys.exit(main())
