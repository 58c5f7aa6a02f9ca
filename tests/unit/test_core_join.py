"""The core's join (``tracer._core.Joiner``) against the reference correlator (tests/reference/correlate.py).

Both are fed the same rows in the same batches, with the same ticks and flushes.
Every row carries its index in the stream in ``wire_len`` (a field the join never
reads), so each hop of a reference ``PacketPath`` names exactly the row it came
from. Compared per call: the paths handed out (number and sightings, in order)
and the order the reference finished them in (``_finish`` is called in idle
order; it hands a step's paths out by number).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import CORPUS
from tests.reference import correlate as reference
from tests.reference.correlate import Correlator, fingerprint, hop_signature, observation, rows_of
from tests.reference.readers import FileSource
from tests.unit.conftest import MS, US
from tests.unit.streams import flood, hostile
from tracer import _core
from tracer.errors import HoptraceError
from tracer.model import HopLabel, ObsBatch, obs_dtype

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
Paths = list[tuple[str, tuple[int, ...]]]


class Reference(Correlator):
    """The reference correlator, noting the numbers of the paths it finishes, in that order."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.finished: list[int] = []

    def _finish(self, p: Any) -> Any:
        self.finished.append(p.num)
        return super()._finish(p)


@dataclass
class Config:
    window_ns: int = reference.DEFAULT_WINDOW_NS
    max_open_rows: int = reference.DEFAULT_MAX_OPEN_ROWS
    chunk: int = reference.CHUNK
    max_same_fp: int = reference.MAX_SAME_FP
    join_window_ns: int = reference.DEFAULT_JOIN_WINDOW_NS
    #: Where NAT may change a header (None: anywhere, as in replay).
    nat_netns: frozenset[int] | None = None


# One call: ("feed", batch) | ("advance", now_ns) | ("flush", max_paths)
Op = tuple[str, Any]


def tagged(rows: np.ndarray[Any, Any], start: int) -> np.ndarray[Any, Any]:
    rows = rows.copy()
    rows["wire_len"] = np.arange(start, start + len(rows), dtype=np.uint32)
    return rows


def py_run(ops: list[Op], cfg: Config) -> list[tuple[Paths, list[int]]]:
    out = []
    c = Reference(window_ns=cfg.window_ns, max_open_rows=cfg.max_open_rows, chunk=cfg.chunk,
                  max_same_fp=cfg.max_same_fp, join_window_ns=cfg.join_window_ns, nat_netns=cfg.nat_netns)
    for kind, arg in ops:
        c.finished = []
        if kind == "feed":
            paths = c.feed_batch(arg)
        elif kind == "advance":
            paths = c.advance(arg)
        else:
            paths = c.flush(arg)
        out.append(([(p.id, tuple(h.wire_len for h in p.hops)) for p in paths], c.finished))
    assert not c.open
    return out


def core_run(ops: list[Op], cfg: Config) -> list[tuple[Paths, list[int]]]:
    j = _core.Joiner(window_ns=cfg.window_ns, max_open_rows=cfg.max_open_rows, chunk_rows=cfg.chunk,
                     max_same_fp=cfg.max_same_fp, join_window_ns=cfg.join_window_ns)
    j.set_nat_namespaces(None if cfg.nat_netns is None else sorted(cfg.nat_netns))
    out = []
    for kind, arg in ops:
        if kind == "feed":
            j.set_hops([h.node.encode("utf-8", "surrogatepass") for h in arg.hops])
            got = j.feed(arg.rows, arg.now_ns)
        elif kind == "advance":
            got = j.advance(arg)
        else:
            got = j.flush(arg)
        num, step, offsets, sightings, rows = got
        assert rows is None
        assert len(offsets) == len(num) + 1 and offsets[-1] == len(sightings)
        paths = [(f"p{num[k]}", tuple(sightings[offsets[k] : offsets[k + 1]].tolist())) for k in range(len(num))]
        emitted = sorted(range(len(num)), key=lambda k: (int(step[k]), int(num[k])))
        out.append(([paths[k] for k in emitted], num.tolist()))
    assert (j.open_paths, j.open_rows) == (0, 0)
    return out


