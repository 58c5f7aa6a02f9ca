"""The reference: NAT events and verdicts from the hops of one path, plainly.

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
the outer header it mirrors (quoted source <-> outer destination). The ICMP echo
id is what conntrack treats as the request's source port and the reply's
destination port. TTL changes are routing, never NAT. Consecutive hops in
different namespaces (a veth pair, a link) never produce NAT events.

The core (crates/hoptrace-core/src/nat.rs) is held to this, through
tests/reference/correlate.py, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

from tracer.model import Endpoints, Hook, NatEvent, NatKind, Observation, Verdict

ECHO_REQUEST = {(1, 8), (58, 128)}


def same_namespace(a: Observation, b: Observation) -> bool:
    """Two sightings in one namespace: the same inode and node; file hops without an inode
    (0) are told apart by their node label alone."""
    if a.netns and b.netns:
        return a.netns == b.netns and a.node == b.node
    return a.node == b.node


def originated(hops: Sequence[Observation], upto: int) -> bool:
    """The packet was born in hops[upto]'s namespace: it never was elsewhere, only sent.

    Captures that do not say the direction count as received: a published port
    reached from outside (PREROUTING) is the common case, OUTPUT needs a known tx.
    """
    here = hops[upto]
    return all(same_namespace(h, here) and h.direction == "tx" for h in hops[: upto + 1])


def endpoints(o: Observation) -> Endpoints:
    return Endpoints(o.src, o.sport, o.dst, o.dport)


def _event(kind: NatKind, node: str, hook: Hook, before: Endpoints, after: Endpoints, i: int,
           ids: tuple[int | None, int | None] = (None, None)) -> NatEvent:
    return NatEvent(kind=kind, node=node, hook=hook, before=before, after=after, from_hop=i, to_hop=i + 1,
                    icmp_id_before=ids[0], icmp_id_after=ids[1])


def rewritten(a: Observation, b: Observation) -> bool:
    """Whether NAT may have happened between consecutive sightings ``a`` and ``b``."""
    if not same_namespace(a, b) or a.family == 0 or a.family != b.family or a.direction == "drop":
        return False
    return (a.src, a.dst, a.sport, a.dport, a.icmp_id, a.inner) != (b.src, b.dst, b.sport, b.dport, b.icmp_id, b.inner)


def pair_events(hops: Sequence[Observation], i: int) -> list[NatEvent]:
    """The rewrites between hops[i] and hops[i + 1] (same namespace, something changed)."""
    a, b = hops[i], hops[i + 1]
    events: list[NatEvent] = []
    ea, eb = endpoints(a), endpoints(b)
    src_changed = (a.src, a.sport) != (b.src, b.sport)
    dst_changed = (a.dst, a.dport) != (b.dst, b.dport)
    id_changed = a.icmp_id is not None and b.icmp_id is not None and a.icmp_id != b.icmp_id
    ids = (a.icmp_id, b.icmp_id) if id_changed else (None, None)
    id_is_source = (a.proto, a.icmp_type) in ECHO_REQUEST
    if id_changed and not src_changed and not dst_changed:
        if id_is_source:
            src_changed = True
        else:
            dst_changed = True
    ia, ib = a.inner, b.inner
    quoted_changed = ia is not None and ib is not None and ia != ib
    dnat_hook: Hook = "OUTPUT" if (dst_changed or quoted_changed) and originated(hops, i) else "PREROUTING"
    if dst_changed:
        # Destination first (PREROUTING/OUTPUT come before POSTROUTING): the middle header
        # has the old source and the new destination.
        mid = Endpoints(a.src, a.sport, b.dst, b.dport)
        dnat_ids = ids if (not id_is_source or not src_changed) else (None, None)
        events.append(_event("dnat", a.node, dnat_hook, ea, mid if src_changed else eb, i, dnat_ids))
        ea = mid
    if src_changed:
        snat_ids = ids if (id_is_source or not dst_changed) else (None, None)
        events.append(_event("snat", a.node, "POSTROUTING", ea, eb, i, snat_ids))
    if quoted_changed:
        assert ia is not None and ib is not None
        icmp_inner = ia.proto in (1, 58)
        qa = Endpoints(ia.src, None if icmp_inner else ia.sport, ia.dst, None if icmp_inner else ia.dport)
        qb = Endpoints(ib.src, None if icmp_inner else ib.sport, ib.dst, None if icmp_inner else ib.dport)
        # A quoted echo's id sits in inner sport.
        qids = (ia.sport, ib.sport) if icmp_inner and ia.sport != ib.sport else (None, None)
        q_src = (qa.src, qa.sport) != (qb.src, qb.sport) or qids[0] is not None
        q_dst = (qa.dst, qa.dport) != (qb.dst, qb.dport)
        if q_src:
            # The quoted packet went the other way: its source is the outer destination.
            qmid = Endpoints(qb.src, qb.sport, qa.dst, qa.dport)
            events.append(_event("dnat", a.node, dnat_hook, qa, qmid if q_dst else qb, i, qids))
            qa = qmid
        if q_dst:
            events.append(_event("snat", a.node, "POSTROUTING", qa, qb, i))
    return events


def infer_nat(hops: Sequence[Observation]) -> tuple[NatEvent, ...]:
    """Every rewrite between consecutive sightings in one namespace, in path order."""
    events: list[NatEvent] = []
    for i in range(len(hops) - 1):
        if rewritten(hops[i], hops[i + 1]):
            events += pair_events(hops, i)
    return tuple(events)


def is_inner_event(hops: Sequence[Observation], ev: NatEvent) -> bool:
    """True when ``ev`` rewrote the header quoted in an ICMP error, not the outer one."""
    hop = hops[ev.from_hop]
    inner = hop.inner
    if inner is None:
        return False
    before = (ev.before.src, ev.before.dst)
    return before == (inner.src, inner.dst) and before != (hop.src, hop.dst)


def verdict(hops: Sequence[Observation], owned: Mapping[str, int], links: Set[tuple[int, str, str]]) -> Verdict:
    """dropped / delivered / left / incomplete, from the hops and what traffic taught.

    ``owned``: address -> netns that sends from it. ``links``: (netns, node, iface)
    of tx hops whose packets were seen arriving at another traced hop: a packet that
    last left through one of those and never arrived is incomplete, not gone.
    """
    if any(h.direction == "drop" for h in hops):
        return "dropped"
    last = hops[-1]
    if last.family == 0:
        return "delivered" if last.direction == "rx" or (last.direction is None and len(hops) > 1) else "left"
    d = last.direction
    if d in ("rx", None) and owned.get(last.dst) == last.netns:
        return "delivered"
    if d in ("tx", None) and (last.netns, last.node, last.ifname) not in links:
        return "left"
    return "incomplete"
