"""The core's PathFinisher (NAT events, verdicts, flows, NDJSON) against the reference, byte for byte.

For each input, the reference engine (tests/reference/replay.py) runs with its correlator
watched (``Recorder``): the paths it finished, in the order it finished them, each expiry
step, what it learned about who owns an address (claims, and claims a late first sighting
took back), when it took flows and when it closed them all. The same paths, as sightings
(``ObsBatch.from_observations``), then go through ``tracer._core.PathFinisher`` in the same
order, and its NDJSON must equal the reference's, line for line (the stats line but its
elapsed time).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import CORPUS
from tests.reference.correlate import Correlator
from tests.reference.readers import FileSource
from tests.reference.replay import Outcome, replay
from tests.unit.conftest import MS, US, internet_ping, internet_pong, make_obs
from tests.unit.streams import batches_of, flood, hostile
from tracer.addr import addr_bytes
from tracer.model import InnerHeader, ObsBatch, Observation, PacketPath

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
_ELAPSED = re.compile(r', "elapsed_s": [0-9.e+-]+\}$')


class Recorder(Correlator):
    """The reference correlator, noting everything finishing depends on, in order (``ops``)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.ops: list[tuple[Any, ...]] = []

    def _claim(self, family: int, raw: bytes, netns: int, ts: int) -> tuple[str, int] | None:
        got = super()._claim(family, raw, netns, ts)
        self.ops.append(("claim", family, raw.ljust(16, b"\0"), netns, ts, got is not None))
        return got

    def _retract(self, key: tuple[str, int]) -> None:
        fam, raw = addr_bytes(key[0])
        self.ops.append(("retract", fam, raw, key[1], self.owned[key]))
        super()._retract(key)

    def _finish(self, p: Any) -> PacketPath:
        out = super()._finish(p)
        self.ops.append(("path", p.num, out))
        return out

    def _expire(self, *args: Any, **kw: Any) -> list[PacketPath]:
        out = super()._expire(*args, **kw)
        self.ops.append(("step",))
        return out

    def flush(self, max_paths: int | None = None) -> list[PacketPath]:
        out = super().flush(max_paths)
        if not self.open:
            self.ops.append(("close_flows",))
        return out

    def take_flows(self) -> Any:
        self.ops.append(("take_flows", self.clock))
        return super().take_flows()


def recorded(batches: Iterable[ObsBatch], raw: dict[int, list[tuple[int, int]]] | None = None,
             ) -> tuple[Outcome, Recorder]:
    """The reference's run over ``batches`` (a damaged file ends them, as replay reads it);
    ``raw``: where and when raw ICMP sockets were open (tests/reference/drops.py)."""
    rec = Recorder()
    rec.raw_sockets = raw or {}
    return replay(batches, correlator=rec), rec


def file_batches(*files: str) -> Iterable[ObsBatch]:
    return FileSource(list(files)).batches()


def core_lines(rec: Recorder, observations: int) -> list[str]:
    """The reference's paths, in its finishing order, through the core's PathFinisher."""
    from tracer._core import PathFinisher

    fin = PathFinisher(window_ns=rec.window_ns, flow_idle_ns=rec.flow_idle_ns, max_flow_paths=rec.max_flow_paths)
    fin.set_raw_sockets([(ns, a, b) for ns, spans in rec.raw_sockets.items() for a, b in spans])
    pending: list[tuple[int, PacketPath]] = []
    for op in rec.ops:
        kind = op[0]
        if kind == "path":
            pending.append((op[1], op[2]))
        elif kind == "step":
            if pending:
                finish_step(fin, pending)
                pending = []
        elif kind == "claim":
            _kind, fam, raw, netns, ts, new = op
            assert fin.claim(fam, raw, netns, ts) == new
        elif kind == "retract":
            _kind, fam, raw, netns, first_ts = op
            fin.retract(fam, raw, netns, first_ts)
        elif kind == "take_flows":
            fin.take_flows(op[1])
        elif kind == "close_flows":
            fin.close_flows()
    assert not pending
    fin.stats(observations, 0, 0.0)
    return bytes(fin.take()).decode("ascii").splitlines()


def finish_step(fin: Any, paths: list[tuple[int, PacketPath]]) -> None:
    """One expiry step's paths, in finishing order, as one batch of sightings."""
    batch = ObsBatch.from_observations([h for _num, p in paths for h in p.hops])
    fin.finish(batch.rows.view(np.uint8), np.array([len(p.hops) for _n, p in paths], dtype=np.uint32),
               np.array([n for n, _p in paths], dtype=np.uint64), [(h.node, h.iface) for h in batch.hops],
               batch.drop_reasons)


