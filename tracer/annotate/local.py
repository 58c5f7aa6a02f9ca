"""Who took a packet that ended in a namespace's own stack (CONTRACT.md's ``"local"``).

A path whose verdict is ``delivered`` and whose last hop is an rx (the packet was for an
address of that namespace) was taken by a socket there, or answered by the kernel. This
module finds which: the socket by its 5-tuple with sock_diag (exact ``SOCK_DIAG_BY_FAMILY``
lookups, the kernel's own socket lookup, batched on a netlink socket opened inside that
namespace: ``diag_batch`` says why not pyroute2's ``DiagSocket``), its inode's owner through ``/proc/*/fd``, the owner's
name, pid and container.

How to use it
-------------
``LocalLookup`` is the small API (engineer "proxy" builds docker-proxy recognition and
relay linking on it)::

    from tracer.annotate.local import LocalLookup

    lookup = LocalLookup()                      # or LocalLookup(proc="/fake/proc") in tests
    got = lookup.owner(netns=4026532466, proto="tcp",
                       src=("172.17.0.3", 35216), dst=("172.17.0.2", 80), tcp_flags=0x02)
    got.pid, got.comm, got.cmdline, got.state   # 4242, "docker-proxy", ("/usr/bin/docker-proxy", ...), "ESTABLISHED"
    got.fields()                                # the "local" object's fields after "node"
    got.phrase()                                # "delivered to docker-proxy (pid 4242)"

``src``/``dst`` are the packet's as it arrived in ``netns`` (its last hop): the socket's
remote and local ends. ``owner`` never raises for what the system does: a namespace that is
gone, a process that exited, ``/proc`` entries that cannot be read, a socket whose owner is
not visible (another PID namespace) give a ``Local`` with what could be found (``note`` says
what was missing). ``lookup.process(pid)`` reads one process (comm, cmdline, container).

In the engine
-------------
The core keeps the answers in a table (crates/hoptrace-core/src/local.rs) and renders them
on path and flow lines; it reports each key it has not seen (a *miss*) once, as records of
``MISS_DTYPE``. ``LocalWorker`` (tracer/engine.py ``LocalAnswers``) takes a step's misses,
answers them on its own thread (never on the hot path) and hands the answers back; the
engine gives them to the core before the next step. A path written before its answer came
has no ``"local"``; its flow line, written when the flow closes, carries it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.safe_text import source_text, term_safe

#: One miss as the core writes it (crates/hoptrace-core/src/local.rs ``push_miss``).
MISS_FIELDS = (
    ("slot", "<u4"), ("epoch", "<u4"), ("netns", "<u8"), ("family", "u1"), ("proto", "u1"),
    ("tcp_flags", "u1"), ("icmp_type", "u1"), ("sport", "<u2"), ("dport", "<u2"), ("ts_ns", "<u8"),
    ("src", "V16"), ("dst", "V16"),
)
MISS_SIZE = 64

TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}
UDP_STATES = {1: "ESTABLISHED", 7: "UNCONN"}
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10

#: What the kernel did, as the text says it.
KERNEL_TEXT = {
    "tcp rst": "RST sent: nothing listens",
    "icmp port unreachable": "port unreachable: nothing listens",
}


def local_phrase(d: Mapping[str, Any]) -> str:
    """What a ``"local"`` object says, for people, before `` on NODE`` (``term_safe``)."""
    kernel = d.get("kernel")
    if kernel is not None:
        return term_safe(f"answered by the kernel ({KERNEL_TEXT.get(kernel, kernel)})")
    comm, pid = d.get("comm"), d.get("pid")
    if comm is not None and pid is not None:
        return term_safe(f"delivered to {comm} (pid {pid})")
    if pid is not None:
        return f"delivered to pid {pid}"
    what = ", ".join(str(v) for v in (d.get("proto"), d.get("state")) if v)
    return term_safe("delivered to a socket" + (f" ({what})" if what else "") + ", owner unknown")


def local_text(d: Mapping[str, Any]) -> str:
    """The whole text line: ``delivered to nginx (pid 12) on web``."""
    return f"{local_phrase(d)} on {term_safe(str(d.get('node')))}"


@dataclass(frozen=True, slots=True)
class Local:
    """Who took a packet: a socket (``proto``, ``state``, its owner when found) or the kernel."""

    proto: str | None = None
    state: str | None = None
    pid: int | None = None
    comm: str | None = None
    container: str | None = None
    #: The owner's command line (docker-proxy is recognised by it); not in the NDJSON.
    cmdline: tuple[str, ...] = ()
    #: The owner's pid as its own PID namespace numbers it, when that differs (a container).
    ns_pid: int | None = None
    inode: int | None = None
    #: What the kernel did when no socket took it: "icmp echo", "tcp rst", ...
    kernel: str | None = None
    #: What could not be found, and why (not in the NDJSON): "namespace gone", ...
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The ``"local"`` object without its ``"node"``."""
        if self.kernel is not None:
            return {"kernel": self.kernel}
        return {"pid": self.pid, "comm": self.comm, "container": self.container, "proto": self.proto,
                "state": self.state}

    def fields(self) -> str:
        """``as_json()``'s fields as json.dumps writes them, without the braces."""
        return json.dumps(self.as_json())[1:-1]

    def phrase(self) -> str:
        return local_phrase(self.as_json())


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    comm: str | None
    cmdline: tuple[str, ...]
    netns: int | None
    ns_pid: int | None


