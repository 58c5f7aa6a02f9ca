"""Capture one scenario on every hop of the lab and write it as ONE pcapng.

Per interface two tcpdumps run inside its namespace, ``-Q in`` and ``-Q out``:
that is how each sighting's direction is known. ``-s 128 -B 32768 -U`` loses
nothing at these rates (DESIGN.md, "Captures"), and nanosecond timestamps keep
hops that are microseconds apart in order. ``--immediate-mode``: otherwise
libpcap's TPACKET_V3 ring hands packets over only when a block fills or after
a second, and the packets of a partly filled block are lost at SIGINT. ``-p``
(no promiscuous mode): a promiscuous bridge passes every frame up to its own
stack, which then routes copies of bridged packets a second time — the
capture would change the traffic it records. Traffic starts only after every
tcpdump said it is listening.

The pcapng is written by ``tracer.sinks.record.PcapngRecorder`` — exactly what
``hoptrace live --record`` writes: an interface block per hop named
``node/iface`` with ``netns=<inode> ifindex=<n>`` in its description,
nanosecond timestamps, the direction in the EPB flags and the hop metadata
comment — so a fixture replays like a recording.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracer.errors import KernelFeatureMissing, LabError

if TYPE_CHECKING:
    from tracer.lab.lab import Lab, ScenarioResult

SNAPLEN = 128
READY_TIMEOUT_S = 10.0
# Late packets (the last reply, ARP) still arrive after the scenario returns.
SETTLE_S = 0.3
# IPv6 link-local chatter (router solicitations, MLD) and the bridge's IGMP reports are not part
# of any scenario.
CAPTURE_FILTER = "not ip6 and not igmp"


@dataclass(frozen=True, slots=True)
class CapturePoint:
    node: str
    iface: str
    netns_path: str
    netns: int
    ifindex: int

    @property
    def label(self) -> str:
        return f"{self.node}/{self.iface}"


@dataclass(frozen=True, slots=True)
class Sighting:
    ts_ns: int
    point: CapturePoint
    direction: str  # "rx" | "tx"
    frame: bytes
    wire_len: int


def _links(lab: Lab, node: str) -> list[dict[str, object]]:
    r = lab.exec(node, ["ip", "-j", "link", "show"])
    if r.returncode != 0:
        raise LabError(f"ip link in {node} failed: {r.stderr.strip()}")
    links: list[dict[str, object]] = json.loads(r.stdout)
    return links


def capture_points(lab: Lab) -> list[CapturePoint]:
    """Every hop of the lab in path order: container eth0, host veth, host lo, docker0, host eth0,
    inet eth0."""
    host_links = {int(str(link["ifindex"])): str(link["ifname"]) for link in _links(lab, "host")}
    host_ns = lab.netns_path("host")
    points = []
    for node in ("client", "web"):
        eth0 = next(link for link in _links(lab, node) if link["ifname"] == "eth0")
        path = lab.netns_path(node)
        points.append(CapturePoint(node, "eth0", path, os.stat(path).st_ino, int(str(eth0["ifindex"]))))
        # The container's eth0 names its peer's ifindex in the host namespace.
        peer = int(str(eth0["link_index"]))
        points.append(CapturePoint("host", host_links[peer], host_ns, os.stat(host_ns).st_ino, peer))
    by_name = {v: k for k, v in host_links.items()}
    # lo: a client on the host itself reaching the published port at 127.0.0.1 (docker-proxy
    # accepts it there when the userland proxy is on).
    for name in ("lo", "docker0", "eth0"):
        points.append(CapturePoint("host", name, host_ns, os.stat(host_ns).st_ino, by_name[name]))
    inet = lab.netns_path("inet")
    inet_eth0 = next(link for link in _links(lab, "inet") if link["ifname"] == "eth0")
    points.append(CapturePoint("inet", "eth0", inet, os.stat(inet).st_ino, int(str(inet_eth0["ifindex"]))))
    return points


class HopCapture:
    """tcpdump ``-Q in`` and ``-Q out`` on every capture point, inside its namespace."""

    def __init__(self, lab: Lab, points: list[CapturePoint], workdir: Path) -> None:
        if shutil.which("tcpdump") is None:
            raise KernelFeatureMissing("tcpdump is not installed", "apt-get install tcpdump")
        self.lab = lab
        self.points = points
        self.workdir = workdir
        self.procs: list[tuple[subprocess.Popen[bytes], CapturePoint, str, Path, Path]] = []

    def __enter__(self) -> HopCapture:
        try:
            for point in self.points:
                for q, direction in (("in", "rx"), ("out", "tx")):
                    stem = f"{point.node}_{point.iface}_{q}"
                    pcap, err = self.workdir / f"{stem}.pcap", self.workdir / f"{stem}.err"
                    with open(err, "wb") as errf:
                        p = subprocess.Popen(
                            ["nsenter", f"--net={point.netns_path}", "--", "tcpdump", "-i", point.iface,
                             "-Q", q, "-s", str(SNAPLEN), "-B", "32768", "-U", "--immediate-mode", "-p", "-n",
                             "-Z", "root",
                             "--time-stamp-precision=nano", "-w", str(pcap), CAPTURE_FILTER],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
                        )
                    self.procs.append((p, point, direction, pcap, err))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = list(self.procs)
        while pending:
            still = []
            for entry in pending:
                p, point, _, _, err = entry
                text = err.read_text(errors="replace")
                if "listening on" in text:
                    continue
                if p.poll() is not None:
                    raise LabError(f"tcpdump on {point.label} failed: {text.strip()[-300:]}")
                still.append(entry)
            pending = still
            if pending and time.monotonic() > deadline:
                raise LabError(f"tcpdump on {pending[0][1].label} not ready after {READY_TIMEOUT_S:.0f} s")
            if pending:
                time.sleep(0.01)

    def stop(self) -> None:
        for p, *_ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # tcpdump flushes its file on SIGINT
        for p, *_ in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def sightings(self) -> list[Sighting]:
        found: list[Sighting] = []
        for _, point, direction, pcap, _ in self.procs:
            for ts_ns, frame, wire_len in read_pcap(pcap):
                found.append(Sighting(ts_ns, point, direction, frame, wire_len))
        # Stable: a packet seen at the same instant on two hops keeps capture-point order
        # (client -> host veth -> docker0 -> eth0 -> inet), which is the way most packets go.
        order = {p: i for i, p in enumerate(self.points)}
        found.sort(key=lambda s: (s.ts_ns, order[s.point], s.direction == "tx"))
        return found


def read_pcap(path: Path) -> list[tuple[int, bytes, int]]:
    """(ts_ns, frame, wire length) of each record of a classic pcap file (tcpdump -w).

    Plain struct: the format is two fixed headers, and this keeps nanosecond stamps exact.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<",
              b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if endian is None:
        raise LabError(f"{path}: not a pcap file written by tcpdump")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    out = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, wire_len = struct.unpack_from(endian + "IIII", data, off)
        off += 16
        frame = data[off : off + caplen]
        if len(frame) < caplen:
            break  # tcpdump was stopped mid-record
        off += caplen
        out.append((sec * 1_000_000_000 + (frac if nano else frac * 1000), frame, wire_len))
    return out


