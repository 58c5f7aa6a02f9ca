"""Meaning for finished paths: node names, the NAT rule that rewrote a packet, its conntrack entry.

``annotator(topo, conntrack)`` returns the engine's annotator: a pure function of
a ``PacketPath`` given the current topology snapshot and conntrack table.

The rule is *inferred*: the packet as it was before the rewrite is walked
through the namespace's ``nat`` chains the way netfilter would walk the first
packet of a connection (source/destination, in/out interface, protocol, ports,
addrtype, jumps into user chains, RETURN), and the first NAT target it reaches
is the rule — provided its target agrees with what the packet diff showed
(MASQUERADE/SNAT for snat, DNAT/REDIRECT for dnat, and a ``--to-*`` that
matches the rewritten address). Replies have no rule of their own (conntrack
translates them back): for a reply the rule reported is the one that set up the
mapping, found by walking the reversed tuple as the original packet.
``--rules`` (tracer.annotate.nftrace) replaces this with what netfilter itself traced.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

from tracer.annotate.conntrack import ConntrackTable
from tracer.model import ConntrackRef, Endpoints, NatEvent, Observation, PacketPath
from tracer.topology import Interface, LiveTopology, Namespace, NatRule, Topology

SNAT_TARGETS = ("MASQUERADE", "SNAT")
DNAT_TARGETS = ("DNAT", "REDIRECT")
TERMINAL = ("ACCEPT", "DROP", "RETURN", *SNAT_TARGETS, *DNAT_TARGETS, "NETMAP")
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132}
MEMO_MAX = 100_000  # remembered rule inferences (one per flow direction); past it, start over
MAX_DEPTH = 16  # iptables refuses loops; this only guards against a pathological ruleset

TopologyLike = Topology | Callable[[], Topology]
_STOP = object()  # an ACCEPT in a nat chain: the packet is not NATed by later rules


@dataclass(frozen=True, slots=True)
class Pkt:
    """The fields a nat rule can look at, for the first packet of a connection."""

    family: int
    proto: int
    src: str
    dst: str
    sport: int | None
    dport: int | None
    in_iface: str | None
    out_iface: str | None


# --------------------------------------------------------------------------
# Matching one rule
# --------------------------------------------------------------------------


def _in_net(addr: str, net: str) -> bool:
    ip, network = _ip(addr), _net(net)
    return ip is not None and network is not None and ip in network


@lru_cache(maxsize=8192)
def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # Parsed once per distinct address: a flood repeats the same few thousand.
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def _net(net: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(net, strict=False)
    except ValueError:
        return None


def _iface_match(pattern: str, name: str | None) -> bool:
    if name is None:
        return True  # not known from the capture: cannot rule the rule out
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


@lru_cache(maxsize=4096)
def _port_range(spec: str) -> tuple[int, int] | None:
    lo, _, hi = spec.partition(":")
    try:
        return int(lo or 0), int(hi or lo or 65535)
    except ValueError:
        return None


def _port_match(spec: str, port: int | None) -> bool:
    if port is None:
        return False
    rng = _port_range(spec)
    return rng is not None and rng[0] <= port <= rng[1]


@lru_cache(maxsize=256)
def _proto_number(spec: str) -> int | None:
    """-1 for "all"; None for a protocol hoptrace does not know (never matches)."""
    if spec == "all":
        return -1
    if spec.isdigit():
        return int(spec)
    return PROTO_NUMBERS.get(spec.lower())


def _proto_match(spec: str, proto: int) -> bool:
    num = _proto_number(spec)
    return num == -1 or num == proto


def _local(ns: Namespace, addr: str) -> bool:
    ip = _ip(addr)
    if ip is None:
        return False
    return ip.is_loopback or addr in _index(ns).addresses


def rule_matches(rule: NatRule, pkt: Pkt, ns: Namespace) -> bool:
    # Each check is (matched != negated); the first that fails decides.
    if rule.src is not None and _in_net(pkt.src, rule.src) == rule.src_neg:
        return False
    if rule.dst is not None and _in_net(pkt.dst, rule.dst) == rule.dst_neg:
        return False
    if rule.in_iface is not None and (
        _iface_match(rule.in_iface, pkt.in_iface) == (rule.in_neg and pkt.in_iface is not None)
    ):
        return False
    if rule.out_iface is not None and (
        _iface_match(rule.out_iface, pkt.out_iface) == (rule.out_neg and pkt.out_iface is not None)
    ):
        return False
    if rule.proto is not None and _proto_match(rule.proto, pkt.proto) == rule.proto_neg:
        return False
    if rule.dport is not None and _port_match(rule.dport, pkt.dport) == rule.dport_neg:
        return False
    if rule.sport is not None and not _port_match(rule.sport, pkt.sport):
        return False
    if rule.dst_type is not None and (
        (_local(ns, pkt.dst) == (rule.dst_type.upper() == "LOCAL")) == rule.dst_type_neg
    ):
        return False
    return rule.src_type is None or _local(ns, pkt.src) == (rule.src_type.upper() == "LOCAL")


class _NsIndex:
    """What matching reads from one namespace snapshot, derived once instead of per rule."""

    __slots__ = ("addresses", "chains", "ifaces", "l3", "port_classes", "port_specs", "rules", "walks")

    def __init__(self, ns: Namespace) -> None:
        self.addresses = ns.addresses
        self.chains: dict[int, frozenset[str]] = {}
        self.rules: dict[tuple[int, str], tuple[NatRule, ...]] = {}
        for fam in {r.family for r in ns.nat_rules}:
            self.chains[fam] = frozenset(r.chain for r in ns.nat_rules if r.family == fam)
        for r in ns.nat_rules:
            self.rules[(r.family, r.chain)] = (*self.rules.get((r.family, r.chain), ()), r)
        self.ifaces: dict[str | int, Interface | None] = {}
        self.l3: dict[tuple[int, str], tuple[Topology, str]] = {}  # (ifindex, ifname) -> _l3_name
        # Rules see a port only through their --sport/--dport ranges: ports that fall in the
        # same ranges walk the chains alike, so walks are remembered per port class.
        self.port_specs = tuple(sorted({spec for r in ns.nat_rules for spec in (r.sport, r.dport) if spec}))
        self.port_classes: dict[int | None, tuple[bool, ...] | None] = {None: None}
        self.walks: dict[tuple[object, ...], NatRule | object | None] = {}

    def port_class(self, port: int | None) -> tuple[bool, ...] | None:
        try:
            return self.port_classes[port]
        except KeyError:
            cls = self.port_classes[port] = tuple(_port_match(spec, port) for spec in self.port_specs)
            return cls

    def iface(self, ns: Namespace, key: str | int) -> Interface | None:
        try:
            return self.ifaces[key]
        except KeyError:
            got = self.ifaces[key] = ns.iface(key)
            return got


# id(ns) -> (ns, index): the namespace is kept so its id cannot be reused while cached.
_INDEXES: dict[int, tuple[Namespace, _NsIndex]] = {}


def _index(ns: Namespace) -> _NsIndex:
    got = _INDEXES.get(id(ns))
    if got is not None and got[0] is ns:
        return got[1]
    if len(_INDEXES) > 512:  # old snapshots: start over rather than grow
        _INDEXES.clear()
    idx = _NsIndex(ns)
    _INDEXES[id(ns)] = (ns, idx)
    return idx


def walk(ns: Namespace, chain: str, pkt: Pkt, depth: int = 0) -> NatRule | object | None:
    """The NAT rule the packet reaches from ``chain``; ``_STOP`` for ACCEPT; None falls through."""
    if depth > MAX_DEPTH:
        return None
    idx = _index(ns)
    if depth == 0:
        key = (chain, pkt.family, pkt.proto, pkt.src, pkt.dst, idx.port_class(pkt.sport),
               idx.port_class(pkt.dport), pkt.in_iface, pkt.out_iface)
        try:
            return idx.walks[key]
        except KeyError:
            if len(idx.walks) > MEMO_MAX:
                idx.walks.clear()
            got = idx.walks[key] = _walk(ns, idx, chain, pkt, 0)
            return got
    return _walk(ns, idx, chain, pkt, depth)


def _walk(ns: Namespace, idx: _NsIndex, chain: str, pkt: Pkt, depth: int) -> NatRule | object | None:
    chains = idx.chains.get(pkt.family, frozenset())
    for rule in idx.rules.get((pkt.family, chain), ()):
        if not rule_matches(rule, pkt, ns):
            continue
        if rule.target in chains:
            got = walk(ns, rule.target, pkt, depth + 1)
            if got is not None:
                return got
            continue
        if rule.target == "RETURN":
            return None
        if rule.target in ("ACCEPT", "DROP"):
            return _STOP
        if rule.target in (*SNAT_TARGETS, *DNAT_TARGETS, "NETMAP"):
            return rule
        # LOG, MARK, ... : non-terminating, carry on
    return None


def _to_matches(rule: NatRule, before: Endpoints, after: Endpoints, kind: str, ns: Namespace,
                out_iface: str | None) -> bool:
    """Does the rule's --to-* agree with the rewritten packet?

    A port is kept unless the rule names one (or asks for random ports): a
    MASQUERADE that seems to have turned port 80 into 8080 is really conntrack
    undoing a DNAT, and must not be claimed.
    """
    if kind == "dnat":
        addr, port = _split_to(rule.to_destination or "")
        if addr and not _addr_in_range(after.dst, addr):
            return False
        if port:
            return after.dport is None or _port_match(port.replace("-", ":"), after.dport)
        if rule.target == "REDIRECT" and rule.to_ports:
            return after.dport is None or _port_match(rule.to_ports.replace("-", ":"), after.dport)
        return before.dport == after.dport
    addr, port = _split_to(rule.to_source or "")
    if addr and not _addr_in_range(after.src, addr):
        return False
    free_ports = bool(port or rule.to_ports or rule.random)
    if not free_ports and before.sport != after.sport:
        return False
    if rule.target == "MASQUERADE" and out_iface is not None:
        iface = _index(ns).iface(ns, out_iface)
        if iface is not None and iface.ips:
            return after.src in iface.ips
    return True


def _split_to(spec: str) -> tuple[str, str]:
    """"172.17.0.2:80", "[2001:db8::2]:80", "10.0.0.1-10.0.0.9" -> (addr range, port range)."""
    if spec.startswith("["):
        addr, _, rest = spec[1:].partition("]")
        return addr, rest.lstrip(":")
    if spec.count(":") == 1:
        addr, _, port = spec.partition(":")
        return addr, port
    return spec, ""


def _addr_in_range(addr: str, spec: str) -> bool:
    lo, _, hi = spec.partition("-")
    ip, first, last = _ip(addr), _ip(lo), _ip(hi or lo)
    if ip is None or first is None or last is None:
        return False
    try:
        return first <= ip <= last  # type: ignore[operator]
    except TypeError:  # IPv4 against IPv6
        return False


# --------------------------------------------------------------------------
# From a NAT event to a rule
# --------------------------------------------------------------------------


def _l3_name(topo: Topology, ns: Namespace, hop: Observation) -> str:
    """The interface netfilter sees: a bridge port's packets are routed as the bridge's."""
    idx = _index(ns)
    key = (hop.ifindex, hop.ifname)
    got = idx.l3.get(key)
    if got is not None and got[0] is topo:
        return got[1]
    # Per interface of a snapshot, not per hop: the same few names come back for every path.
    iface: Interface | None = idx.iface(ns, hop.ifindex) if hop.ifindex else None
    if iface is None or iface.name != hop.ifname:
        iface = idx.iface(ns, hop.ifname)
    if iface is None:
        name = hop.ifname
    else:
        bridge = topo.bridge_of(iface)
        name = bridge.name if bridge else iface.name
    idx.l3[key] = (topo, name)
    return name


def _ifaces(topo: Topology, ns: Namespace, path: PacketPath, ev: NatEvent) -> tuple[str | None, str | None]:
    def here(hop: Observation) -> bool:
        # File hops carry small synthetic netns ids: then the node label decides.
        return hop.netns == ns.inode or (hop.node == ns.name and topo.namespace(hop.netns) is None)

    in_iface = out_iface = None
    for hop in reversed(path.hops[: ev.from_hop + 1]):
        if not here(hop):
            break
        if hop.direction == "rx":
            in_iface = _l3_name(topo, ns, hop)
            break
    for hop in path.hops[ev.to_hop:]:
        if not here(hop):
            break
        if hop.direction == "tx":
            out_iface = _l3_name(topo, ns, hop)
            break
    return in_iface, out_iface


def _family(ep: Endpoints) -> int:
    return 6 if ":" in ep.src else 4


def infer_rule(topo: Topology, ns: Namespace, path: PacketPath, ev: NatEvent,
               is_reply: bool | None = None) -> NatRule | None:
    """The rule that did ``ev``. ``is_reply`` (from conntrack) says whether the packet went in
    the flow's reply direction; None: decide from the ruleset alone."""
    if not ns.nat_rules:
        return None
    in_iface, out_iface = _ifaces(topo, ns, path, ev)
    return _infer(ns, path.hops[0].proto, ev.kind, ev.hook, ev.before, ev.after, in_iface, out_iface,
                  is_reply)