class ProcTable:
    """Socket inodes -> owning pid, and what a process is, read from ``proc`` (a fake tree in tests).

    Every read tolerates a process that exits meanwhile and entries it cannot read. A full
    scan of ``proc/*/fd`` happens at most every ``min_scan_s``; pids that owned sockets
    before (``hint``) are looked at first, so a server's new connections cost one ``fd``
    listing."""

    def __init__(self, proc: str = "/proc", min_scan_s: float = 0.2) -> None:
        self.proc = proc
        self.min_scan_s = min_scan_s
        self._owners: dict[int, int] = {}  # inode -> pid, from the last scans
        self._last_scan = -1e9

    def _fd_inodes(self, pid: int) -> Iterable[int]:
        base = f"{self.proc}/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            return
        for name in names:
            try:
                target = os.readlink(f"{base}/{name}")
            except OSError:
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                try:
                    yield int(target[8:-1])
                except ValueError:
                    continue

    def _pids(self) -> list[int]:
        try:
            return [int(n) for n in os.listdir(self.proc) if n.isdigit()]
        except OSError:
            return []

    def owners(self, inodes: Iterable[int], hints: Iterable[int] = ()) -> dict[int, int]:
        """inode -> pid for those of ``inodes`` an owner was found for."""
        want = {i for i in inodes if i}
        got: dict[int, int] = {}
        for pid in dict.fromkeys(hints):
            if not want - got.keys():
                break
            for ino in self._fd_inodes(pid):
                self._owners[ino] = pid
                if ino in want:
                    got[ino] = pid
        for ino in want - got.keys():
            was = self._owners.get(ino)
            if was is not None and ino in set(self._fd_inodes(was)):
                got[ino] = was
        if want - got.keys():
            wait = self._last_scan + self.min_scan_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the worker's thread: waiting batches more misses per scan
            self._last_scan = time.monotonic()
            owners: dict[int, int] = {}
            for pid in self._pids():
                for ino in self._fd_inodes(pid):
                    owners[ino] = pid
            self._owners = owners
            for ino in want - got.keys():
                if ino in owners:
                    got[ino] = owners[ino]
        return got

    def process(self, pid: int) -> Process | None:
        """What ``pid`` is; None when it is gone (or its ``comm`` cannot be read)."""
        base = f"{self.proc}/{pid}"
        try:
            with open(f"{base}/comm", "rb") as f:
                comm = source_text(f.read(256).rstrip(b"\n").decode("utf-8", "surrogateescape"))
        except OSError:
            return None
        cmdline: tuple[str, ...] = ()
        try:
            with open(f"{base}/cmdline", "rb") as f:
                raw = f.read(65536)
            cmdline = tuple(source_text(a.decode("utf-8", "surrogateescape")) for a in raw.split(b"\0") if a)
        except OSError:
            pass
        netns = None
        with contextlib.suppress(OSError):
            netns = os.stat(f"{base}/ns/net").st_ino
        ns_pid = None
        try:
            with open(f"{base}/status", "rb") as f:
                for line in f.read(8192).splitlines():
                    if line.startswith(b"NSpid:"):
                        parts = line.split()[1:]
                        if len(parts) > 1:
                            ns_pid = int(parts[-1])
                        break
        except (OSError, ValueError):
            pass
        return Process(pid=pid, comm=comm, cmdline=cmdline, netns=netns, ns_pid=ns_pid)


