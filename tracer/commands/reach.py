"""`hoptrace probe`: send test packets from inside a node's namespace and trace them.

The answer to "can container X reach Y, and if not, where does it die?":
tracing starts first (eBPF, else taps), then a thread that entered the
node's network namespace sends ICMP echo requests, UDP datagrams or TCP
connection attempts (a real connect() from a high port, ended with a reset:
the container's own connections are untouched), and the engine's paths for
those packets and their replies give the verdict.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracer.annotate.relay import ProxyTable, Relay, far_node, link_relays, relay_phrase
from tracer.errors import EXIT_OK, EXIT_PROBLEM, PrivilegeError, UsageError
from tracer.model import Flow, Observation, PacketPath
from tracer.netns import run_in_netns
from tracer.safe_text import term_safe
from tracer.sources.names import LAB_STATE

if TYPE_CHECKING:
    from tracer.pipeline import Pipeline
    from tracer.protocols import LiveSource
    from tracer.topology import Topology

PAYLOAD_TAG = b"hoptrace-probe:"
# ICMP unreachable codes that mean "nothing routes there" rather than "refused".
_ICMP4_NO_ROUTE = {0, 1, 5, 6, 7, 8, 11, 12}
_ICMP6_NO_ROUTE = {0, 2, 3}

Verdict = str  # reachable | dropped | rejected | no route | no ARP answer | no reply


# --------------------------------------------------------------------------
# What the user asked for
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    addr: str
    family: int
    port: int | None
    proto: str


def parse_target(text: str, proto: str | None) -> Target:
    """ADDR, ADDR:PORT, [V6ADDR]:PORT or a bare IPv6 address; never a name (no DNS here)."""
    host, port_text = text, None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"cannot parse address {text!r}", "use ADDR, ADDR:PORT or [IPV6]:PORT")
        port_text = rest[1:] or None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(
            f"not an IP address: {host!r}", "give an address such as 198.51.100.8 or 203.0.113.2:8080"
        ) from None
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"not a port number: {port_text!r}", "ports are 1-65535")
        port = int(port_text)
    if proto is None:
        proto = "tcp" if port is not None else "icmp"
    if proto in ("tcp", "udp") and port is None:
        raise UsageError(f"--proto {proto} needs a port: --to {host}:PORT")
    if proto == "icmp" and port is not None:
        raise UsageError("ICMP has no ports: drop the :PORT or use --proto tcp|udp")
    return Target(addr=str(ip), family=ip.version, port=port, proto=proto)


def _current_lab_inodes() -> set[int]:
    """The namespaces of the lab named by HOPTRACE_LAB_PREFIX (default "hop"), if it is up."""
    prefix = os.environ.get("HOPTRACE_LAB_PREFIX") or "hop"
    try:
        labels = json.loads((LAB_STATE / f"lab-{prefix}" / "nodes.json").read_text())
    except (OSError, ValueError):
        return set()
    return {int(k) for k in labels}


def resolve_node(name: str, topo: Topology) -> tuple[str, int]:
    """A node name (container, /run/netns name, lab label, host) -> (netns path, inode)."""
    if not name or len(name) > 255 or "\0" in name or "/" in name:
        raise UsageError(f"not a node name: {name[:40]!r}")
    found = [(ns.path, ns.inode) for ns in topo.namespaces if ns.name == name]
    if len(found) > 1:  # several labs are up, each with a "client": prefer the current one
        lab = _current_lab_inodes()
        found = [f for f in found if f[1] in lab] or found
    if not found:
        names = {ns.name for ns in topo.namespaces if not ns.name.startswith("netns:")}
        raise UsageError(f"unknown node {name!r}", f"known nodes: {', '.join(sorted(names)) or 'none'}")
    if len(found) > 1:
        raise UsageError(f"node name {name!r} is ambiguous: namespaces "
                         + ", ".join(str(i) for _, i in found),
                         "set HOPTRACE_LAB_PREFIX to the lab you mean")
    return found[0]


# --------------------------------------------------------------------------
# Sending, inside the node's namespace
# --------------------------------------------------------------------------


@dataclass(slots=True)
class Sent:
    """What the sender did: the identifiers that find its packets among the paths."""

    ident: int  # ICMP echo id, or the local (source) port for TCP/UDP
    seqs: list[int] = field(default_factory=list)
    socket_error: int | None = None  # errno from the socket layer (ENETUNREACH, ECONNREFUSED, ...)
    answered: bool = False  # the socket itself saw an answer (echo reply, SYN-ACK, datagram)
    #: TCP: the accepting end closed the connection while it was held (a userland proxy does
    #: when the far end refused or did not answer).
    peer_closed: bool = False


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _icmp_socket(family: int) -> tuple[socket.socket, bool]:
    """A ping (datagram) socket when ping_group_range allows it, else a raw socket.

    With a raw socket the kernel hands the echo reply to it as a copy and frees
    the original with SKB_DROP_REASON_NO_SOCKET: true, but noise in the reply's
    path. A ping socket consumes the reply.
    """
    fam, proto = (socket.AF_INET, socket.IPPROTO_ICMP) if family == 4 else (
        socket.AF_INET6, socket.IPPROTO_ICMPV6)
    try:
        return socket.socket(fam, socket.SOCK_DGRAM, proto), True
    except PermissionError:
        return socket.socket(fam, socket.SOCK_RAW, proto), False


def _send_icmp(t: Target, count: int, interval: float, timeout: float) -> Sent:
    echo, reply = (8, 0) if t.family == 4 else (128, 129)
    sock, dgram = _icmp_socket(t.family)
    # A ping socket's echo id is its port, chosen by the kernel at bind time.
    if dgram:
        sock.bind(("0.0.0.0" if t.family == 4 else "::", 0))
        ident = sock.getsockname()[1]
    else:
        ident = random.randrange(0x4000, 0xFFFF)
    sent = Sent(ident=ident)
    with sock:
        sock.settimeout(0.05)
        for seq in range(1, count + 1):
            payload = PAYLOAD_TAG + struct.pack("!dH", time.time(), seq) + bytes(range(32))
            header = struct.pack("!BBHHH", echo, 0, 0, ident, seq)
            # The kernel fills the checksum for ping sockets and for ICMPv6.
            csum = _icmp_checksum(header + payload) if t.family == 4 and not dgram else 0
            packet = struct.pack("!BBHHH", echo, 0, csum, ident, seq) + payload
            try:
                sock.sendto(packet, (t.addr, 0))
            except OSError as exc:
                sent.socket_error = exc.errno
                return sent
            sent.seqs.append(seq)
            deadline = time.monotonic() + (interval if seq < count else timeout)
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    continue
                except OSError as exc:  # an ICMP error queued on a ping socket
                    sent.socket_error = exc.errno
                    break
                icmp = data[(data[0] & 0x0F) * 4 :] if t.family == 4 and not dgram else data
                if len(icmp) >= 8:
                    typ, _code, _c, rid, _rseq = struct.unpack_from("!BBHHH", icmp)
                    if typ == reply and (dgram or rid == ident):
                        sent.answered = True
                        if seq == count:
                            return sent
    return sent


def _send_udp(t: Target, count: int, interval: float, timeout: float) -> Sent:
    fam = socket.AF_INET if t.family == 4 else socket.AF_INET6
    with socket.socket(fam, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0" if t.family == 4 else "::", 0))
        sent = Sent(ident=sock.getsockname()[1])
        # IP_RECVERR lets an ICMP port unreachable show up as ECONNREFUSED on connected sockets.
        sock.connect((t.addr, t.port))
        sock.settimeout(0.05)
        for seq in range(1, count + 1):
            try:
                sock.send(PAYLOAD_TAG + struct.pack("!dH", time.time(), seq))
            except OSError as exc:
                sent.socket_error = exc.errno
                return sent
            sent.seqs.append(seq)
            deadline = time.monotonic() + (interval if seq < count else timeout)
            while time.monotonic() < deadline:
                try:
                    sock.recv(2048)
                    sent.answered = True
                except TimeoutError:
                    continue
                except OSError as exc:
                    sent.socket_error = exc.errno
                    break
    return sent


def _send_tcp(t: Target, count: int, interval: float, timeout: float, hold: float = 0.0) -> Sent:
    """``hold``: after an accepted connection, how long to keep it open for a userland proxy to
    connect on to the far end (and close ours when that failed) before the probe's reset."""
    fam = socket.AF_INET if t.family == 4 else socket.AF_INET6
    sent = Sent(ident=0)
    for seq in range(1, count + 1):
        with socket.socket(fam, socket.SOCK_STREAM) as sock:
            # A high port of our own, and SO_LINGER 0 so close() sends RST: the
            # probe never leaves a half-open or TIME_WAIT connection behind.
            sock.bind(("0.0.0.0" if t.family == 4 else "::", random.randrange(49152, 65000)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sent.ident = sock.getsockname()[1]
            sock.settimeout(timeout)
            sent.seqs.append(seq)
            try:
                sock.connect((t.addr, t.port))
                sent.answered = True
                if hold > 0:
                    _hold(sock, hold, sent)
            except TimeoutError:
                sent.socket_error = errno.ETIMEDOUT
            except OSError as exc:
                sent.socket_error = exc.errno
        if seq < count:
            time.sleep(interval)
    return sent


def _hold(sock: socket.socket, hold: float, sent: Sent) -> None:
    """Wait up to ``hold`` s for the accepting end to close (or reset) the connection."""
    sock.settimeout(hold)
    try:
        while sock.recv(4096):
            pass
        sent.peer_closed = True
    except TimeoutError:
        pass
    except OSError:
        sent.peer_closed = True


SENDERS = {"icmp": _send_icmp, "udp": _send_udp, "tcp": _send_tcp}
#: How long a TCP probe holds a connection a docker-proxy may have accepted (it dials the
#: container right after accepting; a container's answer takes microseconds, a lost SYN's
#: first retransmission one second).
RELAY_HOLD_S = 1.0


# --------------------------------------------------------------------------
# The verdict, from the paths
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeResult:
    verdict: Verdict
    detail: str
    requests: tuple[PacketPath, ...]
    replies: tuple[PacketPath, ...]
    ok: bool
    #: The userland proxy that accepted the probe's connection, and what came of its own.
    relay: Relay | None = None


def _is_request(p: PacketPath, t: Target, sent: Sent, netns: int) -> bool:
    h = p.first
    if h.netns != netns or h.direction not in ("tx", None) or h.dst != t.addr:
        return False
    if t.proto == "icmp":
        return h.icmp_type in (8, 128) and h.icmp_id == sent.ident
    return h.proto == (6 if t.proto == "tcp" else 17) and h.sport == sent.ident


def _quotes_request(h: Observation, t: Target, sent: Sent) -> bool:
    inner = h.inner
    if inner is None:
        return False
    if t.proto == "icmp":
        return inner.dst == t.addr and inner.sport == sent.ident
    return inner.sport == sent.ident and inner.dport == t.port


def _is_reply(p: PacketPath, t: Target, sent: Sent, netns: int) -> bool:
    """A reply as seen where it arrives back: the last hop is in the probing namespace."""
    h = p.last
    if h.netns != netns:
        return False
    if h.icmp_type is not None and h.inner is not None:
        return _quotes_request(h, t, sent)
    if t.proto == "icmp":
        return h.icmp_type in (0, 129) and h.icmp_id == sent.ident
    return h.proto == (6 if t.proto == "tcp" else 17) and h.dport == sent.ident


def _hop(h: Observation) -> str:
    return f"{h.node}/{h.ifname}"


def _relayed(relay: Relay, requests: tuple[PacketPath, ...], replies: tuple[PacketPath, ...]) -> ProbeResult:
    """The verdict of a connection a userland proxy accepted: the far end's, not the proxy's
    (docker-proxy accepts even when nothing listens behind it, then closes)."""
    detail = relay_phrase(relay, far_node(relay))
    answer = relay.answer()
    verdict, ok = {"answered": ("reachable", True), "refused": ("rejected", False)}.get(answer, ("no reply", False))
    shown = {p.id for p in (*requests, *replies)}
    more = tuple(p for p in relay.outbound_paths if p.id not in shown)
    return ProbeResult(verdict, detail, requests, replies + more, ok, relay)


def judge(t: Target, sent: Sent, netns: int, paths: Sequence[PacketPath],
          flows: Sequence[Flow] = (), relays: Sequence[Relay] = ()) -> ProbeResult:
    """``relays``: the connections a userland proxy relayed among ``paths``
    (tracer/annotate/relay.py ``link_relays``); the probe's own is followed to the far end."""
    requests = tuple(p for p in paths if _is_request(p, t, sent, netns))
    req_flows = {p.flow for p in requests if p.flow}
    replies = tuple(
        p for p in paths
        if p not in requests and (_is_reply(p, t, sent, netns) or (p.flow and p.flow in req_flows))
    )
    arrived = tuple(p for p in replies if p.last.netns == netns and p.last.direction != "drop")

    if sent.socket_error == errno.ENETUNREACH:
        return ProbeResult("no route", f"no route to {t.addr} from the node's routing table",
                           requests, replies, False)
    for p in arrived:
        h = p.last
        if h.icmp_type is not None and h.inner is not None:
            origin = p.first
            v6 = h.family == 6
            no_route = (h.icmp_code in (_ICMP6_NO_ROUTE if v6 else _ICMP4_NO_ROUTE)
                        and h.icmp_type in ((1,) if v6 else (3,)))
            what = "no route" if no_route else "rejected"
            return ProbeResult(what, f"ICMP {'v6 ' if v6 else ''}type {h.icmp_type} code "
                               f"{h.icmp_code} from {origin.src} (first seen at {_hop(origin)})",
                               requests, replies, False)
        if t.proto == "tcp" and h.tcp_flags is not None and h.tcp_flags & 0x04 and not h.tcp_flags & 0x02:
            origin = p.first
            return ProbeResult("rejected", f"TCP RST from {origin.src}:{origin.sport} (first seen "
                               f"at {_hop(origin)}): nothing listens on {t.addr}:{t.port}",
                               requests, replies, False)
    # A connection a userland proxy accepted: its verdict is the far end's (the proxy's closing
    # of ours frees segments of it, which are no losses).
    relay = next((r for r in relays if r.inbound in requests), None)
    if relay is not None and t.proto == "tcp":
        return _relayed(relay, requests, replies)
    # After the answers: a SYN to a closed port is freed with NO_SOCKET *and* answered by a
    # RST; the RST is the answer the user wants ("rejected"), the drop is how the kernel did it.
    for p in requests:
        # Only a loss: a free after delivery or of a raw socket's copy leaves the path delivered.
        drop = next((h for h in p.hops if h.direction == "drop"), None) if p.verdict == "dropped" else None
        if drop is not None:
            return ProbeResult("dropped", f"dropped at {_hop(drop)} ({drop.node}), reason "
                               f"{drop.drop_reason or 'unknown'}", requests, replies, False)
    if arrived or sent.answered:
        return ProbeResult("reachable", f"{t.addr}{':' + str(t.port) if t.port else ''} answered",
                           requests, replies, True)
    if sent.socket_error == errno.ECONNREFUSED:
        return ProbeResult("rejected", "connection refused (reset or ICMP unreachable)",
                           requests, replies, False)
    if sent.socket_error == errno.EHOSTUNREACH:
        arp = [p for p in paths if p.first.family == 0 and p.first.netns == netns]
        if arp or not requests or len(requests[0].hops) == 1:
            return ProbeResult("no ARP answer", "the next hop did not answer ARP (host unreachable)",
                               requests, replies, False)
    if not requests:
        return ProbeResult("no reply", "no probe packet was seen leaving the node "
                           "(is the tracer attached to its interfaces?)", requests, replies, False)
    last = max((p.last for p in requests), key=lambda h: h.ts_ns)
    seen = " a reply was seen at " + ", ".join(sorted({_hop(h) for p in replies for h in p.hops})) \
        if replies else " no reply was seen anywhere"
    return ProbeResult("no reply", f"the request last reached {_hop(last)} ({last.direction});{seen}",
                       requests, replies, False)


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def _make_source(backend: str, target: Target) -> LiveSource:
    """The same backend choice as `live` (eBPF, else taps with a notice), already attached.

    Only the probe's protocol and ICMP (its errors) reach userspace: on a busy
    host the rest would only cost events. ARP is not kept: a missing ARP
    answer shows as EHOSTUNREACH on the socket.
    """
    from tracer.commands.live import choose_source

    icmp = "icmp" if target.family == 4 else "icmp6"
    expr = icmp if target.proto == "icmp" else f"{target.proto} or {icmp}"
    spec = argparse.Namespace(backend=backend, snaplen=128, iface=[], filter=expr)
    return choose_source(spec)


def run(args: argparse.Namespace) -> int:
    from tracer.sinks.output import path_json, path_text

    target = parse_target(args.to, args.proto)
    from tracer.commands.doctor import effective_caps

    if not {"CAP_SYS_ADMIN", "CAP_NET_RAW"} <= effective_caps():
        # Checked before the node lookup: an unprivileged user gets this, not a confusing name error.
        raise PrivilegeError("probe enters a container's network namespace and traces it: it needs root",
                             "missing CAP_SYS_ADMIN / CAP_NET_RAW; run it with sudo")
    from tracer.topology import Topology

    # One discovery: it names the node to send from and feeds rule/conntrack attribution.
    topo = Topology.discover()
    netns_path, netns = resolve_node(args.from_node, topo)
    from tracer.pipeline import PipelineConfig, attribution, build

    source = _make_source(args.backend, target)
    attributor, _topo = attribution(topo, source)
    pipeline = build(PipelineConfig(source, source_started=True, annotators=(attributor,), nat_scope=attributor))
    paths: list[PacketPath] = []
    flows: list[Flow] = []
    sent_box: list[Sent] = []
    errors: list[BaseException] = []
    interval = 0.2

    # A docker-proxy that may accept the connection: hold it open so the proxy's own connection
    # to the container is made (and seen) before the probe resets ours.
    proxies = ProxyTable()
    hold = 0.0
    if target.proto == "tcp" and any(p.args.accepts("tcp", target.addr, target.port) or p.args.host_port
                                     == target.port for p in proxies.refresh()):
        hold = min(args.timeout, RELAY_HOLD_S)

    def send() -> Sent:
        if target.proto == "tcp":
            return _send_tcp(target, args.count, interval, args.timeout, hold)
        return SENDERS[target.proto](target, args.count, interval, args.timeout)

    def sender() -> None:
        try:
            sent_box.append(run_in_netns(
                netns_path,
                send,
                timeout=args.timeout + args.count * (interval + args.timeout) + 5,
            ))
        except BaseException as exc:
            errors.append(exc)
        finally:
            # Let the last sightings arrive and the engine finish the paths, then stop.
            time.sleep(0.3)
            pipeline.stop()

    thread = threading.Thread(target=sender, name="probe-sender", daemon=True)
    started = False
    for events in pipeline.events():
        if not started:
            started = True
            thread.start()
        for ev in events:
            if isinstance(ev, PacketPath):
                paths.append(ev)
            elif isinstance(ev, Flow):
                flows.append(ev)
    if not started:
        thread.start()
    thread.join()
    attributor.close()
    if errors:
        raise errors[0]
    relays = link_relays(paths, proxies) if hold else []
    result = judge(target, sent_box[0], netns, paths, flows, relays)
    lost = pipeline.stats().lost_events
    if lost:
        print(f"hoptrace: warning: {lost} events were lost (a busy host): the paths may be "
              "incomplete", file=sys.stderr)
    if args.json:
        out = sys.stdout
        for p in (*result.requests, *result.replies):
            out.write(json.dumps(path_json(p)) + "\n")
        verdict: dict[str, object] = {
            "type": "verdict", "verdict": result.verdict, "detail": result.detail, "from": args.from_node,
            "to": target.addr, "port": target.port, "proto": target.proto, "reachable": result.ok}
        if result.relay is not None:
            verdict["relay"] = _relay_json(result.relay)
        out.write(json.dumps(verdict) + "\n")
        out.write(json.dumps({"type": "stats", **_stats_dict(pipeline)}) + "\n")
    else:
        # The detail names nodes and interfaces (untrusted); path_text escapes its own names.
        print(term_safe(f"{args.from_node} -> {args.to} ({target.proto}): {result.verdict.upper()}: "
                        f"{result.detail}"))
        for p in (*result.requests, *result.replies):
            print()
            print(path_text(p))
    return EXIT_OK if result.ok else EXIT_PROBLEM


def _relay_json(r: Relay) -> dict[str, object]:
    """The probe's verdict line names the proxy and both legs (CONTRACT.md's ``relay`` fields,
    plus the far end and what it did)."""
    src = r.source
    return {**r.as_json(inbound_side=True), "to": {"addr": r.by.args.container_ip, "port": r.by.args.container_port,
                                                   "node": far_node(r)},
            "from": None if src is None else {"addr": src[0], "port": src[1]}, "answer": r.answer()}


def _stats_dict(pipeline: Pipeline) -> dict[str, object]:
    stats = pipeline.stats()
    return {"observations": stats.observations, "paths": stats.paths,
            "lost_events": stats.lost_events, "elapsed_s": round(stats.elapsed_s, 3)}
