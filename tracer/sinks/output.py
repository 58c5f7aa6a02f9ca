"""Paths, flows and stats as NDJSON (CONTRACT.md) and as text a person reads at a glance.

A sink is anything with ``on_path``, ``on_flow``, ``on_stats`` and ``close``;
the CLI's stream sinks live here. Each path is written as soon as it finishes and
the stream is flushed after every batch (``flush``: every few ms live, one write
syscall per batch instead of per path); the last thing a run writes is its stats.

Text, annotated (``hoptrace replay fixtures/internet-ping.pcapng``)::

    p1  icmp echo-request id 59830 seq 1  172.17.0.3 → 198.51.100.8  delivered  164 µs  flow f1
         client/eth0 tx                   <- path id, what, original src → dst, verdict, latency
       → host/veth50f2c31 rx  +32 µs      <- next sighting (node/iface dir), time since the previous
       → host/docker0 rx      +0 ns
       → host/eth0 tx         +131 µs
            172.17.0.3 → 203.0.113.2  SNAT @ host POSTROUTING   <- rewritten between the two hops
       → inet/eth0 rx         +1.5 µs
    ...
    f1  icmp  172.17.0.3 → 198.51.100.8  reply 198.51.100.8 → 203.0.113.2  paths p1 p4
    stats: 14 observations, 4 paths, 0 lost events, 0.057 s      <- always the last line

With a rule and conntrack entry (``--rules``, or inferred by topology) the NAT
line ends ``rule: -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
(inferred)  ct 42``; a drop hop ends ``DROPPED: NETFILTER_DROP``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from tracer.annotate.local import local_text
from tracer.annotate.relay import relay_text
from tracer.drops import drop_note
from tracer.model import (
    ConntrackRef,
    Endpoints,
    Flow,
    NatEvent,
    Observation,
    PacketPath,
    Stats,
)
from tracer.safe_text import term_safe

if TYPE_CHECKING:
    from tracer.flow_view import FlowTable


class Sink(Protocol):
    def on_path(self, path: PacketPath) -> None: ...
    def on_flow(self, flow: Flow) -> None: ...
    def on_stats(self, stats: Stats) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------- JSON


def _hop_json(h: Observation) -> dict[str, Any]:
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


def _conntrack_json(ct: ConntrackRef) -> dict[str, Any]:
    return {"id": ct.id, "original": ct.original.to_json(), "reply": ct.reply.to_json(),
            "status": list(ct.status), "zone": ct.zone}


def is_inner_event(hops: Sequence[Observation], ev: NatEvent) -> bool:
    """True when ``ev`` rewrote the header quoted in an ICMP error, not the outer one."""
    hop = hops[ev.from_hop]
    inner = hop.inner
    if inner is None:
        return False
    before = (ev.before.src, ev.before.dst)
    return before == (inner.src, inner.dst) and before != (hop.src, hop.dst)


def _nat_notes(ev: NatEvent) -> dict[str, Any]:
    """What annotators add to a NAT event: its rule, and when known the rule's source and the
    conntrack entry."""
    d: dict[str, Any] = {"rule": ev.rule}
    if ev.rule_source is not None:
        d["rule_source"] = ev.rule_source
    if ev.conntrack is not None:
        d["conntrack"] = _conntrack_json(ev.conntrack)
    return d


def nat_notes_json(ev: NatEvent) -> str:
    """``_nat_notes(ev)`` as its fields appear in the event's NDJSON object (``"rule": ...``
    onwards, no braces): what the core writes as given (tracer.engine's tables)."""
    return _dumps(_nat_notes(ev))[1:-1]


def nat_json(ev: NatEvent, hops: Sequence[Observation] = ()) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": ev.kind, "node": ev.node, "hook": ev.hook,
        "before": ev.before.to_json(), "after": ev.after.to_json(),
        "from_hop": ev.from_hop, "to_hop": ev.to_hop, "rule": ev.rule,
    }  # fmt: skip
    d.update(_nat_notes(ev))
    if ev.icmp_id_before is not None:
        d["icmp_id_before"], d["icmp_id_after"] = ev.icmp_id_before, ev.icmp_id_after
    if hops and is_inner_event(hops, ev):
        d["inner"] = True  # the header quoted in an ICMP error, not the outer one
    return d


def path_json(path: PacketPath) -> dict[str, Any]:
    """One path as CONTRACT.md's NDJSON object."""
    d: dict[str, Any] = {
        "type": "path", "id": path.id, "flow": path.flow, "proto": path.proto,
        "verdict": path.verdict,
        "hops": [_hop_json(h) for h in path.hops],
        "nat": [nat_json(ev, path.hops) for ev in path.nat],
    }  # fmt: skip
    if path.local is not None:
        d["local"] = path.local
    if path.relay is not None:
        d["relay"] = path.relay
    return d