class NetnsPaths:
    """Network namespace inode -> a path that enters it (``/run/netns/NAME``, ``/proc/PID/ns/net``).

    Only paths are kept, never an open fd or socket: holding one would keep a namespace alive
    after its owner removed it."""

    def __init__(self, proc: str = "/proc", run_netns: str = "/run/netns") -> None:
        self.proc = proc
        self.run_netns = run_netns
        self._paths: dict[int, str] = {}

    def _valid(self, path: str, inode: int) -> bool:
        try:
            return os.stat(path).st_ino == inode
        except OSError:
            return False

    def path(self, inode: int) -> str | None:
        p = self._paths.get(inode)
        if p is not None and self._valid(p, inode):
            return p
        self._paths.pop(inode, None)
        found: dict[int, str] = {}
        try:
            for name in os.listdir(self.run_netns):
                p = f"{self.run_netns}/{name}"
                try:
                    found.setdefault(os.stat(p).st_ino, p)
                except OSError:
                    continue
        except OSError:
            pass
        if inode not in found:
            try:
                pids = [n for n in os.listdir(self.proc) if n.isdigit()]
            except OSError:
                pids = []
            for pid in pids:
                p = f"{self.proc}/{pid}/ns/net"
                try:
                    found.setdefault(os.stat(p).st_ino, p)
                except OSError:
                    continue
        self._paths.update(found)
        return found.get(inode)


def own_netns(proc: str = "/proc") -> int | None:
    try:
        return os.stat(f"{proc}/thread-self/ns/net").st_ino
    except OSError:
        try:
            return os.stat(f"{proc}/self/ns/net").st_ino
        except OSError:
            return None


# --------------------------------------------------------------------------
# sock_diag and /proc/net inside one namespace (runs in a thread that entered it)
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Query:
    """One socket to find: the packet as it arrived (its dst is the socket's local end)."""

    family: int  # 4 or 6
    proto: int
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(slots=True)
class Found:
    state: int
    inode: int
    uid: int


def _addr_words(family: int, addr: str) -> tuple[int, int, int, int]:
    raw = ipaddress.ip_address(addr).packed
    if family == 4:
        return (int.from_bytes(raw, "big"), 0, 0, 0)
    return tuple(int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))  # type: ignore[return-value]


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLM_F_REQUEST = 2, 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
SS_ALL = (1 << 12) - 1
#: Requests sent at once: their answers (each a socket buffer of its own, ~1 KiB of receive
#: buffer however small) must fit the socket's receive buffer (``RCVBUF``).
DIAG_BATCH = 128
RCVBUF = 1 << 20
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # errors without a copy of the request
_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")  # inet_diag_req_v2 before its inet_diag_sockid
_SOCKID = struct.Struct(">HH16s16sI")  # sport, dport, src, dst (network order), if (host order: see below)
_MSG = struct.Struct("=BBBB48sIIIII")  # inet_diag_msg: family, state, timer, retrans, id, ..., uid, inode


def _addr16(family: int, addr: str) -> bytes:
    if family == 6:
        return socket.inet_pton(socket.AF_INET6, addr)
    return socket.inet_pton(socket.AF_INET, addr) + bytes(12)


