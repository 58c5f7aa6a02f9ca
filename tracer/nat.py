"""NAT events and verdicts from the hops of one path.

Between two consecutive sightings of one packet in the same network namespace
the header may have been rewritten: a changed source is SNAT, a changed
destination DNAT. Where it appears names the netfilter hook:
``netif_receive_skb`` fires before PREROUTING and ``net_dev_start_xmit`` after
POSTROUTING, so

* a destination changed in a namespace the packet entered is DNAT at
  PREROUTING (this includes conntrack undoing MASQUERADE on a reply);
* a destination changed in the namespace the packet was born in (only tx
  there, nothing received) is DNAT at OUTPUT;
* a source change is SNAT at POSTROUTING.

ICMP errors quote the packet they answer; conntrack rewrites the quoted header
too, and each change of it is an event of its own, named like the change of
the outer header it mirrors (quoted source <-> outer destination).
TTL changes are routing, never NAT. Consecutive hops in different namespaces
(a veth pair, a link) never produce NAT events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

from tracer.model import Endpoints, Hook, NatEvent, NatKind, Observation, Verdict

_ECHO_REQUEST = {(1, 8), (58, 128)}


def same_namespace(a: Observation, b: Observation) -> bool:
    if a.netns and b.netns:
        return a.netns == b.netns and a.node == b.node
    return a.node == b.node  # file hops without a namespace: the node label decides


def _originated(hops: Sequence[Observation], upto: int) -> bool:
    """The packet was born in hops[upto]'s namespace: it never was elsewhere, only sent.

    Captures that do not say the direction count as received: a published port
    reached from outside (PREROUTING) is the common case, OUTPUT needs a known tx.
    """
    here = hops[upto]
    return all(same_namespace(h, here) and h.direction == "tx" for h in hops[: upto + 1])


def fast_constructor(cls: type[Any], twin: type[Any]) -> Callable[..., Any]:
    """A positional constructor of the frozen slotted dataclass ``cls``, ~2.5x faster.

    A frozen dataclass's ``__init__`` pays one Python-level ``object.__setattr__``
    per field, and NAT events, their endpoints and paths are built per packet.
    ``twin`` has the same slots in the same order and a plain ``__init__``; its
    instance becomes a ``cls`` by ``__class__`` assignment (CPython allows it
    between identical layouts): an ordinary frozen ``cls`` (type, ``==``, hash,
    immutability). If the layouts ever differ, ``cls`` itself is returned.
    """
    names = tuple(f.name for f in dataclasses.fields(cls))
    if getattr(cls, "__slots__", None) != names or getattr(twin, "__slots__", None) != names:
        return cls

    def make(*vals: Any) -> Any:
        o = twin(*vals)
        o.__class__ = cls
        return o

    probe = tuple(range(len(names)))
    try:
        if make(*probe) != cls(*probe):
            return cls
    except TypeError:
        return cls
    return make


class _EndpointsRow:
    __slots__ = ("src", "sport", "dst", "dport")  # noqa: RUF023 (Endpoints' order)

    def __init__(self, src: str, sport: int | None, dst: str, dport: int | None) -> None:
        self.src, self.sport, self.dst, self.dport = src, sport, dst, dport


class _NatEventRow:
    __slots__ = ("kind", "node", "hook", "before", "after", "from_hop", "to_hop", "rule",  # noqa: RUF023
                 "rule_source", "conntrack", "icmp_id_before", "icmp_id_after")  # NatEvent's order

    def __init__(self, kind: str, node: str, hook: str, before: Endpoints, after: Endpoints, from_hop: int,
                 to_hop: int, rule: None, rule_source: None, conntrack: None, icmp_id_before: int | None,
                 icmp_id_after: int | None) -> None:
        self.kind, self.node, self.hook, self.before, self.after = kind, node, hook, before, after
        self.from_hop, self.to_hop, self.rule, self.rule_source = from_hop, to_hop, rule, rule_source
        self.conntrack, self.icmp_id_before, self.icmp_id_after = conntrack, icmp_id_before, icmp_id_after


new_endpoints: Callable[[str, int | None, str, int | None], Endpoints] = fast_constructor(
    Endpoints, _EndpointsRow)
_new_event: Callable[..., NatEvent] = fast_constructor(NatEvent, _NatEventRow)


def _ends(o: Observation) -> Endpoints:
    return new_endpoints(o.src, o.sport, o.dst, o.dport)


def _event(kind: NatKind, node: str, hook: Hook, before: Endpoints, after: Endpoints, i: int,
           ids: tuple[int | None, int | None] = (None, None)) -> NatEvent:
    return _new_event(kind, node, hook, before, after, i, i + 1, None, None, None, ids[0], ids[1])


def _pair_events(hops: Sequence[Observation], i: int) -> list[NatEvent]:
    a, b = hops[i], hops[i + 1]
    events: list[NatEvent] = []
    ea, eb = _ends(a), _ends(b)
    src_changed = (a.src, a.sport) != (b.src, b.sport)
    dst_changed = (a.dst, a.dport) != (b.dst, b.dport)
    id_changed = a.icmp_id is not None and b.icmp_id is not None and a.icmp_id != b.icmp_id
    ids = (a.icmp_id, b.icmp_id) if id_changed else (None, None)
    # conntrack treats the echo id as the request's source port and the reply's destination port.
    id_goes_to_snat = (a.proto, a.icmp_type) in _ECHO_REQUEST
    if id_changed and not src_changed and not dst_changed:
        if id_goes_to_snat:
            src_changed = True
        else:
            dst_changed = True
    ia, ib = a.inner, b.inner
    q_changed = ia is not None and ib is not None and ia != ib
    dnat_hook: Hook = "PREROUTING"
    if (dst_changed or q_changed) and _originated(hops, i):
        dnat_hook = "OUTPUT"
    if dst_changed:
        mid = new_endpoints(a.src, a.sport, b.dst, b.dport)
        to_dnat = ids if (not id_goes_to_snat or not src_changed) else (None, None)
        events.append(_event("dnat", a.node, dnat_hook, ea, mid if src_changed else eb, i, to_dnat))
        ea = mid
    if src_changed:
        to_snat = ids if (id_goes_to_snat or not dst_changed) else (None, None)
        events.append(_event("snat", a.node, "POSTROUTING", ea, eb, i, to_snat))
    if q_changed:
        assert ia is not None and ib is not None
        icmp_inner = ia.proto in (1, 58)
        sa = None if icmp_inner else ia.sport
        da = None if icmp_inner else ia.dport
        sb = None if icmp_inner else ib.sport
        db = None if icmp_inner else ib.dport
        qa = new_endpoints(ia.src, sa, ia.dst, da)
        qb = new_endpoints(ib.src, sb, ib.dst, db)
        qids = (ia.sport, ib.sport) if icmp_inner and ia.sport != ib.sport else (None, None)
        q_src = (qa.src, qa.sport) != (qb.src, qb.sport) or qids[0] is not None
        q_dst = (qa.dst, qa.dport) != (qb.dst, qb.dport)
        if q_src:
            # The quoted packet went the other way: its source is the outer destination.
            qmid = new_endpoints(qb.src, qb.sport, qa.dst, qa.dport)
            events.append(_event("dnat", a.node, dnat_hook, qa, qmid if q_dst else qb, i, qids))
            qa = qmid
        if q_dst:
            events.append(_event("snat", a.node, "POSTROUTING", qa, qb, i))
    return events


def infer_nat(hops: Sequence[Observation]) -> tuple[NatEvent, ...]:
    """Every rewrite between consecutive sightings in one namespace, in path order."""
    events: list[NatEvent] = []
    for i in range(len(hops) - 1):
        a, b = hops[i], hops[i + 1]
        # same_namespace(a, b), inlined: this runs for every hop of every path.
        if a.node != b.node or (a.netns != b.netns and a.netns and b.netns):
            continue
        if a.family == 0 or a.family != b.family or a.direction == "drop" or (
            a.src == b.src and a.dst == b.dst and a.sport == b.sport and a.dport == b.dport
            and a.icmp_id == b.icmp_id and a.inner == b.inner
        ):
            continue
        events += _pair_events(hops, i)
    return tuple(events)


def is_inner_event(path_hops: Sequence[Observation], ev: NatEvent) -> bool:
    """True when ``ev`` rewrote the header quoted in an ICMP error, not the outer one."""
    inner = path_hops[ev.from_hop].inner
    if inner is None:
        return False
    return (ev.before.src, ev.before.dst) == (inner.src, inner.dst) and (
        ev.before.src, ev.before.dst) != (path_hops[ev.from_hop].src, path_hops[ev.from_hop].dst)


def verdict(
    hops: Sequence[Observation],
    owned: Mapping[str, int],
    links: Set[tuple[int, str, str]],
    dropped: bool | None = None,
) -> Verdict:
    """dropped / delivered / left / incomplete, from the hops and what traffic taught.

    ``owned``: address -> netns that sends from it (learned from first
    sightings, or given by topology). ``links``: (netns, node, iface) of tx hops
    whose packets were seen arriving at another traced hop: a packet that last
    left through one of those and never arrived is incomplete, not gone.
    ``dropped``: whether a hop is a drop, when the caller knows already.
    """
    if dropped if dropped is not None else any(h.direction == "drop" for h in hops):
        return "dropped"
    last = hops[-1]
    if last.family == 0:
        return "delivered" if last.direction == "rx" or (
            last.direction is None and len(hops) > 1) else "left"
    d = last.direction
    if d in ("rx", None) and owned.get(last.dst) == last.netns:
        return "delivered"
    if d in ("tx", None) and (last.netns, last.node, last.ifname) not in links:
        return "left"
    return "incomplete"


__all__ = ["fast_constructor", "infer_nat", "is_inner_event", "new_endpoints", "same_namespace", "verdict"]
