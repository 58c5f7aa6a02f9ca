"""tracer.sinks.analysis's table builders as they were before the column rewrite (commit 917d3cc), kept
verbatim as the reference the new ones must match value for value, dictionary for dictionary
(test_analysis_equivalence.py)."""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracer.errors import CaptureFileError, UsageError
from tracer.model import PacketPath, proto_name

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

TABLES = ("observations", "paths", "nat")


def _schemas() -> dict[str, pa.Schema]:
    import pyarrow as pa

    s, d = pa.string(), pa.dictionary(pa.int32(), pa.string())
    u8, u16, u32, u64, i32, i64 = pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(), pa.int32(), pa.int64()
    return {
        "observations": pa.schema([
            ("path_id", s), ("hop", u16), ("flow", s), ("ts_ns", i64), ("since_first_ns", i64),
            ("node", d), ("iface", d), ("netns", i64), ("ifindex", i32), ("dir", d), ("source", d),
            ("family", u8), ("proto", d), ("ethertype", u16), ("src", d), ("dst", d),
            ("sport", u16), ("dport", u16), ("ip_id", u32), ("ttl", u8), ("tcp_flags", u8),
            ("tcp_seq", u32), ("tcp_ack", u32), ("icmp_type", u8), ("icmp_code", u8),
            ("icmp_id", u16), ("icmp_seq", u16), ("length", u32), ("wire_len", u32),
            ("skb", u64), ("digest", u64), ("drop_reason", d),
        ]),
        "paths": pa.schema([
            ("path_id", s), ("flow", s), ("proto", d), ("verdict", d), ("hops", u16),
            ("first_ts_ns", i64), ("last_ts_ns", i64), ("latency_ns", i64), ("first_hop", d),
            ("last_hop", d), ("src", d), ("dst", d), ("sport", u16), ("dport", u16), ("nat", d),
            ("drop_reason", d),
        ]),
        "nat": pa.schema([
            ("path_id", s), ("flow", s), ("seq", u8), ("kind", d), ("node", d), ("hook", d),
            ("from_hop", u16), ("to_hop", u16), ("ts_ns", i64),
            ("before_src", d), ("before_sport", u16), ("before_dst", d), ("before_dport", u16),
            ("after_src", d), ("after_sport", u16), ("after_dst", d), ("after_dport", u16),
            ("rule", d), ("rule_source", d), ("conntrack_id", i64),
            ("icmp_id_before", u16), ("icmp_id_after", u16),
        ]),
    }  # fmt: skip


def _column(values: Any, typ: pa.DataType) -> pa.Array:
    import pyarrow as pa

    if isinstance(values, pa.Array):
        return values
    if pa.types.is_dictionary(typ) and not isinstance(values, list):
        return pa.array(values, typ.value_type).dictionary_encode()
    # Names and addresses repeat: dictionary columns are built in C++ as they are read.
    return pa.array(values, typ)


def _table(columns: dict[str, Any], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_arrays([_column(columns[f.name], f.type) for f in schema], schema=schema)


def to_tables(paths: Iterable[PacketPath]) -> dict[str, pa.Table]:
    """The three tables as pyarrow Tables (what write_parquet writes)."""
    paths = list(paths)
    # Nothing built here forms a cycle; with millions of live Observations a
    # collection triggered by these allocations would cost more than the work.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return {
            "observations": _observations(paths),
            "paths": _paths(paths),
            "nat": _nat(paths),
        }
    finally:
        if gc_was_on:
            gc.enable()


# Observation fields that are never None: fetched straight into numpy (one C loop each).
_DENSE = {"ts_ns": "i8", "netns": "i8", "ifindex": "i4", "family": "u1", "proto": "u1", "ethertype": "u2",
          "ttl": "u1", "length": "u4", "wire_len": "u4", "digest": "u8"}  # fmt: skip