def _diag_request(seq: int, q: Query, remote: tuple[str, int] | None) -> bytes:
    """One exact SOCK_DIAG_BY_FAMILY lookup: the kernel's own socket lookup for the packet
    (established, time-wait, else the listener or bound socket); ``remote`` None: the listener."""
    fam = socket.AF_INET if q.family == 4 else socket.AF_INET6
    rport, raddr = (0, bytes(16)) if remote is None else (remote[1], _addr16(q.family, remote[0]))
    body = (_REQ.pack(fam, q.proto, 0, SS_ALL)
            + struct.pack(">HH", q.dport, rport) + _addr16(q.family, q.dst) + raddr
            + struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    return _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


def diag_batch(sock: socket.socket, asks: list[tuple[Query, tuple[str, int] | None]]) -> list[Found | None]:
    """Exact sock_diag lookups, ``DIAG_BATCH`` per send: one request each (its seq its
    index), the answers (a socket, or an error: none) read until every one is in.

    Why not one pyroute2 ``DiagSocket.nlm_request`` per key: its marshalling costs 136 us a lookup, 366 us when there
    is no socket, on an idle machine (~5 ms under a load of 12), and a flood of short flows
    asks thousands; sent in batches and read with ``struct``, a lookup costs a few us."""
    out: list[Found | None] = [None] * len(asks)
    for at in range(0, len(asks), DIAG_BATCH):
        part = asks[at:at + DIAG_BATCH]
        sock.send(b"".join(_diag_request(at + k, q, r) for k, (q, r) in enumerate(part)))
        left = len(part)
        while left:
            data = sock.recv(1 << 20)
            if not data:
                return out
            off = 0
            while off + _NLMSG.size <= len(data) and left:
                length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    return out
                body = off + _NLMSG.size
                if at <= seq < at + len(part):
                    left -= 1
                    if mtype == SOCK_DIAG_BY_FAMILY and body + _MSG.size <= len(data):
                        _fam, state, _t, _r, _id, _exp, _rq, _wq, uid, inode = _MSG.unpack_from(data, body)
                        out[seq] = Found(state=state, inode=inode, uid=uid)
                off += (length + 3) & ~3
    return out


def _raw_icmp_inodes(proc: str, family: int, echo_id: int) -> list[int]:
    """Sockets that receive ICMP echo replies in the calling thread's namespace: raw ICMP
    sockets (busybox ping), and ping sockets with the echo id as their port."""
    out: list[int] = []
    names = ("raw", "icmp") if family == 4 else ("raw6", "icmp6")
    proto = 1 if family == 4 else 58
    for name in names:
        try:
            with open(f"{proc}/thread-self/net/{name}", "rb") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10:
                continue
            try:
                port = int(cols[1].rsplit(b":", 1)[1], 16)
                inode = int(cols[9])
            except (IndexError, ValueError):
                continue
            if (name.startswith("raw") and port == proto) or (name.startswith("icmp") and port == echo_id):
                out.append(inode)
    return out


def diag_in_netns(queries: list[Query], proc: str = "/proc") -> list[tuple[Found | None, Found | None, list[int]]]:
    """Per query (run inside the namespace): the socket found, the listener (when the socket
    has no owner: a time-wait, a connection not accepted yet), and for an ICMP echo reply the
    raw/ping sockets' inodes."""
    raws = {k: _raw_icmp_inodes(proc, q.family, q.sport) for k, q in enumerate(queries) if q.proto in (1, 58)}
    socks = [k for k, q in enumerate(queries) if q.proto not in (1, 58)]
    found: list[Found | None] = []
    listeners: dict[int, Found | None] = {}
    if socks:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(5.0)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root), else the default
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            found = diag_batch(sock, [(queries[k], (queries[k].src, queries[k].sport)) for k in socks])
            orphans = [k for k, f in zip(socks, found, strict=True) if f is not None and not f.inode]
            if orphans:
                got = diag_batch(sock, [(queries[k], None) for k in orphans])
                listeners = dict(zip(orphans, got, strict=True))
    by_k = dict(zip(socks, found, strict=True))
    return [(by_k.get(k), listeners.get(k), raws.get(k, [])) for k in range(len(queries))]


