"""The records that flow through hoptrace, one way: sources -> correlator -> sinks.

Two views of the same data:

* ``ObsBatch`` — what travels from a source to the correlator at live rates: a
  numpy structured array (``OBS_DTYPE``, one row per sighting) plus the side
  tables a row points into (hop labels, frame bytes). One Python object per
  event is too slow at hundreds of thousands of events per second (DESIGN.md,
  "Measured on this box").
* ``Observation`` — the row view, one frozen dataclass per sighting, used by
  tests, sinks and anything that is not on the per-packet hot path.

numpy is imported lazily: ``tracer.model`` is imported by start-up paths
(``doctor``, ``--help``) that must stay small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    from tracer.sampling import SamplingState

Direction = Literal["rx", "tx", "drop"]
SourceKind = Literal["ebpf", "pcap", "file"]
Verdict = Literal["delivered", "dropped", "left", "incomplete"]
NatKind = Literal["snat", "dnat"]
Hook = Literal["PREROUTING", "POSTROUTING", "OUTPUT", "INPUT", "FORWARD"]


class Dir(IntEnum):
    """``direction`` as stored in ``OBS_DTYPE`` (column ``dir``)."""

    UNKNOWN = 0  # a capture that does not say (plain Ethernet pcap)
    RX = 1
    TX = 2
    DROP = 3

    @property
    def label(self) -> str | None:
        return _DIR_LABELS[self]


_DIR_LABELS = {Dir.UNKNOWN: None, Dir.RX: "rx", Dir.TX: "tx", Dir.DROP: "drop"}


class Src(IntEnum):
    """``source`` as stored in ``OBS_DTYPE``."""

    FILE = 0
    EBPF = 1
    PCAP = 2


_SRC_NAMES: dict[int, SourceKind] = {Src.FILE: "file", Src.EBPF: "ebpf", Src.PCAP: "pcap"}


# IP protocol numbers hoptrace names; anything else is shown as its number.
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp", 47: "gre", 50: "esp"}
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806


_PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}


def proto_name(family: int, proto: int, ethertype: int = 0) -> str:
    if family == 0:
        return "arp" if ethertype == ETH_P_ARP else f"ether:0x{ethertype:04x}"
    return PROTO_NAMES.get(proto, str(proto))


# --------------------------------------------------------------------------
# Batch view
# --------------------------------------------------------------------------

#: One row per sighting. Addresses are 16 raw bytes (IPv4 in the first 4).
#: ``hop`` indexes ``ObsBatch.hops``; ``frame_off``/``frame_len`` slice
#: ``ObsBatch.frames``. Integer fields that a packet does not have are 0;
#: ``has`` says which optional groups are present (HAS_* bits).
OBS_DTYPE_FIELDS: list[tuple[str, str]] = [
    ("ts_ns", "<u8"),
    ("skb", "<u8"),  # 0 = unknown
    ("netns", "<u8"),  # inode, or a small synthetic id for file hops
    ("hop", "<u4"),  # index into ObsBatch.hops
    ("ifindex", "<i4"),
    ("dir", "u1"),  # Dir
    ("source", "u1"),  # Src
    ("family", "u1"),  # 4, 6, or 0 (not IP: ARP or other L2)
    ("proto", "u1"),  # IP protocol number (innermost L4 after extension headers)
    ("ethertype", "<u2"),
    ("has", "<u2"),  # HAS_* bits
    ("src", "S16"),
    ("dst", "S16"),
    ("sport", "<u2"),
    ("dport", "<u2"),
    ("ip_id", "<u4"),  # IPv4 identification; IPv6 fragment id when fragmented
    ("flow_label", "<u4"),  # IPv6
    ("ttl", "u1"),  # TTL / hop limit
    ("tcp_flags", "u1"),
    ("icmp_type", "u1"),
    ("icmp_code", "u1"),
    ("icmp_id", "<u2"),
    ("icmp_seq", "<u2"),
    ("tcp_seq", "<u4"),
    ("tcp_ack", "<u4"),
    ("length", "<u4"),  # IP total length (header + payload) as on the wire
    ("frag", "<u2"),  # fragment offset in 8-byte units | 0x8000 if more fragments
    ("digest", "<u8"),  # NAT-invariant digest of what follows the L4 header (see decode)
    ("drop_reason", "<u4"),  # kernel enum skb_drop_reason value, 0 = none
    ("frame_off", "<u8"),
    ("frame_len", "<u4"),
    ("wire_len", "<u4"),  # original frame length before snaplen
    # ICMP errors: the embedded (quoted) header, which NAT rewrites too.
    ("inner_src", "S16"),
    ("inner_dst", "S16"),
    ("inner_proto", "u1"),
    ("inner_sport", "<u2"),  # or ICMP echo id of the quoted packet
    ("inner_dport", "<u2"),
]

HAS_L4_PORTS = 1 << 0
HAS_ICMP = 1 << 1
HAS_TCP = 1 << 2
HAS_IP_ID = 1 << 3
HAS_INNER = 1 << 4
HAS_FRAG = 1 << 5  # a fragment (first or later); later fragments have no L4 header
HAS_FLOW_LABEL = 1 << 6


def obs_dtype() -> np.dtype[Any]:
    import numpy as np

    return np.dtype(OBS_DTYPE_FIELDS)


@dataclass(frozen=True, slots=True)
class HopLabel:
    """Where a sighting happened: a (namespace, interface) pair and its names."""

    node: str  # container name, "host", a /run/netns name, or "netns:<inode>"
    iface: str  # interface name as seen inside that namespace
    netns: int = 0
    ifindex: int = 0
    linktype: int = 1  # pcap LINKTYPE_* of the frame bytes seen here (1 = Ethernet)

    @property
    def name(self) -> str:
        return f"{self.node}/{self.iface}"


@dataclass(slots=True)
class ObsBatch:
    """A batch of sightings in arrival order (not necessarily time order across hops).

    ``rows`` has dtype ``obs_dtype()``; ``hops`` is the label table rows point
    into (shared and append-only across batches of one source); ``frames``
    holds the captured bytes from the mac header, sliced by
    ``frame_off``/``frame_len`` (their link type is the hop's ``linktype``).
    ``now_ns``, when set by a live source, is the source's clock at the end of
    the batch: the correlator may finish paths idle since before it (a live
    source yields empty batches with ``now_ns`` while nothing happens).
    """

    rows: np.ndarray[Any, Any]
    hops: list[HopLabel]
    frames: bytes | bytearray | memoryview = b""
    now_ns: int | None = None
    drop_reasons: dict[int, str] = field(default_factory=dict)
    #: A recording's answers of who took packets, read with this batch (tracer/annotate/local.py):
    #: ``(record, json, text)`` each, as the core checked them.
    local_notes: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    #: A recording's relayed connections read with this batch (tracer/annotate/relay.py; as
    #: ``Stream.add_relays`` takes them).
    relay_notes: list[tuple[Any, ...]] = field(default_factory=list)
    #: A recording's raw ICMP socket spans, when a block of them was read with this batch
    #: (tracer/sinks/record.py ``on_raw_sockets``): every span read so far, ``(netns, from_ns,
    #: to_ns)`` each, as ``Stream.set_raw_sockets`` takes them.
    raw_sockets: list[tuple[int, int, int]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def observations(self) -> list[Observation]:
        """The row view; for tests and sinks, never the hot path."""
        return [Observation.from_row(r, self) for r in self.rows]

    @classmethod
    def from_observations(cls, observations: list[Observation]) -> ObsBatch:
        """The batch view of row views, in the given order; for tests and small sources."""
        import numpy as np

        from tracer.addr import addr_bytes

        rows = np.zeros(len(observations), dtype=obs_dtype())
        hops: list[HopLabel] = []
        hop_index: dict[tuple[str, str, int, int], int] = {}
        reasons: dict[str, int] = {}
        frames = bytearray()
        dirs = {None: Dir.UNKNOWN, "rx": Dir.RX, "tx": Dir.TX, "drop": Dir.DROP}

        def raw(family: int, text: str) -> bytes:
            if not text:
                return b""
            return addr_bytes(text)[1] if family else addr_bytes(text)[1][:4]

        for r, o in zip(rows, observations, strict=True):
            hk = (o.node, o.ifname, o.netns, o.ifindex)
            if hk not in hop_index:
                hop_index[hk] = len(hops)
                hops.append(HopLabel(node=o.node, iface=o.ifname, netns=o.netns, ifindex=o.ifindex))
            has = 0
            if o.sport is not None or o.dport is not None:
                has |= HAS_L4_PORTS
            if o.icmp_type is not None:
                has |= HAS_ICMP
            if o.tcp_flags is not None or o.tcp_seq is not None:
                has |= HAS_TCP
            if o.ip_id is not None:
                has |= HAS_IP_ID
            if o.inner is not None:
                has |= HAS_INNER
                r["inner_src"] = raw(o.family, o.inner.src)
                r["inner_dst"] = raw(o.family, o.inner.dst)
                r["inner_proto"] = o.inner.proto
                r["inner_sport"] = o.inner.sport or 0
                r["inner_dport"] = o.inner.dport or 0
            if o.is_fragment:
                has |= HAS_FRAG
            if o.flow_label is not None:
                has |= HAS_FLOW_LABEL
            reason = 0
            if o.drop_reason is not None:
                reason = reasons.setdefault(o.drop_reason, len(reasons) + 1)
            r["ts_ns"], r["skb"], r["netns"], r["hop"] = o.ts_ns, o.skb or 0, o.netns, hop_index[hk]
            r["ifindex"], r["dir"] = o.ifindex, dirs[o.direction]
            r["source"] = {"file": Src.FILE, "ebpf": Src.EBPF, "pcap": Src.PCAP}[o.source]
            r["family"], r["proto"], r["ethertype"], r["has"] = o.family, o.proto, o.ethertype, has
            r["src"], r["dst"] = raw(o.family, o.src), raw(o.family, o.dst)
            r["sport"], r["dport"] = o.sport or 0, o.dport or 0
            r["ip_id"], r["flow_label"], r["ttl"] = o.ip_id or 0, o.flow_label or 0, o.ttl
            r["tcp_flags"], r["tcp_seq"], r["tcp_ack"] = o.tcp_flags or 0, o.tcp_seq or 0, o.tcp_ack or 0
            r["icmp_type"], r["icmp_code"] = o.icmp_type or 0, o.icmp_code or 0
            r["icmp_id"], r["icmp_seq"] = o.icmp_id or 0, o.icmp_seq or 0
            r["length"] = o.length
            r["frag"] = (o.frag_offset // 8) | (0x8000 if o.more_fragments else 0)
            r["digest"], r["drop_reason"] = o.digest, reason
            r["frame_off"], r["frame_len"], r["wire_len"] = len(frames), len(o.frame), o.wire_len
            frames += o.frame
        return cls(rows=rows, hops=hops, frames=bytes(frames),
                   drop_reasons={v: k for k, v in reasons.items()})


# --------------------------------------------------------------------------
# Row view
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InnerHeader:
    """The header quoted inside an ICMP error."""

    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None


@dataclass(frozen=True, slots=True)
class Observation:
    """One packet seen at one hop."""

    ts_ns: int
    netns: int
    ifindex: int
    ifname: str
    node: str
    direction: Direction | None  # None: the capture did not say
    source: SourceKind
    family: int  # 4, 6, 0 (not IP)
    proto: int
    src: str
    dst: str
    length: int
    ttl: int = 0
    skb: int | None = None
    ethertype: int = ETH_P_IP
    sport: int | None = None
    dport: int | None = None
    ip_id: int | None = None
    flow_label: int | None = None
    tcp_flags: int | None = None
    tcp_seq: int | None = None
    tcp_ack: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    icmp_seq: int | None = None
    frag_offset: int = 0  # bytes
    more_fragments: bool = False
    is_fragment: bool = False
    digest: int = 0
    inner: InnerHeader | None = None
    drop_reason: str | None = None
    frame: bytes = b""
    wire_len: int = 0

    @property
    def hop_name(self) -> str:
        return f"{self.node}/{self.ifname}"

    @property
    def proto_name(self) -> str:
        return proto_name(self.family, self.proto, self.ethertype)

    @classmethod
    def from_json(cls, d: dict[str, Any], source: SourceKind = "file", ifindex: int = 0, digest: int = 0,
                  wire_len: int = 0) -> Observation:
        """The row view of one hop of a path's NDJSON (tracer/sinks/output.py ``_hop_json``'s inverse).

        What the line does not carry is given (``source``, ``ifindex``, ``digest``, ``wire_len``)
        or stays empty: the frame bytes."""
        proto_text: str = d["proto"]
        src: str = d["src"]
        if proto_text == "arp" or proto_text.startswith("ether:"):
            family, proto = 0, 0
            ethertype = ETH_P_ARP if proto_text == "arp" else int(proto_text[6:], 16)
        else:
            family = 6 if ":" in src else 4
            known = _PROTO_NUMBERS.get(proto_text)
            proto = int(proto_text) if known is None else known
            ethertype = ETH_P_IPV6 if family == 6 else ETH_P_IP
        skb = d["skb"]
        frag = d.get("frag")
        inner = d.get("inner")
        return cls(
            ts_ns=d["ts_ns"], netns=d["netns"], ifindex=ifindex, ifname=d["iface"], node=d["node"],
            direction=d["dir"], source=source, family=family, proto=proto, src=src, dst=d["dst"],
            length=d["length"], ttl=d["ttl"], skb=int(skb, 16) if skb else None, ethertype=ethertype,
            sport=d["sport"], dport=d["dport"], ip_id=d["ip_id"], flow_label=d.get("flow_label"),
            tcp_flags=d.get("tcp_flags"), tcp_seq=d.get("tcp_seq"), tcp_ack=d.get("tcp_ack"),
            icmp_type=d.get("icmp_type"), icmp_code=d.get("icmp_code"), icmp_id=d.get("icmp_id"),
            icmp_seq=d.get("icmp_seq"),
            frag_offset=frag["offset"] if frag else 0, more_fragments=bool(frag and frag["more"]),
            is_fragment=frag is not None,
            inner=None if inner is None else InnerHeader(
                src=inner["src"], dst=inner["dst"], proto=inner["proto"], sport=inner["sport"],
                dport=inner["dport"]),
            drop_reason=d["drop_reason"], digest=digest, wire_len=wire_len,
        )  # fmt: skip

    @classmethod
    def from_row(cls, r: Any, batch: ObsBatch) -> Observation:
        from tracer.addr import addr_text

        has = int(r["has"])
        fam = int(r["family"])
        label = batch.hops[int(r["hop"])]
        off, flen = int(r["frame_off"]), int(r["frame_len"])
        ports = bool(has & HAS_L4_PORTS)
        icmp = bool(has & HAS_ICMP)
        tcp = bool(has & HAS_TCP)
        inner = None
        if has & HAS_INNER:
            inner = InnerHeader(
                src=addr_text(fam, bytes(r["inner_src"])),
                dst=addr_text(fam, bytes(r["inner_dst"])),
                proto=int(r["inner_proto"]),
                sport=int(r["inner_sport"]),
                dport=int(r["inner_dport"]),
            )
        reason = int(r["drop_reason"])
        frag = int(r["frag"])
        return cls(
            ts_ns=int(r["ts_ns"]),
            netns=int(r["netns"]),
            ifindex=int(r["ifindex"]),
            ifname=label.iface,
            node=label.node,
            direction=Dir(int(r["dir"])).label,  # type: ignore[arg-type]
            source=Src(int(r["source"])).name.lower(),  # type: ignore[arg-type]
            family=fam,
            proto=int(r["proto"]),
            src=addr_text(fam, bytes(r["src"])),
            dst=addr_text(fam, bytes(r["dst"])),
            length=int(r["length"]),
            ttl=int(r["ttl"]),
            skb=int(r["skb"]) or None,
            ethertype=int(r["ethertype"]),
            sport=int(r["sport"]) if ports else None,
            dport=int(r["dport"]) if ports else None,
            ip_id=int(r["ip_id"]) if has & HAS_IP_ID else None,
            flow_label=int(r["flow_label"]) if has & HAS_FLOW_LABEL else None,
            tcp_flags=int(r["tcp_flags"]) if tcp else None,
            tcp_seq=int(r["tcp_seq"]) if tcp else None,
            tcp_ack=int(r["tcp_ack"]) if tcp else None,
            icmp_type=int(r["icmp_type"]) if icmp else None,
            icmp_code=int(r["icmp_code"]) if icmp else None,
            icmp_id=int(r["icmp_id"]) if icmp else None,
            icmp_seq=int(r["icmp_seq"]) if icmp else None,
            frag_offset=(frag & 0x1FFF) * 8,
            more_fragments=bool(frag & 0x8000),
            is_fragment=bool(has & HAS_FRAG),
            digest=int(r["digest"]),
            inner=inner,
            drop_reason=batch.drop_reasons.get(reason, f"UNKNOWN({reason})") if reason else None,
            frame=bytes(batch.frames[off : off + flen]),
            wire_len=int(r["wire_len"]),
        )


# --------------------------------------------------------------------------
# What the correlator produces
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoints:
    src: str
    sport: int | None
    dst: str
    dport: int | None

    def to_json(self) -> dict[str, Any]:
        return {"src": self.src, "sport": self.sport, "dst": self.dst, "dport": self.dport}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Endpoints:
        return cls(src=d["src"], sport=d["sport"], dst=d["dst"], dport=d["dport"])


@dataclass(frozen=True, slots=True)
class ConntrackRef:
    """The conntrack entry that a NAT event belongs to."""

    id: int | None
    original: Endpoints
    reply: Endpoints
    status: tuple[str, ...] = ()  # e.g. ("SRC_NAT", "SEEN_REPLY")
    zone: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ConntrackRef:
        return cls(id=d["id"], original=Endpoints.from_json(d["original"]),
                   reply=Endpoints.from_json(d["reply"]), status=tuple(d["status"]), zone=d["zone"])


@dataclass(frozen=True, slots=True)
class NatEvent:
    """A rewrite seen between two sightings of one packet in the same namespace."""

    kind: NatKind
    node: str
    hook: Hook
    before: Endpoints
    after: Endpoints
    from_hop: int  # index into PacketPath.hops
    to_hop: int
    rule: str | None = None
    rule_source: Literal["inferred", "trace"] | None = None
    conntrack: ConntrackRef | None = None
    icmp_id_before: int | None = None
    icmp_id_after: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NatEvent:
        """tracer/sinks/output.py ``nat_json``'s inverse (its ``inner`` is read from the hops)."""
        ct = d.get("conntrack")
        return cls(
            kind=d["kind"], node=d["node"], hook=d["hook"], before=Endpoints.from_json(d["before"]),
            after=Endpoints.from_json(d["after"]), from_hop=d["from_hop"], to_hop=d["to_hop"],
            rule=d["rule"], rule_source=d.get("rule_source"),
            conntrack=None if ct is None else ConntrackRef.from_json(ct),
            icmp_id_before=d.get("icmp_id_before"), icmp_id_after=d.get("icmp_id_after"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PacketPath:
    """Consecutive sightings of one packet, in the order it took."""

    id: str
    hops: tuple[Observation, ...]
    nat: tuple[NatEvent, ...]
    verdict: Verdict
    flow: str | None = None
    #: Who took it, when it ended in a namespace's own stack and that was known when it was
    #: written (CONTRACT.md's ``"local"``; tracer/annotate/local.py).
    local: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    #: The other leg, when a userland proxy relayed its connection and that was known when it
    #: was written (CONTRACT.md's ``"relay"``; tracer/annotate/relay.py).
    relay: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_json(cls, d: dict[str, Any], extras: Sequence[Sequence[int]] = ()) -> PacketPath:
        """The row view of a path's NDJSON object (tracer/sinks/output.py ``path_json``'s inverse).
        ``extras``: per hop, what the line does not say, ``(ifindex, source, digest, wire_len)``
        (``source`` as ``Src``); without them those are 0 and the source "file"."""
        hops = d["hops"]
        if extras:
            views = tuple(Observation.from_json(h, _SRC_NAMES.get(e[1], "file"), e[0] - (e[0] >> 31 << 32),
                                                e[2], e[3])
                          for h, e in zip(hops, extras, strict=True))
        else:
            views = tuple(Observation.from_json(h) for h in hops)
        return cls(id=d["id"], hops=views,
                   nat=tuple(NatEvent.from_json(e) for e in d["nat"]), verdict=d["verdict"],
                   flow=d["flow"], local=d.get("local"), relay=d.get("relay"))

    @property
    def first(self) -> Observation:
        return self.hops[0]

    @property
    def last(self) -> Observation:
        return self.hops[-1]

    @property
    def proto(self) -> str:
        return self.hops[0].proto_name

    @property
    def latency_ns(self) -> int:
        return self.hops[-1].ts_ns - self.hops[0].ts_ns


@dataclass(frozen=True, slots=True)
class Flow:
    """Request and reply paths of one connection, paired through the reversed NAT mapping."""

    id: str
    proto: str
    original: Endpoints
    reply: Endpoints
    paths: tuple[str, ...]
    conntrack_id: int | None = None
    #: Who took its packets (its original direction's, when known; CONTRACT.md's ``"local"``).
    local: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    #: The other leg, when a userland proxy relayed it (CONTRACT.md's ``"relay"``).
    relay: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Flow:
        """tracer/sinks/output.py ``flow_json``'s inverse."""
        return cls(id=d["id"], proto=d["proto"], original=Endpoints.from_json(d["original"]),
                   reply=Endpoints.from_json(d["reply"]), paths=tuple(d["paths"]),
                   conntrack_id=d.get("conntrack_id"), local=d.get("local"), relay=d.get("relay"))


@dataclass(frozen=True, slots=True)
class Stats:
    observations: int
    paths: int
    lost_events: int
    elapsed_s: float
    #: ``live --sample`` / ``--max-cpu``: None while sampling never was on.
    sampling: SamplingState | None = None