def _infer(ns: Namespace, proto: int, kind: str, hook: str, b: Endpoints, a: Endpoints,
           in_iface: str | None, out_iface: str | None, is_reply: bool | None) -> NatRule | None:
    """infer_rule once the interfaces are known: a function of its arguments and ``ns`` only."""
    fam = _family(b)
    forward: NatRule | None = None
    reverse: NatRule | None = None
    if kind == "snat":
        # The packet itself matched a POSTROUTING SNAT rule ...
        pkt = Pkt(fam, proto, b.src, b.dst, b.sport, b.dport, in_iface, out_iface)
        if is_reply is not True:
            forward = _first(ns, ("POSTROUTING", "INPUT"), pkt, SNAT_TARGETS, b, a, "snat", out_iface)
        # ... or it answers a DNATed connection: the original went b.dst -> a.src, DNATed to b.src.
        orig = Pkt(fam, proto, b.dst, a.src, b.dport, a.sport, out_iface, in_iface)
        if is_reply is not False:
            reverse = _first(ns, ("PREROUTING", "OUTPUT"), orig, DNAT_TARGETS,
                             Endpoints(b.dst, b.dport, a.src, a.sport),
                             Endpoints(b.dst, b.dport, b.src, b.sport), "dnat", None)
    else:
        locally_generated = in_iface is None and hook == "OUTPUT"
        chains = ("OUTPUT", "PREROUTING") if locally_generated else ("PREROUTING", "OUTPUT")
        pkt = Pkt(fam, proto, b.src, b.dst, b.sport, b.dport, in_iface, out_iface)
        if is_reply is not True:
            forward = _first(ns, chains, pkt, DNAT_TARGETS, b, a, "dnat", out_iface)
        # ... or it answers a MASQUERADEd connection: the original left a.dst -> b.src as b.dst.
        orig = Pkt(fam, proto, a.dst, b.src, a.dport, b.sport, None, in_iface)
        if is_reply is not False:
            reverse = _first(ns, ("POSTROUTING",), orig, SNAT_TARGETS,
                             Endpoints(a.dst, a.dport, b.src, b.sport),
                             Endpoints(b.dst, b.dport, b.src, b.sport), "snat", in_iface)
    if forward is not None and reverse is not None:
        # Both read the rewrite; the rule that names the exact address the packet got wins.
        named = reverse.to_destination if reverse.target == "DNAT" else reverse.to_source
        return reverse if named else forward
    return forward or reverse


