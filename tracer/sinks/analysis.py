"""Finished paths as tables: pandas DataFrames for a notebook, Parquet for any engine.

``write_parquet(paths, directory)`` writes three files (pyarrow, snappy);
``load(file_or_dir)`` reads them back as DataFrames, or replays a recording
(pcap/pcapng) through the engine first. ``to_frames(paths)`` is the in-memory
form. ``hoptrace report --parquet DIR`` holds no ``PacketPath``: the core hands it
the columns (``tracer._core.report(columns=True)``), ``tables_from_core`` makes the
same tables of them from buffers, and ``write_tables`` writes them. pandas and pyarrow are imported here only, and only when called: they
cost ~90 MB of RSS and must stay off start-up and per-packet paths.

Schema (one Parquet file per table; ``?`` = nullable; strings are UTF-8,
dictionary-encoded where they repeat). Many recordings can be queried at once,
e.g. DuckDB: ``SELECT node, iface, count(*) FROM 'runs/*/observations.parquet'
GROUP BY ALL``.

``observations.parquet`` — one row per sighting of a packet (a path's hop):
  path_id string, hop uint16 (position in the path, 0 = first), flow string?,
  ts_ns int64 (UTC ns: capture time, or kernel time converted by the eBPF source),
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

import contextlib
import gc
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracer.errors import CaptureFileError, UsageError
from tracer.model import Observation, PacketPath, proto_name

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
    with _no_gc():
        obs = _Observations(paths)
        return {
            "observations": obs.table(),
            "paths": _paths(obs),
            "nat": _nat(obs),
        }


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Nothing built here forms a cycle; with millions of live Observations a collection
    triggered by these allocations (or by importing pyarrow: ~0.5 s at 1M) costs more than the work."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was_on:
            gc.enable()


# How the columns are fetched. At a million observations the cost is one
# attribute read per object and value (a few tens of ns, mostly cache misses)
# plus one conversion per value, so:
# - attributes with few distinct combinations in a recording (they follow the
#   hop, the direction and the protocol) are read as one tuple per observation,
#   deduplicated with one dict lookup each, and converted once per distinct tuple;
# - the rest, one pass per attribute (a list comprehension, or numpy.fromiter);
# - the paths and NAT tables take what they share with observations (first and
#   last hop, timestamps) from the observation columns instead of reading it again.
# Reading an attribute per object is the floor of this design: the columns come
# from Observation objects, not from the batches they were built from.
_GROUPED = ("node", "ifname", "netns", "ifindex", "direction", "source", "family", "proto", "ethertype",
            "ttl", "drop_reason", "tcp_flags", "icmp_type", "icmp_code", "length", "wire_len")  # fmt: skip
# Observation fields that are never None: converted with numpy (one C loop each).
_DENSE = {"ts_ns": "i8", "netns": "i8", "ifindex": "i4", "family": "u1", "proto": "u1", "ethertype": "u2",
          "ttl": "u1", "length": "u4", "wire_len": "u4", "digest": "u8"}  # fmt: skip
_SINGLE = ("ts_ns", "digest", "src", "dst", "sport", "dport", "ip_id",
           "tcp_seq", "tcp_ack", "icmp_id", "icmp_seq", "skb")  # fmt: skip
# Observation attribute -> column, where they differ.
_COLUMN = {"ifname": "iface", "direction": "dir"}


def _distinct(
    items: list[Any], attrs: Sequence[str], rows: Iterable[tuple[Any, ...]] | None = None
) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Each item's index into the distinct tuples of ``attrs`` (in order of first appearance),
    and per attribute its value in each distinct tuple. ``rows``, when given, yields those
    tuples (faster than attrgetter, see _hop_rows)."""
    import numpy as np

    n = len(items)
    # One pass, one hash per item: setdefault stores the row number of a tuple's first
    # appearance (the tuples themselves are not kept, only the distinct ones).
    seen: dict[tuple[Any, ...], int] = {}
    if rows is None:
        rows = map(attrgetter(*attrs), items) if len(attrs) > 1 else ((v,) for v in _get(attrs[0], items))
    first_row = np.fromiter(map(seen.setdefault, rows, itertools.count()), np.intp, n)
    # First-appearance row numbers -> 0, 1, 2, ... in the same order.
    is_first = np.zeros(n, bool)
    is_first[first_row] = True
    codes = np.cumsum(is_first) - 1
    per_attr = list(zip(*seen, strict=True)) if seen else [() for _ in attrs]
    return codes[first_row], per_attr


