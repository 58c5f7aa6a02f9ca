"""Live capture without eBPF: AF_PACKET taps read through TPACKET_V3 memory-mapped rings.

One socket per (namespace, interface), opened by a short-lived thread that entered
the interface's namespace (``setns`` is per thread); the socket stays bound to that
namespace's device after the thread ends. Python opens it, attaches the filter, sets
TPACKET_V3 and the ring, and hands the fd to the core's reader (``_core.TapReader``,
crates/hoptrace-py/src/tpacket.rs), which maps the ring. ``batches()`` (the consumer,
~20 times a second) has the core copy the frames of every block the kernel retired
(giving the blocks back at once) and take the sightings of all taps in time order
after a short hold-back, decoded into rows: nothing per frame in Python, the GIL
released. A Rust thread of the reader's (from ``start()`` on, so nothing is lost while
the engine starts) drains the rings whenever the consumer has not for ``drain_ms``.
A Python thread follows the machine (new and gone interfaces), another applies the
changes to the reader and reads the sockets' drop counters once a second.

Known differences from a pcap file: TPACKET_V3 hands a VLAN tag that the device
stripped (offload) as metadata, not in the frame, so such frames read untagged; and a
socket cannot see drops, so a dropped packet's path just ends where it was last seen.

What a tap sees matches the eBPF probes' hops: a packet socket's tx hook
(``dev_queue_xmit_nit``) runs after POSTROUTING like ``net_dev_start_xmit``, its rx
hook in ``__netif_receive_skb`` before PREROUTING like ``netif_receive_skb``. The
sockets never ask for promiscuous mode: a promiscuous bridge device would pass
every bridged frame up to itself, adding docker0 hops the kernel probes never see.

The interface set follows the machine: the default set (Docker bridges, their
ports, container interfaces, the Docker host's uplink) is re-read when namespaces
come or go, so a new container's interfaces get taps within ~1 s and a stopped
container's taps close with a notice on stderr.
"""

from __future__ import annotations

import ctypes
import queue
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracer.errors import HoptraceError, PrivilegeError, UsageError
from tracer.libpcap import compile_insns
from tracer.model import HopLabel, ObsBatch
from tracer.netns import run_in_netns
from tracer.pcap_expr import protocol_only
from tracer.protocols import Attachments
from tracer.safe_text import term_safe
from tracer.sources.names import own_netns

if TYPE_CHECKING:

    from tracer.topology import Topology

# linux/if_packet.h, linux/if_ether.h, asm-generic/socket.h
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06
# linux/rtnetlink.h: the multicast group of link changes (interfaces added, removed, moved)
RTMGRP_LINK = 1

# ARPHRD_* -> pcap LINKTYPE_* of the bytes a SOCK_RAW packet socket gives.
_LINKTYPES = {1: 1, 772: 1, 0xFFFE: 101, 519: 101, 512: 101, 776: 101, 778: 101}

# --------------------------------------------------------------------------
# Kernel socket filters (classic BPF compiled by libpcap)
# --------------------------------------------------------------------------


def snaplen_bpf(snaplen: int) -> bytes:
    """Accept everything, cut to ``snaplen``: without it a GSO super-packet (~64 KB) is
    copied into the ring whole although only its headers are kept."""
    return struct.pack("<HBBI", BPF_RET_K, 0, 0, snaplen)


