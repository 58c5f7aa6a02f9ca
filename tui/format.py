"""PacketPath -> what a person reads: table cells, the hop-by-hop path view, a one-line summary.

Pure functions over tracer.model records (Rich ``Text`` only, no Textual), so
they are unit-tested without an app and rendered lazily, only for visible rows.

Names (nodes, interfaces, drop reasons, rules) come from capture files and the system:
each goes through ``term_safe`` before it reaches a ``Text``. Rich passes ESC and most
other controls through to the terminal, and a ``Text`` is never parsed as markup.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text

from tracer.annotate.local import local_text
from tracer.annotate.relay import relay_text
from tracer.drops import drop_note
from tracer.model import Endpoints, NatEvent, Observation, PacketPath
from tracer.safe_text import term_safe
from tracer.sinks.output import addr_port, endpoints_text, is_inner_event

VERDICT_STYLE = {
    "delivered": "bold green",
    "dropped": "bold red",
    "left": "bold cyan",
    "incomplete": "bold yellow",
}
NAT_STYLE = {"snat": "bold black on magenta", "dnat": "bold black on dark_orange"}
# Paired request/reply rows share a colour so the pair is visible at a glance.
FLOW_PALETTE = ("cyan", "magenta", "green", "yellow", "bright_blue", "bright_red", "orange1", "spring_green1")

# Before 2001 a timestamp is monotonic kernel time (eBPF), after it a pcap wall clock.
_WALL_CLOCK_NS = 10**18


def ts_text(ts_ns: int, digits: int = 6) -> str:
    """UTC wall clock for pcap times, seconds for monotonic ones; ``digits`` of the fraction."""
    if ts_ns >= _WALL_CLOCK_NS:
        secs, ns = divmod(ts_ns, 1_000_000_000)
        return time.strftime("%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}"[: digits + 1]
    return f"{ts_ns / 1e9:.{digits}f}"


def duration_text(ns: int) -> str:
    if ns < 0:
        return f"-{duration_text(-ns)}"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} µs" if ns >= 10_000 else f"{ns / 1000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def hop_endpoints(obs: Observation) -> Endpoints:
    return Endpoints(obs.src, obs.sport, obs.dst, obs.dport)


_TCP_FLAGS = ((0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"), (0x10, "A"), (0x20, "U"))
_ICMP_KIND = {
    1: {0: "reply", 8: "echo", 3: "unreach", 11: "ttl"},
    58: {128: "echo", 129: "reply", 1: "unreach", 3: "ttl"},
}


def proto_text(path: PacketPath) -> str:
    """Protocol with what tells packets of a flow apart: TCP flags, ICMP echo / reply / error."""
    first = path.first
    proto = term_safe(path.proto)
    if first.tcp_flags is not None:
        return f"{proto} " + "".join(ch for bit, ch in _TCP_FLAGS if first.tcp_flags & bit)
    if first.icmp_type is not None and first.proto in (1, 58):
        kind = _ICMP_KIND[first.proto].get(first.icmp_type)
        return f"{proto} {kind or first.icmp_type}"
    return proto


def original_text(path: PacketPath) -> str:
    return original_text_of(path.first)


def translated_text(path: PacketPath) -> str:
    """Only what NAT rewrote, as it left the last rewrite: "src 203.0.113.2", "dst 172.17.0.2:80"."""
    # the packet's own header: an ICMP error's quoted one runs the other way (its own event)
    outer = [ev for ev in path.nat if not _inner(path, ev)]
    if not outer:
        return ""
    before, after = outer[0].before, outer[-1].after
    parts = []
    if (before.src, before.sport) != (after.src, after.sport):
        parts.append("src " + addr_port(after.src, after.sport))
    if (before.dst, before.dport) != (after.dst, after.dport):
        parts.append("dst " + addr_port(after.dst, after.dport))
    return " ".join(parts)


def nat_badges(path: PacketPath) -> Text:
    text = Text()
    for kind in ("snat", "dnat"):
        if any(ev.kind == kind for ev in path.nat):
            if text:
                text.append(" ")
            text.append(kind.upper(), style=NAT_STYLE[kind])
    return text


def flow_style(flow_id: str) -> str:
    digits = "".join(ch for ch in flow_id if ch.isdigit())
    n = int(digits) if digits else sum(map(ord, flow_id))
    return FLOW_PALETTE[n % len(FLOW_PALETTE)]


def flow_cell(flow_id: str | None, role: str | None) -> Text:
    if not flow_id:
        return Text("")
    arrow = {"request": " →", "reply": " ←"}.get(role or "", "")
    return Text(flow_id + arrow, style=flow_style(flow_id))


def _rule_kind(rule: str) -> str | None:
    if "MASQUERADE" in rule or "-j SNAT" in rule:
        return "snat"
    if "-j DNAT" in rule or "-j REDIRECT" in rule:
        return "dnat"
    return None


def is_reverse(ev: NatEvent) -> bool:
    """A reply translated back by conntrack: its rule (of the request) rewrote the other side."""
    kind = _rule_kind(ev.rule or "")
    return kind is not None and kind != ev.kind


def verbed(ev: NatEvent, inner: bool = False) -> str:
    """What ``ev`` did, in a word. ``inner``: it rewrote the header an ICMP error quotes, which
    has no rule of its own to name the verb by ("DNATed" would name the error's own
    translation, which its own event tells): "rewritten", unless a reply's translation back."""
    if is_reverse(ev):
        return "translated back"
    if inner:
        return "rewritten"
    if "MASQUERADE" in (ev.rule or ""):
        return "MASQUERADEd"
    return "DNATed" if ev.kind == "dnat" else "SNATed"