def assert_same(make_batches: Callable[[], Iterable[ObsBatch]],
                raw: dict[int, list[tuple[int, int]]] | None = None) -> list[str]:
    want, rec = recorded(make_batches(), raw)
    got = core_lines(rec, want.observations)
    assert want.lines and _ELAPSED.search(want.lines[-1]), want.lines[-1:]
    assert [_ELAPSED.sub("}", x) for x in got] == [_ELAPSED.sub("}", x) for x in want.lines]
    return want.lines


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.pcapng")))
def test_every_fixture_gives_the_references_lines(fixture: str) -> None:
    lines = assert_same(lambda: file_batches(str(FIXTURES / fixture)))
    assert any(x.startswith('{"type": "path"') for x in lines)
    assert any(x.startswith('{"type": "flow"') for x in lines)


def test_the_fixtures_cover_nat_verdicts_and_flows() -> None:
    """What the fixture test above compares is there to compare: NAT at each hook, every verdict."""
    seen: set[str] = set()
    for f in FIXTURES.glob("*.pcapng"):
        text = "\n".join(recorded(file_batches(str(f)))[0].lines)
        seen |= set(re.findall(r'"verdict": "(\w+)"', text))
        seen |= {f"{k} {h}" for k, h in re.findall(r'"kind": "(\w+)", "node": "[^"]*", "hook": "(\w+)"', text)}
        seen |= {"drop_reason"} if re.search(r'"drop_reason": "', text) else set()
    assert {"delivered", "dropped", "snat POSTROUTING", "dnat PREROUTING", "drop_reason"} <= seen, seen


def corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []  # tests/test_corpus.py fails then: it requires the corpus
    return sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


@pytest.mark.timeout(120)
# Every 8th file: tests/unit/test_core_engine.py runs all 830 end to end (reader, join and
# finishing together) against the reference; here, a spread of them per stage.
@pytest.mark.parametrize("name", corpus_files()[::8])
def test_corpus_file_gives_the_references_lines(name: str) -> None:
    # As replay reads it: a damaged file ends the stream where the damage is.
    assert_same(lambda: file_batches(str(CORPUS / name)))


# ------------------------------------------------------------------ generated streams


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 300), max_size=5))
def test_random_floods(n: int, seed: int, cuts: list[int]) -> None:
    obs = flood(n, seed)
    assert_same(lambda: batches_of(obs, cuts))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_hostile_streams(n: int, seed: int, cuts: list[int]) -> None:
    """Shared fingerprints, reused and missing skbs, late and out-of-order sightings (late
    first sightings take back what they taught), gaps beyond the window, drops."""
    obs = hostile(n, seed)
    assert_same(lambda: batches_of(obs, cuts))


V6 = ["2001:db8::2", "2001:db8::1", "::ffff:10.0.0.1", "::1.2.3.4", "fe80::1:0:0:2", "2001:db8:0:0:1::1"]
NAMES = ["web", "host", "inet", "cliënt", 'we"b\\', "\U0001f600/x", "c\t1"]


