"""Sightings -> packet paths: recognise one packet at every hop, even after NAT.

Pure and streaming: no threads, no I/O, no clock of its own. Time is the
observations' time, so a replay of a recording yields exactly the paths that
were shown live.

How a sighting finds its path:

* a NAT-invariant fingerprint (``_fingerprint``), computed in bulk with numpy
  over the batch columns: protocol, IP ID, IPv6 flow label, TCP seq/ack/flags,
  IP length (so the UDP length), ICMP type/code/seq, fragment offset/MF and the
  payload digest — nothing NAT or routing rewrites (addresses, ports, ICMP id,
  checksums, TTL);
* among the open paths with that fingerprint, the one with the same ``skb``
  address (the kernel's buffer travels veth -> bridge -> uplink; a different
  known skb is another IP packet), else the oldest one not yet seen at this
  hop, and only within ``window_ns``: addresses are reused after free, and
  identical packets (repeated pings, TCP retransmissions) are told apart
  because one packet passes a hop (netns, interface, direction) once — a
  second sighting there is a new packet.

A path finishes when it has been idle for ``window_ns`` of observation time
(``advance``/the next batch), or at ``flush``; paths finish in the order they
went idle, by their own timestamps, so that what a path learns from earlier
ones (which namespace owns an address, which tx hop leads to a traced rx hop:
its verdict; its flow) does not depend on how sightings were batched or in
which order per-CPU rings delivered them. Only then are its hops turned into
``Observation``s: the hot loop touches a handful of Python ints per row. NAT
events and flow keys are computed once per path *shape* (hops and headers).
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from heapq import heappop, heappush, heapreplace
from itertools import pairwise, repeat
from operator import itemgetter
from typing import Any, Protocol

import numpy as np

from tracer.addr import addr_text
from tracer.model import (
    ETH_P_ARP,
    HAS_FLOW_LABEL,
    HAS_FRAG,
    HAS_ICMP,
    HAS_INNER,
    HAS_IP_ID,
    HAS_L4_PORTS,
    HAS_TCP,
    Dir,
    Endpoints,
    Flow,
    HopLabel,
    InnerHeader,
    NatEvent,
    ObsBatch,
    Observation,
    PacketPath,
    Src,
    obs_dtype,
)
from tracer.nat import fast_constructor, infer_nat, new_endpoints, verdict
from tracer.output import DYN_FIELDS, Rendered, path_line, path_template

# Hops of one packet are µs apart, but sightings can reach us late: on a loaded box the
# eBPF per-CPU staging was measured delivering some 135-500 ms after later ones. A path
# idle this long (in observation time) is done; a sighting later than that starts a
# new path, so this is also how late a sighting may be.
DEFAULT_WINDOW_NS = 500_000_000
# Memory bound: beyond this many sightings in open paths, the longest-idle paths finish
# early (~600 bytes each while open: at 600k sightings/s the window would hold 300k).
DEFAULT_MAX_OPEN_ROWS = 300_000
DEFAULT_FLOW_IDLE_NS = 5_000_000_000
DEFAULT_MAX_FLOW_PATHS = 1000  # a long connection is reported in pieces, memory stays bounded
_CHUNK = 16384  # rows per internal step: expiry runs between steps, so a huge batch stays bounded
_MAX_SAME_FP = 64  # open paths sharing one fingerprint (identical packets in flight)
_MAX_OWNED = 65536
_MAX_SHAPES = 4096
_OWN_ROWS_ASKS = 16  # lines: paths of a chunk that make hops of their own rows before the whole chunk is made
_MAX_TEMPLATES = 16  # per shape: verdicts x flow or not x annotation generations

_ECHO_TYPES = {(1, 8), (1, 0), (58, 128), (58, 129)}
_ECHO_REQUEST = {(1, 8), (58, 128)}

_DIR_LABEL = (None, "rx", "tx", "drop")
_SRC_LABEL = {int(s): s.name.lower() for s in Src}

_U64 = np.uint64
_M1 = _U64(0x9E3779B97F4A7C15)
_M2 = _U64(0xBF58476D1CE4E5B9)


def _mix(h: np.ndarray[Any, Any], col: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    h = (h ^ col.astype(_U64, copy=False)) * _M1
    return h ^ (h >> _U64(31))


def _addr_words(col: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.ascontiguousarray(col).view("<u8").reshape(-1, 2)


def _fingerprint(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A 64-bit hash of the fields NAT and routing leave alone, one per row."""
    h = rows["digest"].astype(_U64) * _M2
    for name in ("family", "proto", "ethertype", "has", "ip_id", "flow_label", "tcp_flags",
                 "tcp_seq", "tcp_ack", "icmp_type", "icmp_code", "icmp_seq", "frag", "length"):
        h = _mix(h, rows[name])
    l2 = rows["family"] == 0
    if l2.any():
        # Not IP (ARP, ...): nothing rewrites these addresses, and ARP has no other identity.
        s, d = _addr_words(rows["src"]), _addr_words(rows["dst"])
        for w in (s[:, 0], s[:, 1], d[:, 0], d[:, 1]):
            h = np.where(l2, _mix(h, w), h)
    return h


def _shape_hash(rows: np.ndarray[Any, Any], labels: Sequence[HopLabel]) -> np.ndarray[Any, Any]:
    """A 64-bit hash of everything ``infer_nat`` and ``_learn_links`` read from a sighting.

    Where (netns, hop, direction) and the header as seen there (addresses, ports,
    ICMP id, the quoted header): two paths with equal per-hop shapes have equal
    NAT events.
    """
    # The hop's names, not its index: a batch's label table is its own.
    names = np.array([hash((x.node, x.iface)) & 0xFFFFFFFFFFFFFFFF for x in labels], dtype=_U64)
    h = rows["netns"].astype(_U64) * _M2
    h = _mix(h, names[rows["hop"].astype(np.intp)])
    for name in ("ifindex", "dir", "family", "proto", "ethertype", "has", "icmp_type",
                 "sport", "dport", "icmp_id", "inner_proto", "inner_sport", "inner_dport"):
        h = _mix(h, rows[name])
    for name in ("src", "dst", "inner_src", "inner_dst"):
        w = _addr_words(rows[name])
        h = _mix(_mix(h, w[:, 0]), w[:, 1])
    return h