def summary(path: PacketPath) -> str:
    """The sentence a person wants: where it went, where it was rewritten, where it ended."""
    hops = path.hops
    parts = [f"left {hops[0].hop_name}"]
    # Hops a NAT event lands on are named with the rewrite below; veths are implied by the bridge.
    nat_hops = {ev.to_hop for ev in path.nat}
    names = [h.ifname for h in hops]
    middle = [h.ifname if names.count(h.ifname) == 1 else h.hop_name  # "eth0" alone is ambiguous
              for i, h in enumerate(hops[1:-1], 1)
              if not h.ifname.startswith("veth") and i not in nat_hops]
    crossed = list(dict.fromkeys(middle))
    if crossed:
        parts.append("crossed " + ", ".join(crossed))
    for ev in path.nat:
        to = hops[ev.to_hop] if 0 <= ev.to_hop < len(hops) else hops[-1]
        inner = _inner(path, ev)
        # An ICMP error quotes the packet it answers, whose addresses run the other way: the
        # side its NAT rewrote is the one that changed, not the one the kind names.
        src_side = ((ev.before.src, ev.before.sport) != (ev.after.src, ev.after.sport) if inner
                    else ev.kind == "snat")
        changed, port = (ev.after.src, ev.after.sport) if src_side else (ev.after.dst, ev.after.dport)
        why = ""
        if is_reverse(ev):
            why = " (reply to " + ("MASQUERADE" if "MASQUERADE" in (ev.rule or "") else
                                   (_rule_kind(ev.rule or "") or "").upper()) + ")"
        what = "its quoted header was" if inner else "was"
        parts.append(f"{what} {verbed(ev, inner)} to {addr_port(changed, port)} on {to.hop_name}{why}")
    last = hops[-1]
    if path.verdict == "dropped":
        reason = f" ({last.drop_reason})" if last.drop_reason else ""
        parts.append(f"was dropped at {last.hop_name}{reason}")
    elif path.verdict == "delivered":
        parts.append(f"arrived at {last.hop_name}")
    elif path.verdict == "left":
        parts.append(f"left the traced network via {last.hop_name}")
    else:
        parts.append(f"was last seen at {last.hop_name}")
    return term_safe(", ".join(parts))


def _inner(path: PacketPath, ev: NatEvent) -> bool:
    """``ev`` rewrote the header an ICMP error quotes, not the error's own."""
    return 0 <= ev.from_hop < len(path.hops) and is_inner_event(path.hops, ev)


def _nat_lines(ev: NatEvent, inner: bool = False) -> Text:
    line = Text("     ┃ ", style="bold magenta" if ev.kind == "snat" else "bold dark_orange")
    line.append(f" {ev.kind.upper()} ", style=NAT_STYLE[ev.kind])
    what = "quoted header " if inner else ""
    line.append(f" {what}{verbed(ev, inner)} on {term_safe(ev.node)} at {term_safe(ev.hook)}: ", style="bold")
    line.append(endpoints_text(ev.before))
    line.append("  ⇒  ", style="bold")
    line.append(endpoints_text(ev.after), style="bold reverse")
    line.append("\n     ┃   rule: ", style="dim")
    if ev.rule:
        line.append(term_safe(ev.rule), style="italic")
        if ev.rule_source:
            line.append(f"  ({term_safe(ev.rule_source)})", style="dim")
    else:
        line.append("not attributed (live: --rules traces it; a topology infers it)", style="dim")
    ct = ev.conntrack
    line.append("\n     ┃   conntrack: ", style="dim")
    if ct is None:
        line.append("-", style="dim")
    else:
        line.append(f"id {ct.id}" if ct.id is not None else "entry")
        line.append(f"  orig {endpoints_text(ct.original)}  reply {endpoints_text(ct.reply)}", style="dim")
        if ct.status:
            line.append("  " + term_safe(",".join(ct.status)), style="dim")
    return line