def varied(n: int, seed: int) -> list[Observation]:
    """Packets of every kind through random hops, rewritten at random in one namespace:
    what NAT inference, flow keys and the renderer have to get right. IPv4 and IPv6, TCP,
    UDP, ICMP echo (ids rewritten) and errors (quoted headers rewritten), ARP and other L2,
    fragments, drops with named and unnamed reasons, names that need escaping."""
    rng = random.Random(seed)
    obs: list[Observation] = []
    t = 1_000 * MS
    for k in range(n):
        t += rng.choice([5 * US, 300 * US, 3 * MS, 600 * MS, 6_000 * MS])
        v6 = rng.random() < 0.3
        fam = 6 if v6 else 4
        addrs = V6 if v6 else ["172.17.0.2", "172.17.0.3", "203.0.113.2", "198.51.100.8", "10.0.0.1"]
        kind = rng.choice(["icmp", "tcp", "udp", "err", "l2", "frag"])
        base: dict[str, Any] = dict(family=fam, src=rng.choice(addrs[:2]), dst=rng.choice(addrs[2:]),
                                    ip_id=k, digest=rng.randrange(1 << 64), ttl=64, length=rng.randrange(40, 1500),
                                    skb=rng.choice([None, 0xFFFF000 + k]), ethertype=0x86DD if v6 else 0x800,
                                    flow_label=rng.randrange(1 << 20) if v6 else None)
        icmp = 58 if v6 else 1
        if kind == "tcp":
            base.update(proto=6, sport=rng.choice([40000, 40001]), dport=rng.choice([80, 8080]), icmp_type=None,
                        icmp_code=None, icmp_id=None, icmp_seq=None, tcp_flags=rng.randrange(256),
                        tcp_seq=rng.randrange(1 << 32), tcp_ack=rng.randrange(1 << 32))
        elif kind in ("udp", "frag"):
            base.update(proto=17, sport=rng.choice([5353, 53]), dport=53, icmp_type=None, icmp_code=None,
                        icmp_id=None, icmp_seq=None)
            if kind == "frag":
                base.update(is_fragment=True, frag_offset=8 * rng.randrange(100), more_fragments=rng.random() < 0.5)
        elif kind == "err":
            base.update(proto=icmp, icmp_type=rng.choice([3, 11] if not v6 else [1, 3]), icmp_code=rng.randrange(4),
                        icmp_id=0, icmp_seq=0,
                        inner=InnerHeader(src=base["dst"], dst=base["src"], proto=rng.choice([17, 6, icmp]),
                                          sport=rng.choice([40000, 77]), dport=53))
        elif kind == "l2":
            arp = rng.random() < 0.7
            base.update(family=0, proto=0, ethertype=0x0806 if arp else 0x88CC, icmp_type=None, icmp_code=None,
                        icmp_id=None, icmp_seq=None, ip_id=None, flow_label=None,
                        src="10.0.0.1" if arp else "", dst="10.0.0.2" if arp else "")
        else:
            base.update(proto=icmp, icmp_type=rng.choice([8, 0] if not v6 else [128, 129]), icmp_code=0,
                        icmp_id=rng.choice([77, 78]), icmp_seq=k)
        hops = []
        node = rng.choice([*NAMES, "?"])  # "?": no device, no namespace (named by a neighbour)
        netns = rng.choice([4026531840, 4026532001, 0])
        cur = dict(base)
        for j in range(rng.randrange(1, 6)):
            if rng.random() < 0.4:  # another namespace (a veth pair, a link)
                node, netns = rng.choice([*NAMES, "?"]), rng.choice([4026531840, 4026532001, 4026532003, 0])
            elif j and rng.random() < 0.6 and cur["family"]:  # a rewrite within this namespace
                what = rng.choice(["src", "dst", "sport", "dport", "icmp_id", "inner", "ttl"])
                if what in ("src", "dst"):
                    cur[what] = rng.choice(addrs)
                elif what in ("sport", "dport") and cur.get("sport") is not None:
                    cur[what] = rng.choice([1024, 40000, 80])
                elif what == "icmp_id" and cur.get("icmp_id") is not None:
                    cur["icmp_id"] = rng.choice([77, 1000])
                elif what == "inner" and cur.get("inner") is not None:
                    cur["inner"] = replace(cur["inner"], src=rng.choice(addrs), sport=rng.choice([40000, 77, 5]))
                else:
                    cur["ttl"] -= 1
            d = rng.choice(["tx", "rx", None]) if j < 4 else "drop"
            reason = None
            if d == "drop" or rng.random() < 0.05:
                d, reason = "drop", rng.choice(["NETFILTER_DROP", "NO_SOCKET", "UNKNOWN(99)", "QUEUE_PURGE",
                                                "TCP_CLOSE"])
                if rng.random() < 0.5 and hops and hops[-1].direction == "rx":  # freed where it arrived
                    node, netns = hops[-1].node, hops[-1].netns
            iface = rng.choice(["eth0", "veth1", "dockér0", "(no device)", "?"] if d == "drop" else
                               ["eth0", "veth1", "dockér0"])
            hops.append(make_obs(ts_ns=t + j * 7 * US, node=node, ifname=iface,
                                 netns=netns, direction=d, drop_reason=reason, **cur))
        obs += hops
        if rng.random() < 0.4:  # the reply, the mapping reversed
            last = hops[-1]
            reply_type = {8: 0, 128: 129}.get(last.icmp_type, last.icmp_type) if last.icmp_type is not None else None
            obs.append(replace(last, src=last.dst, dst=last.src, sport=last.dport, dport=last.sport, ip_id=k + 100_000,
                               ts_ns=t + 100 * US, direction="tx", drop_reason=None, icmp_type=reply_type))
    return sorted(obs, key=lambda o: o.ts_ns)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 150), max_size=4))
