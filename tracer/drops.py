"""What a drop hop means, for people: the kernel reason's one-line meaning and whether it lost
the packet (the table ships in the core: crates/hoptrace-core/data/drop_reasons.tsv; why each
reason is or is not a loss: docs/drop-reasons.md).

The verdict is the core's (drops.rs); the text here follows it: in a path whose verdict is not
``dropped`` every free came after the packet was delivered, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from tracer.model import Observation

NO_DEVICE = "(no device)"
RAW_COPY_NOTE = "a raw socket (ping) got a copy; the original found no ping socket"


@cache
def _table() -> dict[str, tuple[str, str]]:
    from tracer import _core

    out: dict[str, tuple[str, str]] = {}
    for line in _core.drop_reason_table().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, kind, meaning = line.split("\t", 2)
        out[name] = (kind, meaning)
    return out


def meaning(reason: str | None) -> str | None:
    """The one-line meaning of a drop reason's name; None for a name the table lacks."""
    entry = _table().get(reason or "")
    return entry[1] if entry else None


def after_delivery(hops: Sequence[Observation], i: int) -> bool:
    """Drop hop ``i`` freed the packet after it reached its socket (drops.rs ``Free::AfterDelivery``)."""
    h = hops[i]
    entry = _table().get(h.drop_reason or "")
    if h.direction != "drop" or entry is None or entry[0] != "delivered" or i == 0:
        return False
    p = hops[i - 1]
    return (p.direction == "rx" and p.netns == h.netns
            and (h.ifname in (NO_DEVICE, "?") or (p.node, p.ifname) == (h.node, h.ifname)))


def drop_note(hops: Sequence[Observation], i: int, verdict: str) -> tuple[bool, str | None]:
    """(lost, note) of drop hop ``i`` in a path with ``verdict``: a free in a path that is not
    ``dropped``, or after delivery, lost nothing; the note is the reason's meaning, or for the
    original of a raw socket's copy (NO_SOCKET, the path delivered) what happened."""
    h = hops[i]
    lost = verdict == "dropped" and not after_delivery(hops, i)
    entry = _table().get(h.drop_reason or "")
    if not lost and (entry is None or entry[0] != "delivered"):
        return False, RAW_COPY_NOTE
    return lost, entry[1] if entry else None


__all__ = ["NO_DEVICE", "RAW_COPY_NOTE", "after_delivery", "drop_note", "meaning"]
