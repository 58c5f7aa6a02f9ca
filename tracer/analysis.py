"""Finished paths as tables: pandas DataFrames for a notebook, Parquet for any engine.

``write_parquet(paths, directory)`` writes three files (pyarrow, snappy);
``load(file_or_dir)`` reads them back as DataFrames, or replays a recording
(pcap/pcapng) through the engine first. ``to_frames(paths)`` is the in-memory
form. pandas and pyarrow are imported here only, and only when called: they
cost ~90 MB of RSS and must stay off start-up and per-packet paths.

Schema (one Parquet file per table; ``?`` = nullable; strings are UTF-8,
dictionary-encoded where they repeat). Many recordings can be queried at once,
e.g. DuckDB: ``SELECT node, iface, count(*) FROM 'runs/*/observations.parquet'
GROUP BY ALL``.

``observations.parquet`` — one row per sighting of a packet (a path's hop):
  path_id string, hop uint16 (position in the path, 0 = first), flow string?,
  ts_ns int64 (ns; capture time or kernel monotonic time, as the source gave),
  since_first_ns int64 (ts_ns - the path's first ts_ns), node string,
  iface string, netns int64 (inode), ifindex int32, dir string? (rx|tx|drop),
  source string (ebpf|pcap|file), family uint8 (4, 6, 0 = not IP),
  proto string (icmp, tcp, udp, icmp6, arp, or the number), ethertype uint16,
  src string, dst string, sport uint16?, dport uint16?, ip_id uint32?,
  ttl uint8, tcp_flags uint8?, tcp_seq uint32?, tcp_ack uint32?,
  icmp_type uint8?, icmp_code uint8?, icmp_id uint16?, icmp_seq uint16?,
  length uint32 (IP total length), wire_len uint32 (frame length on the wire),
  skb uint64? (kernel sk_buff address), digest uint64 (NAT-invariant payload
  hash), drop_reason string? (kernel enum skb_drop_reason name).

``paths.parquet`` — one row per path (one packet, all its hops):
  path_id string, flow string?, proto string, verdict string
  (delivered|dropped|left|incomplete), hops uint16, first_ts_ns int64,
  last_ts_ns int64, latency_ns int64, first_hop string (node/iface),
  last_hop string, src string, dst string, sport uint16?, dport uint16?
  (as first seen), nat string ("snat", "dnat", "snat+dnat" or ""),
  drop_reason string? (of the last hop).

``nat.parquet`` — one row per NAT rewrite on a path:
  path_id string, flow string?, seq uint8 (order on the path), kind string
  (snat|dnat), node string, hook string, from_hop uint16, to_hop uint16,
  ts_ns int64 (of to_hop), before_src string, before_sport uint16?,
  before_dst string, before_dport uint16?, after_src string,
  after_sport uint16?, after_dst string, after_dport uint16?, rule string?,
  rule_source string? (inferred|trace), conntrack_id int64?,
  icmp_id_before uint16?, icmp_id_after uint16?.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracer.errors import CaptureFileError, UsageError
from tracer.model import PacketPath

if TYPE_CHECKING:
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


def _column(values: list[Any], typ: pa.DataType) -> pa.Array:
    import pyarrow as pa

    if pa.types.is_dictionary(typ):
        # Few distinct values (names, addresses): encode once per value, not per row.
        index: dict[Any, int] = {}
        codes = [index.setdefault(v, len(index)) if v is not None else None for v in values]
        return pa.DictionaryArray.from_arrays(
            pa.array(codes, pa.int32()), pa.array(list(index), typ.value_type)
        )
    return pa.array(values, typ)


def _table(columns: dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_arrays([_column(columns[f.name], f.type) for f in schema], schema=schema)


def to_tables(paths: Iterable[PacketPath]) -> dict[str, pa.Table]:
    """The three tables as pyarrow Tables (what write_parquet writes)."""
    paths = list(paths)
    schemas = _schemas()
    hops = [(p, i, o) for p in paths for i, o in enumerate(p.hops)]
    obs = [o for _, _, o in hops]
    first = [p.hops[0].ts_ns for p, _, _ in hops]
    observations: dict[str, list[Any]] = {
        "path_id": [p.id for p, _, _ in hops],
        "hop": [i for _, i, _ in hops],
        "flow": [p.flow for p, _, _ in hops],
        "ts_ns": [o.ts_ns for o in obs],
        "since_first_ns": [o.ts_ns - t for o, t in zip(obs, first, strict=True)],
        "node": [o.node for o in obs],
        "iface": [o.ifname for o in obs],
        "netns": [o.netns for o in obs],
        "ifindex": [o.ifindex for o in obs],
        "dir": [o.direction for o in obs],
        "source": [o.source for o in obs],
        "family": [o.family for o in obs],
        "proto": [o.proto_name for o in obs],
        "ethertype": [o.ethertype for o in obs],
        "src": [o.src for o in obs],
        "dst": [o.dst for o in obs],
        "sport": [o.sport for o in obs],
        "dport": [o.dport for o in obs],
        "ip_id": [o.ip_id for o in obs],
        "ttl": [o.ttl for o in obs],
        "tcp_flags": [o.tcp_flags for o in obs],
        "tcp_seq": [o.tcp_seq for o in obs],
        "tcp_ack": [o.tcp_ack for o in obs],
        "icmp_type": [o.icmp_type for o in obs],
        "icmp_code": [o.icmp_code for o in obs],
        "icmp_id": [o.icmp_id for o in obs],
        "icmp_seq": [o.icmp_seq for o in obs],
        "length": [o.length for o in obs],
        "wire_len": [o.wire_len for o in obs],
        "skb": [o.skb for o in obs],
        "digest": [o.digest for o in obs],
        "drop_reason": [o.drop_reason for o in obs],
    }
    path_cols: dict[str, list[Any]] = {f.name: [] for f in schemas["paths"]}
    nat_cols: dict[str, list[Any]] = {f.name: [] for f in schemas["nat"]}
    for p in paths:
        a, z = p.hops[0], p.hops[-1]
        kinds = sorted({n.kind for n in p.nat})
        for k, v in (
            ("path_id", p.id), ("flow", p.flow), ("proto", p.proto), ("verdict", p.verdict),
            ("hops", len(p.hops)), ("first_ts_ns", a.ts_ns), ("last_ts_ns", z.ts_ns),
            ("latency_ns", z.ts_ns - a.ts_ns), ("first_hop", a.hop_name), ("last_hop", z.hop_name),
            ("src", a.src), ("dst", a.dst), ("sport", a.sport), ("dport", a.dport),
            ("nat", "+".join(kinds)), ("drop_reason", z.drop_reason),
        ):  # fmt: skip
            path_cols[k].append(v)
        for seq, n in enumerate(p.nat):
            ct = n.conntrack
            to_hop = p.hops[n.to_hop] if 0 <= n.to_hop < len(p.hops) else z
            for k, v in (
                ("path_id", p.id), ("flow", p.flow), ("seq", seq), ("kind", n.kind),
                ("node", n.node), ("hook", n.hook), ("from_hop", n.from_hop), ("to_hop", n.to_hop),
                ("ts_ns", to_hop.ts_ns),
                ("before_src", n.before.src), ("before_sport", n.before.sport),
                ("before_dst", n.before.dst), ("before_dport", n.before.dport),
                ("after_src", n.after.src), ("after_sport", n.after.sport),
                ("after_dst", n.after.dst), ("after_dport", n.after.dport),
                ("rule", n.rule), ("rule_source", n.rule_source),
                ("conntrack_id", ct.id if ct is not None else None),
                ("icmp_id_before", n.icmp_id_before), ("icmp_id_after", n.icmp_id_after),
            ):  # fmt: skip
                nat_cols[k].append(v)
    return {
        "observations": _table(observations, schemas["observations"]),
        "paths": _table(path_cols, schemas["paths"]),
        "nat": _table(nat_cols, schemas["nat"]),
    }


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
    from tracer.readers import FileSource

    source = FileSource([os.fspath(f) for f in files])
    try:
        from tracer.engine import Engine
    except ModuleNotFoundError as exc:
        if exc.name != "tracer.engine":
            raise
        from tracer.correlate import Correlator

        # Same correlator the engine drives; used until tracer.engine is in the build.
        source.start()
        corr = Correlator()
        paths = [p for b in source.batches() for p in corr.feed_batch(b)]
        return paths + corr.flush()
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