def check(ops: list[Op], cfg: Config | None = None) -> list[tuple[Paths, list[int]]]:
    cfg = cfg or Config()
    ref = py_run(ops, cfg)
    assert core_run(ops, cfg) == ref
    return ref


def closing(ops: list[Op], flush_slice: int | None = None) -> list[Op]:
    """``ops`` then the end of input (in slices of ``flush_slice`` paths, then the rest)."""
    slices: list[Op] = [("flush", flush_slice)] * 3 if flush_slice else []
    return [*ops, *slices, ("flush", None), ("flush", None)]


def all_paths(result: list[tuple[Paths, list[int]]]) -> Paths:
    return [p for paths, _order in result for p in paths]


# ---------------------------------------------------------------- keys


def test_join_keys_are_the_references() -> None:
    """The core's 64-bit join keys tell rows apart exactly as the reference's keys (the fields
    themselves) do: fingerprints and hop signatures, over rows that share some fields and not
    others (IP and not, known direction and not, a negative ifindex)."""
    rng = np.random.default_rng(7)
    n = 400
    base = np.frombuffer(rng.bytes(24 * obs_dtype().itemsize), dtype=obs_dtype()).copy()
    base["family"] = rng.choice([0, 4, 6], size=24)
    base["dir"] = rng.choice([0, 1, 2, 3], size=24)
    base["ifindex"][:4] = -1
    # Each row a copy of a base row, a field or two of it taken from another: shared keys.
    rows = base[rng.integers(0, 24, size=n)]
    names = [x for x in obs_dtype().names if x != "family"]
    for i in range(n):
        for name in rng.choice(names, size=rng.integers(0, 3)).tolist():
            rows[name][i] = base[name][rng.integers(0, 24)]
    fp, hop, hdr, scoped = _core.join_keys(rows)

    def partition(keys: list[Any]) -> list[int]:
        """Each row's class: the index of the first row with its key."""
        first: dict[Any, int] = {}
        return [first.setdefault(k, i) for i, k in enumerate(keys)]

    assert partition(fp.tolist()) == partition([fingerprint(r) for r in rows_of(rows)])
    assert partition(hop.tolist()) == partition([hop_signature(r) for r in rows_of(rows)])
    # the header NAT may rewrite, as the reference compares it (IP rows: the join reads it only there)
    one_hop = rows.copy()
    one_hop["hop"] = 0
    batch = ObsBatch(one_hop, [HopLabel(node="n", iface="i")])
    ip = [i for i, r in enumerate(rows_of(rows)) if r.family]
    assert partition([hdr[i] for i in ip]) == partition([reference.header(observation(batch, r))
                                                        for r in rows_of(one_hop[ip])])
    assert scoped.tolist() == [reference.scoped(r) for r in rows_of(rows)]
    assert 1 < len({hdr[i] for i in ip}) < len(ip)
    # what is compared is worth comparing: rows share keys and differ
    assert 1 < len(set(fp.tolist())) < n and 1 < len(set(hop.tolist())) < n
    assert bool((rows["dir"] == 0).any()) and bool((rows["family"] == 0).any())
    # bytes are rows too
    fp2, *_ = _core.join_keys(rows.tobytes())
    assert fp2.tolist() == fp.tolist()


def test_bad_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="obs_dtype"):
        _core.Joiner().feed(b"\0" * 170)
    with pytest.raises(ValueError, match="obs_dtype"):
        _core.Joiner().feed(np.zeros(4, dtype=np.uint64))


def test_rows_come_back_with_their_paths() -> None:
    batch = ObsBatch.from_observations(flood(5, 3))
    rows = tagged(batch.rows, 0)
    j = _core.Joiner(rows=True)
    assert j.feed(rows)[0].tolist() == []
    num, _step, _offsets, sightings, back = j.flush()
    assert back is not None
    assert back.view(obs_dtype()).tobytes() == rows[sightings].tobytes()
    assert (len(num), j.fed) == (len(set(rows["ip_id"].tolist())), len(rows))


# ---------------------------------------------------------------- fixtures