def test_varied_streams(n: int, seed: int, cuts: list[int]) -> None:
    obs = varied(n, seed)
    # Raw ICMP sockets open in one namespace for part of the stream, in another for all of it.
    t0 = obs[0].ts_ns if obs else 0
    raw = {4026532001: [(t0, t0 + (seed % 7) * 3 * MS)], 4026531840: [(0, 2**63)]} if seed % 3 else None
    assert_same(lambda: batches_of(obs, cuts), raw)


def test_the_varied_streams_cover_every_kind_of_free() -> None:
    """What test_varied_streams compares is there: losses, frees after delivery, raw copies, unnamed hops."""
    seen: set[str] = set()
    for seed in range(60):
        obs = varied(30, seed)
        lines = recorded([ObsBatch.from_observations(obs)], {4026531840: [(0, 2**63)]})[0].lines
        text = "\n".join(lines)
        seen |= {"unnamed"} if any(o.node == "?" for o in obs) else set()
        seen |= {"no device"} if '"iface": "(no device)"' in text else set()
        assert '"node": "?"' not in text
        for line in lines:
            if '"direction": "drop"' in line or '"dir": "drop"' in line:
                v = re.search(r'"verdict": "(\w+)"', line)
                reasons = set(re.findall(r'"drop_reason": "(\w+)"', line))
                seen |= {f"{v.group(1) if v else ''} {r}" for r in reasons}
    assert {"unnamed", "no device", "dropped NETFILTER_DROP", "delivered QUEUE_PURGE", "delivered TCP_CLOSE",
            "delivered NO_SOCKET", "dropped NO_SOCKET", "dropped QUEUE_PURGE"} <= seen, seen


def test_ping_pong_pairs_into_one_flow() -> None:
    obs = internet_ping(t0=1_000 * MS) + internet_pong(t0=1_001 * MS)
    lines = assert_same(lambda: [ObsBatch.from_observations(obs)])
    (flow,) = [x for x in lines if '"type": "flow"' in x]
    assert flow.startswith('{"type": "flow", "id": "f1", "proto": "icmp", ') and flow.endswith('"paths": ["p1", "p2"]}')


def test_a_flow_in_pieces_at_its_path_cap() -> None:
    from tracer._core import PathFinisher

    obs = [o for k in range(5) for o in internet_ping(t0=1_000 * MS + k * MS, ip_id=k, icmp_seq=k)]
    fin = PathFinisher(max_flow_paths=2)
    batch = ObsBatch.from_observations(obs)
    fin.finish(batch.rows.view(np.uint8), np.full(5, 5, dtype=np.uint32), np.arange(1, 6, dtype=np.uint64),
               [(h.node, h.iface) for h in batch.hops], batch.drop_reasons)
    fin.close_flows()
    fin.take_flows(0)
    flows = [x for x in bytes(fin.take()).decode().splitlines() if '"type": "flow"' in x]
    assert [re.findall(r'"(f\d+)".*"paths": (\[.*\])', x)[0] for x in flows] == [
        ("f1", '["p1", "p2"]'), ("f2", '["p3", "p4"]'), ("f3", '["p5"]')]


def test_bad_batches_are_one_clear_error() -> None:
    from tracer._core import PathFinisher

    fin = PathFinisher()
    batch = ObsBatch.from_observations(internet_ping())
    rows = batch.rows.view(np.uint8)
    labels = [(h.node, h.iface) for h in batch.hops]
    with pytest.raises(ValueError, match="path lengths add up to 4 sightings, the rows hold 5"):
        fin.finish(rows, np.array([4], dtype=np.uint32), np.array([1], dtype=np.uint64), labels, {})
    with pytest.raises(ValueError, match="whole number"):
        fin.finish(rows[:-1], np.array([5], dtype=np.uint32), np.array([1], dtype=np.uint64), labels, {})
    with pytest.raises(ValueError, match="1 path lengths for 2 path numbers"):
        fin.finish(rows, np.array([5], dtype=np.uint32), np.array([1, 2], dtype=np.uint64), labels, {})
    assert bytes(fin.take()) == b""