def _first(ns: Namespace, chains: tuple[str, ...], pkt: Pkt, targets: tuple[str, ...],
           before: Endpoints, after: Endpoints, kind: str, out_iface: str | None) -> NatRule | None:
    for chain in chains:
        got = walk(ns, chain, pkt)
        # A NAT target that disagrees: try the other hook (in/out of the host is read from the hops).
        if isinstance(got, NatRule) and got.target in targets and _to_matches(
            got, before, after, kind, ns, out_iface
        ):
            return got
    return None


# --------------------------------------------------------------------------
# The annotator
# --------------------------------------------------------------------------


class Attributor:
    """``__call__(path) -> path`` with names, inferred rules and conntrack entries filled in.

    ``without_conntrack`` counts NAT events that got no entry; ``notices`` says why, once.
    """

    def __init__(self, topo: TopologyLike, conntrack: ConntrackTable | None = None) -> None:
        self._topo = topo
        self.conntrack = conntrack
        self.without_conntrack = 0
        self._owned: list[LiveTopology | ConntrackTable] = []
        self.notices: list[str] = []
        # infer_rule per (namespace, packet before/after, interfaces, direction), for the
        # snapshot in _memo_topo: every packet of a flow asks the same question.
        self._memo: dict[tuple[object, ...], NatRule | None] = {}
        self._memo_topo: Topology | None = None
        # generation: the snapshot last seen (held, so its identity cannot be reused) and a
        # counter bumped whenever the snapshot changes.
        self._gen_topo: Topology | None = None
        self._topo_gen = 0
        if conntrack is None:
            self.notices.append("conntrack is not followed: NAT events come from the packet diff only")
        else:
            for ino, err in conntrack.errors.items():
                self.notices.append(f"conntrack unavailable in netns {ino}: {err}")

    def close(self) -> None:
        for part in self._owned:
            part.stop()
        self._owned = []

    def topology(self) -> Topology:
        return self._topo if isinstance(self._topo, Topology) else self._topo()

    # The engine's TableAnnotator (tracer/engine.py): the core keeps the answer per path shape
    # until ``generation`` changes.
    per_packet = False

    @property
    def generation(self) -> int:
        """Changes when the topology snapshot does, or a conntrack entry changes or goes."""
        topo = self.topology()
        if topo is not self._gen_topo:
            self._gen_topo = topo
            self._topo_gen += 1
        # Both counters only grow: their sum changes whenever either does.
        return self._topo_gen + (0 if self.conntrack is None else self.conntrack.changes)

    def annotate(self, path: PacketPath) -> PacketPath:
        return self(path)

    def nat_netns(self) -> frozenset[int]:
        """Where NAT can rewrite a header (``NatScope``): namespaces with NAT rules in the current
        topology snapshot, or with conntrack entries."""
        spaces = {ns.inode for ns in self.topology().namespaces if ns.nat_rules}
        if self.conntrack is not None:
            spaces.update(ino for ino in self.conntrack.paths if self.conntrack.has_entries(ino))
        return frozenset(spaces)

    def provisional(self, path: PacketPath) -> bool:
        """The answer may change without a new snapshot: conntrack is followed and some NAT
        event has no entry yet (the table learns entries as connections start)."""
        return self.conntrack is not None and any(ev.conntrack is None for ev in path.nat)

    def __call__(self, path: PacketPath) -> PacketPath:
        topo = self.topology()
        hops = tuple(self._name_hop(topo, h) for h in path.hops)
        changed = any(a is not b for a, b in zip(hops, path.hops, strict=True))
        nat = tuple(self._nat(topo, path, ev) for ev in path.nat)
        if not changed and all(a is b for a, b in zip(nat, path.nat, strict=True)):
            return path
        return replace(path, hops=hops, nat=nat)

    @staticmethod
    def _name_hop(topo: Topology, hop: Observation) -> Observation:
        ns = topo.namespace(hop.netns)
        if ns is None or ns.name == hop.node:
            return hop
        return replace(hop, node=ns.name)

    def _nat(self, topo: Topology, path: PacketPath, ev: NatEvent) -> NatEvent:
        ns = _event_ns(topo, path.hops, ev)
        if ns is None:
            return ev
        updates: dict[str, object] = {}
        if ns.name != ev.node:
            updates["node"] = ns.name
        ref = ev.conntrack or self._conntrack(ns, path.hops, ev)
        if ref is not None and ev.conntrack is None:
            updates["conntrack"] = ref
        elif ref is None:
            self.without_conntrack += 1
        if ev.rule is None or ev.rule_source == "inferred":
            rule = self._infer_rule(topo, ns, path, ev, _is_reply(ref, ev.before))
            if rule is not None:
                updates["rule"] = rule.text
                updates["rule_source"] = "inferred"
        return replace(ev, **updates) if updates else ev  # type: ignore[arg-type]

    def _infer_rule(self, topo: Topology, ns: Namespace, path: PacketPath, ev: NatEvent,
                    is_reply: bool | None) -> NatRule | None:
        """``infer_rule``, remembered until the topology snapshot changes."""
        if not ns.nat_rules:
            return None
        if topo is not self._memo_topo or len(self._memo) > MEMO_MAX:
            self._memo = {}
            self._memo_topo = topo
        in_iface, out_iface = _ifaces(topo, ns, path, ev)
        proto = path.hops[0].proto
        key = (ns.inode, id(ns), proto, ev.kind, ev.hook, ev.before, ev.after, in_iface, out_iface, is_reply)
        try:
            return self._memo[key]
        except KeyError:
            rule = self._memo[key] = _infer(ns, proto, ev.kind, ev.hook, ev.before, ev.after,
                                            in_iface, out_iface, is_reply)
            return rule

    def _conntrack(self, ns: Namespace, hops: Sequence[Observation], ev: NatEvent) -> ConntrackRef | None:
        if self.conntrack is None:
            return None
        proto = hops[0].proto
        before_id = ev.icmp_id_before
        after_id = ev.icmp_id_after
        if before_id is None and ev.from_hop < len(hops):
            before_id = hops[ev.from_hop].icmp_id
        if after_id is None and ev.to_hop < len(hops):
            after_id = hops[ev.to_hop].icmp_id
        tried: Iterable[tuple[Endpoints, int | None]] = ((ev.before, before_id), (ev.after, after_id))
        return self.conntrack.lookup(ns.inode, proto, tried)


