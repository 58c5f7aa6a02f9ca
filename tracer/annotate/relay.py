"""Docker's userland proxy: the connection docker-proxy accepted and the one it opened to carry
it on (CONTRACT.md's ``"relay"``).

With ``--userland-proxy=true`` (Docker's default) a connection to a published port from the
host itself or from a container is not NATed: ``docker-proxy`` (one process per published
port and address family, in the namespace that publishes it) accepts it, and opens a second
connection of its own, from the bridge's address, to the container. A tracer sees two
unrelated connections; this module links them.

* **Recognition**: docker-proxy is recognised by its command line, the five flags Docker
  gives it (``-proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.2
  -container-port 80``), read from ``/proc/PID/cmdline`` (untrusted text:
  ``tracer.safe_text.source_text``), never by its name: a renamed binary is still one, and
  a process merely called docker-proxy is not.
* **The inbound leg**: a connection whose SYN was delivered to a namespace's own stack at an
  address and port one of its docker-proxies accepts (a DNATed one never ends there: it goes
  on to the container). Who took it can also be confirmed by the socket's owner
  (``OwnerLookup``: sock_diag in that namespace, inode -> pid through /proc).
* **The outbound leg**: the next connection that leaves that namespace for the proxy's
  container address and port after the inbound leg's SYN (docker-proxy dials right after
  accept, one connection per accepted one; in order, so several at once pair first with first).

``ProxyTable`` keeps the machine's docker-proxies (a /proc scan at most every ``refresh_s``,
off the engine's thread); ``link_relays`` pairs the legs among finished paths (the probe's,
a recording's). ``hoptrace probe`` follows the relay with them (tracer/commands/reach.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tracer.addr import addr_bytes, addr_text
from tracer.annotate.local import MISS_SIZE, Answer, LocalLookup, LocalWorker
from tracer.model import PacketPath
from tracer.safe_text import source_text

#: The flags that make a command line docker-proxy's (Docker's portmapper gives all five).
PROXY_FLAGS = ("proto", "host-ip", "host-port", "container-ip", "container-port")
PROTOS = ("tcp", "udp", "sctp")
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10
#: The longest an outbound leg's SYN may follow its inbound leg's (docker-proxy dials at once).
PAIR_WINDOW_NS = 2_000_000_000
#: A /proc/PID/cmdline read: docker-proxy's is ~120 bytes; more is not a docker-proxy's.
CMDLINE_MAX = 4096


@dataclass(frozen=True, slots=True)
class ProxyArgs:
    """What a docker-proxy relays: ``proto`` connections to ``host_ip:host_port`` (an unspecified
    address: any of its family) go on to ``container_ip:container_port``."""

    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int

    def accepts(self, proto: str, dst: str, dport: int | None) -> bool:
        if proto != self.proto or dport != self.host_port:
            return False
        host = ipaddress.ip_address(self.host_ip)
        try:
            addr = ipaddress.ip_address(dst)
        except ValueError:
            return False
        # Go listens on "tcp6" with IPV6_V6ONLY: "::" takes IPv6 only, "0.0.0.0" IPv4 only.
        return addr.version == host.version and (host.is_unspecified or addr == host)

    def dials(self, proto: str, dst: str, dport: int | None) -> bool:
        return proto == self.proto and dport == self.container_port and dst == self.container_ip


def proxy_args(cmdline: Sequence[str]) -> ProxyArgs | None:
    """docker-proxy's relay from its command line (Go's flag syntax: ``-f v``, ``-f=v``,
    ``--f v``), or None when it is not one: a flag missing, a value that is no protocol, address
    or port."""
    values: dict[str, str] = {}
    args = list(cmdline[1:])
    k = 0
    while k < len(args):
        arg = args[k]
        k += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            continue
        name, sep, value = arg.lstrip("-").partition("=")
        if name not in PROXY_FLAGS:
            continue
        if not sep:
            if k >= len(args):
                return None
            value = args[k]
            k += 1
        values[name] = value
    if len(values) != len(PROXY_FLAGS) or values["proto"] not in PROTOS:
        return None
    try:
        host_ip = ipaddress.ip_address(values["host-ip"])
        container_ip = ipaddress.ip_address(values["container-ip"])
        host_port, container_port = int(values["host-port"]), int(values["container-port"])
    except ValueError:
        return None
    if not (0 < host_port < 65536 and 0 < container_port < 65536):
        return None
    return ProxyArgs(values["proto"], str(host_ip), host_port, str(container_ip), container_port)


@dataclass(frozen=True, slots=True)
class DockerProxy:
    """One docker-proxy process: its pid, ``comm``, network namespace (inode) and relay."""

    pid: int
    comm: str
    netns: int
    args: ProxyArgs


def read_cmdline(proc: str, pid: int) -> tuple[str, ...] | None:
    """``/proc/PID/cmdline`` as text (surrogates replaced); None when it cannot be read."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read(CMDLINE_MAX + 1)
    except OSError:
        return None
    if len(raw) > CMDLINE_MAX:
        return None
    return tuple(source_text(a.decode("utf-8", "surrogateescape")) for a in raw.split(b"\0") if a)


