"""Faults on a real Docker network (the lab's own dockerd), traced with the pcap backend's
default interface set: `docker stop/start client` (its namespace, eth0 and host veth vanish and
come back new) and a dockerd restart. Tracing goes on, and datagrams from the restarted
container are traced as soon as its new veth is tapped (~2 s)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.helpers import Live
from tracer.sources.names import netns_inode

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

ECHO = ("198.51.100.8", 7)  # the lab's UDP echo server in inet
SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[1].encode(), ("198.51.100.8", 7))
"""


def start_live(lab: Any, tmp: Path) -> Live:
    from tracer.lab import docker_builder

    # the default set (no --iface): re-read as containers come and go; only the echo traffic
    return Live(tmp, "pcap", "--filter", "udp and port 7", env={"DOCKER_HOST": docker_builder.docker_host(lab)})


def send_every(pid: int, seconds: float, every_s: float = 0.2) -> list[tuple[int, str]]:
    """One tagged UDP datagram every every_s from the container's (new) namespace: (send ns, tag)."""
    sent = []
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        tag = f"hoptest-restart-{i:03d}"
        sent.append((time.monotonic_ns(), tag))
        subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-c", SEND, tag],
                       check=True, timeout=10)
        i += 1
        time.sleep(every_s)
    return sent


def traced_from(records: list[dict[str, Any]], inode: int) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "path" and r["proto"] == "udp"
            and r["hops"][0]["netns"] == inode and r["hops"][0]["dport"] == ECHO[1]]


def client_pid(lab: Any) -> int:
    """The pid of container client (started again if a dockerd restart stopped it)."""
    from tracer.lab import docker_builder

    dc = docker_builder.client(lab)
    try:
        c = dc.containers.get("client")
        if c.status != "running":
            c.start()
        c.reload()
        return int(c.attrs["State"]["Pid"])
    finally:
        dc.close()


def restart_and_check(lab: Any, live: Live, restart: Any) -> None:
    send_every(client_pid(lab), 0.1)  # traffic before (the lab's own path to client may be stale)
    restart()
    pid = client_pid(lab)
    inode = netns_inode(f"/proc/{pid}/ns/net")
    t_started = time.monotonic_ns()
    sent = send_every(pid, 4.0)
    rc, records, err = live.stop(signal.SIGINT, settle_s=1.0)
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert records[-1]["type"] == "stats"
    paths = traced_from(records, inode)
    udp = [[(h["node"], h["iface"], h["netns"], h["dport"]) for h in r["hops"]]
           for r in records if r.get("type") == "path" and r["proto"] == "udp"]
    assert paths, f"nothing traced from the restarted container ({inode}): {err} {udp[-5:]}"
    # the first traced datagram tells how long the new veth went untapped
    first_tag_sent = min(ns for ns, _tag in sent[-len(paths):])
    pickup_s = (first_tag_sent - t_started) / 1e9
    # the taps re-read the interface set every second and for 3 s after a change: ~2 s; 3 s
    # leaves room for a loaded machine (the 2 cores are shared)
    assert pickup_s <= 3.0, f"the restarted container was traced only after {pickup_s:.1f} s"
    print(f"pickup after restart: {pickup_s:.2f} s")
    # once tapped, every datagram is followed out of the container through the host
    assert len(paths) >= len(sent) - int(3.0 / 0.2) - 1, (len(paths), len(sent))
    assert max(len(p["hops"]) for p in paths) >= 3, paths[-1]["hops"]


def test_container_stop_start_while_tracing(lab_docker: Any, tmp_path: Path) -> None:
    from tracer.lab import docker_builder

    def restart() -> None:
        dc = docker_builder.client(lab_docker)
        try:
            c = dc.containers.get("client")
            c.stop(timeout=1)
            c.start()
        finally:
            dc.close()

    with start_live(lab_docker, tmp_path) as live:
        restart_and_check(lab_docker, live, restart)


def test_dockerd_restart_while_tracing(lab_docker: Any, tmp_path: Path) -> None:
    from tracer.lab import docker_builder
    from tracer.lab.state import alive, stop_procs

    def restart() -> None:
        dockerds = [p for p in lab_docker.state.procs() if p.what == "dockerd" and alive(p)]
        assert dockerds, "no dockerd of this lab is running"
        stop_procs(dockerds, timeout_s=20)
        proc = lab_docker.spawn("host", docker_builder.dockerd_argv(lab_docker), "dockerd")
        docker_builder._wait_for_api(lab_docker, proc).close()

    with start_live(lab_docker, tmp_path) as live:
        restart_and_check(lab_docker, live, restart)