def _hop_signature(rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Where and in which direction: one packet passes each (netns, interface, dir) once.

    When a capture does not say the direction, a packet may be seen twice on one
    interface (in and out of a bridge, hairpin): the header as seen there (which
    routing and NAT change) then tells the two sightings apart.
    """
    h = rows["netns"].astype(_U64) * _M2
    for name in ("hop", "ifindex", "dir"):
        h = _mix(h, rows[name])
    unknown = rows["dir"] == Dir.UNKNOWN
    if unknown.any():
        s, d = _addr_words(rows["src"]), _addr_words(rows["dst"])
        g = h
        for w in (s[:, 0], s[:, 1], d[:, 0], d[:, 1]):
            g = _mix(g, w)
        for name in ("sport", "dport", "ttl"):
            g = _mix(g, rows[name])
        h = np.where(unknown, g, h)
    return h


_OBS_FIELDS = (
    "ts_ns", "netns", "ifindex", "ifname", "node", "direction", "source", "family", "proto", "src",
    "dst", "length", "ttl", "skb", "ethertype", "sport", "dport", "ip_id", "flow_label", "tcp_flags",
    "tcp_seq", "tcp_ack", "icmp_type", "icmp_code", "icmp_id", "icmp_seq", "frag_offset",
    "more_fragments", "is_fragment", "digest", "inner", "drop_reason", "frame", "wire_len",
)  # fmt: skip


class _ObservationRow:
    """The slot layout of ``Observation`` without its frozen ``__setattr__``; see below."""

    __slots__ = _OBS_FIELDS

    def __init__(self, vals: tuple[Any, ...]) -> None:
        (self.ts_ns, self.netns, self.ifindex, self.ifname, self.node, self.direction, self.source,
         self.family, self.proto, self.src, self.dst, self.length, self.ttl, self.skb,
         self.ethertype, self.sport, self.dport, self.ip_id, self.flow_label, self.tcp_flags,
         self.tcp_seq, self.tcp_ack, self.icmp_type, self.icmp_code, self.icmp_id, self.icmp_seq,
         self.frag_offset, self.more_fragments, self.is_fragment, self.digest, self.inner,
         self.drop_reason, self.frame, self.wire_len) = vals  # fmt: skip


def _observation_factory() -> Callable[[tuple[Any, ...]], Observation]:
    """Observation from values in ``_OBS_FIELDS`` order, ~5x faster than ``__init__``.

    A frozen dataclass's ``__init__`` runs one Python-level ``object.__setattr__``
    per field (34 here), and every hop of every path pays it. Instead the slots
    are filled on a twin class with the same slot layout, whose instance then
    becomes an ``Observation`` (``__class__`` assignment, which CPython allows
    between identical layouts): the result is an ordinary frozen Observation
    (type, ``==``, hash, immutability). If the layout ever differs, the plain
    constructor is used.
    """
    fields = tuple(f.name for f in dataclasses.fields(Observation))
    slow = lambda vals: Observation(**dict(zip(_OBS_FIELDS, vals, strict=True)))  # noqa: E731
    if fields != _OBS_FIELDS or getattr(Observation, "__slots__", None) != _OBS_FIELDS:
        return slow

    def make(vals: tuple[Any, ...]) -> Observation:
        o: Any = _ObservationRow(vals)
        o.__class__ = Observation
        return o  # type: ignore[no-any-return]

    probe = tuple(range(len(_OBS_FIELDS)))
    try:
        if make(probe) != slow(probe):
            return slow
    except TypeError:
        return slow
    return make


_new_observation = _observation_factory()
_FIELD_INDEX = {name: k for k, name in enumerate(_OBS_FIELDS)}


def _with_values(o: Observation, values: dict[str, Any]) -> Observation:
    """``dataclasses.replace(o, **values)`` at ``_new_observation``'s speed."""
    vals = [getattr(o, name) for name in _OBS_FIELDS]
    for name, v in values.items():
        vals[_FIELD_INDEX[name]] = v
    return _new_observation(tuple(vals))


class _PacketPathRow:
    __slots__ = ("id", "hops", "nat", "verdict", "flow")  # noqa: RUF023 (PacketPath's order)

    def __init__(self, id: str, hops: tuple[Observation, ...], nat: tuple[NatEvent, ...], verdict: str,
                 flow: str | None) -> None:
        self.id, self.hops, self.nat, self.verdict, self.flow = id, hops, nat, verdict, flow


_new_path: Callable[..., PacketPath] = fast_constructor(PacketPath, _PacketPathRow)


class _RenderedRow:
    __slots__ = ("id", "flow", "line", "conntrack_id")  # noqa: RUF023 (Rendered's order)

    def __init__(self, id: str, flow: str | None, line: str, conntrack_id: int | None) -> None:
        self.id, self.flow, self.line, self.conntrack_id = id, flow, line, conntrack_id


_new_rendered: Callable[[str, str | None, str, int | None], Rendered] = fast_constructor(Rendered, _RenderedRow)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic GC while a batch allocates paths.

    The correlator makes no reference cycles (refcounting frees everything), but
    it keeps a window's worth of small objects alive, which the cyclic GC would
    traverse again and again while a batch allocates: measured, half the time.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Chunk:
    """A slice of a batch that open paths point into; what paths read of it is built once, on
    first use: the rows' shape keys, their Observation values, their per-packet values.

    Rows are addressed three ways: ``i``, the row's index in ``rows``; its position in time
    order (``order[pos] == i``, None when the rows came in time order); and its place in
    fingerprint order (``by_fp[k] == pos``: rows of one fingerprint together, each group in
    time order), where a path made of one whole group is the span ``(cid, a, b)``."""

    __slots__ = ("asks", "batch", "by_fp", "cid", "obs", "order", "pending", "rows", "seq0", "skd", "ts")

    def __init__(self, cid: int, batch: ObsBatch, rows: np.ndarray[Any, Any], pending: int) -> None:
        self.cid = cid
        self.batch = batch
        self.rows = rows
        self.obs: list[tuple[Any, ...]] | None = None  # Observation field values per row
        self.asks = 0  # paths that wanted hop objects from it (Correlator._hops)
        self.pending = pending  # rows not yet emitted in a path
        self.order: np.ndarray[Any, Any] | None = None
        self.ts: np.ndarray[Any, Any] | None = None  # in time order
        self.by_fp: np.ndarray[Any, Any] | None = None
        self.seq0 = 0  # the row at time position pos has seq seq0 + pos + 1
        # In fingerprint order: shape keys, DYN_FIELDS values flat; per row index i its place
        # in that order (Correlator._key_dyn)
        self.skd: tuple[list[int], list[Any], list[int]] | None = None

    def row_index(self, pos: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Time positions -> row indices."""
        return pos if self.order is None else self.order[pos]

    def span_rows(self, a: int, b: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Fingerprint-order places ``a:b`` as time positions and row indices (in time order)."""
        assert self.by_fp is not None
        pos = self.by_fp[a:b]
        return pos, self.row_index(pos)


class _Shape:
    """What every path with one shape key shares: NAT events and flow keys (``info``), the
    hops of the first such path (for the fields the key fixes), NDJSON templates."""

    __slots__ = ("dropped", "hops", "info", "kept", "owner", "templates", "verdicts")

    def __init__(self, info: _ShapeInfo, hops: tuple[Observation, ...]) -> None:
        self.info = info
        self.hops = hops
        self.dropped = any(h.direction == "drop" for h in hops)
        self.templates: dict[tuple[Any, ...], _Template | object] = {}
        last = hops[-1]
        self.owner = (last.dst, last.netns)  # Correlator.owned's key for the last hop
        # (owner known then, how many links were known) -> verdict: all verdict() reads
        self.verdicts: dict[tuple[bool, int], str] = {}
        # (path filter, its answer) when the filter's answer is one per shape (RowFilter.by_shape)
        self.kept: tuple[object, bool] | None = None


class _Template:
    __slots__ = ("conntrack_id", "effects", "fmt", "pick")

    def __init__(self, fmt: str, order: tuple[int, ...], conntrack_id: int | None, effects: Any) -> None:
        self.fmt = fmt
        # values -> the tuple the format takes; a path line has at least two slots (its id and
        # a hop's time), so itemgetter always returns a tuple
        assert len(order) >= 2
        self.pick: Callable[[list[Any]], tuple[Any, ...]] = itemgetter(*order)
        self.conntrack_id = conntrack_id
        self.effects = effects if any(effects) else None  # what lines.replay() adds, if anything


_ONCE = object()  # a template key seen once
_NO_TEMPLATE = object()  # a template key whose line no template reproduces: always rendered in full
_SLOW = object()  # _finish_span: the path takes the general way
_NDYN = len(DYN_FIELDS)
# _key_dyn reads them through one uint64 array: the same Python ints only if none is signed.
assert all(obs_dtype()[name].kind == "u" for name in DYN_FIELDS)


class LineRenderer(Protocol):
    """What the correlator needs to hand out finished paths as NDJSON lines (the engine's)."""

    def annotate(self, path: PacketPath) -> PacketPath: ...
    def generation(self) -> object: ...
    def volatile(self, hops: Sequence[Observation], nat: Sequence[NatEvent]) -> object: ...
    def counters(self) -> Any: ...
    def effects(self, before: Any) -> Any: ...
    def replay(self, effects: Any) -> None: ...


class RowFilter(Protocol):
    """A path filter that can judge sightings still in their batch (tracer.filter.PathFilter)."""

    by_shape: bool  # its answer depends only on what a path's shape fixes

    def keep_row(self, batch: ObsBatch, rows: np.ndarray[Any, Any], i: int) -> bool | None: ...
    def keep_hops(self, hops: Sequence[Observation]) -> bool: ...


def _render_hash(rows: np.ndarray[Any, Any], labels: Sequence[HopLabel]) -> np.ndarray[Any, Any]:
    """``_shape_hash`` plus every other field a hop's NDJSON shows that is not per packet
    (``DYN_FIELDS``): equal keys, equal lines but for those values."""
    h = _shape_hash(rows, labels)
    for name in ("ttl", "drop_reason", "icmp_code", "flow_label", "frag"):
        h = _mix(h, rows[name])
    return _mix(h, (rows["skb"] != 0).astype(_U64))


class _Open:
    __slots__ = ("claim", "first_ts", "fp", "hops", "last_ts", "nrows", "num", "refs", "skb", "span",
                 "touched")

    def __init__(self, num: int, fp: int, ts: int, skb: int, hops: list[int],
                 refs: list[tuple[int, int, int, int]] | None) -> None:
        self.num = num
        self.fp = fp
        self.touched = ts
        self.last_ts = ts
        self.first_ts = ts
        self.claim: tuple[str, int] | None = None  # the (address, netns) it taught, if any
        self.skb = skb
        self.hops = hops  # hop signatures
        # (ts, seq, chunk id, row index) per sighting; None while the path is exactly one
        # fingerprint group of one chunk, ``span``: (chunk id, a, b) in its fingerprint order
        self.refs = refs
        self.span: tuple[int, int, int] | None = None
        self.nrows = len(hops)


class _Spans:
    """A chunk's span paths: fingerprint groups that are a path of their own (``_groups``),
    kept as columns until they finish, or until a sighting from elsewhere joins one (it
    then becomes an ``_Open``). No object, heap entry or list per path: a flood is mostly
    these."""

    __slots__ = ("a", "alive", "b", "chunk", "claims", "first", "fp", "gh", "last", "last_l", "min_last",
                 "nalive", "nrows", "num", "num_l", "skb")

    def __init__(self, chunk: _Chunk, num: list[int], first: np.ndarray[Any, Any], last: np.ndarray[Any, Any],
                 a: list[int], b: list[int], fp: list[int], skb: list[int], gh: list[int],
                 claims: dict[int, tuple[str, int]]) -> None:
        self.chunk = chunk
        self.num = np.array(num, dtype=np.int64)
        self.num_l = num
        self.first = first.tolist()
        self.last = last  # also when it went idle: its sightings all came in this chunk
        self.last_l: list[int] = last.tolist()
        self.min_last = int(last.min())
        self.a, self.b, self.fp, self.skb = a, b, fp, skb
        self.gh = gh  # hop signatures of the chunk's rows in fingerprint order
        self.claims = claims  # span index -> the (address, netns) its first sighting taught
        self.alive = np.ones(len(num), dtype=bool)
        self.nalive = len(num)
        self.nrows = np.array(b, dtype=np.int64) - np.array(a, dtype=np.int64)  # sightings per span path


class _FlowState:
    __slots__ = ("keys", "num", "original", "paths", "proto", "reply", "seq", "touched")

    def __init__(self, num: int, proto: str, original: Endpoints, reply: Endpoints, touched: int) -> None:
        self.num = num
        self.proto = proto
        self.original = original
        self.reply = reply
        self.paths: list[str] = []
        self.keys: list[tuple[Any, ...]] = []
        self.touched = touched
        self.seq = 0  # Correlator._flow_seq when touched was set

    def flow(self) -> Flow:
        return Flow(id=f"f{self.num}", proto=self.proto, original=self.original, reply=self.reply,
                    paths=tuple(self.paths))


FlowKey = tuple[int, int, str, int | None, str, int | None]


def _flow_ids(o: Observation) -> tuple[int | None, int | None]:
    if o.sport is not None:
        return o.sport, o.dport
    if o.icmp_id is not None and (o.proto, o.icmp_type) in _ECHO_TYPES:
        # conntrack keys ICMP echo by its id, in both directions.
        return o.icmp_id, o.icmp_id
    return None, None


def _flow_key(o: Observation) -> FlowKey:
    sport, dport = _flow_ids(o)
    return (o.family, o.proto, o.src, sport, o.dst, dport)


# What a path's shape determines: its NAT events, and its flow keys (original and
# translated tuple, and for an ICMP error the tuple of the packet it quotes).
_ShapeInfo = tuple[tuple[NatEvent, ...], "FlowKey | None", "FlowKey | None", "FlowKey | None"]


def _shape_info(hops: Sequence[Observation]) -> _ShapeInfo:
    first, last = hops[0], hops[-1]
    nat = infer_nat(hops)
    if first.family == 0:
        return (nat, None, None, None)
    quoted = None
    inn = first.inner
    if inn is not None:
        if inn.proto in (1, 58):
            quoted = (first.family, inn.proto, inn.src, inn.sport, inn.dst, inn.sport)
        else:
            quoted = (first.family, inn.proto, inn.src, inn.sport, inn.dst, inn.dport)
    return (nat, _flow_key(first), _flow_key(last), quoted)


def _reverse(k: FlowKey) -> FlowKey:
    return (k[0], k[1], k[4], k[5], k[2], k[3])


def _endpoints(o: Observation) -> Endpoints:
    return new_endpoints(o.src, o.sport, o.dst, o.dport)


class Correlator:
    """Groups sightings into ``PacketPath``s and paths into ``Flow``s. See the module doc."""

    def __init__(
        self,
        *,
        window_ns: int = DEFAULT_WINDOW_NS,
        flow_idle_ns: int = DEFAULT_FLOW_IDLE_NS,
        max_flow_paths: int = DEFAULT_MAX_FLOW_PATHS,
        max_open_rows: int = DEFAULT_MAX_OPEN_ROWS,
    ) -> None:
        self.window_ns = window_ns
        self.max_open_rows = max_open_rows
        self._open_rows = 0
        self.flow_idle_ns = flow_idle_ns
        self.max_flow_paths = max_flow_paths
        self._by_fp: dict[int, list[_Open]] = {}
        # Span paths (``_Spans``) by chunk id, and by fingerprint (each fingerprint has at most
        # one open span path, and then no other open path).
        self._spans: dict[int, _Spans] = {}
        self._span_fp: dict[int, tuple[_Spans, int]] = {}
        # Open paths by (latest sighting time, id), one entry each, re-filed lazily when
        # a path was touched since: paths finish in the order they went idle, by their
        # own times, whatever order and batches the sightings came in.
        self._idle: list[tuple[int, int, _Open]] = []
        self._chunks: dict[int, _Chunk] = {}
        self._chunk_ids = 0
        self._clock = 0
        self._seq = 0
        self._paths = 0
        self._open_count = 0
        self._addr_cache: dict[tuple[int, bytes], str] = {}
        # Learned from traffic: address -> (netns that sends from it, since when); tx
        # hops whose packets were seen arriving at another traced hop (a veth pair).
        # Keyed by (address, netns): the same private address lives in many namespaces
        # (every Docker host, every lab on one machine uses 172.17.0.0/16).
        self.owned: dict[tuple[str, int], int] = {}
        self.links: set[tuple[int, str, str]] = set()
        self._flows = 0
        self._flow_keys: dict[FlowKey, _FlowState] = {}
        # Open flows by (latest path time, when that was learnt), one entry each, re-filed
        # lazily like open paths: memory is per flow, not per path.
        self._flow_idle: list[tuple[int, int, _FlowState]] = []
        self._flow_seq = 0
        self._flows_open: dict[int, _FlowState] = {}
        self._flows_done: list[Flow] = []
        self._by_shape: dict[tuple[int, ...], _Shape] = {}
        self._lines: LineRenderer | None = None
        self._row_filter: RowFilter | None = None
        self._generation: object = None
        # (id(shape), verdict) -> (shape, its template now): _finish_span's, for one step
        self._step: dict[tuple[int, str], tuple[_Shape, _Template | object | None]] = {}

    # ------------------------------------------------------------------ input

    def feed(self, obs: Observation) -> list[PacketPath]:
        """One sighting (tests, slow sources); the same as a batch of one."""
        return self.feed_batch(ObsBatch.from_observations([obs]))

    def feed_batch(self, batch: ObsBatch) -> list[PacketPath]:
        """Feed a batch; returns the paths that finished (idle for ``window_ns``)."""
        out: list[PacketPath] = []
        rows = batch.rows
        with _gc_paused():
            for start in range(0, len(rows), _CHUNK):
                self._feed_rows(batch, rows[start : start + _CHUNK])
                out += self._expire(self._clock - self.window_ns)
                if self._open_rows > self.max_open_rows:
                    out += self._expire(None, self.max_open_rows)
            if batch.now_ns is not None:
                out += self.advance(batch.now_ns)
        return out

    def advance(self, now_ns: int) -> list[PacketPath]:
        """The source's clock says ``now_ns``: finish paths idle since before ``now_ns - window_ns``."""
        if now_ns > self._clock:
            self._clock = now_ns
        with _gc_paused():
            return self._expire(self._clock - self.window_ns)

    def flush(self, max_paths: int | None = None) -> list[PacketPath]:
        """End of input: every open path finishes, and every flow becomes takeable.

        With ``max_paths``, only that many (the longest idle): call again until it
        returns nothing, so the end of a big input is streamed, not built at once.
        """
        with _gc_paused():
            out = self._expire(None, max_paths=max_paths)
        if not self._open_count:
            for fs in list(self._flows_open.values()):
                self._close_flow(fs)
        return out

    def take_flows(self) -> list[Flow]:
        """Flows whose paths have all finished and that have been idle for ``flow_idle_ns``."""
        cutoff = self._clock - self.flow_idle_ns
        heap = self._flow_idle
        while heap and heap[0][0] < cutoff:
            touched, _seq, fs = heap[0]
            if fs.num not in self._flows_open:
                heappop(heap)  # closed already (its path cap)
            elif fs.touched != touched:
                heapreplace(heap, (fs.touched, fs.seq, fs))  # touched since it was filed
            else:
                heappop(heap)
                self._close_flow(fs)
        done, self._flows_done = self._flows_done, []
        return done

    def render_lines(self, lines: LineRenderer | None, path_filter: RowFilter | None = None) -> None:
        """From now on finished paths come out as ``Rendered`` NDJSON lines, annotated by
        ``lines`` (None: back to ``PacketPath``s). A path shape seen before is rendered from
        a template while ``lines.generation()`` stays the same: no hop objects at all.
        With ``path_filter``, a path none of whose hops it keeps comes out as None."""
        self._lines = lines
        self._row_filter = path_filter

    def learn_address(self, netns: int, addr: str) -> None:
        """``addr`` belongs to ``netns`` (e.g. from topology): its packets arriving there are delivered."""
        self.owned[(addr, netns)] = 0

    @property
    def open_paths(self) -> int:
        return self._open_count

    # ------------------------------------------------------------- hot loop

    def _feed_rows(self, batch: ObsBatch, rows: np.ndarray[Any, Any]) -> None:
        n = len(rows)
        if n == 0:
            return
        ts = rows["ts_ns"]
        fps = _fingerprint(rows)
        hss = _hop_signature(rows)
        # L2 broadcasts are cloned per bridge port (a new skb each): join them by fingerprint only.
        skbs = np.where(rows["family"] == 0, 0, rows["skb"])
        order = None
        if n > 1 and bool((ts[1:] < ts[:-1]).any()):
            # Per-CPU rings and several taps deliver out of order: hops in time order,
            # equal timestamps in batch order.
            order = np.argsort(ts, kind="stable")
            ts, fps, hss, skbs = ts[order], fps[order], hss[order], skbs[order]
        tmax = int(ts[-1])
        if tmax > self._clock:
            self._clock = tmax
        self._chunk_ids += 1
        cid = self._chunk_ids
        chunk = self._chunks[cid] = _Chunk(cid, batch, rows, n)
        chunk.order, chunk.ts, chunk.seq0 = order, ts, self._seq
        go, starts, ends, fast, glast, gskb = self._groups(fps, hss, skbs, ts)
        chunk.by_fp = go
        # What to step through, in time order: every sighting of a fingerprint that needs the
        # per-sighting rules below, and the first sighting of each fingerprint that is a path of
        # its own (``_groups``): a span path, numbered here, whose sightings stay in the chunk.
        glen = ends - starts
        first = np.full(n, -1, dtype=np.int64)
        fast_ids = np.flatnonzero(fast)
        nfast = len(fast_ids)
        first[go[starts[fast_ids]]] = np.arange(nfast)
        slow = go[np.repeat(~fast, glen)]
        steps = np.sort(np.concatenate((slow, go[starts[fast_ids]])))
        # The columns the loop reads, for its steps only (a flood's steps are a fifth of its rows).
        ii = chunk.row_index(steps)
        cols = zip(steps.tolist(), ii.tolist(), first[steps].tolist(), ts[steps].tolist(), fps[steps].tolist(),
                   hss[steps].tolist(), skbs[steps].tolist(), rows["dir"][ii].tolist(), rows["family"][ii].tolist(),
                   rows["src"][ii].tolist(), rows["netns"][ii].tolist(), strict=True)
        gh = hss[go].tolist()
        by_fp = self._by_fp
        idle = self._idle
        window = self.window_ns
        seq0 = self._seq + 1
        span_fp = self._span_fp
        if span_fp and nfast < len(starts):
            # A span path whose fingerprint has sightings here: they may join it, by the rules.
            for f in fps[go[starts[~fast]]].tolist():
                got = span_fp.get(f)
                if got is not None:
                    q = self._promote(*got)
                    heappush(idle, (q.touched, q.num, q))
                    by_fp[f] = [q]
        nums: list[int] = [0] * nfast
        claims: dict[int, tuple[str, int]] = {}
        for pos, i, g, t, f, h, s, d, fam, src, ns in cols:
            if g >= 0:
                self._paths += 1
                nums[g] = self._paths
                if fam and (d == 2 or d == 0):
                    claim = self._own(fam, src, ns, t)
                    if claim is not None:
                        claims[g] = claim
                continue
            ref = (t, seq0 + pos, cid, i)
            p: _Open | None = None
            cands = by_fp.get(f)
            if cands is not None:
                if len(cands) == 1:
                    c = cands[0]
                    if (h not in c.hops and -window <= t - c.last_ts <= window
                            and not (s and c.skb and c.skb != s)):
                        p = c
                else:
                    p = self._pick(cands, t, h, s)
            if p is None:
                self._paths += 1
                self._open_count += 1
                # Refs hold ints only: CPython's GC stops tracking such tuples.
                p = _Open(self._paths, f, t, s, [h], [ref])
                heappush(idle, (t, p.num, p))
                if cands is None:
                    by_fp[f] = [p]
                else:
                    # Idle longer than the window: no candidate, finished yet or not (as
                    # tests/reference/correlate.py: the join does not depend on batching).
                    cands[:] = [c for c in cands if t - c.last_ts <= window]
                    cands.append(p)
                    if len(cands) > _MAX_SAME_FP:
                        # A flood of identical packets: the oldest gets no more hops.
                        del cands[0]
                if fam and (d == 2 or d == 0):
                    # The sender's own namespace: a packet first seen leaving it came from it.
                    p.claim = self._own(fam, src, ns, t)
            else:
                if p.refs is None:
                    p.refs = self._span_refs(p)
                p.hops.append(h)
                p.refs.append(ref)
                p.nrows += 1
                if s:
                    p.skb = s
                if t > p.last_ts:
                    p.last_ts = t
                    p.touched = t
                elif t < p.first_ts:
                    # Its true first sighting came late (another CPU's ring): what the
                    # forwarded copy taught was wrong, learn from the real one.
                    if p.claim is not None and self.owned.get(p.claim) == p.first_ts:
                        del self.owned[p.claim]
                    p.first_ts = t
                    p.claim = None
                    if fam and (d == 2 or d == 0):
                        p.claim = self._own(fam, src, ns, t)
        if nfast:
            gs = starts[fast_ids]
            sp = _Spans(chunk, nums, ts[go[gs]], glast[fast_ids], gs.tolist(), ends[fast_ids].tolist(),
                        fps[go[gs]].tolist(), gskb[fast_ids].tolist(), gh, claims)
            self._spans[cid] = sp
            span_fp.update(zip(sp.fp, zip(repeat(sp), range(nfast)), strict=True))
            self._open_count += nfast
        self._seq += n
        self._open_rows += n

    def _promote(self, sp: _Spans, k: int) -> _Open:
        """Span path ``k`` as an ``_Open`` (not filed anywhere yet): a sighting from elsewhere
        is about to join it."""
        p = self._promote_done(sp, k)
        self._spans_done(sp, np.array([k]))
        return p

    def _promote_done(self, sp: _Spans, k: int) -> _Open:
        """A span path that finished, as an ``_Open`` for ``_finish``."""
        a, b = sp.a[k], sp.b[k]
        p = _Open(sp.num_l[k], sp.fp[k], sp.first[k], sp.skb[k], sp.gh[a:b], None)
        p.span = (sp.chunk.cid, a, b)
        p.last_ts = p.touched = sp.last_l[k]
        p.claim = sp.claims.get(k)
        return p

    def _spans_done(self, sp: _Spans, ks: np.ndarray[Any, Any]) -> None:
        """Span paths ``ks`` of ``sp`` are no span paths any more (finished, or ``_Open``s)."""
        sp.alive[ks] = False
        sp.nalive -= len(ks)
        span_fp, fps = self._span_fp, sp.fp
        for k in ks.tolist():
            del span_fp[fps[k]]
        if not sp.nalive:
            del self._spans[sp.chunk.cid]
        else:
            sp.min_last = int(sp.last[sp.alive].min())

    def _groups(self, fps: np.ndarray[Any, Any], hss: np.ndarray[Any, Any], skbs: np.ndarray[Any, Any],
                ts: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], ...]:
        """A chunk's sightings (in time order) grouped by fingerprint, and which groups are a
        path of their own: what the per-sighting rules would make of them anyway, in bulk.

        A group is, when its fingerprint has no open path yet, at most one skb address is
        among its sightings, no two were seen at the same hop, and it spans at most the
        window: each sighting then joins the path the first one opened. Returns the
        fingerprint order (time positions), group starts and ends in it, and that verdict.
        """
        go = np.argsort(fps, kind="stable")
        gf = fps[go]
        brk = np.flatnonzero(gf[1:] != gf[:-1]) + 1
        starts = np.concatenate((np.zeros(1, dtype=np.int64), brk))
        ends = np.concatenate((brk, np.array([len(fps)], dtype=np.int64)))
        gs = skbs[go]
        smax = np.maximum.reduceat(gs, starts)
        smin = np.minimum.reduceat(np.where(gs == 0, _U64(0xFFFFFFFFFFFFFFFF), gs), starts)
        gt = ts[go]
        fast = ((smax == 0) | (smin == smax)) & (gt[ends - 1] - gt[starts] <= _U64(self.window_ns))
        glen = ends - starts
        multi = glen > 1
        if multi.any():
            gid = np.repeat(np.arange(len(starts)), glen)
            gh = hss[go]
            o = np.lexsort((gh, gid))
            gid, gh = gid[o], gh[o]
            dup = (gid[1:] == gid[:-1]) & (gh[1:] == gh[:-1])
            fast[gid[1:][dup]] = False
        by_fp, span_fp = self._by_fp, self._span_fp
        if by_fp or span_fp:
            fast &= np.array([f not in by_fp and f not in span_fp for f in gf[starts].tolist()], dtype=bool)
        return go, starts, ends, fast, gt[ends - 1], smax

    def _span_refs(self, p: _Open) -> list[tuple[int, int, int, int]]:
        """A span path's sightings as refs (one joins it from elsewhere, or it finishes the
        general way)."""
        assert p.span is not None
        cid, a, b = p.span
        p.span = None
        chunk = self._chunks[cid]
        assert chunk.ts is not None
        pos, rows = chunk.span_rows(a, b)
        seq0 = chunk.seq0 + 1
        return [(t, seq0 + q, cid, i)
                for t, q, i in zip(chunk.ts[pos].tolist(), pos.tolist(), rows.tolist(), strict=True)]

    def _pick(self, cands: list[_Open], t: int, h: int, s: int) -> _Open | None:
        """The path this sighting continues, among open ones with its fingerprint.

        A different known skb is another packet (an IP packet keeps its skb from
        container eth0 to the uplink); oldest first otherwise, because identical
        packets pass the hops in the order they were sent.
        """
        window = self.window_ns
        fallback = None
        for c in cands:
            if h in c.hops or not -window <= t - c.last_ts <= window:
                continue
            if s and c.skb:
                if c.skb == s:
                    return c
                continue
            if fallback is None:
                fallback = c
        return fallback

    def _own(self, family: int, raw: bytes, netns: int, ts: int) -> tuple[str, int] | None:
        """``raw`` sent a packet first seen leaving ``netns`` at ``ts``: it lives there.

        Returns the key when it is new (so that a path whose real first sighting
        arrives late can take it back).
        """
        key = (self._addr(family, raw), netns)
        owned = self.owned
        known = owned.get(key)
        if known is None:
            if len(owned) >= _MAX_OWNED:
                del owned[next(iter(owned))]
            owned[key] = ts
            return key
        if ts < known:
            owned[key] = ts
        return None

    def _addr(self, family: int, raw: bytes) -> str:
        key = (family, raw)
        text = self._addr_cache.get(key)
        if text is None:
            if len(self._addr_cache) > 100_000:
                self._addr_cache.clear()
            # numpy drops trailing NULs of S16 values: pad back before formatting.
            text = addr_text(family, raw.ljust(16, b"\0"))
            self._addr_cache[key] = text
        return text

    # --------------------------------------------------------------- output

    def _expire(self, cutoff: int | None, keep_rows: int = 0, max_paths: int | None = None,
                ) -> list[PacketPath]:
        """Finish paths idle since before ``cutoff`` (all when None), until ``keep_rows``
        sightings remain open, at most ``max_paths`` of them, in the order they went idle:
        (time of the last sighting, path number), open paths and span paths alike."""
        # Span paths idle before the cutoff, per chunk that has any.
        spans: list[tuple[_Spans, np.ndarray[Any, Any]]] = []
        for sp in self._spans.values():
            if cutoff is None:
                spans.append((sp, np.flatnonzero(sp.alive)))
            elif sp.min_last < cutoff:
                spans.append((sp, np.flatnonzero(sp.alive & (sp.last < _U64(cutoff)))))
        # Open paths idle before the cutoff, as many as the limits could take.
        need_rows = self._open_rows - keep_rows if keep_rows else None
        popped: list[_Open] = []
        rows = 0
        idle = self._idle
        while idle:
            touched, num, p = idle[0]
            if p.touched != touched:  # seen again since it was filed: re-file it
                heapreplace(idle, (p.touched, num, p))
                continue
            if ((cutoff is not None and touched >= cutoff) or (need_rows is not None and rows >= need_rows)
                    or len(popped) == max_paths):
                break
            heappop(idle)
            popped.append(p)
            rows += p.nrows
        # Both in idle order, up to the limits: (open path, or span path j of spans[src]).
        order: list[tuple[_Open | None, int, int]]
        if not any(len(ks) for _sp, ks in spans):
            order = [(p, 0, 0) for p in popped]  # the heap's order is the idle order
        else:
            # (last sighting, number) of every candidate, in columns: sorted in one go
            lasts = [np.array([p.touched for p in popped], dtype=_U64)]
            nums = [np.array([p.num for p in popped], dtype=np.int64)]
            sizes = [np.array([p.nrows for p in popped], dtype=np.int64)]
            srcs = [np.full(len(popped), -1, dtype=np.int64)]
            ids = [np.arange(len(popped), dtype=np.int64)]
            for j, (sp, ks) in enumerate(spans):
                lasts.append(sp.last[ks])
                nums.append(sp.num[ks])
                sizes.append(sp.nrows[ks])
                srcs.append(np.full(len(ks), j, dtype=np.int64))
                ids.append(ks)
            o = np.lexsort((np.concatenate(nums), np.concatenate(lasts)))
            take = len(o)
            if need_rows is not None:
                size = np.concatenate(sizes)[o]
                take = int(np.searchsorted(np.cumsum(size) - size, need_rows, side="left"))
            if max_paths is not None:
                take = min(take, max_paths)
            src_o = np.concatenate(srcs)[o[:take]]
            id_o = np.concatenate(ids)[o[:take]]
            order = []
            for src, k in zip(src_o.tolist(), id_o.tolist(), strict=True):
                if src < 0:
                    order.append((popped[k], 0, 0))
                    popped[k] = None  # type: ignore[call-overload]
                else:
                    order.append((None, src, k))
            for left in popped:
                if left is not None:  # beyond the limits: still open
                    heappush(idle, (left.touched, left.num, left))
            # The span paths taken: closed in bulk.
            for j, (sp, _ks) in enumerate(spans):
                mine = id_o[src_o == j]
                if len(mine):
                    self._open_rows -= int(sp.nrows[mine].sum())
                    self._open_count -= len(mine)
                    self._spans_done(sp, mine)
        if not order:
            return []
        by_fp = self._by_fp
        for q, _src, _k in order:
            if q is not None:
                self._open_count -= 1
                self._open_rows -= q.nrows
                cands = by_fp.get(q.fp)
                if cands is not None and q in cands:
                    if len(cands) == 1:
                        del by_fp[q.fp]
                    else:
                        cands.remove(q)
        if self._lines is not None:
            # Once per step, not per path: what annotators know changes asynchronously anyway.
            self._generation = self._lines.generation()
            self._step.clear()
        # Finish in idle order: what a path's verdict and flow learn from earlier paths
        # is then the same live (many small steps, sightings out of order across
        # per-CPU rings) and in a replay of its recording (few big batches, sorted).
        # Emit in order of first sighting.
        # (After render_lines these are ``Rendered`` lines: typed as paths for the callers
        # that never turn it on.)
        done: list[tuple[int, Any]] = []
        finish_span = self._finish_span
        for q, src, k in order:
            if q is None:
                sp = spans[src][0]
                num = sp.num_l[k]
                out = finish_span(sp, k, num)
                if out is not _SLOW:
                    done.append((num, out))
                    continue
                q = self._promote_done(sp, k)
            done.append((q.num, self._finish(q)))
        done.sort(key=itemgetter(0))
        return [path for _num, path in done]

    def _finish(self, p: _Open) -> PacketPath | Rendered | None:
        if p.refs is None:
            p.refs = self._span_refs(p)
        refs = p.refs
        refs.sort()  # (ts, seq, ...): hops in time order, equal times in arrival order
        chunks = self._chunks
        used: list[_Chunk] = []
        rows: list[tuple[int, list[Any]]] = []
        for _t, _s, cid, i in refs:
            chunk = chunks[cid]
            kd = chunk.skd
            if kd is None:
                kd = chunk.skd = self._key_dyn(chunk)
            k = kd[2][i]
            rows.append((kd[0][k], kd[1][k * _NDYN : (k + 1) * _NDYN]))
            used.append(chunk)
        # Packets of one flow take the same hops with the same rewrites: their NAT
        # events are equal values, computed once per shape (and links learned once).
        key = tuple([k for k, _d in rows])
        by_shape = self._by_shape
        shape = by_shape.pop(key, None)
        hops: tuple[Observation, ...] | None = None
        if shape is None:
            hops = self._hops(refs, used)
            shape = _Shape(_shape_info(hops), hops)
            self._learn_links(hops)
            if len(by_shape) >= _MAX_SHAPES:
                # the least recently used (a hit re-inserts its shape at the end): a few heavy
                # flows keep their templates among many light ones
                del by_shape[next(iter(by_shape))]
        by_shape[key] = shape
        # The fields read below are the same for every path of this shape (the key
        # covers them); the times are this path's own.
        proto = shape.hops
        first_ts, last_ts = refs[0][0], refs[-1][0]
        v = self._verdict(shape, last_ts)
        pid = f"p{p.num}"
        flow = self._assign_flow(pid, proto, shape.info, first_ts, last_ts)
        lines = self._lines
        out: PacketPath | Rendered | None
        if lines is None:
            out = _new_path(pid, hops or self._hops(refs, used), shape.info[0], v, flow)
        elif self._row_filter is not None and not self._keep(refs, used, hops):
            out = None
        else:
            out = self._render(lines, shape, refs, used, rows, hops, pid, v, flow)
        for chunk in used:
            chunk.pending -= 1
            if not chunk.pending:
                chunks.pop(chunk.cid, None)
        return out

    def _verdict(self, shape: _Shape, last_ts: int) -> str:
        """``verdict()`` of a path of ``shape`` that was last seen at ``last_ts``."""
        # Only what was known when the path went idle (live, its tick came then; a replay
        # may already have read further): the same verdict in any batching.
        since = self.owned.get(shape.owner)
        known = since is not None and since <= last_ts + self.window_ns
        vkey = (known, len(self.links))  # links only grow
        v = shape.verdicts.get(vkey)
        if v is None:
            proto = shape.hops
            last = proto[-1]
            v = shape.verdicts[vkey] = verdict(proto, {last.dst: last.netns} if known else {}, self.links,
                                               shape.dropped)
        return v

    def _finish_span(self, sp: _Spans, k: int, num: int) -> object:
        """``_finish`` for a path that is one fingerprint group of one chunk, as a line from its
        shape's template, straight from the chunk's columns; ``_SLOW`` when that takes hop
        objects (a new shape, no template yet, classic paths, a path filter that cannot judge
        the frames in the batch). None when the path filter drops it."""
        lines = self._lines
        if lines is None:
            return _SLOW
        chunk = sp.chunk
        cid, a, b = chunk.cid, sp.a[k], sp.b[k]
        skd = chunk.skd
        if skd is None:
            skd = chunk.skd = self._key_dyn(chunk)
        keys, dyn, _inv = skd
        key = tuple(keys[a:b])
        by_shape = self._by_shape
        shape = by_shape.pop(key, None)
        if shape is None:
            return _SLOW
        by_shape[key] = shape  # the most recently used
        info = shape.info
        if info[3] is not None:
            return _SLOW  # an ICMP error: whether it has a flow depends on the flows open now
        last_ts = sp.last_l[k]
        v = self._verdict(shape, last_ts)
        filt = self._row_filter
        if filt is None:
            kept: bool | None = True
        elif filt.by_shape and shape.kept is not None and shape.kept[0] is filt:
            kept = shape.kept[1]
        else:
            kept = self._keep_span(chunk, a, b)
            if kept is None:
                return _SLOW
            if filt.by_shape:
                shape.kept = (filt, kept)
        t: _Template | object | None = None
        if kept:
            # The template: per step, once per shape and verdict (what annotators read is taken
            # once per step anyway, see _expire).
            step = self._step
            got = step.get((id(shape), v))
            if got is not None and got[0] is shape:
                t = got[1]
            else:
                # Without a quoted packet, _assign_flow gives a flow exactly when there are flow keys.
                t = shape.templates.get((v, info[1] is None, self._generation,
                                         lines.volatile(shape.hops, info[0])))
                step[(id(shape), v)] = (shape, t)
            if type(t) is not _Template:
                return _SLOW
        pid = f"p{num}"
        flow = self._assign_flow(pid, shape.hops, info, sp.first[k], last_ts)
        chunk.pending -= b - a
        if not chunk.pending:
            self._chunks.pop(cid, None)
        if not kept:
            return None  # dropped by the path filter (after taking its path and flow number)
        assert type(t) is _Template
        values: list[Any] = [pid, flow]
        values += dyn[a * _NDYN : b * _NDYN]
        if t.effects:
            lines.replay(t.effects)
        return _new_rendered(pid, flow, t.fmt % t.pick(values), t.conntrack_id)

    def _keep_span(self, chunk: _Chunk, a: int, b: int) -> bool | None:
        """``_keep`` for a span path: from the frames in the batch, None if they cannot tell."""
        filt = self._row_filter
        assert filt is not None
        _pos, idx = chunk.span_rows(a, b)
        batch, rows = chunk.batch, chunk.rows
        for i in idx.tolist():  # in time order, as the path's hops
            kept = filt.keep_row(batch, rows, i)
            if kept is None:
                return None
            if kept:
                return True
        return False

    @staticmethod
    def _key_dyn(chunk: _Chunk) -> tuple[list[int], list[Any], list[int]]:
        """Per row, in the chunk's fingerprint order: its shape key (``_render_hash``) and,
        flat, its ``DYN_FIELDS`` values; and per row index, its place in that order."""
        assert chunk.by_fp is not None
        rows = chunk.rows
        perm = chunk.row_index(chunk.by_fp)
        n = len(perm)
        keys = _render_hash(rows, chunk.batch.hops)[perm].tolist()
        # All unsigned (obs_dtype): as uint64 their Python ints are the same.
        dyn = np.empty((n, _NDYN), dtype=_U64)
        for k, name in enumerate(DYN_FIELDS):
            dyn[:, k] = rows[name][perm]
        inv = np.empty(n, dtype=np.intp)
        inv[perm] = np.arange(n)
        return keys, dyn.ravel().tolist(), inv.tolist()

    def _keep(self, refs: list[tuple[int, int, int, int]], used: list[_Chunk],
              hops: tuple[Observation, ...] | None) -> bool:
        """The path filter's ``keep``: from the frames in the batches while they can tell."""
        filt = self._row_filter
        assert filt is not None
        if hops is None:
            for (_t, _s, _cid, i), chunk in zip(refs, used, strict=True):
                kept = filt.keep_row(chunk.batch, chunk.rows, i)
                if kept is None:
                    break
                if kept:
                    return True
            else:
                return False
            hops = self._hops(refs, used)
        return filt.keep_hops(hops)

    def _hops(self, refs: list[tuple[int, int, int, int]], used: list[_Chunk]) -> tuple[Observation, ...]:
        make = _new_observation
        out = []
        own: dict[int, dict[int, tuple[Any, ...]]] = {}
        for (_t, _s, cid, i), chunk in zip(refs, used, strict=True):
            obs = chunk.obs
            if obs is None:
                mine = own.get(cid)
                if mine is None:
                    chunk.asks += 1
                    if self._lines is None or chunk.asks > _OWN_ROWS_ASKS:
                        # Paths of a chunk all want hops (classic paths), or many do: the
                        # whole chunk at once, column by column.
                        obs = chunk.obs = self._materialize(chunk.batch, chunk.rows)
                    else:
                        # Lines: most paths come from templates; the few that cannot (a
                        # sighting came in another batch, a new shape) make only their own rows.
                        idx = sorted({r[3] for r, c in zip(refs, used, strict=True) if c is chunk})
                        mine = own[cid] = dict(zip(idx, self._materialize(chunk.batch, chunk.rows[idx]),
                                                   strict=True))
                if mine is not None:
                    out.append(make(mine[i]))
                    continue
                assert obs is not None
            out.append(make(obs[i]))
        return tuple(out)

    def _render(self, lines: LineRenderer, shape: _Shape, refs: list[tuple[int, int, int, int]],
                used: list[_Chunk], rows: list[tuple[int, list[Any]]],
                hops: tuple[Observation, ...] | None, pid: str, v: str, flow: str | None) -> Rendered:
        """The path as its NDJSON line: from its shape's template once the shape repeats."""
        # What the annotators read that changes per packet, asked with this shape's hops (for
        # the fields the key fixes: this path's own would say the same).
        tkey = (v, flow is None, self._generation, lines.volatile(shape.hops, shape.info[0]))
        t = shape.templates.get(tkey)
        if type(t) is _Template:
            values: list[Any] = [pid, flow]
            for _k, dyn in rows:
                values += dyn
            if t.effects:
                lines.replay(t.effects)
            return _new_rendered(pid, flow, t.fmt % t.pick(values), t.conntrack_id)
        path = _new_path(pid, hops or self._hops(refs, used), shape.info[0], v, flow)
        before = lines.counters()
        path = lines.annotate(path)
        effects = lines.effects(before)
        ct = next((ev.conntrack.id for ev in path.nat
                   if ev.conntrack is not None and ev.conntrack.id is not None), None)
        line = path_line(path) + "\n"
        if t is None:
            # Seen once: a template pays off only if the shape repeats.
            if len(shape.templates) >= _MAX_TEMPLATES:
                shape.templates.clear()
            shape.templates[tkey] = _ONCE
        elif t is _ONCE:
            made = path_template(path, line, _with_values)
            shape.templates[tkey] = _NO_TEMPLATE if made is None else _Template(made[0], made[1], ct, effects)
        if t is None or t is _ONCE:
            self._step.pop((id(shape), v), None)  # what _finish_span took for this step changed
        return Rendered(pid, flow, line, ct)

    def _learn_links(self, hops: Sequence[Observation]) -> None:
        for a, b in pairwise(hops):
            if (a.direction in ("tx", None) and b.direction in ("rx", None)
                    and (a.netns, a.node) != (b.netns, b.node)):
                self.links.add((a.netns, a.node, a.ifname))

    def _addr_column(self, fam: np.ndarray[Any, Any], col: np.ndarray[Any, Any]) -> list[str]:
        """Addresses as text, formatting each distinct (family, address) once."""
        get = self._addr_cache.get
        addr = self._addr
        return [get(k) or addr(*k) for k in zip(fam.tolist(), col.tolist(), strict=True)]

    def _materialize(self, batch: ObsBatch, rows: np.ndarray[Any, Any]) -> list[tuple[Any, ...]]:
        """Every row of a chunk as an ``Observation``, column by column (all are emitted eventually)."""
        n = len(rows)
        has = rows["has"]
        fam = rows["family"]
        ethertype = rows["ethertype"]

        def opt(name: str, flag: int) -> list[Any]:
            col = rows[name].astype(object)
            col[(has & flag) == 0] = None
            out: list[Any] = col.tolist()
            return out

        hop = rows["hop"].astype(np.intp)
        ifnames = np.array([h.iface for h in batch.hops], dtype=object)[hop].tolist()
        nodes = np.array([h.node for h in batch.hops], dtype=object)[hop].tolist()
        d = rows["dir"]
        dirs = np.array(_DIR_LABEL + (None,) * 252, dtype=object)[d].tolist()
        source = rows["source"]
        sources = [_SRC_LABEL.get(x, "file") for x in source.tolist()] if (source != 1).any() \
            else ["ebpf"] * n
        # ARP's sender/target protocol addresses are IPv4 addresses: show them so.
        afam = np.where((fam == 0) & (ethertype == ETH_P_ARP), 4, fam)
        srcs = self._addr_column(afam, rows["src"])
        dsts = self._addr_column(afam, rows["dst"])
        skb = rows["skb"].astype(object)
        skb[skb == 0] = None
        frag = rows["frag"]
        inners: list[InnerHeader | None] = [None] * n
        for i in np.flatnonzero(has & HAS_INNER).tolist():
            r = rows[i]
            f = int(r["family"])
            inners[i] = InnerHeader(self._addr(f, bytes(r["inner_src"])), self._addr(f, bytes(r["inner_dst"])),
                                    int(r["inner_proto"]), int(r["inner_sport"]), int(r["inner_dport"]))
        reasons: list[str | None] = [None] * n
        reason_col = rows["drop_reason"]
        for i in np.flatnonzero(reason_col).tolist():
            code = int(reason_col[i])
            reasons[i] = batch.drop_reasons.get(code) or f"UNKNOWN({code})"
        flen = rows["frame_len"].tolist()
        if any(flen):
            frames = batch.frames
            mv = frames if isinstance(frames, bytes) else bytes(frames)
            frame_list = [mv[o : o + k] for o, k in zip(rows["frame_off"].tolist(), flen, strict=True)]
        else:
            frame_list = [b""] * n
        cols = (
            rows["ts_ns"].tolist(), rows["netns"].tolist(), rows["ifindex"].tolist(), ifnames, nodes,
            dirs, sources, fam.tolist(), rows["proto"].tolist(), srcs, dsts, rows["length"].tolist(),
            rows["ttl"].tolist(), skb.tolist(), ethertype.tolist(),
            opt("sport", HAS_L4_PORTS), opt("dport", HAS_L4_PORTS), opt("ip_id", HAS_IP_ID),
            opt("flow_label", HAS_FLOW_LABEL), opt("tcp_flags", HAS_TCP), opt("tcp_seq", HAS_TCP),
            opt("tcp_ack", HAS_TCP), opt("icmp_type", HAS_ICMP), opt("icmp_code", HAS_ICMP),
            opt("icmp_id", HAS_ICMP), opt("icmp_seq", HAS_ICMP),
            ((frag & 0x1FFF).astype(np.int64) * 8).tolist(), (frag >= 0x8000).tolist(),
            ((has & HAS_FRAG) != 0).tolist(), rows["digest"].tolist(), inners, reasons, frame_list,
            rows["wire_len"].tolist(),
        )
        # Value tuples, not Observations yet: tuples of plain values are dropped from
        # CPython's GC tracking, while the chunk waits for its last path to finish.
        return list(zip(*cols, strict=True))

    # ---------------------------------------------------------------- flows

    def _assign_flow(self, pid: str, hops: Sequence[Observation], info: _ShapeInfo, first_ts: int,
                     last_ts: int) -> str | None:
        """``hops``: a path of this shape (for what the shape fixes); the times are this path's."""
        _nat, orig, trans, quoted = info
        if orig is None:
            return None  # ARP and other L2: no connection
        first, last = hops[0], hops[-1]
        keys = self._flow_keys
        fs = None
        if quoted is not None:
            # An ICMP error belongs to the flow of the packet it quotes.
            fs = keys.get(quoted)
            if fs is None:
                return None
        if fs is None:
            fs = keys.get(orig)
            if fs is not None and first_ts - fs.touched > self.flow_idle_ns:
                # Idle that long: a new connection on the same addresses (judged on the
                # packets' own times, so any batching gives the same flows).
                self._close_flow(fs)
                fs = None
            if fs is None:
                assert trans is not None
                self._flows += 1
                reply = new_endpoints(last.dst, last.dport, last.src, last.sport)
                fs = _FlowState(self._flows, first.proto_name, _endpoints(first), reply, -1)
                for k in (orig, trans, _reverse(trans), _reverse(orig)):
                    if k not in keys:
                        keys[k] = fs
                        fs.keys.append(k)
                self._flows_open[fs.num] = fs
        fs.paths.append(pid)
        if last_ts > fs.touched:
            self._flow_seq += 1
            if fs.touched < 0:
                heappush(self._flow_idle, (last_ts, self._flow_seq, fs))
            fs.touched = last_ts
            fs.seq = self._flow_seq
        if len(fs.paths) >= self.max_flow_paths:
            self._close_flow(fs)
        return f"f{fs.num}"

    def _close_flow(self, fs: _FlowState) -> None:
        if self._flows_open.pop(fs.num, None) is None:
            return
        for k in fs.keys:
            if self._flow_keys.get(k) is fs:
                del self._flow_keys[k]
        self._flows_done.append(fs.flow())
        fs.paths, fs.keys = [], []  # its entry in _flow_idle may wait up to flow_idle_ns more


def correlate(observations: Sequence[Observation], **kw: Any) -> list[PacketPath]:
    """All paths of a finite list of sightings (tests, small tools)."""
    c = Correlator(**kw)
    return [*c.feed_batch(ObsBatch.from_observations(list(observations))), *c.flush()]


__all__ = ["Correlator", "correlate", "obs_dtype"]