_dumps = json.JSONEncoder(separators=(", ", ": ")).encode  # what json.dumps writes


def path_line(path: PacketPath) -> str:
    """One path's NDJSON line (without its newline): ``json.dumps(path_json(path))``."""
    return _dumps(path_json(path))


def flow_json(flow: Flow) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": "flow", "id": flow.id, "proto": flow.proto,
        "original": flow.original.to_json(), "reply": flow.reply.to_json(),
        "paths": list(flow.paths),
    }  # fmt: skip
    if flow.conntrack_id is not None:
        d["conntrack_id"] = flow.conntrack_id
    if flow.local is not None:
        d["local"] = flow.local
    if flow.relay is not None:
        d["relay"] = flow.relay
    return d


def flow_line(flow: Flow) -> str:
    """``json.dumps(flow_json(flow))`` as the NDJSON sink writes it."""
    return _dumps(flow_json(flow))


def stats_json(stats: Stats) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "stats", "observations": stats.observations, "paths": stats.paths,
                         "lost_events": stats.lost_events}
    if stats.sampling is not None:
        # sightings sampling skipped (live --sample / --max-cpu), and the rate at the end
        d["sampled_out"] = stats.sampling.sampled_out
        d["sample_rate"] = stats.sampling.rate
    d["elapsed_s"] = round(stats.elapsed_s, 3)
    return d


