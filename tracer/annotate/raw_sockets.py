"""Where and when raw ICMP sockets were open, per network namespace (docs/drop-reasons.md).

busybox ping (and iputils ping without ping sockets) reads echo replies on a raw ICMP
socket: the kernel hands that socket a clone and frees the original with NO_SOCKET. The core
calls such a free no loss when a raw ICMP (or ICMPv6) socket was open in that namespace at
that time (crates/hoptrace-core/src/drops.rs); this module tells it when.

Every ``period_s`` a thread lists the namespaces (``/proc/<pid>/ns/net`` of every process,
one pid each) and reads ``/proc/<pid>/net/raw`` and ``raw6`` there: a socket bound to
protocol 1 (ICMP) or 58 (ICMPv6) is one. A namespace seen with one gets a span from the start
of the poll before (it opened after that one read it) to the end of the poll that no longer
sees it (it closed before that one read it, which may be well after the poll began: a busy
machine, other threads holding the GIL); one open now has no end yet. Nothing here is on the packet path: the
engine asks for the spans once per batch and hands them to the core only when they changed.
A process that exits or a namespace that goes away between the listing and the read is
skipped (the next poll sees what is left).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

PROTOS = {"raw": 1, "raw6": 58}  # file -> protocol of the raw ICMP sockets in it
PERIOD_S = 0.2
OPEN_NS = 2**64 - 1  # the end of a span still open


def raw_icmp_in(net_dir: Path) -> bool:
    """Whether ``net_dir`` (``/proc/<pid>/net``) lists a raw ICMP or ICMPv6 socket."""
    for name, proto in PROTOS.items():
        try:
            lines = (net_dir / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # "sl local_address rem_address st ...": a raw socket's local port is its protocol
            port = fields[1].rpartition(":")[2] if len(fields) > 1 else ""
            if port and int(port, 16) == proto:
                return True
    return False


def namespaces(proc: Path = Path("/proc")) -> dict[int, int]:
    """netns inode -> one pid in it, for every process whose namespace can be read."""
    out: dict[int, int] = {}
    try:
        entries = os.listdir(proc)
    except OSError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        try:
            link = os.readlink(proc / name / "ns" / "net")  # "net:[4026531840]"
        except OSError:
            continue
        inode = link[link.find("[") + 1:-1]
        if inode.isdigit():
            out.setdefault(int(inode), int(name))
    return out


class RawSocketSpans:
    """The spans so far: ``poll()`` once per period, ``spans()`` for the core. ``clock``: UTC
    ns, the sightings' clock, read as a poll begins and again once it has read every
    namespace."""

    def __init__(self, list_namespaces: Callable[[], dict[int, int]] = namespaces,
                 has_raw: Callable[[int], bool] = lambda pid: raw_icmp_in(Path(f"/proc/{pid}/net")),
                 clock: Callable[[], int] = time.time_ns) -> None:
        self._list = list_namespaces
        self._has_raw = has_raw
        self._clock = clock
        self._lock = threading.Lock()
        self._closed: list[tuple[int, int, int]] = []  # (netns, from, to) of sockets gone
        self._open: dict[int, int] = {}  # netns -> from, seen at the latest poll
        self._last_began: int | None = None
        self.generation = 0

    def poll(self) -> None:
        began = self._clock()
        seen = {ns for ns, pid in self._list().items() if self._has_raw(pid)}
        done = self._clock()
        with self._lock:
            before = self._last_began
            for ns in set(self._open) - seen:
                # Closed before this poll read its namespace: by the time it was done. (Ending
                # at `began` once called a busybox ping's last echo reply lost: the socket
                # closed while this poll was reading the other namespaces.)
                self._closed.append((ns, self._open.pop(ns), done))
            for ns in seen - set(self._open):
                # Open since before hoptrace looked, or since after the poll before this one
                # began reading.
                self._open[ns] = 0 if before is None else before
            self._last_began = began
            self.generation += 1

    def spans(self) -> list[tuple[int, int, int]]:
        """(netns, from_ns, to_ns) of every span; one still open has no end yet (a poll that
        comes late on a busy machine must not end it early: a socket open at the latest poll
        is taken to be open until a poll no longer sees it)."""
        with self._lock:
            return [*self._closed, *((ns, t, OPEN_NS) for ns, t in self._open.items())]


class RawSocketWatch:
    """``RawSocketSpans`` polled by a daemon thread until ``close``."""

    def __init__(self, period_s: float = PERIOD_S, spans: RawSocketSpans | None = None) -> None:
        self.table = spans or RawSocketSpans()
        self._period = period_s
        self._stop = threading.Event()
        self.table.poll()  # what is open at the start counts from the start
        self._thread = threading.Thread(target=self._run, name="hoptrace-raw-sockets", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.table.poll()

    @property
    def generation(self) -> int:
        return self.table.generation

    def spans(self) -> list[tuple[int, int, int]]:
        return self.table.spans()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


__all__ = ["OPEN_NS", "PERIOD_S", "RawSocketSpans", "RawSocketWatch", "namespaces", "raw_icmp_in"]