def _hop_rows(obs: list[Observation]) -> Iterator[tuple[Any, ...]]:
    """attrgetter(*_GROUPED) of each observation, spelled out: CPython reads a slot named in
    the code directly, where attrgetter looks each name up (~0.1 s less per million)."""
    return ((o.node, o.ifname, o.netns, o.ifindex, o.direction, o.source, o.family, o.proto, o.ethertype,
             o.ttl, o.drop_reason, o.tcp_flags, o.icmp_type, o.icmp_code, o.length, o.wire_len)
            for o in obs)  # fmt: skip


def _single_lists(obs: list[Observation]) -> Iterator[tuple[str, list[Any]]]:
    """The nullable _SINGLE attributes as lists, one at a time; list comprehensions for the
    reason above."""
    yield "src", [o.src for o in obs]
    yield "dst", [o.dst for o in obs]
    yield "sport", [o.sport for o in obs]
    yield "dport", [o.dport for o in obs]
    yield "ip_id", [o.ip_id for o in obs]
    yield "tcp_seq", [o.tcp_seq for o in obs]
    yield "tcp_ack", [o.tcp_ack for o in obs]
    yield "icmp_id", [o.icmp_id for o in obs]
    yield "icmp_seq", [o.icmp_seq for o in obs]
    yield "skb", [o.skb for o in obs]


def _expand(values: Sequence[Any], typ: pa.DataType, take: pa.Array) -> pa.Array:
    """The column of ``values[take[i]]``: converted once per distinct value, then gathered.

    A dictionary column keeps its values in order of first appearance, exactly as
    converting every row would: the first distinct tuple with a value is the one
    of the first row with it.
    """
    import pyarrow as pa

    if all(v is None for v in values):  # e.g. TCP fields of UDP traffic: no gather at all
        return pa.nulls(len(take), typ)
    return pa.array(list(values), typ).take(take)


def _ints(values: list[Any], typ: pa.DataType) -> pa.Array:
    """A nullable integer column from a list: numpy converts it when nothing is None."""
    import numpy as np
    import pyarrow as pa

    nulls = values.count(None)
    if nulls == len(values):
        return pa.nulls(len(values), typ)
    if nulls == 0:
        return pa.array(np.fromiter(values, typ.to_pandas_dtype(), len(values)), typ)
    return pa.array(values, typ)


def _get(attr: str, items: list[Any]) -> list[Any]:
    return list(map(attrgetter(attr), items))


