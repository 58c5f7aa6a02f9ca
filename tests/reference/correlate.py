"""The reference correlator: sightings -> packet paths -> flows, as plainly as it can be said.

The product's engine is the core's (crates/hoptrace-core: correlate.rs, finish.rs); this
is what it is held to, byte for byte (the core's differential tests compare with it;
tests/unit/test_reference.py proved it against the Python engine it replaced, which gave the
same lines on every fixture, all 830 corpus files and generated streams, before that engine
left the product).
No caches, no templates, no bulk tricks: one sighting at a time, one path at a time.

Joining (DESIGN.md, "Correlation"). A sighting's *fingerprint* is what NAT and routing
leave alone: protocol, IP ID, IPv6 flow label, TCP flags/seq/ack, ICMP type/code/seq,
fragment offset and MF, IP length and the payload digest (and, for ARP and other L2
frames, their addresses: nothing rewrites those). Among the open paths with its
fingerprint, a sighting joins

* the one with the same skb address (a different known skb is another packet; L2
  broadcasts get a new skb per bridge port, so their skb is ignored),
* else the oldest one that was not seen at this hop yet — one packet passes a hop
  (netns, interface, direction) once, so a second sighting there is a new packet;
  where the capture does not say the direction, the header as seen there (addresses,
  ports, TTL) tells the two sightings at one interface apart,

and only if it is within the *join window* (``join_window_ns``) of that path's latest
sighting (addresses are reused after free; identical packets — repeated pings,
retransmissions — come and go). Two more rules keep look-alikes apart
(docs/correlation.md), in path order (time, then arrival; the new sighting arrived last):

* a free ends an skb: after a drop only a clone's sightings join — frames that are not IP,
  which the join follows by fingerprint across a bridge's clones, with another skb than the
  one freed (and a late drop does not join a path that went on after it);
* the header (addresses, ports, ICMP echo id, the quote of an ICMP error: ``header``) of
  the sightings just before and just after it in path order is its own, or it changed
  where NAT happens: after a receive (or no direction), before the next sighting in the
  same namespace (``same_namespace``: sent, freed, or received by a bridge after
  br_netfilter's PREROUTING at its port), neither address link-local nor multicast, in a
  namespace ``nat_netns`` holds (None: any, as in replay; live: those with NAT rules or
  conntrack entries). Frames that are not IP have no header to rewrite.

At most ``max_same_fp`` open paths per fingerprint are candidates; the oldest drops out.
A path idle longer than the join window when another with its fingerprint opens is no
candidate any more, whether or not it has finished yet: so the join does not depend on
batching.

Batches are taken ``chunk`` rows at a time; a chunk's sightings are stepped in time
order (equal times in arrival order). A sighting that starts a path leaving a namespace
(tx, or no direction) teaches that its source address lives in that namespace (a
*claim*); if the path's true first sighting turns up later, the claim is taken back
and the true one claims.

Finishing. After each chunk, paths idle for the window (``window_ns``, how long a path
waits for late sightings; their latest sighting before
the clock, the latest time seen, minus the window) finish; beyond ``max_open_rows``
sightings in open paths, the longest idle finish too. ``advance`` moves the clock,
``flush`` finishes all (or the ``max_paths`` longest idle). Paths finish in the order
they went idle — (latest sighting, number) — so that what a path learns from earlier
ones does not depend on batching; each step hands its paths out by number. A path's
hops are in time order; then

* its NAT events (tests/reference/nat.py),
* links: a tx hop followed by an rx hop in another namespace is a traced link,
* its unnamed hops named and its verdict (tests/reference/drops.py), knowing who owns the destination only if that was learnt no later than
  the window after the path's latest sighting,
* its flow: keyed by (family, proto, src, sport, dst, dport) (ICMP echo by its id) as
  first and last seen, both ways; an ICMP error belongs to the flow of the packet it
  quotes, or none. A flow closes when idle for ``flow_idle_ns`` (by the paths' own
  times), at ``max_flow_paths`` paths, or at the end of input.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from tests.reference.drops import name_hops, path_verdict
from tests.reference.nat import endpoints, infer_nat, same_namespace
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
    OBS_DTYPE_FIELDS,
    Endpoints,
    Flow,
    InnerHeader,
    ObsBatch,
    Observation,
    PacketPath,
)

DEFAULT_WINDOW_NS = 500_000_000  # how long a path waits for late sightings
DEFAULT_JOIN_WINDOW_NS = 50_000_000  # the most packet time between two sightings of one packet
DEFAULT_FLOW_IDLE_NS = 5_000_000_000
DEFAULT_MAX_FLOW_PATHS = 1000
DEFAULT_MAX_OPEN_ROWS = 300_000
CHUNK = 16384
MAX_SAME_FP = 64
MAX_OWNED = 65536

_DIRS = {1: "rx", 2: "tx", 3: "drop"}
_SOURCES = {0: "file", 1: "ebpf", 2: "pcap"}
_UNKNOWN_DIR = 0
_TX = 2
_DROP = 3
ECHO_TYPES = {(1, 8), (1, 0), (58, 128), (58, 129)}

FlowKey = tuple[int, int, str, "int | None", str, "int | None"]


def _addr(family: int, raw: bytes) -> str:
    return addr_text(family, raw.ljust(16, b"\0"))


# A row of OBS_DTYPE as Python values (addresses as bytes without their trailing NULs).
Row = namedtuple("Row", [name for name, _type in OBS_DTYPE_FIELDS])  # type: ignore[misc]


def rows_of(rows: Any) -> list[Any]:
    """OBS_DTYPE rows as ``Row``s."""
    return [Row._make(t) for t in rows.tolist()]


def observation(batch: ObsBatch, r: Any) -> Observation:
    """``Row`` ``r`` of ``batch`` as the sighting it describes."""
    has = r.has
    fam = r.family
    label = batch.hops[r.hop]
    # ARP's sender and target protocol addresses are IPv4 addresses: shown so.
    afam = 4 if fam == 0 and r.ethertype == ETH_P_ARP else fam
    inner = None
    if has & HAS_INNER:
        inner = InnerHeader(_addr(fam, r.inner_src), _addr(fam, r.inner_dst), r.inner_proto,
                            r.inner_sport, r.inner_dport)
    code = r.drop_reason
    off, n = r.frame_off, r.frame_len
    frag = r.frag

    def opt(name: str, flag: int) -> int | None:
        return getattr(r, name) if has & flag else None

    return Observation(
        ts_ns=r.ts_ns, netns=r.netns, ifindex=r.ifindex, ifname=label.iface,
        node=label.node, direction=_DIRS.get(r.dir),  # type: ignore[arg-type]
        source=_SOURCES.get(r.source, "file"),  # type: ignore[arg-type]
        family=fam, proto=r.proto, src=_addr(afam, r.src), dst=_addr(afam, r.dst),
        length=r.length, ttl=r.ttl, skb=r.skb or None, ethertype=r.ethertype,
        sport=opt("sport", HAS_L4_PORTS), dport=opt("dport", HAS_L4_PORTS), ip_id=opt("ip_id", HAS_IP_ID),
        flow_label=opt("flow_label", HAS_FLOW_LABEL), tcp_flags=opt("tcp_flags", HAS_TCP),
        tcp_seq=opt("tcp_seq", HAS_TCP), tcp_ack=opt("tcp_ack", HAS_TCP), icmp_type=opt("icmp_type", HAS_ICMP),
        icmp_code=opt("icmp_code", HAS_ICMP), icmp_id=opt("icmp_id", HAS_ICMP), icmp_seq=opt("icmp_seq", HAS_ICMP),
        frag_offset=(frag & 0x1FFF) * 8, more_fragments=frag >= 0x8000, is_fragment=bool(has & HAS_FRAG),
        digest=r.digest, inner=inner,
        drop_reason=(batch.drop_reasons.get(code) or f"UNKNOWN({code})") if code else None,
        frame=bytes(batch.frames[off : off + n]) if n else b"", wire_len=r.wire_len,
    )


FINGERPRINT = ("family", "proto", "ethertype", "has", "ip_id", "flow_label", "tcp_flags", "tcp_seq", "tcp_ack",
               "icmp_type", "icmp_code", "icmp_seq", "frag", "length", "digest")


def fingerprint(r: Any) -> tuple[Any, ...]:
    """What NAT and routing leave alone (addresses too for frames that are not IP)."""
    fp: tuple[Any, ...] = tuple(getattr(r, name) for name in FINGERPRINT)
    if r.family == 0:
        fp += (r.src, r.dst)
    return fp


def hop_signature(r: Any) -> tuple[Any, ...]:
    """Where a sighting was (netns, hop label index, ifindex, direction); without a direction,
    also the header as seen there."""
    sig: tuple[Any, ...] = (r.netns, r.hop, r.ifindex, r.dir)
    if r.dir == _UNKNOWN_DIR:
        sig += (r.src, r.dst, r.sport, r.dport, r.ttl)
    return sig


def header(o: Observation) -> tuple[Any, ...]:
    """What NAT may rewrite (tests/reference/nat.py ``rewritten`` compares the same)."""
    return (o.src, o.dst, o.sport, o.dport, o.icmp_id, o.inner)


def scoped_addr(family: int, raw: bytes) -> bool:
    """Link-local (169.254/16, fe80::/10) or multicast (224/4, ff00::/8)."""
    b = raw.ljust(2, b"\0")
    if family == 4:
        return (b[0] == 169 and b[1] == 254) or b[0] & 0xF0 == 0xE0
    if family == 6:
        return (b[0] == 0xFE and b[1] & 0xC0 == 0x80) or b[0] == 0xFF
    return False


def scoped(r: Any) -> bool:
    return scoped_addr(r.family, r.src) or scoped_addr(r.family, r.dst)


@dataclass
class Sighting:
    ts: int
    seq: int  # arrival order in the whole stream
    obs: Observation
    scoped: bool = False  # link-local or multicast


@dataclass(eq=False)
class OpenPath:
    num: int
    fp: tuple[Any, ...]
    skb: int
    first_ts: int
    last_ts: int
    sightings: list[Sighting] = field(default_factory=list)
    places: list[tuple[Any, ...]] = field(default_factory=list)  # hop signatures seen
    claim: tuple[str, int] | None = None  # the (address, netns) its first sighting taught


@dataclass(eq=False)
class OpenFlow:
    num: int
    proto: str
    original: Endpoints
    reply: Endpoints
    paths: list[str] = field(default_factory=list)
    keys: list[FlowKey] = field(default_factory=list)
    touched: int = -1  # the latest sighting of its paths
    seq: int = 0  # when ``touched`` was set (ties)

    def flow(self) -> Flow:
        return Flow(id=f"f{self.num}", proto=self.proto, original=self.original, reply=self.reply,
                    paths=tuple(self.paths))


def flow_key(o: Observation) -> FlowKey:
    sport, dport = o.sport, o.dport
    if sport is None and o.icmp_id is not None and (o.proto, o.icmp_type) in ECHO_TYPES:
        sport = dport = o.icmp_id  # conntrack keys ICMP echo by its id, in both directions
    return (o.family, o.proto, o.src, sport, o.dst, dport)


def reverse(k: FlowKey) -> FlowKey:
    return (k[0], k[1], k[4], k[5], k[2], k[3])


def quoted_key(o: Observation) -> FlowKey | None:
    """The flow key of the packet an ICMP error quotes."""
    q = o.inner
    if q is None:
        return None
    return (o.family, q.proto, q.src, q.sport, q.dst, q.sport if q.proto in (1, 58) else q.dport)


class Correlator:
    """See the module doc."""

    def __init__(self, *, window_ns: int = DEFAULT_WINDOW_NS, flow_idle_ns: int = DEFAULT_FLOW_IDLE_NS,
                 max_flow_paths: int = DEFAULT_MAX_FLOW_PATHS, max_open_rows: int = DEFAULT_MAX_OPEN_ROWS,
                 chunk: int = CHUNK, max_same_fp: int = MAX_SAME_FP,
                 join_window_ns: int = DEFAULT_JOIN_WINDOW_NS, nat_netns: Set[int] | None = None) -> None:
        self.window_ns = window_ns
        self.join_window_ns = min(join_window_ns, window_ns)  # never longer than the wait
        self.nat_netns = None if nat_netns is None else frozenset(nat_netns)
        self.flow_idle_ns = flow_idle_ns
        self.max_flow_paths = max_flow_paths
        self.max_open_rows = max_open_rows
        self.chunk = chunk
        self.max_same_fp = max_same_fp
        self.clock = 0
        self.seq = 0
        self.paths = 0  # path numbers given
        self.open: dict[int, OpenPath] = {}  # by number
        self.candidates: dict[tuple[Any, ...], list[OpenPath]] = {}
        # Learnt from traffic: (address, netns) -> since when it sends from there; tx hops whose
        # packets were seen arriving at another traced hop.
        self.owned: dict[tuple[str, int], int] = {}
        self.links: set[tuple[int, str, str]] = set()
        # netns -> [(from_ns, to_ns)] a raw ICMP socket was open there (tests/reference/drops.py).
        self.raw_sockets: dict[int, list[tuple[int, int]]] = {}
        self.flows = 0
        self.flow_keys: dict[FlowKey, OpenFlow] = {}
        self.flows_open: dict[int, OpenFlow] = {}
        self.flows_done: list[Flow] = []
        self.flow_seq = 0

    @property
    def open_rows(self) -> int:
        return sum(len(p.sightings) for p in self.open.values())

    @property
    def open_paths(self) -> int:
        return len(self.open)

    def set_nat_namespaces(self, netns: Set[int] | None) -> None:
        """Where NAT may change a header: any namespace (None), or only these netns inodes."""
        self.nat_netns = None if netns is None else frozenset(netns)

    def learn_address(self, netns: int, addr: str) -> None:
        """``addr`` lives in ``netns`` (as topology would say): packets to it arriving there are delivered."""
        self.owned[(addr, netns)] = 0

    def feed(self, obs: Observation) -> list[PacketPath]:
        """One sighting: a batch of one."""
        return self.feed_batch(ObsBatch.from_observations([obs]))

    # ------------------------------------------------------------------ input

    def feed_batch(self, batch: ObsBatch) -> list[PacketPath]:
        """A batch of sightings; the paths that finished."""
        out: list[PacketPath] = []
        for start in range(0, len(batch.rows), self.chunk):
            self._feed_chunk(batch, batch.rows[start : start + self.chunk])
            out += self._expire(self.clock - self.window_ns)
            if self.open_rows > self.max_open_rows:
                out += self._expire(None, keep_rows=self.max_open_rows)
        if batch.now_ns is not None:
            out += self.advance(batch.now_ns)
        return out

    def advance(self, now_ns: int) -> list[PacketPath]:
        self.clock = max(self.clock, now_ns)
        return self._expire(self.clock - self.window_ns)

    def flush(self, max_paths: int | None = None) -> list[PacketPath]:
        """The end of input: every open path finishes (at most ``max_paths``, the longest idle);
        once none is open, every flow closes."""
        out = self._expire(None, max_paths=max_paths)
        if not self.open:
            for f in list(self.flows_open.values()):
                self._close_flow(f)
        return out

    def take_flows(self) -> list[Flow]:
        """Flows closed since the last call; first those idle for ``flow_idle_ns``."""
        cutoff = self.clock - self.flow_idle_ns
        for f in sorted(self.flows_open.values(), key=lambda f: (f.touched, f.seq)):
            if f.touched < cutoff:
                self._close_flow(f)
        done, self.flows_done = self.flows_done, []
        return done

    def _feed_chunk(self, batch: ObsBatch, rows: Any) -> None:
        if not len(rows):
            return
        first_seq = self.seq
        self.seq += len(rows)
        arrived = [(r.ts_ns, first_seq + k, r) for k, r in enumerate(rows_of(rows))]
        arrived.sort(key=lambda a: (a[0], a[1]))
        self.clock = max(self.clock, arrived[-1][0])
        for t, seq, r in arrived:
            self._step(batch, t, seq, r)

    def _step(self, batch: ObsBatch, t: int, seq: int, r: Any) -> None:
        fp, place = fingerprint(r), hop_signature(r)
        fam, d = r.family, r.dir
        skb = r.skb if fam else 0
        sighting = Sighting(t, seq, observation(batch, r), scoped(r))
        p = self._pick(self.candidates.get(fp, []), sighting, place, skb)
        if p is None:
            self.paths += 1
            p = OpenPath(self.paths, fp, skb, t, t, [sighting], [place])
            self.open[p.num] = p
            cands = self.candidates.setdefault(fp, [])
            # Idle longer than the window: no candidate, finished yet or not (expiry's timing
            # depends on batching; the sighting's time does not).
            cands[:] = [c for c in cands if t - c.last_ts <= self.join_window_ns]
            cands.append(p)
            if len(cands) > self.max_same_fp:
                del cands[0]  # a flood of identical packets: the oldest gets no more hops
            if fam and d in (_TX, _UNKNOWN_DIR):
                p.claim = self._claim(fam, r.src, r.netns, t)
            return
        p.sightings.append(sighting)
        p.places.append(place)
        if skb:
            p.skb = skb
        if t > p.last_ts:
            p.last_ts = t
        elif t < p.first_ts:
            # Its true first sighting came late: what the forwarded copy taught was wrong.
            if p.claim is not None and self.owned.get(p.claim) == p.first_ts:
                self._retract(p.claim)
            p.first_ts = t
            p.claim = None
            if fam and d in (_TX, _UNKNOWN_DIR):
                p.claim = self._claim(fam, r.src, r.netns, t)

    def _pick(self, cands: list[OpenPath], s: Sighting, place: tuple[Any, ...], skb: int) -> OpenPath | None:
        oldest = None
        for c in cands:
            if place in c.places or abs(s.ts - c.last_ts) > self.join_window_ns or not self._open_to(c, s):
                continue
            if skb and c.skb:
                if c.skb == skb:
                    return c
                continue
            if oldest is None:
                oldest = c
        return oldest

    def _open_to(self, p: OpenPath, s: Sighting) -> bool:
        """The drop and header rules (module doc) for ``s`` joining ``p``."""
        before = [x for x in p.sightings if x.ts <= s.ts]
        after = [x for x in p.sightings if x.ts > s.ts]
        if any(x.obs.direction == "drop" and not self._outlives(x, s) for x in before):
            return False
        if s.obs.direction == "drop" and not all(self._outlives(s, x) for x in after):
            return False
        pred = max(before, key=lambda x: (x.ts, x.seq), default=None)
        succ = min(after, key=lambda x: (x.ts, x.seq), default=None)
        return (pred is None or self._accepts(pred, s)) and (succ is None or self._accepts(s, succ))

    @staticmethod
    def _outlives(freed: Sighting, later: Sighting) -> bool:
        """``later`` may follow the drop ``freed``: a clone's sighting (not IP, another skb)."""
        return later.obs.family == 0 and later.obs.skb != freed.obs.skb

    def _accepts(self, a: Sighting, b: Sighting) -> bool:
        """``a`` then ``b`` may be one packet: the same header, or a rewrite where NAT happens."""
        x, y = a.obs, b.obs
        if x.family == 0 or header(x) == header(y):
            return True
        ns = x.netns or y.netns
        return (same_namespace(x, y) and x.direction in ("rx", None) and not a.scoped and not b.scoped
                and (self.nat_netns is None or ns in self.nat_netns))

    def _claim(self, family: int, raw: bytes, netns: int, ts: int) -> tuple[str, int] | None:
        """The source address of a packet first seen leaving ``netns`` lives there; the key if
        it is new (for taking it back)."""
        key = (_addr(family, raw), netns)
        since = self.owned.get(key)
        if since is None:
            if len(self.owned) >= MAX_OWNED:
                del self.owned[next(iter(self.owned))]
            self.owned[key] = ts
            return key
        self.owned[key] = min(since, ts)
        return None

    def _retract(self, key: tuple[str, int]) -> None:
        del self.owned[key]

    # ------------------------------------------------------------------ output

    def _expire(self, cutoff: int | None, keep_rows: int = 0, max_paths: int | None = None) -> list[PacketPath]:
        """Finish the paths idle since before ``cutoff`` (all when None), in the order they went
        idle, until ``keep_rows`` sightings stay open, at most ``max_paths``; by number."""
        need_rows = self.open_rows - keep_rows if keep_rows else None
        taken: list[OpenPath] = []
        rows = 0
        for p in sorted(self.open.values(), key=lambda p: (p.last_ts, p.num)):
            if ((cutoff is not None and p.last_ts >= cutoff) or (need_rows is not None and rows >= need_rows)
                    or len(taken) == max_paths):
                break
            taken.append(p)
            rows += len(p.sightings)
        for p in taken:
            del self.open[p.num]
            cands = self.candidates.get(p.fp)
            if cands is not None and p in cands:
                cands.remove(p)
                if not cands:
                    del self.candidates[p.fp]
        done = [self._finish(p) for p in taken]
        return sorted(done, key=lambda path: int(path.id[1:]))

    def _finish(self, p: OpenPath) -> PacketPath:
        hops = name_hops(tuple(s.obs for s in sorted(p.sightings, key=lambda s: (s.ts, s.seq))))
        nat = infer_nat(hops)
        for a, b in pairwise(hops):
            if a.direction in ("tx", None) and b.direction in ("rx", None) and (a.netns, a.node) != (b.netns, b.node):
                self.links.add((a.netns, a.node, a.ifname))
        last = hops[-1]
        # Only what was known when the path went idle: the same verdict in any batching.
        since = self.owned.get((last.dst, last.netns))
        known = since is not None and since <= last.ts_ns + self.window_ns
        v = path_verdict(hops, {last.dst: last.netns} if known else {}, self.links, self.raw_sockets)
        pid = f"p{p.num}"
        return PacketPath(id=pid, hops=hops, nat=nat, verdict=v, flow=self._assign_flow(pid, hops))

    # ------------------------------------------------------------------ flows

    def _assign_flow(self, pid: str, hops: Sequence[Observation]) -> str | None:
        first, last = hops[0], hops[-1]
        if first.family == 0:
            return None  # ARP and other L2: no connection
        quoted = quoted_key(first)
        if quoted is not None:
            f = self.flow_keys.get(quoted)  # an ICMP error belongs to the flow it quotes
            if f is None:
                return None
        else:
            original = flow_key(first)
            f = self.flow_keys.get(original)
            if f is not None and first.ts_ns - f.touched > self.flow_idle_ns:
                self._close_flow(f)  # idle that long: a new connection on the same addresses
                f = None
            if f is None:
                self.flows += 1
                f = OpenFlow(self.flows, first.proto_name, endpoints(first),
                             Endpoints(last.dst, last.dport, last.src, last.sport))
                translated = flow_key(last)
                for k in (original, translated, reverse(translated), reverse(original)):
                    if k not in self.flow_keys:
                        self.flow_keys[k] = f
                        f.keys.append(k)
                self.flows_open[f.num] = f
        f.paths.append(pid)
        if last.ts_ns > f.touched:
            self.flow_seq += 1
            f.touched = last.ts_ns
            f.seq = self.flow_seq
        if len(f.paths) >= self.max_flow_paths:
            self._close_flow(f)
        return f"f{f.num}"

    def _close_flow(self, f: OpenFlow) -> None:
        if self.flows_open.pop(f.num, None) is None:
            return
        for k in f.keys:
            if self.flow_keys.get(k) is f:
                del self.flow_keys[k]
        self.flows_done.append(f.flow())


def correlate(observations: Sequence[Observation], **kw: Any) -> list[PacketPath]:
    """All paths of a finite list of sightings, fed as one batch (tests, small tools)."""
    c = Correlator(**kw)
    return [*c.feed_batch(ObsBatch.from_observations(list(observations))), *c.flush()]