def source_batches(path: Path) -> Iterator[ObsBatch]:
    """A capture's batches as FileSource reads them, up to the first damage; rows tagged."""
    src = FileSource([str(path)])
    src.start()
    n = 0
    try:
        for b in src.batches():
            yield ObsBatch(tagged(b.rows, n), b.hops, b.frames, b.now_ns, b.drop_reasons)
            n += len(b.rows)
    except HoptraceError:
        return
    finally:
        src.stop()


def rebatched(batches: list[ObsBatch], cuts: list[int], ticks: list[int | None], late_ns: int = 0,
              seed: int = 0) -> list[Op]:
    """The same rows cut elsewhere (frames left out: the join never reads them), with ticks; with
    ``late_ns``, each row arrives up to that late (as from per-CPU rings)."""
    rows = np.concatenate([b.rows for b in batches]) if batches else np.zeros(0, dtype=obs_dtype())
    rows["frame_len"] = 0
    if late_ns:
        rng = np.random.default_rng(seed)
        arrival = rows["ts_ns"].astype(np.int64) + rng.integers(0, late_ns, size=len(rows))
        rows = tagged(rows[np.argsort(arrival, kind="stable")], 0)
    hops = batches[-1].hops if batches else []
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    ops: list[Op] = []
    for k, (a, b) in enumerate(pairwise(bounds)):
        tick = ticks[k % len(ticks)] if ticks else None
        now = None if tick is None else int(rows["ts_ns"][a:b].max()) + tick
        ops.append(("feed", ObsBatch(rows[a:b], hops, b"", now)))
    return ops


FIXTURE_NAMES = sorted(p.name for p in FIXTURES.glob("*.pcapng"))
CONFIGS = {
    "default": Config(),
    "short-window": Config(window_ns=1 * MS, join_window_ns=1 * MS),
    "tiny-window": Config(window_ns=20 * US, join_window_ns=20 * US),
    "small-steps": Config(chunk=3, max_same_fp=1, max_open_rows=4),
    "no-open-rows": Config(chunk=2, max_open_rows=0, window_ns=5 * MS),
    "no-nat-anywhere": Config(nat_netns=frozenset(), join_window_ns=500 * MS),
}


def test_there_are_fixtures() -> None:
    assert len(FIXTURE_NAMES) >= 10


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_every_fixture_joins_as_the_reference(fixture: str, cfg: Config) -> None:
    batches = list(source_batches(FIXTURES / fixture))
    assert batches
    ref = check(closing([("feed", b) for b in batches], 2), cfg)
    assert sorted(i for _id, hops in all_paths(ref) for i in hops) == list(range(sum(len(b) for b in batches)))
    rng = random.Random(fixture)
    n = sum(len(b) for b in batches)
    for _ in range(6):
        cuts = [rng.randrange(n + 1) for _ in range(rng.randrange(6))]
        ticks = [rng.choice([None, 0, 10 * US, 400 * MS, 2_000 * MS]) for _ in range(3)]
        ops = rebatched(batches, cuts, ticks, rng.choice([0, 20 * US, 5 * MS]), rng.randrange(1000))
        check(closing(ops, rng.choice([None, 1, 2])), cfg)


def test_a_fixture_in_any_batching_gives_the_same_paths() -> None:
    batches = list(source_batches(FIXTURES / "published-port.pcapng"))
    whole = all_paths(check(closing(rebatched(batches, [], []))))
    for cuts in ([1], [5, 6, 7], list(range(0, 70, 3))):
        assert sorted(all_paths(check(closing(rebatched(batches, cuts, []))))) == sorted(whole)


# ---------------------------------------------------------------- the corpus


def corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def test_the_corpus_is_there() -> None:
    assert len(corpus_files()) == 830, f"expected 830 corpus files in {CORPUS}"