# Observation attribute -> column, for the rest (strings, and ints that may be None).
_SPARSE = {"node": "node", "ifname": "iface", "direction": "dir", "source": "source", "src": "src",
           "dst": "dst", "sport": "sport", "dport": "dport", "ip_id": "ip_id", "tcp_flags": "tcp_flags",
           "tcp_seq": "tcp_seq", "tcp_ack": "tcp_ack", "icmp_type": "icmp_type", "icmp_code": "icmp_code",
           "icmp_id": "icmp_id", "icmp_seq": "icmp_seq", "skb": "skb", "drop_reason": "drop_reason"}  # fmt: skip


def _observations(paths: list[PacketPath]) -> pa.Table:
    # Per column, a C-level loop (map + attrgetter) rather than a Python one:
    # at a million observations the per-element cost is all there is.
    import numpy as np
    import pyarrow as pa

    lengths = np.array([len(p.hops) for p in paths], np.int64)
    of_path = np.repeat(np.arange(len(paths)), lengths)
    starts = np.cumsum(lengths) - lengths
    obs = [o for p in paths for o in p.hops]
    n = len(obs)
    cols: dict[str, Any] = {
        k: np.fromiter(map(attrgetter(k), obs), np.dtype(t), n) for k, t in _DENSE.items()
    }
    for attr, col in _SPARSE.items():
        cols[col] = list(map(attrgetter(attr), obs))
    first = np.array([p.hops[0].ts_ns for p in paths], np.int64)
    take = pa.array(of_path)
    cols["path_id"] = pa.array([p.id for p in paths], pa.string()).take(take)
    cols["hop"] = pa.array(np.arange(n) - np.repeat(starts, lengths), pa.uint16())
    cols["flow"] = pa.array([p.flow for p in paths], pa.string()).take(take)
    cols["since_first_ns"] = cols["ts_ns"] - first[of_path]
    cols["proto"] = _proto_names(cols["family"], cols["proto"], cols["ethertype"])
    return _table(cols, _schemas()["observations"])


def _proto_names(family: np.ndarray, proto: np.ndarray, ethertype: np.ndarray) -> pa.Array:
    """proto_name() per row, computed once per distinct (family, proto, ethertype)."""
    import numpy as np
    import pyarrow as pa

    key = (family.astype(np.int64) << 32) | (proto.astype(np.int64) << 16) | ethertype.astype(np.int64)
    uniq, inv = np.unique(key, return_inverse=True)
    names = [proto_name(k >> 32, (k >> 16) & 0xFFFF, k & 0xFFFF) for k in uniq.tolist()]
    return pa.DictionaryArray.from_arrays(pa.array(inv.reshape(-1).astype(np.int32)), pa.array(names, pa.string()))


def _get(attr: str, items: list[Any]) -> list[Any]:
    return list(map(attrgetter(attr), items))


def _hop_names(hops: list[Any]) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    nodes = pa.array(_get("node", hops), pa.string())
    return pc.binary_join_element_wise(nodes, pa.array(_get("ifname", hops), pa.string()), "/").dictionary_encode()


def _nat_kinds(p: PacketPath) -> str:
    if not p.nat:
        return ""
    if len(p.nat) == 1:
        return p.nat[0].kind
    return "+".join(sorted({n.kind for n in p.nat}))


def _paths(paths: list[PacketPath]) -> pa.Table:
    import numpy as np

    n = len(paths)
    first = [p.hops[0] for p in paths]
    last = [p.hops[-1] for p in paths]
    first_ts = np.fromiter(map(attrgetter("ts_ns"), first), np.int64, n)
    last_ts = np.fromiter(map(attrgetter("ts_ns"), last), np.int64, n)
    cols: dict[str, Any] = {
        "path_id": _get("id", paths),
        "flow": _get("flow", paths),
        "proto": _proto_names(*(np.fromiter(map(attrgetter(k), first), np.int64, n)
                                for k in ("family", "proto", "ethertype"))),
        "verdict": _get("verdict", paths),
        "hops": list(map(len, _get("hops", paths))),
        "first_ts_ns": first_ts,
        "last_ts_ns": last_ts,
        "latency_ns": last_ts - first_ts,
        "first_hop": _hop_names(first),
        "last_hop": _hop_names(last),
        "src": _get("src", first),
        "dst": _get("dst", first),
        "sport": _get("sport", first),
        "dport": _get("dport", first),
        "nat": list(map(_nat_kinds, paths)),
        "drop_reason": _get("drop_reason", last),
    }  # fmt: skip
    return _table(cols, _schemas()["paths"])