def _event_ns(topo: Topology, hops: Sequence[Observation], ev: NatEvent) -> Namespace | None:
    """The namespace a NAT event happened in: its first hop's, else the one its node names."""
    ns = topo.namespace(hops[ev.from_hop].netns if ev.from_hop < len(hops) else 0)
    return ns if ns is not None else topo.by_name(ev.node)


def _is_reply(ref: ConntrackRef | None, before: Endpoints) -> bool | None:
    if ref is None:
        return None
    if (before.src, before.dst) == (ref.original.src, ref.original.dst):
        return False
    if (before.src, before.dst) == (ref.reply.src, ref.reply.dst):
        return True
    return None


def annotator(topo: TopologyLike, conntrack: ConntrackTable | bool | None = None,
              refresh_s: float | None = 2.0) -> Attributor:
    """The engine annotator (``Callable[[PacketPath], PacketPath]``).

    ``topo``: a snapshot or any callable returning the current one (``LiveTopology``);
    a snapshot is kept current every ``refresh_s`` seconds (None: never), so containers
    started while tracing get their names. ``conntrack``: a table, or None to follow
    the namespaces that NAT here (needs root), or False for none. ``close()`` stops
    what this started.
    """
    live = None
    if isinstance(topo, Topology) and refresh_s:
        live = LiveTopology(refresh_s, initial=topo).start()
    table: ConntrackTable | None = None
    owned = False
    if isinstance(conntrack, ConntrackTable):
        table = conntrack
    elif conntrack is None:
        snapshot = topo if isinstance(topo, Topology) else topo()
        spaces = nat_namespaces(snapshot)
        if spaces and os.geteuid() == 0:
            table = ConntrackTable(spaces).start()
            owned = True
    att = Attributor(live if live is not None else topo, table)
    att._owned = [x for x in (live, table if owned else None) if x is not None]
    return att


def nat_namespaces(topo: Topology) -> dict[int, str]:
    """inode -> path of the namespaces whose conntrack is worth following."""
    return {ns.inode: ns.path for ns in topo.namespaces if ns.nat_rules}


RuleSource = Literal["inferred", "trace"]