@pytest.mark.timeout(120)
# Every 8th file: tests/unit/test_core_engine.py runs all 830 end to end (reader, join and
# finishing together) against the Python engine; here, a spread of them per stage.
@pytest.mark.parametrize("name", corpus_files()[::8])
def test_corpus_file_joins_as_the_reference(name: str) -> None:
    batches = list(source_batches(CORPUS / name))
    check(closing([("feed", b) for b in batches]))
    if sum(len(b) for b in batches) > 1:
        check(closing(rebatched(batches, [len(batches[0]) // 2, 3], [None, 0])), Config(window_ns=1 * MS, chunk=5))


# ---------------------------------------------------------------- generated streams

# Hops: (netns, hop, ifindex, dir); dir 0 (unknown) and a negative ifindex among them; a hop
# with no netns (a file's) on the node of netns 4026531840.
HOPS = [(4026532001, 0, 2, 2), (4026531840, 1, 4, 1), (4026531840, 2, 3, 1), (4026531840, 3, 2, 2),
        (4026532003, 4, 2, 1), (4026531840, 5, 7, 0), (4026531840, 6, -1, 0), (4026532003, 4, 2, 3),
        (0, 8, 9, 2)]
NODES = {4026532001: "web", 4026531840: "host", 4026532003: "inet", 0: "host"}
LABELS = [HopLabel(node=NODES[h[0]], iface=f"eth{k}", netns=h[0], ifindex=h[2]) for k, h in enumerate(HOPS)]
# A few source and destination addresses: rewrites (NAT or not), link-local, multicast.
SRCS = [b"\xac\x11\x00\x02", b"\xcb\x00\x71\x02", b"\xa9\xfe\x01\x01"]
DSTS = [b"\xc6\x33\x64\x08", b"\xc6\x33\x64\x08", b"\xac\x11\x00\x03", b"\xe0\x00\x00\x16"]


def raw_stream(n: int, seed: int) -> np.ndarray[Any, Any]:
    """Rows straight in OBS_DTYPE: few packet identities (fingerprints shared by packets in flight),
    IPv4, IPv6 and non-IP, reused and missing skbs, hops without direction (where the header
    tells sightings apart), a hop seen twice, equal times, gaps beyond the window, late and
    out-of-order arrival."""
    rng = random.Random(seed)
    rows = np.zeros(0, dtype=obs_dtype())
    out = []
    t = 1_000 * MS
    for k in range(n):
        t += rng.choice([0, 1, 3 * US, 40 * US, 2 * MS, 100 * MS, 300 * MS, 500 * MS, 700 * MS])
        ident = dict(family=rng.choice([4, 4, 6, 0]), ip_id=rng.randrange(3), icmp_seq=rng.randrange(2),
                     proto=1, length=84, digest=rng.choice([0x5EED, 0xF00D]), has=rng.choice([0, 8]))
        skb = rng.choice([0, 0xA000, 0xA000 + k, 0xB000 + k])
        path = rng.sample(range(len(HOPS)), rng.randrange(1, len(HOPS) + 1))
        if rng.random() < 0.15:
            path.append(path[-1])  # seen twice
        ts = t
        for h in path:
            ts += rng.choice([0, 0, 1, 2 * US, 5 * US, 10 * US])  # 5 µs: one of the windows
            r = dict(ident, ts_ns=ts, netns=HOPS[h][0], hop=HOPS[h][1], ifindex=HOPS[h][2], dir=HOPS[h][3],
                     skb=skb if rng.random() < 0.8 else rng.choice([0, 0xC000]),
                     ttl=rng.choice([64, 63]), sport=rng.choice([0, 5]),
                     src=rng.choice(SRCS), dst=rng.choice(DSTS))
            out.append(r)
    late = [0, 0, 0, 0, 7 * US, 9 * US, 120 * MS, 600 * MS]
    order = sorted(range(len(out)), key=lambda i: out[i]["ts_ns"] + rng.choice(late))
    rows = np.zeros(len(out), dtype=obs_dtype())
    for j, i in enumerate(order):
        for name, v in out[i].items():
            rows[j][name] = v
    return rows


def ops_of(rows: np.ndarray[Any, Any], hops: list[HopLabel], frames: bytes, cuts: list[int],
           ticks: list[int | None], advances: list[int]) -> list[Op]:
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    ops: list[Op] = []
    for k, (a, b) in enumerate(pairwise(bounds)):
        tick = ticks[k % len(ticks)] if ticks else None
        now = None if tick is None or a == b else int(rows["ts_ns"][a:b].max()) + tick
        ops.append(("feed", ObsBatch(rows[a:b], hops, frames, now)))
        if k < len(advances):
            ops.append(("advance", int(rows["ts_ns"][a:b].min()) + advances[k]))
    return ops


CFG = st.builds(Config, window_ns=st.sampled_from([500 * MS, 100 * MS, 1 * MS, 5 * US]),
                max_open_rows=st.sampled_from([300_000, 30, 3, 0]), chunk=st.sampled_from([16384, 7, 2, 1]),
                max_same_fp=st.sampled_from([64, 2, 1]),
                join_window_ns=st.sampled_from([50 * MS, 500 * MS, 1 * MS, 5 * US]),
                nat_netns=st.sampled_from([None, None, frozenset(), frozenset({4026531840}),
                                           frozenset({4026532003, 4026532001})]))
TICKS = st.lists(st.sampled_from([None, None, 0, 5 * US, 200 * MS, 900 * MS]), max_size=3)
ADVANCES = st.lists(st.sampled_from([0, 1 * MS, 600 * MS, 3_000 * MS]), max_size=3)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 150), max_size=6),
       cfg=CFG, ticks=TICKS, advances=ADVANCES, flush_slice=st.sampled_from([None, 1, 3]))
def test_raw_streams_join_as_the_reference(n: int, seed: int, cuts: list[int], cfg: Config,
                                           ticks: list[int | None], advances: list[int],
                                           flush_slice: int | None) -> None:
    rows = tagged(raw_stream(n, seed), 0)
    ref = check(closing(ops_of(rows, LABELS, b"", cuts, ticks, advances), flush_slice), cfg)
    assert sorted(i for _id, hops in all_paths(ref) for i in hops) == list(range(len(rows)))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 200), max_size=6),
       cfg=CFG, ticks=TICKS, own_tables=st.booleans())