def _in_netns(path: str | None, func: Callable[[], Any]) -> Any:
    """``func()`` inside the namespace at ``path`` (None: this thread's own)."""
    if path is None:
        return func()
    from tracer.netns import run_in_netns

    return run_in_netns(path, func, timeout=10.0)


# --------------------------------------------------------------------------
# The lookup
# --------------------------------------------------------------------------

#: One answer for the core: (slot, epoch, json fields, text, the miss record).
Answer = tuple[int, int, bytes, bytes, bytes]

class LocalLookup:
    """Who took a packet in a namespace (see the module documentation).

    ``containers()``: netns inode -> Docker container name (the topology's), consulted for the
    owner's namespace; ``names()``: netns inode -> node name (a lab's nodes, /run/netns), for
    owners in a namespace that is not a Docker container (the netns lab engine)."""

    def __init__(self, proc: str = "/proc", run_netns: str = "/run/netns",
                 containers: Callable[[], Mapping[int, str]] | None = None,
                 names: Callable[[], Mapping[int, str]] | None = None) -> None:
        self.proc = proc
        self.procs = ProcTable(proc)
        self.netns_paths = NetnsPaths(proc, run_netns)
        self.containers = containers or (lambda: {})
        self.names = names or (lambda: {})
        self._own = own_netns(proc)
        # pids that owned sockets in a namespace before, most recent last (hints for ProcTable)
        self._pids_in: dict[int, list[int]] = {}

    def owner(self, netns: int, proto: str | int, src: tuple[str, int], dst: tuple[str, int],
              *, tcp_flags: int = 0, icmp_type: int | None = None) -> Local:
        """Who took a packet ``src`` -> ``dst`` (ports: the echo id for ICMP echo) in ``netns``."""
        p = PROTO_NUMBERS.get(proto, 0) if isinstance(proto, str) else int(proto)
        family = 6 if ":" in dst[0] else 4
        q = Query(family, p, src[0], src[1], dst[0], dst[1])
        return self.lookup_many(netns, [(q, tcp_flags, icmp_type)])[0]

    def process(self, pid: int) -> Local | None:
        """What process ``pid`` is, as a ``Local`` without a socket (None: gone)."""
        proc = self.procs.process(pid)
        return None if proc is None else self._with_owner(Local(), proc)

    def _container(self, netns: int | None) -> str | None:
        if netns is None:
            return None
        name = self.containers().get(netns)
        if name:
            return name
        if netns == self._own:
            return None
        name = self.names().get(netns)
        return name if name and name not in ("host", "root") else None

    def _with_owner(self, base: Local, proc: Process) -> Local:
        return Local(proto=base.proto, state=base.state, pid=proc.pid, comm=proc.comm,
                     container=self._container(proc.netns), cmdline=proc.cmdline, ns_pid=proc.ns_pid,
                     inode=base.inode)

    def lookup_many(self, netns: int, queries: list[tuple[Query, int, int | None]]) -> list[Local]:
        """One namespace's queries (each with the packet's TCP flags and ICMP type) at once:
        one entry into the namespace, one ``/proc`` scan at most."""
        answers: list[Local | None] = [None] * len(queries)
        socket_qs: list[tuple[int, Query]] = []
        for k, (q, _flags, icmp_type) in enumerate(queries):
            if q.proto in (1, 58):
                if icmp_type in (8, 128):
                    answers[k] = Local(kernel="icmp echo")
                    continue
                if icmp_type not in (0, 129):
                    answers[k] = Local(kernel="icmp")
                    continue
            elif q.proto not in (6, 17):
                answers[k] = Local(proto=PROTO_NAMES.get(q.proto, str(q.proto)), note="not a socket protocol")
                continue
            socket_qs.append((k, q))
        if not socket_qs:
            return [a or Local() for a in answers]
        path = None if netns == self._own else self.netns_paths.path(netns)
        if path is None and netns != self._own:
            for k, q in socket_qs:
                answers[k] = Local(proto=PROTO_NAMES.get(q.proto), note="namespace gone")
            return [a or Local() for a in answers]
        try:
            found = _in_netns(path, lambda: diag_in_netns([q for _, q in socket_qs], self.proc))
        except Exception as exc:  # a namespace that vanished mid-way, setns refused, ...
            for k, q in socket_qs:
                answers[k] = Local(proto=PROTO_NAMES.get(q.proto), note=f"cannot look inside: {exc}")
            return [a or Local() for a in answers]
        inodes: list[int] = []
        for sock, listener, raw in found:
            if sock is not None:
                inodes.append(sock.inode)
            if listener is not None:
                inodes.append(listener.inode)
            inodes.extend(raw)
        owners = self.procs.owners(inodes, reversed(self._pids_in.get(netns, [])))
        for (k, q), (sock, listener, raw) in zip(socket_qs, found, strict=True):
            flags = queries[k][1]
            answers[k] = self._answer(netns, q, flags, sock, listener, raw, owners)
        return [a or Local() for a in answers]

    def _answer(self, netns: int, q: Query, flags: int, sock: Found | None, listener: Found | None,
                raw: list[int], owners: Mapping[int, int]) -> Local:
        name = PROTO_NAMES.get(q.proto)
        if q.proto in (1, 58):
            for ino in raw:
                pid = owners.get(ino)
                proc = None if pid is None else self.procs.process(pid)
                if proc is not None:
                    self._hint(netns, proc.pid)
                    return self._with_owner(Local(proto=name, state=None, inode=ino), proc)
            return Local(proto=name, note="no raw or ping socket" if not raw else "owner not visible")
        if sock is None:
            if q.proto == 6:
                if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN:
                    return Local(kernel="tcp rst")  # a SYN that no socket takes gets the kernel's RST
                # Any other segment: its connection may have ended since; nothing to tell.
                return Local(proto=name, note="no socket: the connection is gone")
            return Local(kernel="icmp port unreachable")
        states = TCP_STATES if q.proto == 6 else UDP_STATES
        state = states.get(sock.state, str(sock.state))
        owner_ino = sock.inode or (listener.inode if listener is not None else 0)
        base = Local(proto=name, state=state, inode=sock.inode or None)
        pid = owners.get(owner_ino)
        if pid is None:
            why = "no owner (time-wait)" if not owner_ino else "owner not visible: another PID namespace?"
            return Local(proto=name, state=state, inode=base.inode, note=why)
        proc = self.procs.process(pid)
        if proc is None:
            return Local(proto=name, state=state, inode=base.inode, note="the owner exited")
        self._hint(netns, pid)
        return self._with_owner(base, proc)

    def _hint(self, netns: int, pid: int) -> None:
        pids = self._pids_in.setdefault(netns, [])
        if pid in pids:
            pids.remove(pid)
        pids.append(pid)
        del pids[:-8]

    def answer_misses(self, misses: bytes) -> list[Answer]:
        """The core's miss records answered: ``(slot, epoch, json fields, text, record)`` each
        (``record``: the miss's own bytes, the key a recording keeps)."""
        import numpy as np

        rows = np.frombuffer(misses, dtype=np.dtype(list(MISS_FIELDS)))
        by_ns: dict[int, list[tuple[int, int, Query, int, int | None, bytes]]] = {}
        for k, r in enumerate(rows):
            fam = int(r["family"])
            width = 4 if fam == 4 else 16
            try:
                src = str(ipaddress.ip_address(bytes(r["src"])[:width]))
                dst = str(ipaddress.ip_address(bytes(r["dst"])[:width]))
            except ValueError:
                continue
            q = Query(fam, int(r["proto"]), src, int(r["sport"]), dst, int(r["dport"]))
            by_ns.setdefault(int(r["netns"]), []).append(
                (int(r["slot"]), int(r["epoch"]), q, int(r["tcp_flags"]), int(r["icmp_type"]),
                 misses[k * MISS_SIZE:(k + 1) * MISS_SIZE]))
        out: list[Answer] = []
        for netns, items in by_ns.items():
            got = self.lookup_many(netns, [(q, fl, it) for _, _, q, fl, it, _ in items])
            for (slot, epoch, *_, record), loc in zip(items, got, strict=True):
                if loc.kernel is None and loc.proto is None:
                    continue  # nothing to say
                out.append((slot, epoch, loc.fields().encode(), loc.phrase().encode(), record))
        return out