class _Observations:
    """The observation columns, and what the paths and NAT tables reuse of them."""

    def __init__(self, paths: list[PacketPath]) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        self.paths = paths
        self.hops = _get("hops", paths)
        self.lengths = np.fromiter(map(len, self.hops), np.int64, len(paths))
        if len(paths) and not self.lengths.min():
            paths[int(self.lengths.argmin())].hops[0]  # a path without hops: IndexError, as ever
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.of_path = np.repeat(np.arange(len(paths)), self.lengths)
        self.path_ids = pa.array(_get("id", paths), pa.string())
        self.flows = pa.array(_get("flow", paths), pa.string())
        self.nats = _get("nat", paths)
        self._nat_events: tuple[np.ndarray, list[Any], np.ndarray, list[tuple[Any, ...]]] | None = None
        obs = list(itertools.chain.from_iterable(self.hops))
        self.n = n = len(obs)
        types = {f.name: f.type for f in _schemas()["observations"]}
        cols: dict[str, Any] = {}

        self.codes, per_attr = _distinct(obs, _GROUPED, _hop_rows(obs))
        take = pa.array(self.codes)
        self.distinct: dict[str, Any] = {}
        for attr, values in zip(_GROUPED, per_attr, strict=True):
            col = _COLUMN.get(attr, attr)
            if attr in _DENSE:
                self.distinct[attr] = u = np.fromiter(values, np.dtype(_DENSE[attr]), len(values))
                cols[col] = u[self.codes]
            else:
                self.distinct[attr] = values
                cols[col] = _expand(values, types[col], take)
        d = self.distinct
        # node/iface per distinct tuple, for the paths table's first_hop/last_hop.
        self.hop_names = pc.binary_join_element_wise(
            pa.array(list(d["node"]), pa.string()), pa.array(list(d["ifname"]), pa.string()), "/"
        )
        for attr in _SINGLE:
            if attr in _DENSE:
                cols[attr] = np.fromiter(map(attrgetter(attr), obs), np.dtype(_DENSE[attr]), n)
        for attr, lst in _single_lists(obs):
            cols[attr] = _ints(lst, types[attr]) if pa.types.is_integer(types[attr]) else lst
        del obs
        self.ts = cols["ts_ns"]
        take = pa.array(self.of_path)
        cols["path_id"] = self.path_ids.take(take)
        cols["flow"] = self.flows.take(take)
        cols["hop"] = pa.array(np.arange(n) - np.repeat(self.starts, self.lengths), pa.uint16())
        cols["since_first_ns"] = self.ts - self.ts[self.starts][self.of_path]
        cols["proto"] = self._proto_names(self.codes)
        self.cols = cols

    def _proto_names(self, codes: np.ndarray) -> pa.Array:
        """proto_name() of the rows ``codes`` points to: a dictionary of the (family, proto,
        ethertype) present there, in key order, each name computed once."""
        import numpy as np
        import pyarrow as pa

        d = self.distinct
        key = (d["family"].astype(np.int64) << 32) | (d["proto"].astype(np.int64) << 16) | d["ethertype"]
        used = np.zeros(len(key), bool)
        used[codes] = True
        uniq = np.unique(key[used])
        names = [proto_name(k >> 32, (k >> 16) & 0xFFFF, k & 0xFFFF) for k in uniq.tolist()]
        index = np.searchsorted(uniq, key).astype(np.int32)
        return pa.DictionaryArray.from_arrays(pa.array(index[codes]), pa.array(names, pa.string()))

    def nat_events(self) -> tuple[np.ndarray, list[Any], np.ndarray, list[tuple[Any, ...]]]:
        """NAT events per path, all events in path order, and their distinct (_NAT_GROUPED) tuples."""
        import numpy as np

        if self._nat_events is None:
            counts = np.fromiter(map(len, self.nats), np.int64, len(self.nats))
            evs = list(itertools.chain.from_iterable(self.nats))
            self._nat_events = (counts, evs, *_distinct(evs, _NAT_GROUPED))
        return self._nat_events

    def table(self) -> pa.Table:
        return _table(self.cols, _schemas()["observations"])


def _paths(obs: _Observations) -> pa.Table:
    import pyarrow as pa

    first = obs.starts
    last = obs.starts + obs.lengths - 1
    first_codes, last_codes = obs.codes[first], obs.codes[last]
    c = obs.cols
    first_list = first.tolist()
    cols: dict[str, Any] = {
        "path_id": obs.path_ids,
        "flow": obs.flows,
        "proto": obs._proto_names(first_codes),
        "verdict": _get("verdict", obs.paths),
        "hops": pa.array(obs.lengths, pa.uint16()),
        "first_ts_ns": obs.ts[first],
        "last_ts_ns": obs.ts[last],
        "latency_ns": obs.ts[last] - obs.ts[first],
        "first_hop": obs.hop_names.take(pa.array(first_codes)).dictionary_encode(),
        "last_hop": obs.hop_names.take(pa.array(last_codes)).dictionary_encode(),
        "src": [c["src"][i] for i in first_list],
        "dst": [c["dst"][i] for i in first_list],
        "sport": c["sport"].take(pa.array(first)),
        "dport": c["dport"].take(pa.array(first)),
        "nat": _nat_kinds(obs),
        "drop_reason": pa.array(list(obs.distinct["drop_reason"]), pa.string()).take(
            pa.array(last_codes)).dictionary_encode(),
    }  # fmt: skip
    return _table(cols, _schemas()["paths"])


