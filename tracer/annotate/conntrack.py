"""conntrack entries of the namespaces that NAT, through netlink (pyroute2), kept in a table.

Per namespace one background thread enters it (``setns``), subscribes to the
NEW/UPDATE/DESTROY event groups *first* and then dumps the table, so that a
flow that began before hoptrace started is known and nothing created during
the dump is missed. The thread only updates the table; ``lookup`` is called
from the annotator with the addresses a packet had before or after NAT.

pyroute2 0.9.7's sync ``NFCTSocket.bind()`` raises ``AttributeError``
(DESIGN.md), so events come through ``AsyncNFCTSocket`` on an event loop that
lives only inside that thread; nothing else in ``tracer`` sees asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tracer.model import ConntrackRef, Endpoints
from tracer.netns import setns_thread

NFNLGRP_NEW, NFNLGRP_UPDATE, NFNLGRP_DESTROY = 1, 2, 3
GROUPS = (1 << (NFNLGRP_NEW - 1)) | (1 << (NFNLGRP_UPDATE - 1)) | (1 << (NFNLGRP_DESTROY - 1))
IPCTNL_MSG_CT_DELETE = 2
# Paths finish some time after their last packet; keep destroyed entries that long and more.
KEEP_DESTROYED_S = 120.0
EVENT_RCVBUF = 8 << 20
STATUS_BITS = (
    "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT", "SEQ_ADJUST",
    "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT", "TEMPLATE", "UNTRACKED", "HELPER",
    "OFFLOAD", "HW_OFFLOAD",
)
ICMP_PROTOS = (1, 58)

#: (proto, src, dst, a, b): a/b are the ports, or for ICMP the echo id and 0.
Key = tuple[int, str, str, int, int]


def status_names(status: int) -> tuple[str, ...]:
    return tuple(name for bit, name in enumerate(STATUS_BITS) if status & (1 << bit))


@dataclass(frozen=True, slots=True)
class CtTuple:
    proto: int
    src: str
    dst: str
    sport: int | None  # ICMP: None (the echo id is in icmp_id)
    dport: int | None
    icmp_id: int | None = None

    def key(self) -> Key:
        if self.proto in ICMP_PROTOS:
            return (self.proto, self.src, self.dst, self.icmp_id or 0, 0)
        return (self.proto, self.src, self.dst, self.sport or 0, self.dport or 0)

    def reversed_key(self) -> Key:
        if self.proto in ICMP_PROTOS:
            return (self.proto, self.dst, self.src, self.icmp_id or 0, 0)
        return (self.proto, self.dst, self.src, self.dport or 0, self.sport or 0)

    def endpoints(self) -> Endpoints:
        return Endpoints(self.src, self.sport, self.dst, self.dport)


def packet_key(proto: int, ep: Endpoints, icmp_id: int | None = None) -> Key:
    if proto in ICMP_PROTOS:
        return (proto, ep.src, ep.dst, icmp_id or 0, 0)
    return (proto, ep.src, ep.dst, ep.sport or 0, ep.dport or 0)


def _tuple(nla: Any) -> CtTuple | None:
    if nla is None:
        return None
    ip = nla.get("CTA_TUPLE_IP")
    pr = nla.get("CTA_TUPLE_PROTO")
    if ip is None or pr is None:
        return None
    src = ip.get("CTA_IP_V4_SRC") or ip.get("CTA_IP_V6_SRC")
    dst = ip.get("CTA_IP_V4_DST") or ip.get("CTA_IP_V6_DST")
    proto = int(pr.get("CTA_PROTO_NUM") or 0)
    if src is None or dst is None:
        return None
    if proto in ICMP_PROTOS:
        icmp_id = pr.get("CTA_PROTO_ICMP_ID")
        if icmp_id is None:
            icmp_id = pr.get("CTA_PROTO_ICMPV6_ID")
        return CtTuple(proto, str(src), str(dst), None, None, int(icmp_id or 0))
    sport = pr.get("CTA_PROTO_SRC_PORT")
    dport = pr.get("CTA_PROTO_DST_PORT")
    return CtTuple(proto, str(src), str(dst),
                   int(sport) if sport is not None else None, int(dport) if dport is not None else None)


@dataclass(frozen=True, slots=True)
class Entry:
    ref: ConntrackRef
    original: CtTuple
    reply: CtTuple
    destroyed_at: float | None = None  # time.monotonic()


def parse_msg(msg: Any) -> Entry | None:
    """A pyroute2 nfct_msg (dump answer or event) as an Entry; None if it is not a flow."""
    orig = _tuple(msg.get("CTA_TUPLE_ORIG"))
    reply = _tuple(msg.get("CTA_TUPLE_REPLY"))
    if orig is None or reply is None:
        return None
    status = int(msg.get("CTA_STATUS") or 0)
    ct_id = msg.get("CTA_ID")
    zone = msg.get("CTA_ZONE")
    ref = ConntrackRef(
        id=int(ct_id) if ct_id is not None else None,
        original=orig.endpoints(),
        reply=reply.endpoints(),
        status=status_names(status),
        zone=int(zone or 0),
    )
    return Entry(ref, orig, reply)


class _NsTable:
    """The entries of one namespace, indexed by every tuple a packet of the flow can carry."""

    def __init__(self) -> None:
        self.by_key: dict[Key, Entry] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.error: str | None = None
        self.events = 0
        self.overruns = 0  # event buffer overflows (each followed by a fresh dump)
        # Bumped when an entry a lookup could have returned changes or goes (not when one is
        # added): answers kept from earlier lookups (tracer.engine's tables) are stale then.
        self.changes = 0

    def put(self, entry: Entry, destroyed: bool = False) -> None:
        if destroyed:
            entry = Entry(entry.ref, entry.original, entry.reply, time.monotonic())
        keys = (entry.original.key(), entry.reply.key(), entry.original.reversed_key(),
                entry.reply.reversed_key())
        with self.lock:
            old = self.by_key.get(keys[0])
            if old is not None and not entry.ref.status and old.ref.id == entry.ref.id:
                # Some events carry no CTA_STATUS: keep what the entry last said.
                entry = Entry(replace(entry.ref, status=old.ref.status), entry.original,
                              entry.reply, entry.destroyed_at)
            for k in keys:
                got = self.by_key.get(k)
                if got is not None and got.ref != entry.ref:
                    self.changes += 1
                self.by_key[k] = entry

    def expire(self, now: float) -> None:
        with self.lock:
            old = [k for k, e in self.by_key.items()
                   if e.destroyed_at is not None and now - e.destroyed_at > KEEP_DESTROYED_S]
            for k in old:
                del self.by_key[k]
            self.changes += len(old)

    def get(self, key: Key) -> Entry | None:
        with self.lock:
            return self.by_key.get(key)


class ConntrackTable:
    """Entries of several namespaces (inode -> path), an initial dump plus the event stream.

    ``start()`` returns once every namespace's dump is in (or failed, see ``errors``).
    """

    def __init__(self, namespaces: Mapping[int, str]) -> None:
        self.paths = dict(namespaces)
        self._tables: dict[int, _NsTable] = {ino: _NsTable() for ino in self.paths}
        self._loops: dict[int, asyncio.AbstractEventLoop] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout_s: float = 5.0) -> ConntrackTable:
        for ino, path in self.paths.items():
            t = threading.Thread(target=self._run, args=(ino, path), name=f"conntrack:{ino}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + timeout_s
        for table in self._tables.values():
            if not table.ready.wait(max(0.0, deadline - time.monotonic())) and table.error is None:
                table.error = "the initial conntrack dump did not finish in time"
        return self

    def stop(self) -> None:
        self._stopping.set()
        for ino, loop in list(self._loops.items()):
            task = self._tasks.get(ino)
            if task is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(task.cancel)
        for t in self._threads:
            t.join(timeout=3)
        self._threads.clear()

    def __enter__(self) -> ConntrackTable:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ---------------------------------------------------------------

    @property
    def errors(self) -> dict[int, str]:
        return {ino: t.error for ino, t in self._tables.items() if t.error}

    @property
    def changes(self) -> int:
        """A counter that moves when an entry changes or goes (see ``_NsTable.changes``)."""
        return sum(t.changes for t in self._tables.values())

    def available(self, netns: int) -> bool:
        t = self._tables.get(netns)
        return t is not None and t.error is None and t.ready.is_set()

    def has_entries(self, netns: int) -> bool:
        t = self._tables.get(netns)
        return t is not None and bool(t.by_key)

    def entries(self, netns: int) -> list[ConntrackRef]:
        t = self._tables.get(netns)
        if t is None:
            return []
        with t.lock:
            seen: dict[int, ConntrackRef] = {}
            for e in t.by_key.values():
                seen[id(e)] = e.ref
            return list(seen.values())

    def lookup(self, netns: int, proto: int, endpoints: Iterable[tuple[Endpoints, int | None]]
               ) -> ConntrackRef | None:
        """The entry of the flow a packet belongs to, tried with each (endpoints, icmp id) it had."""
        t = self._tables.get(netns)
        if t is None:
            return None
        for ep, icmp_id in endpoints:
            e = t.get(packet_key(proto, ep, icmp_id))
            if e is not None:
                return e.ref
        return None

    # -- the per-namespace thread -------------------------------------------

    def _run(self, ino: int, path: str) -> None:
        table = self._tables[ino]
        try:
            setns_thread(path)
            loop = asyncio.new_event_loop()
        except Exception as exc:  # any failure only disables conntrack for this namespace
            table.error = f"{type(exc).__name__}: {exc}"
            table.ready.set()
            return
        self._loops[ino] = loop
        try:
            task = loop.create_task(self._follow(table))
            self._tasks[ino] = task
            if self._stopping.is_set():
                task.cancel()
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            table.error = table.error or f"{type(exc).__name__}: {exc}"
        finally:
            table.ready.set()
            loop.close()

    async def _follow(self, table: _NsTable) -> None:
        from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket

        # A busy host makes many UPDATE events; a deep receive buffer keeps them from overflowing
        # (ENOBUFS): then the table is dumped again rather than left stale.
        events = AsyncNFCTSocket(nfgen_family=socket.AF_UNSPEC, rcvbuf=EVENT_RCVBUF)
        try:
            # Subscribe before dumping: an entry created during the dump then arrives as an event.
            await events.bind(groups=GROUPS)
            await self._dump(table)
            table.ready.set()
            last_expire = time.monotonic()
            while True:
                try:
                    async for msg in events.get():
                        entry = parse_msg(msg)
                        if entry is None:
                            continue
                        table.events += 1
                        mtype = msg["header"]["type"] & 0xFF
                        table.put(entry, destroyed=mtype == IPCTNL_MSG_CT_DELETE)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    table.overruns += 1
                    await self._dump(table)
                now = time.monotonic()
                if now - last_expire > 10:
                    table.expire(now)
                    last_expire = now
        finally:
            events.close()

    @staticmethod
    async def _dump(table: _NsTable) -> None:
        from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket

        dumper = AsyncNFCTSocket(nfgen_family=socket.AF_UNSPEC)
        try:
            async for msg in await dumper.dump():
                entry = parse_msg(msg)
                if entry is not None:
                    table.put(entry)
        finally:
            dumper.close()


def dump(netns_path: str) -> list[ConntrackRef]:
    """One dump of a namespace's table (for `topology` and tests)."""
    with ConntrackTable({0: netns_path}) as t:
        if t.errors:
            return []
        return t.entries(0)