def path_view(path: PacketPath, flow_id: str | None = None, role: str | None = None,
              local: Mapping[str, Any] | None = None, relay: Mapping[str, Any] | None = None) -> Text:
    """The hops top to bottom; NAT between the hops it happened, drops in red. ``local``: who
    took it (the path's own ``"local"``, else its flow's when it is the request)."""
    out = Text()
    out.append(f"{path.id}  ", style="bold")
    out.append(f"{term_safe(path.proto)}  ")
    out.append(path.verdict, style=VERDICT_STYLE.get(path.verdict, ""))
    out.append(f"  {len(path.hops)} hops  {duration_text(path.latency_ns)}")
    if flow_id:
        out.append("  flow ")
        out.append_text(flow_cell(flow_id, role))
        if role:
            out.append(f" ({role})", style=flow_style(flow_id))
    out.append("\n")
    out.append(summary(path), style="bold italic")
    local = path.local if path.local is not None else local
    if local is not None:
        out.append("\n→ ", style="bold")
        out.append(local_text(local), style="bold green")
    # A userland proxy's relay: the connection it accepted and the one it opened, one story.
    relay = path.relay if path.relay is not None else relay
    if relay is not None:
        out.append("\n")
        out.append(relay_text(relay), style="bold cyan")
    out.append("\n\n")
    # 12 cells hold a container name (cut after that); netns:<inode> (a namespace without a
    # name, or -n) needs 16 to stay whole
    nw = 16 if any(h.node.startswith("netns:") for h in path.hops) else 12
    out.append(f"  {'#':>2} {'node':<{nw}} {'iface':<12} {'dir':<4} {'time':<16} {'Δ':>9}  addresses\n",
               style="bold underline")
    nat_after: dict[int, list[NatEvent]] = {}
    for ev in path.nat:
        nat_after.setdefault(ev.from_hop, []).append(ev)
    prev: int | None = None
    for i, hop in enumerate(path.hops):
        dropped = hop.direction == "drop" or hop.drop_reason is not None
        lost = dropped and (hop.direction != "drop" or drop_note(path.hops, i, path.verdict)[0])
        style = "bold red" if lost else ""
        delta = "" if prev is None else "+" + duration_text(hop.ts_ns - prev)
        prev = hop.ts_ns
        row = Text(
            f"  {i:>2} {term_safe(hop.node)[:nw]:<{nw}} {term_safe(hop.ifname)[:12]:<12} "
            f"{term_safe(hop.direction or '?'):<4} "
            f"{ts_text(hop.ts_ns):<16} {delta:>9}  ",
            style=style,
        )
        row.append(original_text_of(hop), style=style or None)
        if hop.ttl:
            row.append(f"  ttl {hop.ttl}", style="dim")
        if hop.direction == "drop":
            lost, note = drop_note(path.hops, i, path.verdict)
            reason = term_safe(hop.drop_reason or "unknown reason")
            if lost:
                row.append(f"  ✖ dropped: {reason}", style="bold white on red")
            else:
                row.append(f"  freed: {reason}", style="green")
            if note:
                row.append(f"  {note}", style="dim")
        elif dropped:
            row.append(f"  ✖ dropped: {term_safe(hop.drop_reason or 'unknown reason')}",
                       style="bold white on red")
        out.append_text(row)
        out.append("\n")
        for ev in nat_after.get(i, []):
            out.append_text(_nat_lines(ev, _inner(path, ev)))
            out.append("\n")
    return out


def original_text_of(hop: Observation) -> str:
    if hop.family == 0:
        return term_safe(hop.proto_name)
    return endpoints_text(hop_endpoints(hop))


def role_of(path: PacketPath, original: Endpoints) -> str:
    """"request" when the path goes the flow's original direction (before or after NAT)."""
    first, last = path.first, path.last
    if (first.src, first.sport) == (original.src, original.sport) or (last.dst, last.dport) == (
        original.dst,
        original.dport,
    ):
        return "request"
    return "reply"


def cell(text: str, width: int) -> str:
    if len(text) <= width:
        return text.ljust(width)
    return text[: max(width - 1, 0)] + "…"


def join_cells(cells: Sequence[Text]) -> Text:
    out = Text()
    for i, c in enumerate(cells):
        if i:
            out.append(" ")
        out.append_text(c)
    return out