def write_all(stream: TextIO, text: str) -> None:
    """``stream.write(text)`` that loses nothing when a signal interrupts a blocked write.

    CPython 3.11's buffered stdout drops data when a large write that blocks on a full
    pipe (a slow reader: ``hoptrace live --json | consumer``) is interrupted by a signal
    with a handler (live's SIGINT/SIGTERM/SIGHUP): measured here, 200 kB written, a
    SIGINT while blocked, 130 kB read. So a stream with a file descriptor gets the
    encoded text through ``os.write`` until every byte is out (partial writes and EINTR
    are retried; a non-blocking descriptor is waited on), after its own buffer.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        stream.write(text)
        return
    stream.flush()
    data = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        data = data[n:]


def write_all_bytes(stream: TextIO, data: bytes) -> None:
    """``write_all`` for ASCII bytes: straight to the descriptor (after the stream's own buffer)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        stream.write(data.decode("ascii"))
        return
    stream.flush()
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


class NdjsonSink:
    """One JSON object per line: paths as they finish, flows, and the stats line last.

    The engine hands it the core's lines as they are (``on_ndjson``); row views
    (``on_path``/``on_flow``) are rendered here. Everything is ASCII (JSON escapes the rest)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        # Lines until flush(): the engine flushes once per batch, and one write of a batch's
        # lines costs one system call instead of one per 8 KiB (a path is ~2 KB of JSON).
        self._buf: list[bytes] = []

    def on_ndjson(self, data: bytes) -> None:
        self._buf.append(data)

    def output_fd(self) -> int | None:
        """The descriptor the lines go to, everything buffered so far written first (the core
        then writes the lines there itself: ``Stream.set_output_fd``); None for a stream
        without one (a StringIO)."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        self.flush()
        return fd

    def on_path(self, path: PacketPath) -> None:
        self._buf.append((path_line(path) + "\n").encode("ascii"))

    def on_flow(self, flow: Flow) -> None:
        self._buf.append((flow_line(flow) + "\n").encode("ascii"))

    def flush(self) -> None:
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            write_all_bytes(self.stream, data)
        self.stream.flush()

    def on_stats(self, stats: Stats) -> None:
        self._buf.append((_dumps(stats_json(stats)) + "\n").encode("ascii"))
        self.flush()

    def close(self) -> None:
        self.flush()


# --------------------------------------------------------------------- text

_ICMP_NAMES = {
    (1, 0): "echo-reply", (1, 3): "unreachable", (1, 5): "redirect", (1, 8): "echo-request",
    (1, 11): "time-exceeded", (1, 12): "parameter-problem",
    (58, 1): "unreachable", (58, 2): "packet-too-big", (58, 3): "time-exceeded",
    (58, 128): "echo-request", (58, 129): "echo-reply", (58, 133): "router-solicitation",
    (58, 134): "router-advertisement", (58, 135): "neighbor-solicitation",
    (58, 136): "neighbor-advertisement",
}  # fmt: skip
_TCP_FLAGS = "FSRPAUEC"


def addr_port(addr: str, port: int | None) -> str:
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def endpoints_text(e: Endpoints) -> str:
    return f"{addr_port(e.src, e.sport)} → {addr_port(e.dst, e.dport)}"


def duration_text(ns: int) -> str:
    if ns < 1_000:
        return f"{ns} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.0f} µs" if ns >= 10_000 else f"{ns / 1_000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f} ms"
    return f"{ns / 1_000_000_000:.2f} s"


def what_text(h: Observation) -> str:
    """A few words on what the packet is: 'icmp echo-request id 7 seq 1', 'tcp [S.]'."""
    if h.family == 0:
        return h.proto_name
    parts = [h.proto_name]
    if h.icmp_type is not None:
        parts.append(_ICMP_NAMES.get((h.proto, h.icmp_type), f"type {h.icmp_type}/{h.icmp_code}"))
        if (h.proto, h.icmp_type) in ((1, 0), (1, 8), (58, 128), (58, 129)):
            parts.append(f"id {h.icmp_id} seq {h.icmp_seq}")
    if h.tcp_flags is not None:
        flags = "".join(c for i, c in enumerate(_TCP_FLAGS) if h.tcp_flags & (1 << i))
        parts.append(f"[{flags}]")
    if h.is_fragment:
        parts.append(f"frag @{h.frag_offset}{'+' if h.more_fragments else ''}")
    return " ".join(parts)


def nat_text(ev: NatEvent, hops: Sequence[Observation] = (), color: bool = False) -> str:
    """``172.17.0.2 → 203.0.113.2  SNAT @ host POSTROUTING  rule: ...``"""
    if ev.kind == "snat":
        change = f"{addr_port(ev.before.src, ev.before.sport)} → {addr_port(ev.after.src, ev.after.sport)}"
    else:
        change = f"{addr_port(ev.before.dst, ev.before.dport)} → {addr_port(ev.after.dst, ev.after.dport)}"
    if ev.icmp_id_before is not None:
        change += f" (icmp id {ev.icmp_id_before} → {ev.icmp_id_after})"
    inner = "quoted header " if hops and is_inner_event(hops, ev) else ""
    # The node is a name from the system or a capture file, the rule the system's text: untrusted.
    text = f"{inner}{change}  {_paint(ev.kind.upper(), ev.kind, color)} @ {term_safe(ev.node)} {term_safe(ev.hook)}"
    return text + nat_notes_text(ev)


def nat_notes_text(ev: NatEvent) -> str:
    """What annotators add to a NAT event's text: ``  rule: ... (source)  ct N``."""
    text = ""
    if ev.rule:
        text += f"  rule: {term_safe(ev.rule)}" + (f" ({term_safe(ev.rule_source)})" if ev.rule_source else "")
    if ev.conntrack is not None and ev.conntrack.id is not None:
        text += f"  ct {ev.conntrack.id}"
    return text


def _where(h: Observation) -> str:
    """``node/iface dir``: names from a capture file or the system, escaped for the terminal."""
    return term_safe(f"{h.hop_name} {h.direction or '?'}")


@dataclasses.dataclass(frozen=True, slots=True)
class TextOptions:
    """How the text output looks: tcpdump's -n, -q / -v, and colour (``--color``).

    ``numeric``: nodes as ``netns:<inode>`` (``numeric_path``); ``detail``: -1 one line per
    path (-q), 0 the default block, 1 addresses/TTL/IP id/length per hop (-v), 2 also the
    time and skb (-vv); ``color``: ANSI colours on verdicts, drops and NAT kinds.
    """

    numeric: bool = False
    detail: int = 0
    color: bool = False


PLAIN = TextOptions()


def color_wanted(choice: str, stream: Any) -> bool:
    """``--color``: always, never, or auto: on a terminal, unless NO_COLOR is set (and not
    empty, no-color.org) or TERM is dumb. A flag given on the command line beats NO_COLOR."""
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (ValueError, AttributeError):
        return False


def text_options(args: Any, stream: Any) -> TextOptions:
    """The text output's look from live's / replay's flags (-n, -q, -v, --color)."""
    detail = -1 if getattr(args, "quiet", False) else min(int(getattr(args, "verbose", 0) or 0), 2)
    return TextOptions(numeric=bool(getattr(args, "numeric", False)), detail=detail,
                       color=color_wanted(getattr(args, "color", "auto") or "auto", stream))


def tui_color(args: Any) -> None:
    """--color for the TUI: Textual reads NO_COLOR when the app is made (never: set it;
    always: drop it; auto: leave the user's)."""
    choice = getattr(args, "color", "auto")
    if choice == "never":
        os.environ["NO_COLOR"] = "1"
    elif choice == "always":
        os.environ.pop("NO_COLOR", None)

# SGR codes; the text between is term_safe already, so no name can carry its own.
_SGR = {"delivered": "32", "dropped": "1;31", "left": "36", "incomplete": "33",
        "drop": "1;31", "snat": "35", "dnat": "35"}


def _paint(text: str, key: str, color: bool) -> str:
    code = _SGR.get(key)
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def numeric_path(path: PacketPath) -> PacketPath:
    """-n: every node that has a namespace number shown as ``netns:<inode>`` (the hops, and the
    NAT events that name those nodes), the way tcpdump -n shows addresses instead of names.
    NDJSON never uses this: it keeps both fields."""
    inode = {h.node: h.netns for h in path.hops if h.netns}
    if not inode:
        return path
    hops = tuple(dataclasses.replace(h, node=f"netns:{h.netns}") if h.netns else h for h in path.hops)
    nat = tuple(dataclasses.replace(ev, node=f"netns:{inode[ev.node]}") if ev.node in inode else ev
                for ev in path.nat)
    return dataclasses.replace(path, hops=hops, nat=nat)


def _hop_detail(h: Observation, level: int) -> str:
    """-v: the packet as this hop saw it; -vv: also when (UTC) and which skb."""
    parts = [what_text(h) if h.family == 0 else f"{addr_port(h.src, h.sport)} → {addr_port(h.dst, h.dport)}"]
    if h.ttl:
        parts.append(f"ttl {h.ttl}")
    if h.ip_id is not None:
        parts.append(f"id {h.ip_id}")
    parts.append(f"len {h.length}")
    if level >= 2:
        secs, ns = divmod(h.ts_ns, 1_000_000_000)
        parts.append(f"at {time.strftime('%H:%M:%S', time.gmtime(secs))}.{ns:09d}")
        if h.skb:
            parts.append(f"skb 0x{h.skb:x}")
    return term_safe("  ".join(parts))


def path_text(path: PacketPath, opts: TextOptions = PLAIN) -> str:
    """One block: a header line, then one line per hop with the rewrites inline.

    Every name in it is ``term_safe``: the block goes to a terminal (NDJSON keeps names exact).
    With ``opts.detail == -1`` (-q) the hops follow the header on its one line.
    """
    if opts.numeric:
        path = numeric_path(path)
    color = opts.color
    first = path.first
    head = (term_safe(f"{path.id}  {what_text(first)}  {addr_port(first.src, first.sport)} → "
                      f"{addr_port(first.dst, first.dport)}  ")
            + _paint(path.verdict, path.verdict, color) + f"  {duration_text(path.latency_ns)}")
    if path.flow:
        head += f"  flow {term_safe(path.flow)}"
    if opts.detail < 0:
        route = head + "  " + _route_text(path, color)
        route = route if path.local is None else f"{route}  {local_text(path.local)}"
        return route if path.relay is None else f"{route}  {relay_text(path.relay)}"
    by_hop: dict[int, list[NatEvent]] = {}
    for ev in path.nat:
        by_hop.setdefault(ev.to_hop, []).append(ev)
    wheres = [_where(h) for h in path.hops]
    width = max(len(w) for w in wheres)
    deltas = ["" if i == 0 else f"+{duration_text(h.ts_ns - path.hops[i - 1].ts_ns)}"
              for i, h in enumerate(path.hops)]
    dwidth = max(len(d) for d in deltas)
    lines = [head]
    for i, h in enumerate(path.hops):
        arrow = "   " if i == 0 else " → "
        where = wheres[i].ljust(width)
        line = f"  {arrow}{where}"
        if opts.detail > 0:
            line += f"  {deltas[i].ljust(dwidth)}  {_hop_detail(h, opts.detail)}"
        elif i:
            line += f"  {deltas[i]}"
        if h.direction == "drop":
            lost, note = drop_note(path.hops, i, path.verdict)
            reason = term_safe(h.drop_reason or "unknown reason")
            line += "  " + (_paint(f"DROPPED: {reason}", "drop", color) if lost else f"freed: {reason}")
            if note:
                line += f" — {note}"
        for ev in by_hop.get(i, ()):
            line += f"\n        {nat_text(ev, path.hops, color)}"
        lines.append(line.rstrip())
    if path.local is not None:
        lines.append(f"     {local_text(path.local)}")
    if path.relay is not None:
        lines.append(f"     {relay_text(path.relay)}")
    return "\n".join(lines)


def _route_text(path: PacketPath, color: bool) -> str:
    """-q: ``client/eth0 → host/docker0 → host/eth0 SNAT → inet/eth0``, a drop as ``✖ REASON``."""
    nat_at: dict[int, list[str]] = {}
    for ev in path.nat:
        nat_at.setdefault(ev.to_hop, []).append(_paint(ev.kind.upper(), ev.kind, color))
    parts = []
    for i, h in enumerate(path.hops):
        part = term_safe(h.hop_name)
        if i in nat_at:
            part += " " + " ".join(nat_at[i])
        if h.direction == "drop":
            reason = term_safe(h.drop_reason or "dropped")
            lost = drop_note(path.hops, i, path.verdict)[0]
            part += " " + (_paint(f"✖ {reason}", "drop", color) if lost else f"freed {reason}")
        parts.append(part)
    return " → ".join(parts)


def flow_text(flow: Flow) -> str:
    ct = f"  ct {flow.conntrack_id}" if flow.conntrack_id is not None else ""
    local = "" if flow.local is None else f"  {local_text(flow.local)}"
    relay = "" if flow.relay is None else f"  {relay_text(flow.relay)}"
    return term_safe(f"{flow.id}  {flow.proto}  {endpoints_text(flow.original)}  "
                     f"reply {endpoints_text(flow.reply)}  paths {' '.join(flow.paths)}") + ct + local + relay


def stats_text(stats: Stats) -> str:
    s = stats.sampling
    sampled = "" if s is None else f"{s.sampled_out} sampled out ({s.label()}), "
    return (f"stats: {stats.observations} observations, {stats.paths} paths, "
            f"{stats.lost_events} lost events, {sampled}{stats.elapsed_s:.3f} s")


class TextSink:
    """A block per path as it finishes (a line with -q), a line per flow, the stats line last.

    ``flow_view`` (``live`` on a terminal): while paths arrive faster than anyone reads, a
    table per flow redrawn in place on the terminal's alternate screen, like ``top``
    (tracer/flow_view.py), then single paths again below a line that says so."""

    def __init__(self, stream: TextIO, opts: TextOptions = PLAIN, *, flow_view: bool = False) -> None:
        self.stream = stream
        self.opts = opts
        self._gap = "\n" if opts.detail < 0 else "\n\n"
        self._buf: list[str] = []  # until flush(), written by write_all (see there why)
        self.wants_flow_view = flow_view
        self._alt = False  # the flow view is on the alternate screen

    def on_flow_view(self, table: FlowTable | None, reason: str) -> None:
        """The flow view's next table, or None: single paths again (tracer.engine.FlowViewLines)."""
        if table is None:
            self._leave_flow_view()
            self._buf.append(term_safe(f"hoptrace: single paths again — {reason}") + "\n")
            return
        import shutil

        from tracer.flow_view import table_lines

        size = shutil.get_terminal_size()
        body = "\x1b[K\n".join(table_lines(table, reason, size.columns, size.lines))
        enter = "" if self._alt else "\x1b[?1049h"
        self._alt = True
        write_all(self.stream, f"{enter}\x1b[H{body}\x1b[K\x1b[J")
        self.stream.flush()

    def _leave_flow_view(self) -> None:
        if self._alt:
            self._alt = False
            write_all(self.stream, "\x1b[?1049l")

    @property
    def text_options(self) -> TextOptions:
        return self.opts

    def on_text(self, data: bytes) -> None:
        """Blocks and flow lines the core rendered as this sink would (tracer.engine.TextLines)."""
        self._buf.append(data.decode("utf-8", "surrogateescape"))

    def on_path(self, path: PacketPath) -> None:
        self._buf.append(path_text(path, self.opts) + self._gap)

    def on_flow(self, flow: Flow) -> None:
        self._buf.append(flow_text(flow) + "\n")

    def flush(self) -> None:
        if self._buf:
            text = "".join(self._buf)
            self._buf.clear()
            write_all(self.stream, text)
        self.stream.flush()

    def on_stats(self, stats: Stats) -> None:
        self._leave_flow_view()
        self._buf.append(stats_text(stats) + "\n")
        self.flush()

    def close(self) -> None:
        self._leave_flow_view()
        self.flush()


__all__ = [
    "PLAIN", "NdjsonSink", "Sink", "TextOptions", "TextSink", "color_wanted", "duration_text",
    "flow_json", "flow_line", "flow_text", "is_inner_event", "nat_json", "nat_text", "numeric_path", "path_json",
    "path_line", "path_text", "stats_json", "stats_text", "text_options", "tui_color", "what_text", "write_all",
    "write_all_bytes",
]  # fmt: skip