def test_hostile_streams_join_as_the_reference(n: int, seed: int, cuts: list[int], cfg: Config,
                                               ticks: list[int | None], own_tables: bool) -> None:
    """tests/unit/streams.py's hostile streams (shared fingerprints, reused and missing skbs, a hop
    seen twice, late and out-of-order sightings, gaps beyond the window, drops), as one source
    (one label table) or as batches with label tables of their own (hop indices differ)."""
    obs = hostile(n, seed)
    if own_tables:
        bounds = sorted({0, len(obs), *(min(c, len(obs)) for c in cuts)})
        ops: list[Op] = []
        for a, b in pairwise(bounds):
            batch = ObsBatch.from_observations(obs[a:b])
            batch.rows = tagged(batch.rows, a)
            ops.append(("feed", batch))
    else:
        whole = ObsBatch.from_observations(obs)
        ops = ops_of(tagged(whole.rows, 0), whole.hops, whole.frames, cuts, ticks, [])
    check(closing(ops, 3), cfg)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_floods_join_as_the_reference(n: int, seed: int, cuts: list[int]) -> None:
    whole = ObsBatch.from_observations(flood(n, seed))
    check(closing(ops_of(tagged(whole.rows, 0), whole.hops, whole.frames, cuts, [], [])))


def test_identical_packets_in_flight_beyond_the_cap() -> None:
    # 70 copies of one packet leave web/eth0 before any reaches the next hop: the oldest
    # lose their candidacy (_MAX_SAME_FP), later hops join the oldest still listed.
    rows = np.zeros(140, dtype=obs_dtype())
    rows["family"], rows["proto"], rows["ip_id"], rows["length"] = 4, 1, 1, 84
    rows["ts_ns"][:70] = 1_000 * MS + np.arange(70) * US
    rows["ts_ns"][70:] = 1_000 * MS + 100 * US + np.arange(70) * US
    rows["hop"][:70], rows["dir"][:70] = 0, 2
    rows["hop"][70:], rows["dir"][70:] = 1, 1
    rows = tagged(rows, 0)
    ref = all_paths(check(closing([("feed", ObsBatch(rows, LABELS))])))
    assert [len(hops) for _id, hops in ref].count(2) == 64
    assert ref[6] == ("p7", (6, 70))  # the oldest six are no candidates any more


