"""docker-proxy recognised by its command line, and the two legs of a relayed connection linked
(tracer/annotate/relay.py), over fake /proc trees and the fixtures recorded with the userland
proxy on."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import FIXTURES
from tracer.annotate.relay import (
    DockerProxy,
    ProxyArgs,
    ProxyTable,
    docker_proxy,
    far_node,
    link_relays,
    owner_proxy,
    proxy_args,
    relay_phrase,
    scan_proxies,
)
from tracer.engine import Engine
from tracer.lab import addresses as A
from tracer.model import PacketPath
from tracer.sources.files import open_files

ARGV = ["/usr/sbin/docker-proxy", "-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port", "8080",
        "-container-ip", "172.17.0.2", "-container-port", "80"]
WEB_80 = ProxyArgs("tcp", "0.0.0.0", 8080, "172.17.0.2", 80)


def test_the_command_line_makes_a_docker_proxy() -> None:
    assert proxy_args(ARGV) == WEB_80
    # Go's other spellings, and any binary name (renamed, a wrapper): the flags decide.
    assert proxy_args(["/opt/x/proxy", "--proto=tcp", "-host-ip=::", "--host-port", "9090",
                       "-container-ip", "fd00::2", "-container-port=443"]) == ProxyArgs(
        "tcp", "::", 9090, "fd00::2", 443)
    assert proxy_args(["docker-proxy", "-proto", "udp", *ARGV[3:]]) == ProxyArgs(
        "udp", "0.0.0.0", 8080, "172.17.0.2", 80)


@pytest.mark.parametrize("argv", [
    ["docker-proxy"],  # a process merely named so
    ARGV[:-2],  # a flag missing
    ARGV[:-1],  # a flag without its value
    [*ARGV[:2], "icmp", *ARGV[3:]],  # no such protocol
    [*ARGV[:6], "70000", *ARGV[7:]],  # no such port
    [*ARGV[:6], "0", *ARGV[7:]],
    [*ARGV[:8], "172.17.0.256", *ARGV[9:]],  # no address
    [*ARGV[:8], "web\x1b[31m", *ARGV[9:]],  # terminal escapes are no address either
])
def test_not_a_docker_proxy(argv: list[str]) -> None:
    assert proxy_args(argv) is None


def test_what_a_proxy_accepts_and_dials() -> None:
    assert WEB_80.accepts("tcp", A.HOST_UPLINK, 8080) and WEB_80.accepts("tcp", "127.0.0.1", 8080)
    assert not WEB_80.accepts("tcp", A.HOST_UPLINK, 8081) and not WEB_80.accepts("udp", A.HOST_UPLINK, 8080)
    assert not WEB_80.accepts("tcp", "::1", 8080)  # "0.0.0.0" listens on IPv4 only
    only = ProxyArgs("tcp", "127.0.0.1", 8080, "172.17.0.2", 80)
    assert only.accepts("tcp", "127.0.0.1", 8080) and not only.accepts("tcp", A.HOST_UPLINK, 8080)
    assert WEB_80.dials("tcp", "172.17.0.2", 80) and not WEB_80.dials("tcp", "172.17.0.3", 80)


def fake_proc(root: Path, pid: int, argv: list[bytes], comm: bytes = b"docker-proxy",
              netns: bool = True) -> None:
    d = root / str(pid)
    (d / "ns").mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    (d / "comm").write_bytes(comm + b"\n")
    if netns:
        (d / "ns" / "net").write_text("")


def test_scan_finds_proxies_and_survives_what_proc_throws(tmp_path: Path) -> None:
    fake_proc(tmp_path, 42, [a.encode() for a in ARGV])
    # A comm with invalid UTF-8 and escapes: kept as text (replaced), never a crash.
    fake_proc(tmp_path, 43, [a.encode() for a in ARGV], comm=b"dp\xff\x1b[2J")
    fake_proc(tmp_path, 44, [b"sleep", b"100"])
    fake_proc(tmp_path, 45, [a.encode() for a in ARGV], netns=False)  # exited meanwhile: ns gone
    fake_proc(tmp_path, 46, [b"x" * 5000])  # too long to be one
    (tmp_path / "47").mkdir()  # no cmdline at all
    (tmp_path / "self").mkdir()
    found = scan_proxies(str(tmp_path))
    inode = os.stat(tmp_path / "42" / "ns" / "net").st_ino
    assert [(p.pid, p.comm, p.netns, p.args) for p in found] == [
        (42, "docker-proxy", inode, WEB_80), (43, "dp\ufffd\x1b[2J", os.stat(tmp_path / "43" / "ns" / "net").st_ino,
                                             WEB_80)]
    assert docker_proxy(str(tmp_path), 999) is None
    assert scan_proxies(str(tmp_path / "nosuch")) == []


def test_the_table_is_read_again_when_stale(tmp_path: Path) -> None:
    calls: list[str] = []

    def scan(proc: str) -> list[DockerProxy]:
        calls.append(proc)
        return [DockerProxy(7, "docker-proxy", 11, WEB_80)]

    table = ProxyTable(str(tmp_path), refresh_s=60, scan=scan)
    assert table.accepting(11, "tcp", "127.0.0.1", 8080) is not None
    assert table.accepting(12, "tcp", "127.0.0.1", 8080) is None  # another namespace's port
    assert len(calls) == 1
    table.refresh_s = 0
    table.proxies()
    assert len(calls) == 2


def replay(name: str) -> list[PacketPath]:
    fx = FIXTURES / f"{name}.pcapng"
    assert fx.exists(), f"missing {fx}: python -m tracer.lab.fixtures hairpin localhost-port"
    out: list[PacketPath] = []
    for events in Engine(open_files([str(fx)], [])).events():
        out.extend(e for e in events if isinstance(e, PacketPath))
    return out


def host_netns(paths: list[PacketPath]) -> int:
    return next(h.netns for p in paths for h in p.hops if h.node == "host")


class FixedTable(ProxyTable):
    def __init__(self, proxies: list[DockerProxy]) -> None:
        super().__init__("/nonexistent", scan=lambda _proc: proxies)


@pytest.mark.parametrize(("name", "client"), [("hairpin-proxy-ebpf", (A.CLIENT, A.HOST_UPLINK)),
                                               ("localhost-port-proxy-ebpf", ("127.0.0.1", "127.0.0.1")),
                                               ("hairpin-proxy", (A.CLIENT, A.HOST_UPLINK))])
def test_the_two_legs_of_a_recorded_relay_are_linked(name: str, client: tuple[str, str]) -> None:
    paths = replay(name)
    proxy = DockerProxy(4242, "docker-proxy", host_netns(paths), WEB_80)
    relays = link_relays(paths, FixedTable([proxy]))
    assert len(relays) == 1
    r = relays[0]
    assert (r.inbound.first.src, r.inbound.last.dst, r.inbound.last.dport) == (*client, A.PUBLISHED_PORT)
    assert r.outbound is not None
    assert (r.outbound.first.src, r.outbound.first.dst, r.outbound.first.dport) == (A.GATEWAY, A.WEB, A.WEB_PORT)
    assert r.outbound.flow != r.inbound.flow
    assert (r.answer(), far_node(r)) == ("answered", "web")
    assert relay_phrase(r, far_node(r)) == (
        f"accepted by docker-proxy (pid 4242) on host, relayed to web:80 from {A.GATEWAY}:"
        f"{r.outbound.first.sport}: web answered")
    # Each leg names the other: its flow and every one of its paths.
    flows = {p.flow: [q.id for q in paths if q.flow == p.flow] for p in paths if p.flow}
    inbound, outbound = r.as_json(inbound_side=True), r.as_json(inbound_side=False)
    assert inbound == {"by": {"pid": 4242, "comm": "docker-proxy"}, "peer_flow": r.outbound.flow,
                       "peer_paths": sorted(flows[r.outbound.flow], key=lambda i: int(i[1:]))}
    assert (outbound["peer_flow"], sorted(outbound["peer_paths"])) == (r.inbound.flow, sorted(flows[r.inbound.flow]))


def test_no_proxy_no_relay_and_a_natted_connection_is_none() -> None:
    paths = replay("hairpin-proxy-ebpf")
    assert link_relays(paths, FixedTable([])) == []
    # A proxy in another namespace, or for another port: not this connection's.
    other = DockerProxy(1, "docker-proxy", host_netns(paths) + 1, WEB_80)
    assert link_relays(paths, FixedTable([other])) == []
    # Without the proxy the same port is DNATed to web: nothing is delivered to the host.
    natted = replay("hairpin")
    assert link_relays(natted, FixedTable([DockerProxy(1, "docker-proxy", host_netns(natted), WEB_80)])) == []


def test_the_socket_owner_decides_when_a_lookup_is_given(tmp_path: Path) -> None:
    paths = replay("hairpin-proxy-ebpf")
    netns = host_netns(paths)

    class Lookup:
        def __init__(self, got: object) -> None:
            self.got = got
            self.asked: list[tuple[object, ...]] = []

        def owner(self, netns: int, proto: str | int, src: tuple[str, int], dst: tuple[str, int], *,
                  tcp_flags: int = 0, icmp_type: int | None = None) -> object:
            self.asked.append((netns, proto, src, dst, tcp_flags))
            return self.got

    owned = Lookup(SimpleNamespace(pid=77, comm="dp", cmdline=tuple(ARGV)))
    relays = link_relays(paths, FixedTable([]), owned)
    assert [(r.by.pid, r.by.comm) for r in relays] == [(77, "dp")]
    assert owned.asked[0][:2] == (netns, "tcp") and owned.asked[0][3] == (A.HOST_UPLINK, A.PUBLISHED_PORT)
    # Another process owns it (no docker-proxy command line, its /proc gone): no relay.
    assert link_relays(paths, FixedTable([]), Lookup(SimpleNamespace(pid=5, comm="nginx", cmdline=("nginx",)))) == []
    assert link_relays(paths, FixedTable([]), Lookup(SimpleNamespace(pid=None, comm=None, cmdline=()))) == []
    assert owner_proxy(Lookup(None), str(tmp_path), netns, "tcp", ("a", 1), ("b", 2)) is None


def test_the_probe_gives_the_far_ends_verdict() -> None:
    """tracer/commands/reach.py ``judge``: docker-proxy's SYN-ACK is not the answer; the container's is."""
    import dataclasses

    from tracer.commands.reach import Sent, judge, parse_target

    paths = replay("hairpin-proxy-ebpf")
    relays = link_relays(paths, FixedTable([DockerProxy(4242, "docker-proxy", host_netns(paths), WEB_80)]))
    r = relays[0]
    target = parse_target(f"{A.HOST_UPLINK}:{A.PUBLISHED_PORT}", None)
    sent = Sent(ident=r.inbound.first.sport or 0, seqs=[1], answered=True)
    netns = r.inbound.first.netns
    got = judge(target, sent, netns, paths, (), relays)
    assert (got.verdict, got.ok, got.relay) == ("reachable", True, r)
    assert got.detail == relay_phrase(r, "web")
    assert r.outbound in got.replies  # the proxy's own connection is shown with the probe's
    # Only docker-proxy answered (the container's SYN-ACK never came): no reply, exit 1.
    silent = dataclasses.replace(r, outbound_paths=(r.outbound,))
    got = judge(target, sent, netns, paths, (), [silent])
    assert (got.verdict, got.ok) == ("no reply", False)
    assert got.detail.endswith(f"relayed to web:80 from {A.GATEWAY}:{r.outbound.first.sport}: no answer from web")
    # No relay known (no docker-proxy here): docker-proxy's SYN-ACK reads as the answer, as before.
    assert judge(target, sent, netns, paths, (), []).detail == f"{A.HOST_UPLINK}:{A.PUBLISHED_PORT} answered"
