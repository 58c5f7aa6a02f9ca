"""Capture helpers for the taps tests: tap a lab's interfaces, make traffic, correlate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tracer.model import ObsBatch, Observation, PacketPath
from tracer.taps import TapSource

LAB_NODES = ("host", "client", "web", "inet")

# Expected hop sequences, as (node, iface, dir); "vC"/"vW" stand for the host-side veth of
# client/web (named by Docker or the lab, looked up through the topology).
INTERNET_PING_REQUEST = [("client", "eth0", "tx"), ("host", "vC", "rx"), ("host", "docker0", "rx"),
                         ("host", "eth0", "tx")]
INTERNET_PING_REPLY = [("host", "eth0", "rx"), ("host", "docker0", "tx"), ("host", "vC", "tx"),
                       ("client", "eth0", "rx")]
PUBLISHED_PORT_SYN = [("host", "eth0", "rx"), ("host", "docker0", "tx"), ("host", "vW", "tx"),
                      ("web", "eth0", "rx")]
CONTAINER_PING_REQUEST = [("client", "eth0", "tx"), ("host", "vC", "rx"), ("host", "vW", "tx"),
                          ("web", "eth0", "rx")]


def lab_inodes(lab: Any) -> dict[int, str]:
    return {lab.netns_inode(n): n for n in LAB_NODES}


def host_veths(lab: Any) -> dict[str, str]:
    """{"vC": host-side veth of client, "vW": of web}, through the veth peer links."""
    from tracer.topology import Topology

    topo = Topology.discover(nat=False, docker=False)
    out = {}
    for key, node in (("vC", "client"), ("vW", "web")):
        ns = topo.namespace(lab.netns_inode(node))
        assert ns is not None, f"{node} namespace not found"
        eth0 = ns.iface("eth0")
        assert eth0 is not None and eth0.peer_ifindex is not None, f"{node}/eth0 has no veth peer"
        host = topo.namespace(lab.netns_inode("host"))
        assert host is not None
        peer = host.iface(eth0.peer_ifindex)
        assert peer is not None, f"{node}/eth0's peer is not in the lab's host"
        out[key] = peer.name
    return out


def lab_ifaces(lab: Any) -> list[str]:
    """The lab's default tap set as ``--iface`` values (``netns:<inode>/IFACE``): other labs
    that are up at the same time (other tests, other engineers) stay out."""
    from tracer.taps import default_specs
    from tracer.topology import Topology

    mine = lab_inodes(lab)
    return [f"netns:{s.netns}/{s.ifname}" for s in default_specs(Topology.discover(nat=False))
            if s.netns in mine]


def expected(seq: list[tuple[str, str, str]], veths: dict[str, str]) -> list[tuple[str, str, str]]:
    return [(n, veths.get(i, i), d) for n, i, d in seq]


class Capture:
    """Runs ``src.batches()`` on a thread, keeping every batch, until ``stop()``."""

    def __init__(self, src: TapSource, on_batch: Callable[[ObsBatch], None] | None = None) -> None:
        self.src = src
        self.batches: list[ObsBatch] = []
        self.error: BaseException | None = None
        self._on_batch = on_batch
        src.start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for b in self.src.batches():
                self.batches.append(b)
                if self._on_batch is not None:
                    self._on_batch(b)
        except BaseException as exc:  # re-raised in the test's thread by stop()
            self.error = exc

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():  # the test failed before stop(): release the taps anyway
            self.src.stop()
            self._thread.join(timeout=10)

    def stop(self, settle_s: float = 0.3) -> list[ObsBatch]:
        time.sleep(settle_s)  # blocks retire after a few ms; let the last ones arrive
        self.src.stop()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "batches() did not end after stop()"
        if self.error is not None:
            raise self.error
        return self.batches

    def observations(self) -> list[Observation]:
        return [o for b in self.batches for o in b.observations()]


def correlate(batches: Sequence[ObsBatch]) -> list[PacketPath]:
    from tracer.correlate import Correlator

    c = Correlator()
    out: list[PacketPath] = []
    for b in batches:
        out += c.feed_batch(b)
    return out + c.flush()


def hop_seq(path: PacketPath) -> list[tuple[str, str, str | None]]:
    return [(h.node, h.ifname, h.direction) for h in path.hops]


def find_path(paths: Sequence[PacketPath], pred: Callable[[Observation], bool]) -> PacketPath:
    found = [p for p in paths if pred(p.first)]
    assert found, "no path whose first hop matches; paths: " + "; ".join(
        f"{p.proto} {p.first.src}->{p.first.dst} {hop_seq(p)}" for p in paths)
    return found[0]


def nat_tuples(path: PacketPath) -> list[tuple[Any, ...]]:
    return [(n.kind, n.node, n.from_hop, n.to_hop, n.before.to_json(), n.after.to_json())
            for n in path.nat]


def lab_iface(lab: Any, node: str, ifname: str) -> str:
    return f"netns:{lab.netns_inode(node)}/{ifname}"