def _nat(paths: list[PacketPath]) -> pa.Table:
    with_nat = [p for p in paths if p.nat]
    owner = [p for p in with_nat for _ in p.nat]
    evs = [n for p in with_nat for n in p.nat]
    cols: dict[str, Any] = {
        "path_id": _get("id", owner),
        "flow": _get("flow", owner),
        "seq": [i for p in with_nat for i in range(len(p.nat))],
        "ts_ns": [p.hops[n.to_hop].ts_ns if 0 <= n.to_hop < len(p.hops) else p.hops[-1].ts_ns
                  for p, n in zip(owner, evs, strict=True)],
        "conntrack_id": [n.conntrack.id if n.conntrack is not None else None for n in evs],
    }  # fmt: skip
    for attr in ("kind", "node", "hook", "from_hop", "to_hop", "rule", "rule_source",
                 "icmp_id_before", "icmp_id_after"):  # fmt: skip
        cols[attr] = _get(attr, evs)
    for side in ("before", "after"):
        ends = _get(side, evs)
        for k in ("src", "sport", "dst", "dport"):
            cols[f"{side}_{k}"] = _get(k, ends)
    return _table(cols, _schemas()["nat"])


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    import pandas as pd
    import pyarrow as pa

    # Nullable integers stay integers (pandas' masked dtypes), not floats with NaN.
    ints = {
        pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(), pa.uint32(): pd.UInt32Dtype(),
        pa.uint64(): pd.UInt64Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(),
    }  # fmt: skip
    return table.to_pandas(types_mapper=ints.get)


def to_frames(paths: Iterable[PacketPath]) -> dict[str, pd.DataFrame]:
    """``{"observations", "paths", "nat"}`` DataFrames (columns as in the module doc)."""
    return {name: _to_pandas(t) for name, t in to_tables(paths).items()}


def write_parquet(paths: Iterable[PacketPath], directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write observations.parquet, paths.parquet and nat.parquet into ``directory`` (created)."""
    import pyarrow.parquet as pq

    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror or exc}") from exc
    written: dict[str, Path] = {}
    for name, table in to_tables(paths).items():
        target = out / f"{name}.parquet"
        tmp = out / f".{name}.parquet.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, target)  # a reader never sees half a file
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        written[name] = target
    return written


def replay_paths(files: Sequence[str | os.PathLike[str]]) -> list[PacketPath]:
    """Every path the engine builds from capture files (recordings or other tools' pcaps)."""
    from tracer.sources.files import FileSource

    from tracer.engine import Engine

    source = FileSource([os.fspath(f) for f in files])
    engine = Engine(source)
    return [e for events in engine.events() for e in events if isinstance(e, PacketPath)]


def load(file_or_dir: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """DataFrames from a directory written by write_parquet, or from a capture file (replayed)."""
    import pyarrow.parquet as pq

    p = Path(file_or_dir)
    if p.is_dir():
        missing = [n for n in TABLES if not (p / f"{n}.parquet").is_file()]
        if missing:
            raise UsageError(f"{p} has no {', '.join(m + '.parquet' for m in missing)}",
                             "write it with: hoptrace report FILE --parquet DIR")  # fmt: skip
        try:
            return {n: _to_pandas(pq.read_table(p / f"{n}.parquet")) for n in TABLES}
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            raise CaptureFileError(f"cannot read Parquet in {p}: {exc}") from exc
    if not p.exists():
        raise UsageError(f"no such file or directory: {p}")
    return to_frames(replay_paths([p]))