def ping_rows(hops_ts: list[tuple[int, int]], **fields: Any) -> np.ndarray[Any, Any]:
    """One packet identity seen at (hop, ts) after (hop, ts)."""
    rows = np.zeros(len(hops_ts), dtype=obs_dtype())
    rows["family"], rows["proto"], rows["ip_id"], rows["length"] = 4, 1, 1, 84
    for name, v in fields.items():
        rows[name] = v
    for r, (h, t) in zip(rows, hops_ts, strict=True):
        r["netns"], r["hop"], r["ifindex"], r["dir"] = HOPS[h]
        r["ts_ns"] = t
    return tagged(rows, 0)


def test_the_window_is_inclusive_and_measured_from_the_latest_sighting() -> None:
    w = 100 * MS
    t0 = 1_000 * MS
    # each within the window of the one before: one path, longer than the window
    rows = ping_rows([(0, t0), (1, t0 + w), (2, t0 + 2 * w), (3, t0 + 3 * w + 1)])
    ref = all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]), Config(window_ns=w, join_window_ns=w)))
    assert ref == [("p1", (0, 1, 2)), ("p2", (3,))]
    # a late sighting: a window before the latest joins, later than that does not
    rows = ping_rows([(0, t0 + w), (1, t0), (2, t0 - 1)])
    ref = all_paths(check(closing([("feed", ObsBatch(rows[:1], LABELS)), ("feed", ObsBatch(rows[1:], LABELS))]),
                          Config(window_ns=w, join_window_ns=w)))
    assert ref == [("p2", (2,)), ("p1", (1, 0))]


def test_the_join_window_is_not_the_wait_for_late_sightings() -> None:
    """Two sightings 96 ms apart are two packets (join window 50 ms), though the first path
    still waits 500 ms for late sightings: one that is 10 ms late still joins it."""
    t0 = 1_000 * MS
    rows = ping_rows([(0, t0), (2, t0 + 10 * MS), (1, t0 + 96 * MS)])
    ops: list[Op] = [("feed", ObsBatch(rows[:1], LABELS)), ("advance", t0 + 300 * MS),
                     ("feed", ObsBatch(rows[1:2], LABELS)), ("feed", ObsBatch(rows[2:], LABELS))]
    assert all_paths(check(closing(ops))) == [("p1", (0, 1)), ("p2", (2,))]
    # with a join window as long as the wait, the old rule: one path
    assert all_paths(check(closing(ops), Config(join_window_ns=500 * MS))) == [("p1", (0, 1, 2))]


def test_a_free_ends_the_skb() -> None:
    """After a drop (hop 7: inet, dir drop) nothing joins but a clone's sightings: not IP, another skb."""
    t0 = 1_000 * MS
    # the drop's skb recycled for a look-alike at later hops: another packet
    rows = ping_rows([(4, t0), (7, t0 + 5 * US), (0, t0 + 9 * US), (1, t0 + 12 * US)], skb=0xA000)
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0, 1)), ("p2", (2, 3))]
    # no skb known: the same
    rows["skb"] = 0
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0, 1)), ("p2", (2, 3))]
    # the drop arrives late (another CPU's ring), after the look-alike joined: it does not join
    late = tagged(rows[[0, 2, 3, 1]], 0)
    ops: list[Op] = [("feed", ObsBatch(late[:3], LABELS)), ("feed", ObsBatch(late[3:], LABELS))]
    assert all_paths(check(closing(ops))) == [("p1", (0, 1, 2)), ("p2", (3,))]
    # ARP (not IP): a clone (another skb) goes on after a drop, the freed skb does not
    arp = ping_rows([(4, t0), (7, t0 + 5 * US), (0, t0 + 9 * US), (1, t0 + 12 * US)], family=0, proto=0)
    arp["skb"] = [0xA, 0xA, 0xB, 0xA]
    assert all_paths(check(closing([("feed", ObsBatch(arp, LABELS))]))) == [("p1", (0, 1, 2)), ("p2", (3,))]


