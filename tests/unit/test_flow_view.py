"""The flow view (tracer/flow_view.py over crates/hoptrace-core/src/flow_view.rs).

The core's per-flow table is checked against a plain Python computation over the same
paths' row views (every fixture, and a slice of the tcpdump corpus): counts, bytes,
rates, numpy's nearest percentiles of the latency, the NAT of each flow's latest path,
the drops per reason and hop. The rate switch's hysteresis and the terminal text (names
escaped) are checked on their own.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CORPUS, FIXTURES
from tracer.engine import Engine
from tracer.flow_view import FlowRow, FlowTable, FlowWatch, RateSwitch, rate_text, table_lines
from tracer.model import PacketPath
from tracer.sinks.output import addr_port
from tracer.sources.files import open_files

SPAN_S = 10.0


def core_table(files: list[Path]) -> tuple[FlowTable, list[PacketPath]]:
    """The files through the engine with the flow view on; one snapshot at the end (one
    bucket: SPAN_S seconds of a fake clock), and the paths' row views."""
    clock = [0.0]
    engine = Engine(open_files([str(f) for f in files], []))
    engine.watch_flows = True
    engine.flow_clock = lambda: clock[0]
    paths: list[PacketPath] = []
    for lines in engine.chunks():
        paths.extend(ev for ev in lines.events() if isinstance(ev, PacketPath))
    clock[0] = SPAN_S
    table = engine.flow_table(SPAN_S, 100_000)
    assert table is not None
    return table, paths


def nearest(values: list[int], q: int) -> int:
    return int(np.percentile(np.array(values, dtype=np.int64), q, method="nearest"))


def reference(paths: list[PacketPath]) -> dict[str, FlowRow]:
    """What the flow view should say, computed path by path."""
    acc: dict[str, dict[str, Any]] = {}
    for p in paths:
        f = p.first
        name = f.proto_name
        if f.family != 0 or name == "arp":
            name += f" {addr_port(f.src, f.sport)} → {addr_port(f.dst, f.dport)}"
        a = acc.setdefault(name, {"paths": 0, "bytes": 0, "lat": [], "drops": defaultdict(int), "nat": ""})
        a["paths"] += 1
        a["bytes"] += f.length
        if len(p.hops) > 1:
            a["lat"].append(p.latency_ns)
        for h in p.hops:
            if h.direction == "drop":
                a["drops"][f"{h.drop_reason or 'unknown'} @ {h.node}/{h.ifname}"] += 1
        a["nat"] = "; ".join(
            f"{ev.kind} {addr_port(*sides[0])} → {addr_port(*sides[1])} @ {ev.node}"
            for ev in p.nat
            for sides in [((ev.before.src, ev.before.sport), (ev.after.src, ev.after.sport)) if ev.kind == "snat"
                          else ((ev.before.dst, ev.before.dport), (ev.after.dst, ev.after.dport))]
        )
    out = {}
    for name, a in acc.items():
        drops = sorted(a["drops"].items(), key=lambda kv: (-kv[1], kv[0].encode("utf-8", "surrogateescape")))
        lat = a["lat"]
        out[name] = FlowRow(
            flow=name, paths=a["paths"], bytes=a["bytes"], paths_per_s=a["paths"] / SPAN_S,
            bytes_per_s=a["bytes"] / SPAN_S, timed=len(lat), p50_ns=nearest(lat, 50) if lat else None,
            p99_ns=nearest(lat, 99) if lat else None, drops=sum(a["drops"].values()), nat=a["nat"],
            drops_text="; ".join(f"{k} ×{n}" for k, n in drops),
        )  # fmt: skip
    return out


