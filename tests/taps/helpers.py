"""Capture helpers for the taps tests: tap a lab's interfaces, make traffic, correlate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tracer.model import ObsBatch, Observation, PacketPath

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
    from tracer.sources.taps import default_specs
    from tracer.topology import Topology

    mine = lab_inodes(lab)
    return [f"netns:{s.netns}/{s.ifname}" for s in default_specs(Topology.discover(nat=False))
            if s.netns in mine]


def expected(seq: list[tuple[str, str, str]], veths: dict[str, str]) -> list[tuple[str, str, str]]:
    return [(n, veths.get(i, i), d) for n, i, d in seq]


class Capture:
    """Runs ``src.batches()`` on a thread, keeping every batch, until ``stop()``."""

    def __init__(self, src: Any, on_batch: Callable[[ObsBatch], None] | None = None) -> None:
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
        if hasattr(self.src, "join"):
            self.src.join(timeout=10)  # taps closed before the test (and the lab) goes on
        if self.error is not None:
            raise self.error
        return self.batches

    def observations(self) -> list[Observation]:
        return [o for b in self.batches for o in b.observations()]


def correlate(batches: Sequence[ObsBatch]) -> list[PacketPath]:
    from tests.reference.correlate import Correlator

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


class Live:
    """``hoptrace live --json --ready-file F`` as a subprocess: started, ready, stopped by SIGINT."""

    def __init__(self, backend: str, ifaces: Sequence[str] = (), *extra: str,
                 ready_timeout_s: float = 60.0) -> None:
        import os
        import subprocess
        import tempfile

        from tests.conftest import HOPTRACE

        self._dir = tempfile.TemporaryDirectory(prefix="hoptrace-taps-")
        self.ready = os.path.join(self._dir.name, "ready")
        argv = [*HOPTRACE, "live", "--backend", backend, "--json", "--ready-file", self.ready, *extra]
        for i in ifaces:
            argv += ["--iface", i]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None:
                _out, err = self.proc.communicate()
                self._dir.cleanup()
                raise AssertionError(f"hoptrace live --backend {backend} exited {self.proc.returncode}: {err}")
            if time.monotonic() - t0 > ready_timeout_s:
                self.kill()
                raise AssertionError(f"hoptrace live --backend {backend}: no ready file in {ready_timeout_s} s")
            time.sleep(0.05)

    def stop(self, settle_s: float = 0.5) -> tuple[list[dict[str, Any]], str]:
        import json
        import signal

        time.sleep(settle_s)
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=60)
        self._dir.cleanup()
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}: {err}"
        return [json.loads(line) for line in out.splitlines()], err

    def wait(self, timeout_s: float = 120) -> tuple[list[dict[str, Any]], str]:
        """For ``--duration`` runs: the engine's clock starts after the topology discovery,
        so a SIGINT right after the traffic could come before it read anything."""
        import json

        out, err = self.proc.communicate(timeout=timeout_s)
        self._dir.cleanup()
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}: {err}"
        return [json.loads(line) for line in out.splitlines()], err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        self._dir.cleanup()

    def __enter__(self) -> Live:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def json_hops(path: dict[str, Any], keep: set[tuple[int, str]] | None = None) -> list[tuple[str, str, str]]:
    """(node, iface, dir) of a JSON path's hops, only those at ``keep`` (netns, iface) when given."""
    return [(h["node"], h["iface"], h["dir"]) for h in path["hops"]
            if keep is None or (h["netns"], h["iface"]) in keep]


def json_nat(path: dict[str, Any]) -> list[tuple[Any, ...]]:
    """NAT events without hop indices (backends see different numbers of hops)."""
    return [(n["kind"], n["node"], n["hook"], tuple(n["before"].items()), tuple(n["after"].items()))
            for n in path["nat"]]


def json_paths(lines: Sequence[dict[str, Any]], proto: str, **first: Any) -> list[dict[str, Any]]:
    """Paths of ``proto`` whose first hop in the lab has the given field values."""
    return [d for d in lines if d["type"] == "path" and d["proto"] == proto
            and all(any(h.get(k) == v for h in d["hops"][:1]) for k, v in first.items())]