def docker_proxy(proc: str, pid: int) -> DockerProxy | None:
    """Process ``pid`` as a docker-proxy, or None: not one, gone, or unreadable."""
    cmdline = read_cmdline(proc, pid)
    args = None if cmdline is None else proxy_args(cmdline)
    if args is None:
        return None
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            comm = source_text(f.read(256).rstrip(b"\n").decode("utf-8", "surrogateescape"))
        netns = os.stat(f"{proc}/{pid}/ns/net").st_ino
    except OSError:
        return None  # it exited meanwhile, or its namespace cannot be read: not usable
    return DockerProxy(pid=pid, comm=comm, netns=netns, args=args)


def scan_proxies(proc: str = "/proc") -> list[DockerProxy]:
    """Every docker-proxy process visible in ``proc``, by pid."""
    try:
        pids = sorted(int(n) for n in os.listdir(proc) if n.isdigit())
    except OSError:
        return []
    found = []
    for pid in pids:
        got = docker_proxy(proc, pid)
        if got is not None:
            found.append(got)
    return found


class ProxyTable:
    """The machine's docker-proxies, read again when older than ``refresh_s``.

    ``start()`` keeps it fresh on a thread of its own (live: the engine never waits for a
    /proc scan); without it, ``proxies()`` scans when asked and the table is stale."""

    def __init__(self, proc: str = "/proc", refresh_s: float = 2.0,
                 scan: Callable[[str], list[DockerProxy]] = scan_proxies) -> None:
        self.proc = proc
        self.refresh_s = refresh_s
        self._scan = scan
        self._proxies: list[DockerProxy] = []
        self._at = -1e18
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> list[DockerProxy]:
        found = self._scan(self.proc)
        with self._lock:
            self._proxies = found
            self._at = time.monotonic()
        return found

    def proxies(self) -> list[DockerProxy]:
        with self._lock:
            fresh = time.monotonic() - self._at < self.refresh_s or self._thread is not None
            found = self._proxies
        return found if fresh else self.refresh()

    def accepting(self, netns: int, proto: str, dst: str, dport: int | None) -> DockerProxy | None:
        """The docker-proxy of ``netns`` that accepts ``proto`` connections to ``dst:dport``."""
        return next((p for p in self.proxies() if p.netns == netns and p.args.accepts(proto, dst, dport)), None)

    def start(self) -> None:
        if self._thread is not None:
            return
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(self.refresh_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="docker-proxy-table", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class OwnerLookup(Protocol):
    """The socket that took a packet in a namespace (tracer/annotate/local.py ``LocalLookup``:
    sock_diag inside the namespace by the 5-tuple, the inode's owner through /proc)."""

    def owner(self, netns: int, proto: str | int, src: tuple[str, int], dst: tuple[str, int], *,
              tcp_flags: int = 0, icmp_type: int | None = None) -> Any:
        """An object with ``pid``, ``comm`` and ``cmdline`` (None/empty when not found)."""
        ...


def owner_proxy(lookup: OwnerLookup, proc: str, netns: int, proto: str, src: tuple[str, int],
                dst: tuple[str, int]) -> DockerProxy | None:
    """The docker-proxy whose socket took ``src -> dst`` in ``netns`` (by the owner's command line),
    or None: another process, no socket, or the lookup could not tell."""
    try:
        got = lookup.owner(netns, proto, src, dst, tcp_flags=TCP_SYN)
    except OSError:
        return None
    pid = getattr(got, "pid", None)
    if pid is None:
        return None
    cmdline = tuple(getattr(got, "cmdline", ()) or ())
    args = proxy_args(cmdline) if cmdline else None
    if args is None:
        return docker_proxy(proc, pid)
    return DockerProxy(pid=pid, comm=str(getattr(got, "comm", None) or "docker-proxy"), netns=netns, args=args)


# --------------------------------------------------------------------------
# Linking the legs among finished paths
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Relay:
    """One relayed connection: ``by`` accepted ``inbound`` (the client's SYN, delivered to its
    namespace) and opened ``outbound`` (its own SYN to the container), or none was seen."""

    by: DockerProxy
    inbound: PacketPath
    outbound: PacketPath | None
    #: Every path of the outbound leg's flow (SYN, the container's answer, ...), in time order.
    outbound_paths: tuple[PacketPath, ...] = ()
    #: Every path of the inbound leg's flow.
    inbound_paths: tuple[PacketPath, ...] = ()

    @property
    def source(self) -> tuple[str, int | None] | None:
        """The outbound leg's source: the bridge's address and docker-proxy's port."""
        return None if self.outbound is None else (self.outbound.first.src, self.outbound.first.sport)

    def answer(self) -> str:
        """What the far end did: "answered" (SYN-ACK), "refused" (RST), "no answer", or
        "not relayed" (no outbound connection seen)."""
        if self.outbound is None:
            return "not relayed"
        out = self.outbound.first
        for p in self.outbound_paths:
            h = p.first
            if p is self.outbound or h.src != out.dst or h.sport != out.dport or h.tcp_flags is None:
                continue
            if h.tcp_flags & TCP_SYN and h.tcp_flags & TCP_ACK:
                return "answered"
            if h.tcp_flags & TCP_RST:
                return "refused"
        return "no answer"

    def as_json(self, inbound_side: bool) -> dict[str, object]:
        """The ``"relay"`` object on the ``inbound_side`` leg's paths and flow (else the outbound's)."""
        peer = self.outbound_paths if inbound_side else self.inbound_paths
        lead = self.outbound if inbound_side else self.inbound
        return {"by": {"pid": self.by.pid, "comm": self.by.comm},
                "peer_flow": None if lead is None else lead.flow,
                "peer_paths": [p.id for p in peer]}


def is_syn(p: PacketPath) -> bool:
    flags = p.first.tcp_flags
    return p.first.proto == 6 and flags is not None and bool(flags & TCP_SYN) and not flags & TCP_ACK


def delivered_here(p: PacketPath) -> bool:
    """The path ended in its last namespace's own stack: an rx there, nothing rewritten."""
    return p.verdict == "delivered" and p.last.direction == "rx" and not p.nat


def link_relays(paths: Sequence[PacketPath], table: ProxyTable, lookup: OwnerLookup | None = None,
                window_ns: int = PAIR_WINDOW_NS) -> list[Relay]:
    """The relayed connections among ``paths`` (see the module documentation), in time order.

    With ``lookup``, an inbound leg's docker-proxy is the owner of the socket that took it
    (confirmed by sock_diag; the lookup must run while the socket exists); else the docker-proxy
    of that namespace whose command line accepts its address and port."""
    syns = sorted((p for p in paths if is_syn(p)), key=lambda p: p.first.ts_ns)
    by_flow: dict[str, list[PacketPath]] = {}
    for p in paths:
        if p.flow is not None:
            by_flow.setdefault(p.flow, []).append(p)
    relays: list[Relay] = []
    taken: set[str] = set()
    for p in syns:
        if p.id in taken or not delivered_here(p):
            continue
        h = p.last
        proto = "tcp"
        proxy = table.accepting(h.netns, proto, h.dst, h.dport)
        if lookup is not None and h.sport is not None and h.dport is not None:
            owned = owner_proxy(lookup, table.proc, h.netns, proto, (h.src, h.sport), (h.dst, h.dport))
            proxy = owned if owned is not None and owned.args.accepts(proto, h.dst, h.dport) else None
        if proxy is None:
            continue
        t0 = p.first.ts_ns
        out = next((q for q in syns
                    if q.id not in taken and q is not p and q.first.netns == proxy.netns
                    and q.first.direction == "tx" and t0 <= q.first.ts_ns <= t0 + window_ns
                    and proxy.args.dials(proto, q.first.dst, q.first.dport)), None)
        if out is not None:
            taken.add(out.id)
        flow_paths = tuple(sorted(by_flow.get(out.flow, [out]) if out is not None and out.flow else
                                  ([out] if out is not None else []), key=lambda q: q.first.ts_ns))
        inbound_paths = tuple(sorted(by_flow.get(p.flow, [p]) if p.flow else [p], key=lambda q: q.first.ts_ns))
        relays.append(Relay(by=proxy, inbound=p, outbound=out, outbound_paths=flow_paths,
                            inbound_paths=inbound_paths))
    return relays


def relay_phrase(r: Relay, far_name: str | None = None) -> str:
    """``accepted by docker-proxy on host, relayed to api:80 from 172.30.0.1:35216: api answered``
    (not escaped: the caller's ``term_safe`` does)."""
    a = r.by.args
    node = r.inbound.last.node
    far = far_name or a.container_ip
    head = f"accepted by {r.by.comm} (pid {r.by.pid}) on {node}"
    src = r.source
    if src is None:
        return f"{head}, which opened no connection to {far}:{a.container_port}"
    relayed = f"{head}, relayed to {far}:{a.container_port} from {_endpoint(src[0], src[1])}"
    answer = r.answer()
    if answer == "answered":
        return f"{relayed}: {far} answered"
    if answer == "refused":
        return f"{relayed}: {far} refused: RST"
    return f"{relayed}: no answer from {far}"


def _endpoint(addr: str, port: int | None) -> str:
    text = f"[{addr}]" if ":" in addr else addr
    return text if port is None else f"{text}:{port}"


def far_node(r: Relay) -> str | None:
    """The container's node name: where the outbound leg last was outside the proxy's namespace,
    or where the container's answer started."""
    for p in r.outbound_paths:
        if p.first.src == r.by.args.container_ip and p.first.netns != r.by.netns:
            return p.first.node
    if r.outbound is not None:
        outside = [h for h in r.outbound.hops if h.netns != r.by.netns]
        if outside:
            return outside[-1].node
    return None


# --------------------------------------------------------------------------
# Live: linking the legs from who took the packets (tracer/annotate/local.py's answers)
# --------------------------------------------------------------------------

#: A flow key as the core files it (crates/hoptrace-core/src/flows.rs ``FlowKey``), original
#: direction: (family, proto, src, sport, dst, dport), addresses as text.
Key = tuple[int, int, str, int, str, int]


@dataclass(frozen=True, slots=True)
class Pair:
    """One relayed connection, for the core's table (crates/hoptrace-core/src/relay.rs)."""

    inbound: Key
    outbound: Key
    by: DockerProxy
    #: Whether the outbound leg's socket was seen owned by ``by`` (else: by its command line).
    confirmed: bool

    def by_json(self) -> bytes:
        return json.dumps({"pid": self.by.pid, "comm": self.by.comm}).encode("utf-8", "surrogatepass")

    def leg_fields(self, inbound: bool, names: Callable[[str], str | None]) -> dict[str, object]:
        """What a leg's ``"relay"`` says after the core's ``by``/``peer_flow``/``peer_paths``:
        which leg it is (``"accepted"`` by the proxy, or ``"opened"`` by it), the peer leg's
        endpoints in its original direction, and the peer's far node when known."""
        _, _, src, sport, dst, dport = self.outbound if inbound else self.inbound
        far = dst if inbound else src
        return {"leg": "accepted" if inbound else "opened",
                "peer": {"src": src, "sport": sport, "dst": dst, "dport": dport},
                "peer_node": names(far)}

    def for_core(self, names: Callable[[str], str | None]) -> tuple[Any, ...] | None:
        """The pair as ``Stream.add_relays`` takes it (None: an address the core cannot file)."""
        legs = _core_leg(self.inbound), _core_leg(self.outbound)
        if legs[0] is None or legs[1] is None:
            return None
        by = {"pid": self.by.pid, "comm": self.by.comm}
        fields = [self.leg_fields(inbound, names) for inbound in (True, False)]
        texts = tuple(relay_text({"by": by, **f}).encode("utf-8", "surrogatepass") for f in fields)
        encoded = tuple(json.dumps(f)[1:-1].encode("utf-8", "surrogatepass") for f in fields)
        return (legs[0], legs[1], self.by_json(), texts, encoded)


def relay_text(d: Mapping[str, Any]) -> str:
    """What a ``"relay"`` object says, for people (``term_safe``): on the accepted leg
    ``→ docker-proxy relays to web:80 from 172.17.0.1:35216``, on the proxy's own
    ``← docker-proxy (pid 4242) relays 172.17.0.3:40000 → 203.0.113.2:8080``."""
    from tracer.safe_text import term_safe

    by = d.get("by") or {}
    comm, pid = by.get("comm") or "a proxy", by.get("pid")
    peer = d.get("peer") or {}
    leg = d.get("leg")
    try:
        src = _endpoint(str(peer["src"]), peer.get("sport"))
        dst_addr, dport = str(peer["dst"]), peer.get("dport")
    except (KeyError, TypeError):
        leg = None
    if leg == "accepted":
        far = d.get("peer_node") or dst_addr
        text = f"\u2192 {comm} relays to {_endpoint(str(far), dport)} from {src}"
    elif leg == "opened":
        text = f"\u2190 {comm} (pid {pid}) relays {src} \u2192 {_endpoint(dst_addr, dport)}"
    else:
        peer_flow = d.get("peer_flow")
        text = f"relayed by {comm} (pid {pid})" + (f" with flow {peer_flow}" if peer_flow else "")
    return term_safe(text)


@dataclass(slots=True)
class _Leg:
    key: Key
    ts_ns: int
    confirmed: bool


class RelayLinker:
    """Pairs docker-proxy's two legs from the keys of paths that ended locally and who took them
    (one call per key: ``observe``), off the engine's thread.

    * an inbound leg: a packet delivered in the namespace of a docker-proxy that accepts its
      address and port, taken by that docker-proxy's socket (or by no socket any more: the
      connection is gone; the ``ProxyTable``'s command lines then say whose port it is);
    * an outbound leg: a packet from the proxy's container address and port delivered in the
      proxy's namespace (the container's answer to docker-proxy's own connection), taken by
      that docker-proxy's socket or by none any more (a short connection ends before paths
      finish); one taken by another process is not one.

    Per docker-proxy, legs pair in time order: the first outbound leg at or after an inbound
    leg's time, within ``window_ns``."""

    def __init__(self, table: ProxyTable | None = None, window_ns: int = PAIR_WINDOW_NS) -> None:
        self.table = table or ProxyTable()
        self.window_ns = window_ns
        self._by_pid: dict[int, DockerProxy | None] = {}
        self._in: dict[int, list[_Leg]] = {}
        self._out: dict[int, list[_Leg]] = {}
        self._pairs: list[Pair] = []
        self._lock = threading.Lock()

    def _proxy(self, pid: int) -> DockerProxy | None:
        if pid not in self._by_pid:
            if len(self._by_pid) > 4096:
                self._by_pid.clear()
            self._by_pid[pid] = docker_proxy(self.table.proc, pid)
        return self._by_pid[pid]

    def observe(self, netns: int, key: Key, ts_ns: int, owner_pid: int | None) -> None:
        """A path ``key`` (as it arrived: src, sport -> dst, dport) ended locally in ``netns`` at
        ``ts_ns``; ``owner_pid``: who took it (None: no socket or its owner unknown)."""
        family, proto_num, src, sport, dst, dport = key
        proto = {6: "tcp", 17: "udp", 132: "sctp"}.get(proto_num)
        if proto is None:
            return
        owner = self._proxy(owner_pid) if owner_pid is not None else None
        if owner_pid is not None and owner is None and os.path.exists(f"{self.table.proc}/{owner_pid}"):
            return  # another process took it (one that exited since says nothing: the table decides)
        candidates = [owner] if owner is not None else [p for p in self.table.proxies() if p.netns == netns]
        for proxy in candidates:
            if proxy is None:
                continue
            a = proxy.args
            if a.accepts(proto, dst, dport):
                self._add(self._in, proxy, _Leg(key, ts_ns, owner is not None))
            elif a.proto == proto and src == a.container_ip and sport == a.container_port:
                original = (family, proto_num, dst, dport, src, sport)
                self._add(self._out, proxy, _Leg(original, ts_ns, owner is not None))
            else:
                continue
            self._pair(proxy)
            return

    def _add(self, legs: dict[int, list[_Leg]], proxy: DockerProxy, leg: _Leg) -> None:
        self._by_pid.setdefault(proxy.pid, proxy)
        got = legs.setdefault(proxy.pid, [])
        if any(g.key == leg.key for g in got):
            return
        got.append(leg)
        got.sort(key=lambda g: g.ts_ns)
        del got[:-256]  # a proxy whose other legs never show: keep the recent ones

    def _pair(self, proxy: DockerProxy) -> None:
        ins, outs = self._in.get(proxy.pid, []), self._out.get(proxy.pid, [])
        while ins and outs:
            i, o = ins[0], outs[0]
            if o.ts_ns < i.ts_ns:
                outs.pop(0)  # its inbound leg was never seen (or came before tracing began)
                continue
            if o.ts_ns - i.ts_ns > self.window_ns:
                ins.pop(0)  # this inbound leg's outbound was never seen
                continue
            ins.pop(0)
            outs.pop(0)
            with self._lock:
                self._pairs.append(Pair(i.key, o.key, proxy, o.confirmed))

    def take(self) -> list[Pair]:
        """The pairs found since the last call (thread-safe)."""
        with self._lock:
            got, self._pairs = self._pairs, []
        return got


class RelayLookup(LocalLookup):
    """tracer/annotate/local.py's ``LocalLookup`` that also links docker-proxy's legs: each miss
    it answers (a key of a path that ended locally, and who took it) goes to a ``RelayLinker``.
    ``addresses``: IP address -> node name (``address_names``), for the text's container name."""

    def __init__(self, *args: Any, addresses: Mapping[str, str] | None = None,
                 linker: RelayLinker | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.linker = linker or RelayLinker(ProxyTable(self.proc))
        self.addresses = dict(addresses or {})

    def answer_misses(self, misses: bytes) -> list[Answer]:
        answers = super().answer_misses(misses)
        owners: dict[bytes, int] = {}
        for a in answers:
            pid = _pid_of(a[2])
            if pid is not None:
                owners[a[4]] = pid
        for k in range(0, len(misses) - MISS_SIZE + 1, MISS_SIZE):
            record = misses[k:k + MISS_SIZE]
            key = _miss_key(record)
            if key is not None:
                netns, ts_ns, flow_key = key
                self.linker.observe(netns, flow_key, ts_ns, owners.get(record))
        return answers

    def take_relays(self) -> list[tuple[Any, ...]]:
        """The pairs linked since the last call, as ``Stream.add_relays`` takes them."""
        out = []
        for pair in self.linker.take():
            got = pair.for_core(self.addresses.get)
            if got is not None:
                out.append(got)
        return out


@dataclass
class RelayWorker(LocalWorker):
    """``LocalWorker`` over a ``RelayLookup``: also hands the engine the relays it linked
    (tracer/engine.py ``RelayAnswers``)."""

    def take_relays(self) -> list[tuple[Any, ...]]:
        return self.lookup.take_relays() if isinstance(self.lookup, RelayLookup) else []


#: A leg in a recording's relay block (crates/hoptrace-core/src/relay.rs ``LEG_SIZE``).
_LEG = struct.Struct("<BBHH16s16s")


def relay_block_fields(pair: tuple[Any, ...]) -> tuple[bytes, ...]:
    """A pair as ``Stream.add_relays`` takes it, as the fields of a recording's relay block
    (tracer/sinks/record.py, kind 2; read back by crates/hoptrace-core/src/relay.rs
    ``parse_block``): both legs, ``by``, the two texts, the two legs' JSON fields."""
    (fi, pi, si, spi, di, dpi), (fo, po, so, spo, do, dpo), by, texts, fields = pair
    return (_LEG.pack(fi, pi, spi, dpi, si, di), _LEG.pack(fo, po, spo, dpo, so, do), by, texts[0], texts[1],
            fields[0], fields[1])


_MISS = struct.Struct("<IIQBBBBHHQ16s16s")  # tracer/annotate/local.py MISS_FIELDS


def _miss_key(record: bytes) -> tuple[int, int, Key] | None:
    """(netns, ts_ns, the key as the packet arrived) of one miss record."""
    if len(record) != _MISS.size:
        return None
    _slot, _epoch, netns, family, proto, _flags, _icmp, sport, dport, ts_ns, src, dst = _MISS.unpack(record)
    if family not in (4, 6):
        return None
    return netns, ts_ns, (family, proto, addr_text(family, src), sport, addr_text(family, dst), dport)


def _core_leg(key: Key) -> tuple[int, int, bytes, int, bytes, int] | None:
    family, proto, src, sport, dst, dport = key
    try:
        return (family, proto, addr_bytes(src)[1], sport, addr_bytes(dst)[1], dport)
    except OSError:
        return None


def _pid_of(fields: bytes) -> int | None:
    """The pid in a ``"local"`` answer's JSON fields (``"pid": 12, "comm": ...``)."""
    try:
        got = json.loads(b"{" + fields + b"}")
    except ValueError:
        return None
    pid = got.get("pid") if isinstance(got, dict) else None
    return pid if isinstance(pid, int) else None


def address_names(namespaces: Iterable[Any]) -> dict[str, str]:
    """IP address -> node name (a container's), from a topology's namespaces (those named);
    loopback and link-local addresses, which every namespace has, name none."""
    out: dict[str, str] = {}
    for ns in namespaces:
        if ns.name.startswith("netns:"):
            continue
        for iface in ns.interfaces:
            for ip in iface.ips:
                try:
                    a = ipaddress.ip_address(ip.split("%")[0])
                except ValueError:
                    continue
                if not (a.is_loopback or a.is_link_local):
                    out.setdefault(ip, ns.name)
    return out


__all__ = ["PROXY_FLAGS", "DockerProxy", "Key", "OwnerLookup", "Pair", "ProxyArgs", "ProxyTable", "Relay",
           "RelayLinker", "RelayLookup", "RelayWorker", "address_names", "docker_proxy", "far_node", "link_relays", "owner_proxy", "proxy_args",
           "relay_block_fields", "relay_phrase", "relay_text", "scan_proxies"]