def addr_rows(hops_ts: list[tuple[int, int, bytes, bytes]], **fields: Any) -> np.ndarray[Any, Any]:
    """``ping_rows`` with each sighting's (source, destination)."""
    rows = ping_rows([(h, t) for h, t, _s, _d in hops_ts], **fields)
    for r, (_h, _t, src, dst) in zip(rows, hops_ts, strict=True):
        r["src"], r["dst"] = src, dst
    return tagged(rows, 0)


WEB, PUB, INET, MCAST = b"\xac\x11\x00\x02", b"\xcb\x00\x71\x02", b"\xc6\x33\x64\x08", b"\xe0\x00\x00\x16"


def test_a_rewrite_joins_only_where_nat_happens() -> None:
    """Hops 1, 2 (rx) and 3 (tx) are host's; 0 is web's, 4 inet's."""
    t0 = 1_000 * MS
    masq = [(0, t0, WEB, INET), (1, t0 + 2 * US, WEB, INET), (3, t0 + 4 * US, PUB, INET), (4, t0 + 6 * US, PUB, INET)]
    one = [("p1", (0, 1, 2, 3))]
    rows = addr_rows(masq)
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == one
    # live: only in a namespace with NAT rules or conntrack entries
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]),
                           Config(nat_netns=frozenset({4026531840})))) == one
    split = [("p1", (0, 1)), ("p2", (2, 3))]
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]),
                           Config(nat_netns=frozenset({4026532001})))) == split
    # never between namespaces: web's tx, then host's tx with another source
    rows = addr_rows([masq[0], masq[2]])
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0,)), ("p2", (1,))]
    # never after a tx (to an rx or another tx: OUTPUT rewrites before the first tx)
    rows = addr_rows([(3, t0, WEB, INET), (2, t0 + 2 * US, PUB, INET)])
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0,)), ("p2", (1,))]
    # rx then rx: a bridge port, then the bridge after br_netfilter's PREROUTING (the
    # localhost-port fixture's replies: conntrack takes 172.17.0.1 back to 127.0.0.1 there)
    rows = addr_rows([(1, t0, WEB, PUB), (2, t0 + 2 * US, WEB, b"\x7f\x00\x00\x01")])
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0, 1))]
    # never for multicast: the same path with 224.0.0.22 as destination splits
    rows = addr_rows([(h, t, s, MCAST) for h, t, s, _d in masq])
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == split
    # a file's hop (no netns) on host's node is in host's namespace
    rows = addr_rows([masq[1], (8, t0 + 4 * US, PUB, INET)])
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0, 1))]
    # arriving late, checked against the sightings on both sides of it
    rows = addr_rows([masq[0], masq[3], masq[2], masq[1]])
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0, 3, 2, 1))]


def test_a_sighting_after_its_path_finished_starts_a_new_one() -> None:
    t0 = 1_000 * MS
    rows = ping_rows([(0, t0), (1, t0 + 10 * US)])
    ops: list[Op] = [("feed", ObsBatch(rows[:1], LABELS)), ("advance", t0 + 501 * MS),
                     ("feed", ObsBatch(rows[1:], LABELS))]
    # already idle when it comes: it finishes in the step after its chunk
    assert [paths for paths, _order in check(closing(ops))] == [[], [("p1", (0,))], [("p2", (1,))], [], []]
    # one batch: one path
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0, 1))]


def test_a_different_known_skb_is_another_packet() -> None:
    t0 = 1_000 * MS
    rows = ping_rows([(0, t0), (1, t0 + 1 * US), (2, t0 + 2 * US), (1, t0 + 3 * US)])
    rows["skb"] = [0xA, 0xB, 0, 0xA]
    assert all_paths(check(closing([("feed", ObsBatch(rows, LABELS))]))) == [("p1", (0, 2, 3)), ("p2", (1,))]


def test_each_step_hands_out_its_paths_by_number_after_finishing_them_in_idle_order() -> None:
    t0 = 1_000 * MS
    # p1 opens first and is seen last; p2 goes idle first
    a = ping_rows([(0, t0), (1, t0 + 30 * US)])
    b = ping_rows([(0, t0 + 10 * US), (1, t0 + 20 * US)], ip_id=2)
    rows = tagged(np.sort(np.concatenate([a, b]), order="ts_ns"), 0)
    assert check([("feed", ObsBatch(rows, LABELS)), ("flush", None)]) == [
        ([], []), ([("p1", (0, 3)), ("p2", (1, 2))], [2, 1])]