def corpus_slice() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    files = sorted(p for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng") and p.stat().st_size < 300_000)
    return files[::40]


FIXTURE_FILES = sorted(FIXTURES.glob("*.pcapng"))


def test_fixtures_are_there() -> None:
    assert len(FIXTURE_FILES) >= 10, FIXTURES


@pytest.mark.parametrize("path", FIXTURE_FILES + corpus_slice(), ids=lambda p: p.name)
def test_core_table_matches_python(path: Path) -> None:
    try:
        table, paths = core_table([path])
    except Exception as exc:  # a corpus file the reader rejects at once: nothing to compare
        if path.parent == FIXTURES:
            raise
        pytest.skip(f"unreadable: {exc}")
    want = reference(paths)
    got = {r.flow: r for r in table.rows}
    assert len(got) == len(table.rows) == table.flows == len(want)
    assert table.paths == len(paths) and table.bytes == sum(r.bytes for r in want.values())
    assert table.span_s == SPAN_S
    for name, row in want.items():
        g = got[name]
        assert g.paths_per_s == pytest.approx(row.paths_per_s) and g.bytes_per_s == pytest.approx(row.bytes_per_s)
        assert g.__class__(**{**_fields(g), "paths_per_s": 0, "bytes_per_s": 0}) == \
            row.__class__(**{**_fields(row), "paths_per_s": 0, "bytes_per_s": 0}), name
    order = [(r.paths, r.bytes) for r in table.rows]
    assert order == sorted(order, reverse=True), "busiest first"


def _fields(r: FlowRow) -> dict[str, Any]:
    return {k: getattr(r, k) for k in FlowRow.__slots__}  # type: ignore[attr-defined]


def test_a_fixture_with_nat_and_one_with_drops_say_so() -> None:
    """The differential test above means something only if fixtures exercise NAT and drops."""
    table, _ = core_table([FIXTURES / "published-port.pcapng"])
    assert any(r.nat.startswith("dnat 203.0.113.2:8080 → 172.17.0.2:80 @ ") for r in table.rows)
    table, _ = core_table([FIXTURES / "blocked-ebpf.pcapng"])
    assert any(r.drops for r in table.rows), table


def test_rate_switch_hysteresis() -> None:
    s = RateSwitch(enter=1000, leave=500, calm_s=2.0, window_s=0.5)
    n = 0
    assert not s.update(0.0, n)
    # 800/s: below the threshold, stays off
    n += 400
    assert not s.update(0.5, n) and not s.on
    # 4000/s: on
    n += 2000
    assert s.update(1.0, n) and s.on
    # 700/s: under the on threshold but over the leave one: stays on
    for k in range(10):
        n += 350
        assert not s.update(1.5 + 0.5 * k, n) and s.on
    # 100/s: calm must last 2 s before it switches back
    t = 6.0
    changes = []
    for _ in range(6):
        n += 50
        t += 0.5
        changes.append(s.update(t, n))
    assert changes == [False, False, False, True, False, False] and not s.on
    assert "paths/s" in s.reason()


def test_rate_switch_turns_on_at_once_when_a_batch_holds_a_window_s_worth() -> None:
    s = RateSwitch(enter=1000, leave=500, calm_s=2.0, window_s=0.5)
    s.update(0.0, 0)
    assert not s.update(0.01, 500) and not s.on  # 500 in 10 ms: not more than a window's worth
    assert s.update(0.02, 501) and s.on and s.rate == pytest.approx(1002)  # over the whole window
    s2 = RateSwitch(enter=1000, leave=500, calm_s=2.0, window_s=0.5)
    s2.update(0.0, 0)
    assert s2.update(0.04, 20_000) and s2.rate == pytest.approx(40_000)


class _FakeEngine:
    def __init__(self) -> None:
        self.shown = 0
        self.tables = 0
        self.watch_flows = False
        self.flow_clock: Any = None
        self.quiet: list[bool] = []

        self.resets: list[float] = []

    def quiet_lines(self, quiet: bool) -> None:
        self.quiet.append(quiet)

    def flow_reset(self, now: float) -> None:
        self.resets.append(now)

    def shown_paths(self) -> int:
        return self.shown

    def flow_table(self, now: float, limit: int) -> FlowTable:
        self.tables += 1
        return FlowTable(1.0, 0, 0, 0, ())


def test_flow_watch_refreshes_at_most_every_refresh_s() -> None:
    clock = [0.0]
    eng = _FakeEngine()
    w = FlowWatch(eng, clock=lambda: clock[0], refresh_s=0.25)
    assert eng.watch_flows and eng.flow_clock() == 0.0
    for _ in range(40):  # 0.05 s steps at 20k paths/s for 2 s
        clock[0] += 0.05
        eng.shown += 1000
        w.step()
    assert w.on
    # on at the second step (1,000 paths in 0.05 s: more than a window's worth at 1,000/s);
    # then 1.9 s at one table per 0.25 s: 7 or 8 tables, never one per step
    assert 7 <= eng.tables <= 8, eng.tables
    for _ in range(100):  # calm
        clock[0] += 0.05
        w.step()
    assert not w.on and w.summarised > 0
    assert eng.quiet == [True, False], "no lines while the view is on, lines again after"
    # While off, the view is reset every window (2 s) and never while on (from 0.1 s to ~4 s).
    assert eng.resets and all(t > 4.0 for t in eng.resets), eng.resets
    assert all(b - a >= 2.0 - 1e-9 for a, b in zip(eng.resets, eng.resets[1:], strict=False))


def test_terminal_lines_escape_names_and_fit() -> None:
    row = FlowRow(flow="udp 10.0.0.1:1 → 10.0.0.2:2", paths=10, bytes=1000, paths_per_s=12345.0,
                  bytes_per_s=3 * 2**20, timed=10, p50_ns=1500, p99_ns=2_500_000, drops=3,
                  nat="dnat 1.2.3.4:80 → 5.6.7.8:80 @ evil\x1b]0;pwned\x07", drops_text="X @ n\x1b[2J/eth0 ×3")
    table = FlowTable(2.0, 20, 2000, 500, (row,) * 30)
    lines = table_lines(table, "12,345 paths/s", width=140, height=20)
    text = "\n".join(lines)
    assert "\x1b" not in text and "\\x1b]0;pwned\\x07" in text and "\\x1b[2J" in text
    assert len(lines) == 20 and all(len(line) <= 140 for line in lines)
    assert all(len(line) <= 60 for line in table_lines(table, "x", width=60, height=20))
    assert lines[0].startswith("hoptrace: flow view — 12,345 paths/s")
    assert lines[-1] == "… and 470 quieter flows"
    assert [rate_text(v) for v in (0, 0.45, 9.96, 12, 999.4, 1000, 2.5e6)] == \
        ["0", "0.5", "10.0", "12", "999", "1.0k", "2.5M"]
    assert "12.3k" in text and "3.0 MiB" in text and "1.5 µs" in text and "2.5 ms" in text