# --------------------------------------------------------------------------
# The worker (tracer/engine.py LocalAnswers)
# --------------------------------------------------------------------------

#: Misses a worker answers per round.
ROUND = 1024
#: Lookups a worker makes per second at most (~100 us each under load: ~10% of a core). A
#: flood of short flows asks more: the excess is left unanswered (``skipped``), its flows
#: without ``"local"``, so that the lookups never take the traced traffic's CPU.
MAX_LOOKUPS_PER_S = 1000


@dataclass
class LocalWorker:
    """Answers the core's misses on a thread of its own: ``submit`` queues a step's misses,
    ``take`` hands back what was answered since, ``settle`` waits (bounded) for what is
    pending. A lookup that fails is counted (``errors``) and its keys stay unanswered; the
    thread never dies of it."""

    lookup: LocalLookup = field(default_factory=LocalLookup)
    max_per_s: float = MAX_LOOKUPS_PER_S
    errors: int = 0
    last_error: str | None = None
    #: Misses left unanswered over the lookup budget.
    skipped: int = 0

    def __post_init__(self) -> None:
        self._cv = threading.Condition()
        self._queue: list[bytes] = []
        self._answers: list[Answer] = []
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._tokens = float(self.max_per_s)
        self._refilled = time.monotonic()

    def submit(self, misses: bytes) -> None:
        if not misses:
            return
        with self._cv:
            if self._closed:
                return
            self._queue.append(misses)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="hoptrace-local", daemon=True)
                self._thread.start()
            self._cv.notify()

    def take(self) -> list[Answer]:
        with self._cv:
            got, self._answers = self._answers, []
        return got

    def settle(self, timeout_s: float) -> None:
        """Wait until nothing is queued or being looked up, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while (self._queue or self._busy) and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cv.wait(left)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                # A round answers at most ROUND misses: under a flood, answers come back as
                # they are found, not all at the end of a long batch.
                queued = b"".join(self._queue)
                self._queue.clear()
                now = time.monotonic()
                self._tokens = min(float(self.max_per_s), self._tokens + (now - self._refilled) * self.max_per_s)
                self._refilled = now
                take = min(ROUND, int(self._tokens), len(queued) // MISS_SIZE)
                self._tokens -= take
                batch, rest = queued[:take * MISS_SIZE], queued[take * MISS_SIZE:]
                if rest and self._tokens < 1:
                    # Over budget: what waits longer than a second's worth is not looked up.
                    keep = int(self.max_per_s) * MISS_SIZE
                    self.skipped += max(0, len(rest) - keep) // MISS_SIZE
                    rest = rest[:keep]
                if rest:
                    self._queue.append(rest)
                self._busy = bool(batch)
                if not batch:
                    self._cv.wait(0.05)  # tokens come back
                    continue
            got: list[Answer] = []
            try:
                got = self.lookup.answer_misses(batch)
            except Exception as exc:  # a lookup must never end tracing
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            with self._cv:
                self._answers.extend(got)
                self._busy = False
                self._cv.notify_all()


__all__ = ["KERNEL_TEXT", "MISS_FIELDS", "MISS_SIZE", "Answer", "Local", "LocalLookup", "LocalWorker", "NetnsPaths",
           "ProcTable", "Process", "Query", "local_phrase", "local_text"]