def _nat_kinds(obs: _Observations) -> pa.Array:
    """Per path: "" without NAT, the kind of its one NAT event, or the kinds joined with "+"."""
    import numpy as np
    import pyarrow as pa

    counts, _, codes, per_attr = obs.nat_events()
    kinds = per_attr[_NAT_GROUPED.index("kind")]
    # Index into [""] + the distinct events' kinds + the joined kinds of paths with several events.
    index = np.zeros(len(counts), np.int64)
    one = counts == 1
    index[one] = 1 + codes[(np.cumsum(counts) - counts)[one]]
    texts: list[Any] = ["", *kinds]
    for p in np.flatnonzero(counts > 1).tolist():
        index[p] = len(texts)
        texts.append("+".join(sorted({n.kind for n in obs.nats[p]})))
    return pa.array(texts, pa.string()).take(pa.array(index)).dictionary_encode()


_NAT_GROUPED = ("kind", "node", "hook", "from_hop", "to_hop", "rule", "rule_source")


def _nat(obs: _Observations) -> pa.Table:
    import numpy as np
    import pyarrow as pa

    counts, evs, codes, per_attr = obs.nat_events()
    owner = np.repeat(np.arange(len(counts)), counts)
    m = len(evs)
    types = {f.name: f.type for f in _schemas()["nat"]}
    take = pa.array(owner)
    cols: dict[str, Any] = {
        "path_id": obs.path_ids.take(take),
        "flow": obs.flows.take(take),
        "seq": pa.array(np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts), pa.uint8()),
        "conntrack_id": [n.conntrack.id if n.conntrack is not None else None for n in evs],
    }
    take = pa.array(codes)
    for attr, values in zip(_NAT_GROUPED, per_attr, strict=True):
        cols[attr] = _expand(values, types[attr], take)
    # ts_ns of the to_hop (the last hop when to_hop is not on the path).
    to_hop = np.fromiter(per_attr[_NAT_GROUPED.index("to_hop")], np.int64, len(per_attr[0]))[codes]
    length = obs.lengths[owner]
    on_path = (to_hop >= 0) & (to_hop < length)
    cols["ts_ns"] = obs.ts[obs.starts[owner] + np.where(on_path, to_hop, length - 1)]
    for attr in ("icmp_id_before", "icmp_id_after"):
        cols[attr] = _ints(_get(attr, evs), types[attr])
    for side in ("before", "after"):
        codes, per_attr = _distinct(_get(side, evs), ("src", "sport", "dst", "dport"))
        take = pa.array(codes)
        for k, values in zip(("src", "sport", "dst", "dport"), per_attr, strict=True):
            cols[f"{side}_{k}"] = _expand(values, types[f"{side}_{k}"], take)
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


# Parquet columns written with dictionary pages besides the dictionary-typed ones: those whose
# values repeat. pyarrow's default tries a dictionary for every column and gives up on the
# unique ones (ts_ns, digest, path_id, ...) only after hashing a page of them; here a third
# of the write's CPU time, for a slightly larger file.
_REPEATING = {"hop", "flow", "netns", "ifindex", "family", "ethertype", "ttl", "tcp_flags", "icmp_type",
              "icmp_code", "icmp_id", "length", "wire_len", "sport", "dport", "hops", "seq", "from_hop", "to_hop",
              "before_sport", "before_dport", "after_sport", "after_dport", "icmp_id_before", "icmp_id_after"}  # fmt: skip


def _dictionary_encoded(schema: pa.Schema) -> list[str]:
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_dictionary(f.type) or f.name in _REPEATING]