def write_pcapng(sightings: list[Sighting], path: Path) -> int:
    """One pcapng through hoptrace's own recorder; returns the number of packets written."""
    import numpy as np

    from tracer import _core
    from tracer.model import Dir, HopLabel, ObsBatch, Src, obs_dtype
    from tracer.sinks.record import PcapngRecorder

    points: list[CapturePoint] = []
    for s in sightings:
        if s.point not in points:
            points.append(s.point)
    hops = [HopLabel(node=p.node, iface=p.iface, netns=p.netns, ifindex=p.ifindex, linktype=1) for p in points]
    rows = _core.decode_frames([s.frame for s in sightings], 1).view(obs_dtype())
    lengths = np.array([len(s.frame) for s in sightings], dtype=np.int64)
    rows["ts_ns"] = [s.ts_ns for s in sightings]
    rows["hop"] = [points.index(s.point) for s in sightings]
    rows["dir"] = [Dir.RX if s.direction == "rx" else Dir.TX for s in sightings]
    rows["source"] = Src.PCAP
    rows["netns"] = [s.point.netns for s in sightings]
    rows["ifindex"] = [s.point.ifindex for s in sightings]
    rows["frame_off"] = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(sightings) else []
    rows["frame_len"] = lengths
    rows["wire_len"] = [s.wire_len for s in sightings]
    batch = ObsBatch(rows=rows, hops=hops, frames=b"".join(s.frame for s in sightings))
    path.unlink(missing_ok=True)
    rec = PcapngRecorder(str(path), snaplen=SNAPLEN)
    try:
        rec.on_batch(batch)
    finally:
        rec.close()
    return len(sightings)


def capture_scenario(lab: Lab, scenario: str, out: Path) -> tuple[ScenarioResult, int]:
    """Run ``scenario`` while capturing every hop; write ``out`` (pcapng)."""
    points = capture_points(lab)
    with tempfile.TemporaryDirectory(prefix="hoptrace-capture-") as tmp:
        cap = HopCapture(lab, points, Path(tmp))
        with cap:
            result = lab.run(scenario)
            time.sleep(SETTLE_S)
        sightings = cap.sightings()
    if not sightings:
        raise LabError(f"scenario {scenario}: nothing was captured on any hop")
    return result, write_pcapng(sightings, out)
