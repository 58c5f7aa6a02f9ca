"""The reference: what a free means, plainly (the core's drops.rs is held to it).

A drop hop loses the packet unless it freed it after delivery: its reason is of the
``delivered`` kind in crates/hoptrace-core/data/drop_reasons.tsv (read here from the file,
not through the core) and the hop before it is an rx in the same namespace, the free having
no device or being at that rx's interface; or it is the NO_SOCKET free of ICMP that arrived
where a raw ICMP socket was open then (``raw``: netns -> [(from_ns, to_ns)]). A path is
``dropped`` when one of its frees lost the packet, ``delivered`` when it has frees and none
did, else as nat.verdict says. Unnamed hops (node ``?``) take the node and namespace of the
hop before them (for a first hop, of the first named hop after), interface ``(no device)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import replace
from functools import cache
from pathlib import Path

from tests.reference.nat import verdict
from tracer.model import Observation, Verdict

TABLE = Path(__file__).resolve().parents[2] / "crates" / "hoptrace-core" / "data" / "drop_reasons.tsv"
NO_DEVICE = "(no device)"
NO_NETNS = "(no netns)"
Raw = Mapping[int, Sequence[tuple[int, int]]]


@cache
def kinds() -> dict[str, str]:
    out = {}
    for line in TABLE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, kind, _meaning = line.split("\t")
        out[name] = kind
    return out


def arrived(hops: Sequence[Observation], i: int) -> bool:
    """The packet arrived where hop ``i`` freed it (an rx before it there, the free by its socket
    or at that rx's interface)."""
    h = hops[i]
    if i == 0:
        return False
    p = hops[i - 1]
    return (p.direction == "rx" and p.netns == h.netns
            and (h.ifname in (NO_DEVICE, "?") or (p.node, p.ifname) == (h.node, h.ifname)))


def after_delivery(hops: Sequence[Observation], i: int) -> bool:
    return arrived(hops, i) and kinds().get(hops[i].drop_reason or "") == "delivered"


def counts_as_drop(hops: Sequence[Observation], i: int, verdict: Verdict) -> bool:
    """What the text, the TUI and the report count as a drop: a free in a ``dropped`` path that
    did not come after delivery (a path that is not ``dropped`` lost nothing)."""
    return hops[i].direction == "drop" and verdict == "dropped" and not after_delivery(hops, i)


def is_loss(hops: Sequence[Observation], i: int, raw: Raw) -> bool:
    h = hops[i]
    if h.drop_reason is None or not arrived(hops, i):
        return True
    if after_delivery(hops, i):
        return False
    icmp = (h.family, h.proto) in ((4, 1), (6, 58))
    open_then = any(min(a, b) <= h.ts_ns <= max(a, b) for a, b in raw.get(h.netns, ()))
    return not (h.drop_reason == "NO_SOCKET" and icmp and open_then)


def path_verdict(hops: Sequence[Observation], owned: Mapping[str, int],
                 links: Set[tuple[int, str, str]], raw: Raw) -> Verdict:
    drops = [i for i, h in enumerate(hops) if h.direction == "drop"]
    if any(is_loss(hops, i, raw) for i in drops):
        return "dropped"
    if drops:
        return "delivered"
    return verdict(hops, owned, links)


def name_hops(hops: Sequence[Observation]) -> tuple[Observation, ...]:
    out = list(hops)
    for i, h in enumerate(out):
        if h.node != "?":
            continue
        named = out[i - 1] if i else next((o for o in out[i + 1:] if o.node != "?"), None)
        iface = NO_DEVICE if h.ifname in ("", "?") else h.ifname
        if named is None:
            out[i] = replace(h, node=NO_NETNS, ifname=iface)
        else:
            out[i] = replace(h, node=named.node, netns=named.netns, ifname=iface)
    return tuple(out)
