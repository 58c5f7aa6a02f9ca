"""The reference NDJSON (CONTRACT.md): each object built as a dict, written by ``json.dumps``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tests.reference.nat import is_inner_event
from tracer.model import Endpoints, Flow, NatEvent, Observation, PacketPath


def ends_json(e: Endpoints) -> dict[str, Any]:
    return {"src": e.src, "sport": e.sport, "dst": e.dst, "dport": e.dport}


def hop_json(h: Observation) -> dict[str, Any]:
    d: dict[str, Any] = {
        "ts_ns": h.ts_ns, "node": h.node, "netns": h.netns, "iface": h.ifname,
        "dir": h.direction, "src": h.src, "dst": h.dst, "sport": h.sport, "dport": h.dport,
        "ip_id": h.ip_id, "ttl": h.ttl, "skb": f"0x{h.skb:x}" if h.skb else None,
        "drop_reason": h.drop_reason,
    }  # fmt: skip
    # Extra keys (CONTRACT.md: extend freely): what a script needs to tell packets apart.
    d["proto"] = h.proto_name
    d["length"] = h.length
    if h.icmp_type is not None:
        d.update(icmp_type=h.icmp_type, icmp_code=h.icmp_code, icmp_id=h.icmp_id, icmp_seq=h.icmp_seq)
    if h.tcp_flags is not None:
        d.update(tcp_flags=h.tcp_flags, tcp_seq=h.tcp_seq, tcp_ack=h.tcp_ack)
    if h.flow_label is not None:
        d["flow_label"] = h.flow_label
    if h.is_fragment:
        d["frag"] = {"offset": h.frag_offset, "more": h.more_fragments}
    if h.inner is not None:
        i = h.inner
        d["inner"] = {"src": i.src, "dst": i.dst, "proto": i.proto, "sport": i.sport, "dport": i.dport}
    return d


def nat_json(ev: NatEvent, hops: Sequence[Observation]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": ev.kind, "node": ev.node, "hook": ev.hook,
        "before": ends_json(ev.before), "after": ends_json(ev.after),
        "from_hop": ev.from_hop, "to_hop": ev.to_hop, "rule": ev.rule,
    }  # fmt: skip
    if ev.rule_source is not None:
        d["rule_source"] = ev.rule_source
    if ev.conntrack is not None:
        ct = ev.conntrack
        d["conntrack"] = {"id": ct.id, "original": ends_json(ct.original), "reply": ends_json(ct.reply),
                          "status": list(ct.status), "zone": ct.zone}
    if ev.icmp_id_before is not None:
        d["icmp_id_before"], d["icmp_id_after"] = ev.icmp_id_before, ev.icmp_id_after
    if is_inner_event(hops, ev):
        d["inner"] = True  # the header quoted in an ICMP error, not the outer one
    return d


def path_json(path: PacketPath) -> dict[str, Any]:
    return {
        "type": "path", "id": path.id, "flow": path.flow, "proto": path.hops[0].proto_name,
        "verdict": path.verdict,
        "hops": [hop_json(h) for h in path.hops],
        "nat": [nat_json(ev, path.hops) for ev in path.nat],
    }  # fmt: skip


def flow_json(flow: Flow) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": "flow", "id": flow.id, "proto": flow.proto,
        "original": ends_json(flow.original), "reply": ends_json(flow.reply),
        "paths": list(flow.paths),
    }  # fmt: skip
    if flow.conntrack_id is not None:
        d["conntrack_id"] = flow.conntrack_id
    return d


def stats_json(observations: int, paths: int, lost_events: int, elapsed_s: float) -> dict[str, Any]:
    return {"type": "stats", "observations": observations, "paths": paths, "lost_events": lost_events,
            "elapsed_s": round(elapsed_s, 3)}


def line(obj: dict[str, Any]) -> str:
    """One NDJSON line, without its newline."""
    return json.dumps(obj)