def _attach_filter(sock: socket.socket, insns: bytes) -> None:
    buf = ctypes.create_string_buffer(insns, len(insns))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native padding)
    fprog = struct.pack("HP", len(insns) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# --------------------------------------------------------------------------
# One tap
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TapSpec:
    """An interface to tap: which namespace (inode and a path to enter it) and its name there."""

    netns: int
    netns_path: str
    ifname: str
    node: str
    role: str = ""  # "bridge", "port" (of a bridge) or "": orders sightings with equal timestamps

    @property
    def key(self) -> tuple[int, str]:
        return (self.netns, self.ifname)

    @property
    def label(self) -> str:
        return f"{self.node}/{self.ifname}"


class TapGone(HoptraceError):
    """The interface (or its namespace) went away before or while its tap was opened."""


class Tap:
    """An AF_PACKET socket bound to one interface in its namespace, with its TPACKET_V3 ring
    (mapped and read by the core's reader once handed over: ``ring_id``)."""

    def __init__(self, spec: TapSpec, hop: int, sock: socket.socket, ifindex: int,
                 linktype: int, block_size: int, block_nr: int) -> None:
        self.spec = spec
        self.hop = hop
        self.sock = sock
        self.fd = sock.fileno()
        self.ifindex = ifindex
        self.linktype = linktype
        self.block_size = block_size
        self.block_nr = block_nr
        self.drops = 0
        self.freezes = 0
        self.errored = False
        # A packet socket stamps a frame with the skb's own timestamp when it has one, so one
        # skb received on a bridge port and then on the bridge shows the same time at both
        # (measured: to the ns). Within such a tie the kernel's order is fixed: a port
        # receives before its bridge; a bridge transmits before its port.
        self.rank_rx = {"port": 0, "": 1, "bridge": 2}[spec.role]
        self.rank_tx = {"bridge": 0, "": 1, "port": 2}[spec.role]
        self.ring_id: int | None = None  # its id in the core's reader, once handed over

    @classmethod
    def open(cls, spec: TapSpec, hop: int, *, insns_for: Callable[[int], bytes],
             block_size: int, block_nr: int, retire_ms: int) -> Tap:
        def opener() -> tuple[socket.socket, int, int]:
            # Protocol 0 until bind: no frames of other interfaces are queued meanwhile.
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                ifindex = socket.if_nametoindex(spec.ifname)  # resolved in this thread's netns
                s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
                frame_size = 2048
                req = struct.pack("<7I", block_size, block_nr, frame_size,
                                  block_size * block_nr // frame_size, retire_ms, 0, 0)
                s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
                s.bind((spec.ifname, ETH_P_ALL))
                hatype = s.getsockname()[3]
                linktype = _LINKTYPES.get(hatype, 1)
                _attach_filter(s, insns_for(linktype))
            except BaseException:
                s.close()
                raise
            return s, ifindex, linktype

        try:
            path = "" if spec.netns == own_netns() else spec.netns_path
            sock, ifindex, linktype = run_in_netns(path, opener, timeout=10) if path else opener()
        except PermissionError as exc:
            raise PrivilegeError(f"cannot open a packet socket on {spec.label}: {exc.strerror}",
                                 "run hoptrace as root (CAP_NET_RAW)") from exc
        except OSError as exc:
            raise TapGone(f"cannot tap {spec.label}: {exc.strerror or exc}") from exc
        try:
            return cls(spec, hop, sock, ifindex, linktype, block_size, block_nr)
        except BaseException:
            sock.close()
            raise

    def read_stats(self) -> int:
        """Fold the kernel's counters (reset on read) into ours; returns new drops."""
        try:
            _packets, drops, freezes = struct.unpack(
                "<III", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        except OSError:
            return 0
        self.drops += drops
        self.freezes += freezes
        return drops

    def clear_error(self) -> int:
        """Read (and so reset) the socket's pending error: ENETDOWN when the device went down or away."""
        self.errored = True
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def close(self) -> int:
        """Release everything; returns the drops counted since the last ``read_stats``."""
        drops = self.read_stats()
        self.sock.close()
        return drops


# --------------------------------------------------------------------------
# Link changes
# --------------------------------------------------------------------------


def _link_socket() -> socket.socket:
    """A non-blocking rtnetlink socket, in the calling thread's namespace, that receives
    its link changes (RTMGRP_LINK)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
    try:
        s.bind((0, RTMGRP_LINK))
    except BaseException:
        s.close()
        raise
    return s


class LinkWatch:
    """One rtnetlink socket per namespace, subscribed to its link changes: an interface
    that appears in (or leaves) a namespace already known shows here, where otherwise only
    a full discovery (~50 ms of CPU with a few labs up) would find it.

    A socket keeps its namespace alive, so ``follow`` closes those of namespaces that are
    no longer listed (e.g. after ``ip netns del``) at once."""

    def __init__(self) -> None:
        self.socks: dict[int, socket.socket] = {}

    def follow(self, namespaces: dict[int, str]) -> None:
        """Watch exactly ``namespaces`` (inode -> a path to enter it)."""
        for ino in set(self.socks) - set(namespaces):
            self.socks.pop(ino).close()
        own = own_netns()
        for ino, path in namespaces.items():
            if ino in self.socks:
                continue
            try:
                self.socks[ino] = _link_socket() if ino == own else run_in_netns(path, _link_socket, timeout=10)
            except (OSError, HoptraceError):
                continue  # gone meanwhile (or not enterable): the namespace check covers it

    def changed(self) -> bool:
        """True when a link changed in a watched namespace since the last call (the
        notifications are read and dropped)."""
        hit = False
        for s in self.socks.values():
            while True:
                try:
                    if not s.recv(65536):
                        break
                except BlockingIOError:
                    break
                except OSError:  # ENOBUFS: notifications overflowed, so something changed
                    pass
                hit = True
        return hit

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks.clear()


# --------------------------------------------------------------------------
# Which interfaces
# --------------------------------------------------------------------------


def _discover() -> Topology:
    from tracer.topology import Topology

    return Topology.discover(nat=False)


def _all_ifaces(topo: Topology) -> list[TapSpec]:
    return [TapSpec(ns.inode, ns.path, i.name, ns.name, _role(i))
            for ns in topo.namespaces if ns.error is None for i in ns.interfaces]


def _role(iface: Any) -> str:
    return "bridge" if iface.kind == "bridge" else "port" if iface.master is not None else ""


def default_specs(topo: Topology) -> list[TapSpec]:
    """TOPOLOGY's default set: Docker bridges and their ports, container interfaces, the uplink."""
    from tracer.topology import default_ifaces

    by_path = {ns.path: ns for ns in topo.namespaces}
    out = []
    for path, ifname in default_ifaces(topo):
        ns = by_path.get(path)
        iface = ns.iface(ifname) if ns is not None else None
        if ns is not None and iface is not None:
            out.append(TapSpec(ns.inode, ns.path, ifname, ns.name, _role(iface)))
    return out


def resolve_ifaces(names: Sequence[str], topo: Topology, *, strict: bool = True) -> list[TapSpec]:
    """``--iface`` values (``NODE/IFACE`` or ``IFACE``) -> taps.

    A bare ``IFACE`` is looked up in the node named ``host`` (the lab's Docker host, or the
    tracer's own namespace), then anywhere it is unique. ``strict``: an unknown name raises
    ``UsageError`` listing what exists; otherwise it is skipped (re-resolving after hot-plug).
    """
    every = _all_ifaces(topo)
    out: list[TapSpec] = []
    for name in names:
        if "/" in name:
            node, ifname = name.rsplit("/", 1)
            # "netns:<inode>/IFACE" names one namespace when several share a node name
            # (two labs up at once both have a "host").
            found = [s for s in every
                     if (s.node == node or f"netns:{s.netns}" == node) and s.ifname == ifname]
        else:
            same = [s for s in every if s.ifname == name]
            found = [s for s in same if s.node == "host"]
            if not found:
                found = [s for s in same if s.netns == topo.own_netns] or same
        if len(found) != 1:
            if not strict:
                continue
            if found:
                raise UsageError(
                    f"interface {name!r} exists in several namespaces: "
                    + ", ".join(f"netns:{s.netns}/{s.ifname} ({s.node})" for s in found),
                    "name one as netns:<inode>/IFACE")
            raise UsageError(f"unknown interface {name!r}",
                             "interfaces here: " + ", ".join(sorted(s.label for s in every)))
        if found[0].key not in {o.key for o in out}:
            out.append(found[0])
    return out


# --------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------


class TapSource:
    """A ``tracer.sources.base.Source`` (kind "pcap") over AF_PACKET taps.

    ``ifaces``: ``--iface`` values; None = the default set, followed as containers come
    and go. ``bpf_filter``: the ``--filter`` expression, attached in the kernel only when
    protocol-only (see ``tracer.pcap_expr.protocol_only``); the engine's PathFilter does the rest.
    ``topology``: a callable returning a current Topology (e.g. a shared LiveTopology),
    asked every ``rediscover_s``; by default the source discovers on a thread of its own
    when namespaces come or go or an interface appears or leaves in one (checked every
    ``rediscover_s``), and every ``full_every_s`` in any case.
    ``lost_events``: kernel ring drops (PACKET_STATISTICS, read every second) plus
    sightings the core's reader shed when more than ``max_pending`` waited for a consumer
    that cannot keep up.
    ``batch_ms``: how often the consumer drains the rings and takes a batch; ``drain_ms``:
    the reader thread drains them when nobody has for that long (the rings, ~1 s of a
    flood, must not fill meanwhile); ``retire_ms``: the kernel's block-retire timer, the
    longest a frame waits in a ring block the kernel still fills; ``reorder_ms``: the
    hold-back, which must exceed it (``late_events`` counts the sightings it did not).
    The timer fires every ``retire_ms`` on each socket, busy or idle, each expiry a softirq
    taken from whatever runs on that CPU (a sender, too): 16 ms rather than 4 cuts the taps'
    timer expiries from ~1500 to ~375 a second with 6 taps, and bench/taps_bench.py's sender
    goes faster beside them. With a 16 ms timer (6.18's hrtimer), under a flood beside a
    ping every 10 ms, a 15 ms window let 2 sightings out of order in 2 runs, 17 and 20 ms
    none in 2 and 3: 24 leaves room for a loaded machine and for kernels whose jiffies timer
    fires up to a tick late (HZ=250). A lone packet shows within ``reorder_ms`` +
    ``batch_ms``.
    ``stop()`` only sets a flag; ``join()`` waits until the taps are closed.
    """

    kind = "pcap"

    def __init__(
        self,
        ifaces: Sequence[str] | None = None,
        bpf_filter: str | None = None,
        snaplen: int = 128,
        *,
        topology: Callable[[], Topology] | None = None,
        rediscover_s: float = 0.5,
        full_every_s: float = 60.0,
        ring_mb: int = 8,
        block_kb: int = 32,
        retire_ms: int = 16,
        poll_ms: int = 50,
        reorder_ms: int = 24,
        batch_ms: int = 50,
        drain_ms: int = 60,
        max_pending: int = 2_000_000,
        notices: Callable[[str], None] | None = None,
    ) -> None:
        self.ifaces = list(ifaces) if ifaces else None
        self.bpf_filter = bpf_filter or None
        self.snaplen = snaplen
        self.rediscover_s = rediscover_s
        self.full_every_s = full_every_s
        self.block_size = block_kb * 1024
        self.block_nr = max(2, ring_mb * 1024 // block_kb)
        self.retire_ms = retire_ms
        self.poll_ms = poll_ms
        self.reorder_ms = reorder_ms
        self.batch_ms = batch_ms
        self.drain_ms = drain_ms
        self._topology = topology
        self._notice = notices or (lambda msg: print(f"hoptrace: {term_safe(msg)}", file=sys.stderr, flush=True))
        self.kernel_filter = self.bpf_filter if protocol_only(self.bpf_filter) else None
        self._insns: dict[int, bytes] = {}
        self.hops: list[HopLabel] = []
        self._hop_index: dict[tuple[int, str, int], int] = {}
        self.taps: dict[tuple[int, str], Tap] = {}
        self._lost = 0
        self._stop = threading.Event()
        self._changes: queue.SimpleQueue[
            tuple[list[Tap], set[tuple[int, str]], list[TapSpec]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # re-discovery
        self._reader: threading.Thread | None = None
        self._reader_done = threading.Event()
        self._ring: Any = None  # the core's reader (_core.TapReader), from start() on
        self._hop_rows: list[tuple[int, int, int]] = []  # (netns, ifindex, linktype) per hop
        self.max_pending = max_pending
        self._started = False
        self._ns_seen: frozenset[int] = frozenset()
        self._links = LinkWatch()
        self._links_of: frozenset[int] | None = None  # named interfaces: their namespaces
        self._lock = threading.Lock()
        self._hop_lock = threading.Lock()

    # -- Source protocol ---------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        if self.bpf_filter:
            # Compile now even when it stays in userspace: a bad expression is exit 2 at once.
            compile_insns(self.bpf_filter, 1, self.snaplen)
        from tracer.topology import find_namespaces

        try:
            # Taken before the discovery: a namespace born during it counts as a change, and
            # so does an interface that appears in one during it.
            namespaces = find_namespaces()
            self._ns_seen = frozenset(namespaces)
            if self._topology is None and not self.ifaces:
                self._links.follow(namespaces)
            topo = self._current_topology()
            specs = self._wanted(topo, strict=True)
            if self._topology is None and self.ifaces:
                # Named interfaces: only the links of their own namespaces matter.
                self._links_of = frozenset(s.netns for s in specs)
                self._links.follow({i: p for i, p in namespaces.items() if i in self._links_of})
            if not specs:
                raise UsageError(
                    "no interfaces to tap: no Docker bridge or container found",
                    "name interfaces with --iface NODE/IFACE (see `hoptrace topology`)")
            from tracer import _core  # type: ignore[attr-defined]  # the compiled core, no stub

            self._ring = _core.TapReader(self.reorder_ms * 1_000_000, self.poll_ms, self.drain_ms,
                                         self.max_pending)
            for spec in specs:
                try:
                    tap = self._open(spec)
                except TapGone as exc:
                    self._notice(str(exc))
                    continue
                if self._hand_over(tap):
                    self.taps[spec.key] = tap
            if not self.taps:
                raise UsageError("none of the interfaces could be tapped")
        except BaseException:
            self._links.close()
            raise
        from tracer.model import obs_dtype

        self._dtype = obs_dtype()
        self._started = True
        self._ring.start()
        self._reader = threading.Thread(target=self._control_loop, name="taps-control", daemon=True)
        self._reader.start()
        self._thread = threading.Thread(target=self._rediscover_loop, name="taps-rediscover",
                                        daemon=True)
        self._thread.start()

    def _hand_over(self, tap: Tap) -> bool:
        """Give ``tap``'s ring to the core's reader (which keeps a duplicate of its fd);
        when it cannot map it, say so and close the tap."""
        try:
            tap.ring_id = self._ring.add(tap.fd, tap.block_size, tap.block_nr, tap.hop,
                                         tap.rank_rx, tap.rank_tx)
        except OSError as exc:
            self._lost += tap.close()
            self._notice(f"cannot tap {tap.spec.label}: {exc}")
            return False
        return True

    def _control_loop(self) -> None:
        """Apply the re-discovery's changes to the reader, pass on the errors the reader's
        poll saw, fold the sockets' drop counters in every second; at stop, wait for the
        reader's last drain, then close everything."""
        ring = self._ring
        last_stats = time.monotonic()
        try:
            while not self._stop.wait(0.25):
                self._apply_changes()
                errored = set(ring.errored())
                if errored:
                    for tap in list(self.taps.values()):
                        if tap.ring_id in errored:
                            tap.errored = True  # the reader reset it; re-discovery decides
                now = time.monotonic()
                if now - last_stats >= 1.0:
                    with self._lock:
                        self._lost += sum(t.read_stats() for t in self.taps.values())
                    last_stats = now
        finally:
            ring.stop()
            try:
                # The last drain is in, the rings are unmapped. A panic in the reader is
                # raised by the consumer's next take(): one line and exit 1.
                ring.join()
            except BaseException:
                pass
            finally:
                self._shutdown()
                self._reader_done.set()

    def batches(self) -> Iterator[ObsBatch]:
        """Released sightings, decoded, in time order; the reading happens on the reader
        thread that ``start()`` began, so sightings are kept while the consumer is busy."""
        self.start()
        ring = self._ring
        last_yield = time.monotonic()
        while True:
            finished = self._reader_done.wait(self.batch_ms / 1000)
            now = time.monotonic()
            # The watermark: every frame the reader drains after this is newer than it by
            # at least the reorder delay.
            now_ns = time.time_ns()
            got = ring.take(now_ns, self._hop_table(), final=finished, force=now - last_yield >= 0.1)
            if got is None:
                continue
            rows, frames, mark = got
            yield ObsBatch(rows.view(self._dtype), self.hops, frames, now_ns=mark)
            last_yield = now
            if finished:
                return

    def _hop_table(self) -> list[tuple[int, int, int]]:
        """(netns, ifindex, linktype) per hop, for the core's rows (hops only grow)."""
        with self._hop_lock:
            rows = self._hop_rows
            if len(rows) != len(self.hops):
                rows = self._hop_rows = [(h.netns, h.ifindex, h.linktype) for h in self.hops]
        return rows

    def stop(self) -> None:
        """Stop reading: the reader drains the rings once more, closes the taps and ends
        ``batches()`` after its last batch. Only sets a flag: safe from a signal handler."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the taps are closed (after ``stop()``)."""
        for t in (self._reader, self._thread):
            if t is not None and t is not threading.current_thread():
                t.join(timeout)

    @property
    def lost_events(self) -> int:
        return self._lost + (self._ring.shed if self._ring is not None else 0)

    @property
    def late_events(self) -> int:
        """Sightings released after a newer one had been: their ring block retired later
        than ``reorder_ms`` allowed (0 while the window holds, which it must: a path read
        out of order gets a wrong verdict)."""
        return self._ring.late if self._ring is not None else 0

    # -- tracer.protocols.LiveSource ------------------------------------------

    def attachments(self) -> Attachments:
        taps = dict(self.taps)
        return Attachments(len(taps), "taps", len({key[0] for key in taps}))

    @property
    def traced_netns(self) -> frozenset[int]:
        # Taps are per interface, but the namespaces they sit in change as containers come
        # and go: for whoever traces rules beside them (--rules), every namespace.
        return frozenset()

    # -- internals ---------------------------------------------------------

    def _insns_for(self, linktype: int) -> bytes:
        insns = self._insns.get(linktype)
        if insns is None:
            if self.kernel_filter:
                insns = compile_insns(self.kernel_filter, linktype, self.snaplen)
            else:
                insns = snaplen_bpf(self.snaplen)
            self._insns[linktype] = insns
        return insns

    def _current_topology(self) -> Topology:
        return self._topology() if self._topology is not None else _discover()

    def _wanted(self, topo: Topology, *, strict: bool) -> list[TapSpec]:
        if self.ifaces:
            return resolve_ifaces(self.ifaces, topo, strict=strict)
        return default_specs(topo)

    def _hop_for(self, spec: TapSpec, ifindex: int, linktype: int) -> int:
        with self._hop_lock:  # the re-discovery thread opens taps, the reader renames them
            key = (spec.netns, spec.ifname, ifindex)
            idx = self._hop_index.get(key)
            if idx is None or self.hops[idx].node != spec.node:
                idx = len(self.hops)
                self.hops.append(HopLabel(spec.node, spec.ifname, spec.netns, ifindex, linktype))
                self._hop_index[key] = idx
            return idx

    def _open(self, spec: TapSpec) -> Tap:
        tap = Tap.open(spec, -1, insns_for=self._insns_for, block_size=self.block_size,
                       block_nr=self.block_nr, retire_ms=self.retire_ms)
        tap.hop = self._hop_for(spec, tap.ifindex, tap.linktype)
        return tap

    def _rediscover_loop(self) -> None:
        """Follow the machine: open taps on new interfaces, close those that went away.

        A full discovery costs ~40-60 ms of CPU with a few labs up (netlink per namespace,
        the Docker API): run every 0.5 s it alone cost ~10% of a core, every 5 s ~1% (at
        idle, most of what the taps cost). So it runs when the set of namespaces changed
        (a container started or stopped: ~1 ms to check; with named ``--iface``s only
        when one of theirs went away), when an interface appeared or left in a namespace
        (``LinkWatch``: Docker connecting a running container to a network; with named
        ``--iface``s only in theirs), when a tap reported an error, twice more within
        ~1 s after such a change (Docker moves the veth in after creating the namespace),
        and every ``full_every_s`` in any case.
        """
        last_ns = self._ns_seen
        last_full = time.monotonic()  # start() just discovered
        hot_until = 0.0
        while not self._stop.wait(self.rediscover_s):
            now = time.monotonic()
            if self._topology is None:
                from tracer.topology import find_namespaces

                namespaces = find_namespaces()
                ns = frozenset(namespaces)
                taps = list(self.taps.values())
                errored = any(t.errored for t in taps)
                # Named interfaces: only their namespaces going away matters at once
                # (other labs' namespaces come and go all the time on a busy host).
                tapped = {t.spec.netns for t in taps}
                changed = not tapped <= ns if self.ifaces else ns != last_ns
                last_ns = ns
                links = self._links.changed()
                if changed or links:
                    # A deleted namespace's watcher goes at once (it keeps it alive).
                    keep = self._links_of
                    self._links.follow(namespaces if keep is None
                                       else {i: p for i, p in namespaces.items() if i in keep})
                changed = changed or links
                if changed or errored:
                    hot_until = now + 1.2
                hot = now < hot_until and now - last_full >= 0.5
                if not (changed or errored or hot or now - last_full >= self.full_every_s):
                    continue
                last_full = now
            try:
                topo = self._current_topology()
                wanted = {s.key: s for s in self._wanted(topo, strict=False)}
            except (HoptraceError, OSError) as exc:
                self._notice(f"re-discovering interfaces failed: {exc}")
                continue
            for t in list(self.taps.values()):
                t.errored = False  # seen by this discovery: closed below if it went away
            with self._lock:
                have = {key: tap.spec.node for key, tap in self.taps.items()}
            new: list[Tap] = []
            for key, spec in wanted.items():
                if key in have:
                    continue
                try:
                    new.append(self._open(spec))
                except TapGone:
                    continue  # vanished between discovery and open: the next round sees it
                except HoptraceError as exc:
                    self._notice(str(exc))
            gone = set(have) - set(wanted)
            # A container's name may come after its namespace (Docker reports the pid once
            # it has started it): later sightings there get the name.
            renamed = [s for key, s in wanted.items() if key in have and have[key] != s.node]
            if new or gone or renamed:
                self._changes.put((new, gone, renamed))

    def _apply_changes(self) -> None:
        while True:
            try:
                new, gone, renamed = self._changes.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                for spec in renamed:
                    tap = self.taps.get(spec.key)
                    if tap is not None:
                        tap.spec = spec
                        tap.hop = self._hop_for(spec, tap.ifindex, tap.linktype)
                        if tap.ring_id is not None:
                            self._ring.retag(tap.ring_id, tap.hop)
                for key in gone:
                    tap = self.taps.pop(key, None)
                    if tap is None:
                        continue
                    if tap.ring_id is not None:
                        self._ring.remove(tap.ring_id)
                    self._lost += tap.close()
                    self._notice(f"tap {tap.spec.label} closed: the interface went away")
                for tap in new:
                    if tap.spec.key in self.taps or self._stop.is_set():
                        tap.close()
                        continue
                    if self._hand_over(tap):
                        self.taps[tap.spec.key] = tap
                        self._notice(f"tap {tap.spec.label} opened")

    def _shutdown(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=15)
        self._links.close()
        with self._lock:
            while True:  # taps opened by a last re-discovery round
                try:
                    new, _, _ = self._changes.get_nowait()
                except queue.Empty:
                    break
                for tap in new:
                    tap.close()
            for tap in self.taps.values():
                self._lost += tap.close()
            self.taps.clear()


__all__ = ["Tap", "TapGone", "TapSource", "TapSpec", "default_specs", "resolve_ifaces", "snaplen_bpf"]
