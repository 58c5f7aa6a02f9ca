"""tracer.sinks.analysis builds exactly the tables it built before its column rewrite.

The reference is the previous implementation, kept verbatim in reference_analysis.py:
same schema, same values, same nulls, same dictionaries in the same order.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pytest

from tests.record import reference_analysis as ref
from tests.record.test_analysis import sample_paths
from tracer.model import ConntrackRef, Endpoints, NatEvent, Observation, PacketPath
from tracer.sinks.analysis import to_tables

ROOT = Path(__file__).resolve().parents[2]


def same_tables(paths: list[PacketPath]) -> None:
    got, want = to_tables(paths), ref.to_tables(paths)
    assert list(got) == list(want)
    for name in want:
        g, w = got[name], want[name]
        assert g.schema.equals(w.schema), name
        assert g.num_rows == w.num_rows, name
        for col in w.column_names:
            gc_, wc = g.column(col).combine_chunks(), w.column(col).combine_chunks()
            assert gc_.equals(wc), (name, col, gc_, wc)
            if pa.types.is_dictionary(wc.type):
                assert gc_.dictionary.equals(wc.dictionary), (name, col)
                assert gc_.indices.equals(wc.indices), (name, col)


def random_paths(n_paths: int, seed: int) -> list[PacketPath]:
    """Paths with every kind of value an Observation or NAT event may hold, None included."""
    rnd = random.Random(seed)

    def maybe(v: object, p: float = 0.3) -> object:
        return None if rnd.random() < p else v

    addrs = ["172.17.0.2", "203.0.113.2", "198.51.100.8", "fd00::2", "2001:db8::1", ""]
    hops = [("web", "eth0", 4026532466, 2), ("host", "veth1a2b3c", 4026532300, 7), ("host", "docker0", 4026532300, 3),
            ("host", "eth0", 4026532300, 2), ("inet", "eth0", 4026532500, 2), ("netns:7", "lo", 7, 1)]  # fmt: skip
    reasons = [None, None, "NETFILTER_DROP", "NO_SOCKET", "UNKNOWN(99)"]
    paths = []
    for i in range(n_paths):
        family, proto, ethertype = rnd.choice([(4, 1, 0x800), (4, 6, 0x800), (4, 17, 0x800), (6, 58, 0x86DD),
                                               (6, 6, 0x86DD), (0, 0, 0x806), (4, 132, 0x800), (0, 0, 0x88CC)])  # fmt: skip
        obs = []
        ts = rnd.randrange(0, 2**62)
        for _ in range(rnd.randint(1, 7)):
            node, ifname, netns, ifindex = rnd.choice(hops)
            ts += rnd.randrange(0, 10**6)
            obs.append(Observation(
                ts_ns=ts, netns=netns, ifindex=ifindex, ifname=ifname, node=node,
                direction=rnd.choice(["rx", "tx", "drop", None]),  # type: ignore[arg-type]
                source=rnd.choice(["ebpf", "pcap", "file"]),  # type: ignore[arg-type]
                family=family, proto=proto, src=maybe(rnd.choice(addrs), 0.05), dst=rnd.choice(addrs),  # type: ignore[arg-type]
                length=rnd.randrange(0, 2**16), ttl=rnd.choice([64, 63, 1, 255]),
                skb=maybe(rnd.randrange(0, 2**64)), ethertype=ethertype,  # type: ignore[arg-type]
                sport=maybe(rnd.randrange(0, 2**16)), dport=maybe(rnd.randrange(0, 2**16)),  # type: ignore[arg-type]
                ip_id=maybe(rnd.randrange(0, 2**32)),  # type: ignore[arg-type]
                tcp_flags=maybe(rnd.choice([2, 16, 18, 24])), tcp_seq=maybe(rnd.randrange(0, 2**32)),  # type: ignore[arg-type]
                tcp_ack=maybe(rnd.randrange(0, 2**32)), icmp_type=maybe(rnd.choice([0, 8, 3, 11])),  # type: ignore[arg-type]
                icmp_code=maybe(rnd.choice([0, 1, 3])), icmp_id=maybe(rnd.randrange(0, 2**16)),  # type: ignore[arg-type]
                icmp_seq=maybe(rnd.randrange(0, 2**16)), digest=rnd.randrange(0, 2**64),  # type: ignore[arg-type]
                drop_reason=rnd.choice(reasons), wire_len=rnd.randrange(0, 2**32),
            ))  # fmt: skip
        nat = []
        for _ in range(rnd.choice([0, 0, 1, 1, 2, 3])):
            before = Endpoints(rnd.choice(addrs), maybe(rnd.randrange(0, 2**16)), rnd.choice(addrs),  # type: ignore[arg-type]
                               maybe(rnd.randrange(0, 2**16)))  # type: ignore[arg-type]
            after = Endpoints(rnd.choice(addrs), maybe(rnd.randrange(0, 2**16)), rnd.choice(addrs), None)  # type: ignore[arg-type]
            ct = maybe(ConntrackRef(id=maybe(rnd.randrange(0, 2**40)), original=before, reply=after))  # type: ignore[arg-type]
            nat.append(NatEvent(rnd.choice(["snat", "dnat"]), rnd.choice(["host", "web"]),  # type: ignore[arg-type]
                                rnd.choice(["PREROUTING", "POSTROUTING", "OUTPUT"]), before, after,  # type: ignore[arg-type]
                                rnd.randrange(0, len(obs)), rnd.choice([0, len(obs) - 1, len(obs), 99]),
                                rule=maybe("-A POSTROUTING -j MASQUERADE"),  # type: ignore[arg-type]
                                rule_source=maybe(rnd.choice(["inferred", "trace"])),  # type: ignore[arg-type]
                                conntrack=ct, icmp_id_before=maybe(rnd.randrange(0, 2**16)),  # type: ignore[arg-type]
                                icmp_id_after=maybe(rnd.randrange(0, 2**16))))  # type: ignore[arg-type]
        paths.append(PacketPath(f"p{i}", tuple(obs), tuple(nat),
                                rnd.choice(["delivered", "dropped", "left", "incomplete"]),  # type: ignore[arg-type]
                                flow=maybe(f"f{rnd.randrange(0, 20)}")))  # type: ignore[arg-type]
    return paths


def test_sample_paths_make_the_same_tables() -> None:
    same_tables(sample_paths())


def test_no_paths_make_the_same_empty_tables() -> None:
    same_tables([])


@pytest.mark.parametrize("seed", range(5))
def test_random_paths_make_the_same_tables(seed: int) -> None:
    same_tables(random_paths(300, seed))


def test_uniform_paths_make_the_same_tables() -> None:
    # Columns with no None at all, and columns with nothing but None (numpy and null fast paths).
    paths = [p for p in random_paths(400, 9) if p.hops[0].proto == 17]
    none = dict.fromkeys(("tcp_seq", "tcp_flags", "icmp_type", "icmp_code", "drop_reason", "direction"))
    stripped = [PacketPath(p.id, tuple(Observation(**{**{f: getattr(o, f) for f in Observation.__slots__},
                                                      **none, "sport": 5, "skb": 1 << 63}) for o in p.hops),
                           p.nat, p.verdict, p.flow) for p in paths]  # fmt: skip
    same_tables(stripped)


@pytest.mark.parametrize("fixture", ["internet-ping", "published-port", "blocked-ebpf", "udp", "hairpin"])
def test_fixture_replays_make_the_same_tables(fixture: str) -> None:
    from tracer.sinks.analysis import replay_paths

    f = ROOT / "fixtures" / f"{fixture}.pcapng"
    same_tables(replay_paths([f]))


def test_parquet_files_read_back_as_the_reference_files(tmp_path: Path) -> None:
    # (Not as the in-memory tables: the reader rebuilds dictionaries in its own order.)
    import pyarrow.parquet as pq

    from tracer.sinks.analysis import write_parquet

    paths = random_paths(300, 11)
    want = ref.write_parquet(paths, tmp_path / "ref")
    for name, path in write_parquet(paths, tmp_path / "new").items():
        back, ref_back = pq.read_table(path), pq.read_table(want[name])
        assert back.schema.equals(ref_back.schema) and back.equals(ref_back), name


def test_spelled_out_attribute_reads_match_the_column_lists() -> None:
    # _hop_rows and _single_lists name attributes in code (faster than attrgetter): they must
    # read exactly _GROUPED and the nullable _SINGLE attributes.
    from operator import attrgetter

    from tracer.sinks.analysis import _DENSE, _GROUPED, _SINGLE, _hop_rows, _single_lists

    obs = [o for p in random_paths(20, 3) for o in p.hops]
    assert list(_hop_rows(obs)) == list(map(attrgetter(*_GROUPED), obs))
    lists = dict(_single_lists(obs))
    assert list(lists) == [a for a in _SINGLE if a not in _DENSE]
    assert all(lists[a] == [getattr(o, a) for o in obs] for a in lists)
