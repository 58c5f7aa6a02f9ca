"""Paths -> DataFrames and Parquet (tracer.sinks.analysis), checked value by value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.record.helpers import batch_of, masquerade_pings
from tracer.errors import UsageError
from tracer.model import ConntrackRef, Endpoints, NatEvent, PacketPath
from tracer.sinks.analysis import load, to_frames, write_parquet


def plain(record: dict[str, object]) -> dict[str, object]:
    """A DataFrame row with pandas' several kinds of missing value (NA, NaN, None) as None."""
    return {k: None if pd.api.types.is_scalar(v) and pd.isna(v) else v for k, v in record.items()}


def sample_paths() -> list[PacketPath]:
    """A MASQUERADEd ping (5 hops, SNAT between hops 2 and 3) and one dropped on host/eth0."""
    obs = batch_of(masquerade_pings(2, drop_every=2), drop_reasons={6: "NETFILTER_DROP"}).observations()
    before = Endpoints("172.17.0.2", None, "198.51.100.8", None)
    after = Endpoints("203.0.113.2", None, "198.51.100.8", None)
    ct = ConntrackRef(id=4242, original=before, reply=Endpoints("198.51.100.8", None, "203.0.113.2", None))
    snat = NatEvent("snat", "host", "POSTROUTING", before, after, 2, 3,
                    rule="-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                    rule_source="inferred", conntrack=ct, icmp_id_before=77, icmp_id_after=77)  # fmt: skip
    return [
        PacketPath("p1", tuple(obs[0:5]), (snat,), "left", flow="f1"),
        PacketPath("p2", tuple(obs[5:10]), (), "delivered", flow="f1"),
        PacketPath("p3", tuple(obs[10:14]), (snat,), "dropped", flow=None),
    ]


def test_frames_hold_every_hop_path_and_nat() -> None:
    paths = sample_paths()
    f = to_frames(paths)
    o, p, n = f["observations"], f["paths"], f["nat"]
    assert (len(o), len(p), len(n)) == (14, 3, 2)
    first = plain(o.iloc[0].to_dict())
    assert {k: first[k] for k in ("path_id", "hop", "flow", "node", "iface", "dir", "src", "proto",
                                  "icmp_seq", "icmp_id", "skb", "sport", "netns", "ttl")} == {
        "path_id": "p1", "hop": 0, "flow": "f1", "node": "web", "iface": "eth0", "dir": "tx",
        "src": "172.17.0.2", "proto": "icmp", "icmp_seq": 0, "icmp_id": 77,
        "skb": 0xFFFF888108470000, "sport": None, "netns": 4026532466, "ttl": 64}  # fmt: skip
    assert o[o.path_id == "p1"]["since_first_ns"].tolist() == [0, 7_000, 15_000, 31_000, 60_000]
    assert str(o["sport"].dtype) == "UInt16" and o["sport"].isna().all()
    assert o["drop_reason"].dropna().tolist() == ["NETFILTER_DROP"]
    assert plain(p.to_dict("records")[2]) == {
        "path_id": "p3", "flow": None, "proto": "icmp", "verdict": "dropped", "hops": 4,
        "first_ts_ns": paths[2].hops[0].ts_ns, "last_ts_ns": paths[2].hops[-1].ts_ns,
        "latency_ns": 31_000, "first_hop": "web/eth0", "last_hop": "host/eth0",
        "src": "172.17.0.2", "dst": "198.51.100.8", "sport": None,
        "dport": None, "nat": "snat", "drop_reason": "NETFILTER_DROP",
    }  # fmt: skip
    row = n.iloc[0]
    assert (row["kind"], row["hook"], row["from_hop"], row["to_hop"], row["before_src"], row["after_src"],
            row["conntrack_id"], row["rule_source"], row["ts_ns"]) == (
        "snat", "POSTROUTING", 2, 3, "172.17.0.2", "203.0.113.2", 4242, "inferred", paths[0].hops[3].ts_ns)  # fmt: skip


def test_parquet_round_trip_and_schema(tmp_path: Path) -> None:
    paths = sample_paths()
    written = write_parquet(paths, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["nat.parquet", "observations.parquet", "paths.parquet"]
    schema = pq.read_schema(written["observations"])
    assert (str(schema.field("skb").type), str(schema.field("ts_ns").type),
            str(schema.field("node").type)) == ("uint64", "int64", "dictionary<values=string, indices=int32, ordered=0>")  # fmt: skip
    back = load(tmp_path / "out")
    direct = to_frames(paths)
    for name in ("observations", "paths", "nat"):
        assert back[name].astype(str).to_dict("records") == direct[name].astype(str).to_dict("records")


def test_empty_and_bad_inputs(tmp_path: Path) -> None:
    written = write_parquet([], tmp_path / "empty")
    assert {k: len(v) for k, v in load(tmp_path / "empty").items()} == {"observations": 0, "paths": 0, "nat": 0}
    assert pq.read_table(written["nat"]).num_rows == 0
    with pytest.raises(UsageError, match=r"has no nat\.parquet"):
        written["nat"].unlink()
        load(tmp_path / "empty")
    with pytest.raises(UsageError, match="no such file"):
        load(tmp_path / "nope.pcapng")


def test_pandas_and_pyarrow_stay_out_of_tracer_imports() -> None:
    code = ("import sys, tracer.sinks.record, tracer.sinks.analysis, tracer.model; "
            "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_report_parquet_cli_and_load_of_a_recording(tmp_path: Path) -> None:
    from tests.conftest import FIXTURES, run_hoptrace
    from tracer.sinks.analysis import replay_paths

    fx = FIXTURES / "internet-ping.pcapng"
    out = tmp_path / "pq"
    proc = run_hoptrace("report", str(fx), "--parquet", str(out))
    assert proc.returncode == 0, proc.stderr
    from_dir = load(out)
    from_file = load(fx)  # replayed through the engine
    direct = to_frames(replay_paths([fx]))
    for name in ("observations", "paths", "nat"):
        assert from_dir[name].astype(str).to_dict("records") == direct[name].astype(str).to_dict("records")
        assert from_file[name].astype(str).to_dict("records") == direct[name].astype(str).to_dict("records")
    p = from_dir["paths"]
    assert len(p) > 0 and set(p["verdict"]) <= {"delivered", "dropped", "left", "incomplete"}
    assert "snat" in set(from_dir["nat"]["kind"])
    # Per-hop latency is one groupby away, as a notebook would do it.
    lat = from_dir["observations"].groupby(["node", "iface"], observed=True)["since_first_ns"].median()
    assert len(lat) >= 3