# ---------------------------------------------------------------- look-alikes

# Senders c0..c3 (netns 5000 + s, hop s, tx), each into host through its own veth (hop 10 + s,
# rx); host sends on (hop 20, tx) or frees (hop 21, drop); inet receives (hop 22).
HOST_NS, INET_NS = 4026531840, 4026532300
LOOK = {s: (5000 + s, s, 2, 2) for s in range(4)} | {10 + s: (HOST_NS, 10 + s, 4 + s, 1) for s in range(4)} | {
    20: (HOST_NS, 20, 2, 2), 21: (HOST_NS, 21, 3, 3), 22: (INET_NS, 22, 2, 1)}
LOOK_LABELS = [HopLabel(node=("host" if h[0] == HOST_NS else "inet" if h[0] == INET_NS else f"c{h[1]}"),
                        iface=f"if{k}", netns=h[0], ifindex=h[2]) if (h := LOOK.get(k)) else
               HopLabel(node="unused", iface=f"if{k}") for k in range(23)]


def look_alikes(n: int, seed: int, scoped: bool) -> tuple[np.ndarray[Any, Any], list[int]]:
    """``n`` identical packets (one fingerprint) from a few senders, each with its own source
    (link-local or multicast when ``scoped``), sent microseconds to tens of milliseconds apart,
    on skbs from a pool of three (recycled), some freed at the host; rows in time order, and
    each row's sender."""
    rng = random.Random(seed)
    out: list[tuple[dict[str, Any], int]] = []
    t = 1_000 * MS
    for _k in range(n):
        s = rng.randrange(4)
        t += rng.choice([0, 1, 3 * US, 40 * US, 2 * MS, 30 * MS, 60 * MS])
        src = (bytes([169, 254, 0, 10 + s]) if s % 2 else bytes([224, 0, 0, 10 + s])) if scoped \
            else bytes([172, 17, 0, 10 + s])
        skb = rng.choice([0, 0xA000, 0xB000, 0xC000])
        route = [s, 10 + s, *rng.choice([[20, 22], [21], [20], []])]
        ts = t
        for h in route:
            ts += rng.choice([1, 2 * US, 5 * US])
            netns, hop, ifindex, d = LOOK[h]
            out.append((dict(ts_ns=ts, netns=netns, hop=hop, ifindex=ifindex, dir=d, skb=skb, src=src,
                             dst=b"\xe0\x00\x00\x16", family=4, proto=2, ip_id=1, length=40, digest=0x3D,
                             has=8, ttl=1), s))
    out.sort(key=lambda r: r[0]["ts_ns"])
    rows = np.zeros(len(out), dtype=obs_dtype())
    for j, (r, _s) in enumerate(out):
        for name, v in r.items():
            rows[j][name] = v
    return tagged(rows, 0), [s for _r, s in out]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 30), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 90), max_size=4),
       scoped=st.booleans(), join=st.sampled_from([50 * MS, 500 * MS]))
def test_identical_packets_from_different_hosts_are_never_one_path(n: int, seed: int, cuts: list[int],
                                                                   scoped: bool, join: int) -> None:
    """Identical packets from different senders, recycled skbs, frees followed by look-alikes:
    no path holds two senders' sightings — link-local and multicast sources anywhere, other
    sources live where no namespace may NAT (with NAT allowed, a rewrite between host's rx and
    tx is what NAT looks like: only the skb tells them apart). The core and the reference agree."""
    rows, sender = look_alikes(n, seed, scoped)
    cfg = Config(join_window_ns=join, nat_netns=None if scoped else frozenset())
    ops = ops_of(rows, LOOK_LABELS, b"", cuts, [], [])
    paths = all_paths(check(closing(ops), cfg))
    assert all(len({sender[i] for i in hops}) == 1 for _pid, hops in paths)
    # and nothing follows a drop in a path
    dirs = rows["dir"].tolist()
    assert all(dirs[i] != 3 for _pid, hops in paths for i in hops[:-1])
