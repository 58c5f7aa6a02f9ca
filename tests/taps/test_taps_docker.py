"""TapSource on a real Docker network: dockerd (in the lab's host namespace) made docker0,
the veths and the NAT rules; the taps find them through the default interface set."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.taps.helpers import (
    INTERNET_PING_REPLY,
    INTERNET_PING_REQUEST,
    PUBLISHED_PORT_SYN,
    Capture,
    correlate,
    expected,
    find_path,
    host_veths,
    lab_ifaces,
    lab_inodes,
)
from tracer.lab import addresses as A
from tracer.model import PacketPath
from tracer.sources.taps import TapSource

# The target is 2 s (typically ~0.2-0.6 s here); the bound is looser so that a loaded
# machine does not fail a functional test on timing.
HOTPLUG_S = 5.0

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]


def _seq(p: PacketPath, inodes: dict[int, str]) -> list[tuple[str, str, str | None]]:
    """Hops named by lab node (container names may differ from the lab's labels)."""
    return [(inodes[h.netns], h.ifname, h.direction) for h in p.hops]


@pytest.fixture
def docker_host(lab_docker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names come from this lab's dockerd even when other docker labs are up (topology
    only guesses the Docker endpoint when there is exactly one)."""
    from tracer.lab import docker_builder

    monkeypatch.setenv("DOCKER_HOST", docker_builder.docker_host(lab_docker))


def test_docker_default_set_and_scenarios(lab_docker: Any, docker_host: None) -> None:
    inodes = lab_inodes(lab_docker)
    veths = host_veths(lab_docker)
    ifaces = lab_ifaces(lab_docker)
    assert len(ifaces) == 6, ifaces  # docker0, 2 veths, uplink, 2 container eth0
    with Capture(TapSource(ifaces)) as cap:
        for scenario in ("internet-ping", "published-port"):
            result = lab_docker.run(scenario)
            assert result.ok, f"{scenario}: {result.detail}"
        paths = correlate(cap.stop())
    assert cap.src.lost_events == 0
    req = find_path(paths, lambda o: o.proto == 1 and o.icmp_type == 8 and o.dst == A.SERVER)
    assert _seq(req, inodes) == expected(INTERNET_PING_REQUEST, veths)
    assert [(n.kind, n.hook, n.from_hop, n.to_hop, n.after.src) for n in req.nat] == [
        ("snat", "POSTROUTING", 2, 3, A.HOST_UPLINK)]
    rep = find_path(paths, lambda o: o.proto == 1 and o.icmp_type == 0 and o.src == A.SERVER)
    assert _seq(rep, inodes) == expected(INTERNET_PING_REPLY, veths)
    syn = find_path(paths, lambda o: o.proto == 6 and o.tcp_flags == 0x02
                    and o.dport == A.PUBLISHED_PORT)
    assert _seq(syn, inodes) == expected(PUBLISHED_PORT_SYN, veths)
    assert [(n.kind, n.hook, n.from_hop, n.to_hop, n.after.dst, n.after.dport) for n in syn.nat] == [
        ("dnat", "PREROUTING", 0, 1, A.WEB, A.WEB_PORT)]
    # Hops are named: the containers by their Docker names, the lab's host as "host".
    assert {h.node for p in paths for h in p.hops} == {"client", "web", "host"}


def test_docker_container_started_and_stopped_while_tracing(lab_docker: Any, docker_host: None) -> None:
    """`docker run` while tracing: the new container's eth0 and its host veth get taps within
    2 s (the default set is re-read); `docker rm -f`: they close with a notice, tracing goes on."""
    from tracer.lab import docker_builder

    dc = docker_builder.client(lab_docker)
    notices: list[str] = []
    mine = lab_inodes(lab_docker)
    # full_every_s=60: only the namespace-change detection can pick the new one up in time.
    src = TapSource(None, full_every_s=60, notices=notices.append)
    with Capture(src) as cap:
        extra = dc.containers.run(docker_builder.IMAGE, ["/bin/sleep", "600"], detach=True,
                                  name=f"hoptest-extra-{lab_docker.prefix[-8:]}")
        try:
            pid = dc.api.inspect_container(extra.id)["State"]["Pid"]
            from tracer.sources.names import netns_inode

            netns = netns_inode(f"/proc/{pid}/ns/net")
            t0 = time.monotonic()
            while not any(t.spec.netns == netns for t in list(src.taps.values())):
                assert time.monotonic() - t0 < HOTPLUG_S, f"new container not tapped: {notices}"
                time.sleep(0.05)
            # Named by the Docker API (within a re-discovery round if the namespace came first).
            while {t.spec.node for t in list(src.taps.values()) if t.spec.netns == netns} != {extra.name}:
                assert time.monotonic() - t0 < HOTPLUG_S, f"container never named: {notices}"
                time.sleep(0.05)
        finally:
            extra.remove(force=True)
        t0 = time.monotonic()
        while any(t.spec.netns == netns for t in list(src.taps.values())):
            assert time.monotonic() - t0 < HOTPLUG_S, f"stopped container's tap not closed: {notices}"
            time.sleep(0.05)
        assert lab_docker.run("container-ping").ok
        cap.stop()
    assert f"tap {extra.name}/eth0 closed: the interface went away" in notices
    assert any(o.netns in mine and o.proto == 1 and o.dst == A.WEB for o in cap.observations())