def write_parquet(paths: Iterable[PacketPath], directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write observations.parquet, paths.parquet and nat.parquet into ``directory`` (created)."""
    out = _made(directory)
    return write_tables(to_tables(paths), out)


def _made(directory: str | os.PathLike[str]) -> Path:
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror or exc}") from exc
    return out


def write_tables(tables: dict[str, pa.Table], directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``to_tables``' (or ``tables_from_core``') tables into ``directory`` (created)."""
    return start_writing(tables, directory)()


def start_writing(tables: dict[str, pa.Table], directory: str | os.PathLike[str]) -> Callable[[], dict[str, Path]]:
    """Start writing the tables into ``directory`` (created) on threads, as pyarrow writes
    without the GIL: the first (largest) table on one, the others on another. Returns the
    wait: it gives the files written, or raises the error of the first table that failed
    (or of the directory)."""
    with _no_gc():
        import pyarrow.parquet as pq

    try:
        out = _made(directory)
    except UsageError as exc:
        failed = exc

        def fail() -> dict[str, Path]:
            raise failed

        return fail

    def write(name: str, table: pa.Table) -> Path:
        target = out / f"{name}.parquet"
        tmp = out / f".{name}.parquet.tmp"
        try:
            pq.write_table(table, tmp, use_dictionary=_dictionary_encoded(table.schema))
            os.replace(tmp, target)  # a reader never sees half a file
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        return target

    items = list(tables.items())
    results: dict[str, Path | Exception] = {}

    def write_all(group: list[tuple[str, pa.Table]]) -> None:
        for name, table in group:
            try:
                results[name] = write(name, table)
            except Exception as exc:  # raised by wait, in the caller's thread
                results[name] = exc

    threads = [threading.Thread(target=write_all, args=(g,), name="parquet-writer")
               for g in (items[:1], items[1:]) if g]  # fmt: skip
    for t in threads:
        t.start()

    def wait() -> dict[str, Path]:
        for t in threads:
            t.join()
        written: dict[str, Path] = {}
        for name, _ in items:
            got = results[name]
            if isinstance(got, Exception):
                raise got
            written[name] = got
        return written

    return wait


def import_in_background() -> threading.Thread:
    """Start importing pyarrow's Parquet writer (and numpy) on a thread, to overlap the
    ~0.15 s it takes with work that runs without the GIL; ``join`` it before use."""

    # Nothing here multiplies matrices: OpenBLAS's idle threads would only spin (~25 ms CPU).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    def load() -> None:
        with contextlib.suppress(ImportError):  # reported where it is used
            import pyarrow.parquet  # noqa: F401

    t = threading.Thread(target=load, name="pyarrow-import", daemon=True)
    t.start()
    return t


# ------------------------------------------------------- from the core's columns


def _bitmap(valid: np.ndarray) -> pa.Buffer | None:
    """Arrow's validity bitmap of a bool array; None when every row is valid."""
    import numpy as np
    import pyarrow as pa

    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _strings(col: tuple[np.ndarray, np.ndarray], valid: np.ndarray | None = None) -> pa.Array:
    """A string array from (offsets int32, bytes uint8) and, optionally, which are valid:
    the core's buffers, not copied."""
    import pyarrow as pa

    offsets, data = col
    bitmap = None if valid is None else _bitmap(valid)
    return pa.Array.from_buffers(pa.string(), len(offsets) - 1,
                                 [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=-1 if bitmap is not None else 0)  # fmt: skip


def _numbers(values: np.ndarray, typ: pa.DataType, present: np.ndarray | None = None) -> pa.Array:
    """A number array on the numpy array's buffer (its dtype is ``typ``'s), null where not
    ``present``."""
    import numpy as np
    import pyarrow as pa

    if values.dtype != np.dtype(typ.to_pandas_dtype()) or not values.flags.c_contiguous:
        raise TypeError(f"{values.dtype} column for {typ}")  # from_buffers would misread it
    bitmap = None if present is None else _bitmap(present)
    return pa.Array.from_buffers(typ, len(values), [bitmap, pa.py_buffer(values)],
                                 null_count=-1 if bitmap is not None else 0)  # fmt: skip


class _Chunks:
    """One table's columns as the core hands them over: each column in chunks of the same
    rows (see columns.rs ``CHUNK_ROWS``), made into pyarrow chunked arrays."""

    def __init__(self, columns: dict[str, Any]) -> None:
        self.columns = columns

    def numbers(self, name: str, typ: pa.DataType, present: list[np.ndarray] | None = None) -> pa.ChunkedArray:
        import pyarrow as pa

        parts = self.columns[name]
        masks = present if present is not None else [None] * len(parts)
        return pa.chunked_array([_numbers(v, typ, m) for v, m in zip(parts, masks, strict=True)], typ)

    def strings(self, name: str, valid: str | None = None) -> pa.ChunkedArray:
        import pyarrow as pa

        parts = self.columns[name]
        masks = self.columns[valid] if valid is not None else [None] * len(parts)
        return pa.chunked_array([_strings(c, m) for c, m in zip(parts, masks, strict=True)], pa.string())

    def dictionary(self, name: str, typ: pa.DataType) -> pa.ChunkedArray:
        """(codes chunks int32, -1 for null; the values' offsets and bytes): every chunk on
        the one dictionary."""
        import pyarrow as pa

        codes, offsets, data = self.columns[name]
        values = _strings((offsets, data))
        values.validate(full=True)  # names come from capture files: UTF-8 or an error, as pa.array
        return pa.chunked_array(
            [pa.DictionaryArray.from_arrays(_numbers(c, pa.int32(), c >= 0), values) for c in codes], typ)

    def table(self, schema: pa.Schema, made: dict[str, Any], present: dict[str, list[np.ndarray]]) -> pa.Table:
        """The table of ``schema``: the columns in ``made`` as they are, the others read."""
        import pyarrow as pa

        cols = []
        for f in schema:
            if f.name in made:
                cols.append(made[f.name])
            elif pa.types.is_dictionary(f.type):
                cols.append(self.dictionary(f.name, f.type))
            else:
                cols.append(self.numbers(f.name, f.type, present.get(f.name)))
        return pa.Table.from_arrays(cols, schema=schema)


def tables_from_core(columns: dict[str, dict[str, Any]]) -> dict[str, pa.Table]:
    """The three tables (as ``to_tables`` makes them: same values, types, dictionaries and
    nulls; in chunks, which Parquet writes as the same bytes) from the columns
    ``tracer._core.report(columns=True)`` returns, built on their buffers without copying
    them (see crates/hoptrace-core/src/columns.rs for what each holds)."""
    import pyarrow as pa

    from tracer.model import HAS_ICMP, HAS_IP_ID, HAS_L4_PORTS, HAS_TCP

    schemas = _schemas()
    o, p, n = _Chunks(columns["observations"]), _Chunks(columns["paths"]), _Chunks(columns["nat"])
    has = o.columns["has"]

    def bit(b: int) -> list[np.ndarray]:
        return [(h & b) != 0 for h in has]

    ports, ip_id, tcp, icmp = bit(HAS_L4_PORTS), bit(HAS_IP_ID), bit(HAS_TCP), bit(HAS_ICMP)
    present = {"sport": ports, "dport": ports, "ip_id": ip_id, "tcp_flags": tcp, "tcp_seq": tcp, "tcp_ack": tcp,
               "icmp_type": icmp, "icmp_code": icmp, "icmp_id": icmp, "icmp_seq": icmp,
               "skb": [s != 0 for s in o.columns["skb"]]}  # fmt: skip
    made = {"path_id": o.strings("path_id"), "flow": o.strings("flow", "flow_valid")}
    tables = {"observations": o.table(schemas["observations"], made, present)}

    ports = [(h & HAS_L4_PORTS) != 0 for h in p.columns["has"]]
    made = {"path_id": p.strings("path_id"), "flow": p.strings("flow", "flow_valid")}
    tables["paths"] = p.table(schemas["paths"], made, {"sport": ports, "dport": ports})

    types = {f.name: f.type for f in schemas["nat"]}
    m = sum(len(c) for c in n.columns["seq"])
    made = {"path_id": n.strings("path_id"), "flow": n.strings("flow", "flow_valid"),
            "rule": pa.nulls(m, types["rule"]), "rule_source": pa.nulls(m, types["rule_source"]),
            "conntrack_id": pa.nulls(m, types["conntrack_id"])}  # fmt: skip
    present = {name: n.columns[f"{name}_valid"] for name in types if name.endswith(("_sport", "_dport"))}
    present["icmp_id_before"] = present["icmp_id_after"] = n.columns["icmp_id_valid"]
    tables["nat"] = n.table(schemas["nat"], made, present)
    return tables


def replay_paths(files: Sequence[str | os.PathLike[str]]) -> list[PacketPath]:
    """Every path the engine builds from capture files (recordings or other tools' pcaps)."""
    from tracer.engine import Engine
    from tracer.sources.files import FileSource

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
