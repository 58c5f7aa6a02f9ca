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
    RelayLinker,
    docker_proxy,
    far_node,
    link_relays,
    owner_proxy,
    proxy_args,
    relay_phrase,
    relay_text,
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


# --------------------------------------------------------------------------
# Live: the linker, the lookup that feeds it, and the core's table
# --------------------------------------------------------------------------

IN_KEY = (4, 6, A.CLIENT, 40000, A.HOST_UPLINK, 8080)
OUT_KEY = (4, 6, A.GATEWAY, 35216, A.WEB, 80)


def reply_of(key: tuple[int, int, str, int, str, int]) -> tuple[int, int, str, int, str, int]:
    return (key[0], key[1], key[4], key[5], key[2], key[3])


def linker_with(tmp_path: Path) -> tuple[RelayLinker, int]:
    fake_proc(tmp_path, 4242, [a.encode() for a in ARGV])
    fake_proc(tmp_path, 5, [b"/usr/sbin/nginx"], comm=b"nginx")
    netns = os.stat(tmp_path / "4242" / "ns" / "net").st_ino
    table = ProxyTable(str(tmp_path), refresh_s=3600)
    return RelayLinker(table, window_ns=1_000_000_000), netns


def test_the_linker_pairs_what_the_proxy_took_with_its_own_connection(tmp_path: Path) -> None:
    linker, netns = linker_with(tmp_path)
    linker.observe(netns, IN_KEY, 100, 4242)  # docker-proxy's socket took the client's SYN
    assert linker.take() == []
    # The container's SYN-ACK to docker-proxy's own connection; its socket gone already.
    linker.observe(netns, reply_of(OUT_KEY), 150, None)
    (pair,) = linker.take()
    assert (pair.inbound, pair.outbound, pair.by.pid, pair.by.comm, pair.confirmed) == (
        IN_KEY, OUT_KEY, 4242, "docker-proxy", False)
    assert linker.take() == []
    # Its own connection's socket still there: confirmed by the owner.
    linker.observe(netns, (4, 6, A.CLIENT, 40009, A.HOST_UPLINK, 8080), 200, 4242)
    linker.observe(netns, reply_of((4, 6, A.GATEWAY, 9, A.WEB, 80)), 210, 4242)
    assert [(p.outbound[3], p.confirmed) for p in linker.take()] == [(9, True)]


def test_the_linker_pairs_in_time_order_and_ignores_what_is_not_the_proxys(tmp_path: Path) -> None:
    linker, netns = linker_with(tmp_path)
    late = (4, 6, A.GATEWAY, 1, A.WEB, 80)
    linker.observe(netns, reply_of(late), 50, None)  # before any inbound leg: dropped
    linker.observe(netns, IN_KEY, 100, 4242)
    second = (4, 6, A.CLIENT, 40001, A.HOST_UPLINK, 8080)
    linker.observe(netns, second, 110, None)  # no owner any more: the proxy table says whose port
    linker.observe(netns, reply_of((4, 6, A.GATEWAY, 2, A.WEB, 80)), 120, 5)  # nginx's: not a leg
    linker.observe(netns + 1, reply_of((4, 6, A.GATEWAY, 3, A.WEB, 80)), 120, None)  # another namespace
    linker.observe(netns, reply_of(OUT_KEY), 130, 99999)  # its owner exited since: the table decides
    linker.observe(netns, reply_of((4, 6, A.GATEWAY, 4, A.WEB, 80)), 140, None)
    assert [(p.inbound, p.outbound[3], p.confirmed) for p in linker.take()] == [
        (IN_KEY, 35216, False), (second, 4, False)]
    # An inbound leg whose outbound comes past the window pairs with nothing.
    linker.observe(netns, (4, 6, A.CLIENT, 40002, A.HOST_UPLINK, 8080), 200, 4242)
    linker.observe(netns, reply_of((4, 6, A.GATEWAY, 5, A.WEB, 80)), 200 + 2_000_000_000, None)
    assert linker.take() == []
    # Not TCP/UDP, or nothing of the proxy's: nothing.
    linker.observe(netns, (4, 1, A.CLIENT, 1, A.HOST_UPLINK, 1), 300, None)
    linker.observe(netns, (4, 6, A.CLIENT, 1, A.HOST_UPLINK, 9999), 300, 4242)
    assert linker.take() == []


def test_a_pair_for_the_core_and_its_story() -> None:
    from tracer.annotate.relay import Pair

    pair = Pair(IN_KEY, OUT_KEY, DockerProxy(4242, "docker-proxy", 1, WEB_80), True)
    names = {A.WEB: "web", A.CLIENT: "client"}.get
    legs_in, legs_out, by, texts, fields = pair.for_core(names)  # type: ignore[misc]
    assert legs_in[:2] == (4, 6) and legs_in[2][:4] == bytes([172, 17, 0, 3]) and len(legs_in[2]) == 16
    assert (legs_in[3], legs_in[5], legs_out[3], legs_out[5]) == (40000, 8080, 35216, 80)
    assert by == b'{"pid": 4242, "comm": "docker-proxy"}'
    assert texts == ("\u2192 docker-proxy relays to web:80 from 172.17.0.1:35216".encode(),
                     "\u2190 docker-proxy (pid 4242) relays 172.17.0.3:40000 \u2192 203.0.113.2:8080".encode())
    assert fields[0] == (b'"leg": "accepted", "peer": {"src": "172.17.0.1", "sport": 35216, "dst": "172.17.0.2", '
                         b'"dport": 80}, "peer_node": "web"')
    assert fields[1].startswith(b'"leg": "opened"') and fields[1].endswith(b'"peer_node": "client"')
    # From the JSON alone (as a recording or another program has it), the same words.
    by_d = {"pid": 4242, "comm": "docker-proxy"}
    assert relay_text({"by": by_d, **pair.leg_fields(True, names)}).encode() == texts[0]
    assert relay_text({"by": by_d, "peer_flow": "f2", "peer_paths": []}) == \
        "relayed by docker-proxy (pid 4242) with flow f2"
    hostile = {"by": {"pid": 1, "comm": "dp\x1b[2J"}, "leg": "accepted", "peer_node": "w\x07",
               "peer": {"src": "a", "sport": 1, "dst": "b", "dport": 2}}
    assert "\x1b" not in relay_text(hostile) and "\x07" not in relay_text(hostile)


def test_the_lookup_feeds_the_linker_with_every_miss_and_its_owner(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    from tracer.addr import addr_bytes
    from tracer.annotate.local import MISS_SIZE, LocalLookup
    from tracer.annotate.relay import RelayLookup, RelayWorker

    linker, netns = linker_with(tmp_path)

    def record(key: tuple[int, int, str, int, str, int], ts: int, slot: int) -> bytes:
        fam, proto, src, sport, dst, dport = key
        return struct.pack("<IIQBBBBHHQ16s16s", slot, 0, netns, fam, proto, 2, 0, sport, dport, ts,
                           addr_bytes(src)[1], addr_bytes(dst)[1])

    misses = record(IN_KEY, 100, 0) + record(reply_of(OUT_KEY), 150, 1)
    assert len(misses) == 2 * MISS_SIZE
    # The inbound key was answered (docker-proxy took it); the reply's was not (its socket gone).
    answered = [(0, 0, b'"pid": 4242, "comm": "docker-proxy"', b"delivered to docker-proxy (pid 4242)",
                 misses[:MISS_SIZE])]
    monkeypatch.setattr(LocalLookup, "answer_misses", lambda self, m: list(answered))
    lookup = RelayLookup(proc=str(tmp_path), linker=linker, addresses={A.WEB: "web"})
    assert lookup.answer_misses(misses) == answered
    worker = RelayWorker(lookup)
    (got,) = worker.take_relays()
    assert got[3][0] == "\u2192 docker-proxy relays to web:80 from 172.17.0.1:35216".encode()
    assert worker.take_relays() == []


class FakeLocal:
    """tracer/engine.py's LocalAnswers + RelayAnswers: no local answers, one relay pair."""

    def __init__(self, pair: tuple[object, ...]) -> None:
        self.pair: tuple[object, ...] | None = pair

    def submit(self, misses: bytes) -> None:
        pass

    def take(self) -> list[tuple[int, int, bytes, bytes, bytes]]:
        return []

    def settle(self, timeout_s: float) -> None:
        pass

    def take_relays(self) -> list[tuple[object, ...]]:
        got, self.pair = ([] if self.pair is None else [self.pair]), None
        return got


def relayed_replay(text: bool) -> tuple[list[bytes], dict[str, str]]:
    """hairpin-proxy-ebpf through the core with its relay known from the start: the lines, and
    the flow ids of the client's connection and the proxy's."""
    from tracer.annotate.relay import Pair
    from tracer.sinks.output import PLAIN

    paths = replay("hairpin-proxy-ebpf")
    r = link_relays(paths, FixedTable([DockerProxy(4242, "docker-proxy", host_netns(paths), WEB_80)]))[0]
    assert r.outbound is not None
    i, o = r.inbound.first, r.outbound.first
    pair = Pair((4, 6, i.src, i.sport or 0, i.dst, i.dport or 0), (4, 6, o.src, o.sport or 0, o.dst, o.dport or 0),
                r.by, True)
    core = pair.for_core({A.WEB: "web", A.CLIENT: "client"}.get)
    assert core is not None
    engine = Engine(open_files([str(FIXTURES / "hairpin-proxy-ebpf.pcapng")], []), local=FakeLocal(core))
    if text:
        assert engine.render_text(PLAIN)
    data = b"".join(lines.data for lines in engine.chunks())
    return data.split(b"\n"), {"in": str(r.inbound.flow), "out": str(r.outbound.flow)}


def test_the_core_writes_relay_on_both_legs_paths_and_flows() -> None:
    import json

    from tracer.model import Flow
    from tracer.sinks.output import flow_json, path_json

    lines, flows = relayed_replay(text=False)
    objs = [json.loads(line) for line in lines if line.strip()]
    by_flow: dict[str, list[str]] = {}
    for o in objs:
        if o["type"] == "path" and o["flow"]:
            by_flow.setdefault(o["flow"], []).append(o["id"])
    flow_objs = {o["id"]: o for o in objs if o["type"] == "flow"}
    for side, peer, leg in (("in", "out", "accepted"), ("out", "in", "opened")):
        relay = flow_objs[flows[side]]["relay"]
        assert (relay["by"], relay["peer_flow"], relay["peer_paths"], relay["leg"]) == (
            {"pid": 4242, "comm": "docker-proxy"}, flows[peer], by_flow[flows[peer]], leg)
        # Every path of the leg names the other leg (the pair was known from the start here).
        legs = [o for o in objs if o["type"] == "path" and o["flow"] == flows[side]]
        assert legs and all(o["relay"]["peer_flow"] == flows[peer] for o in legs)
        # Growing: a path's peer_paths are those the peer listed when it was written.
        assert all(set(o["relay"]["peer_paths"]) <= set(by_flow[flows[peer]]) for o in legs)
    others = [o for o in objs if (o["type"] == "path" and o["flow"] not in flows.values())
              or (o["type"] == "flow" and o["id"] not in flows.values())]
    assert all("relay" not in o for o in others)
    # The Python writers say the same as the core, byte for byte.
    for line, o in zip(lines, objs, strict=False):
        if o["type"] == "flow":
            assert json.dumps(flow_json(Flow.from_json(o))).encode() == line
        elif o["type"] == "path":
            assert json.dumps(path_json(PacketPath.from_json(o))).encode() == line


def test_the_core_text_tells_the_story_as_the_python_writer_does() -> None:
    import json

    from tracer.model import Flow
    from tracer.sinks.output import flow_text, path_text

    text, _ = relayed_replay(text=True)
    joined = b"\n".join(text).decode()
    assert "     \u2192 docker-proxy relays to web:80 from 172.17.0.1:" in joined
    assert "     \u2190 docker-proxy (pid 4242) relays 172.17.0.3:" in joined
    nd, _ = relayed_replay(text=False)
    objs = [json.loads(line) for line in nd if line.strip()]
    want = "\n\n".join(path_text(PacketPath.from_json(o)) for o in objs if o["type"] == "path")
    assert want in joined
    for o in objs:
        if o["type"] == "flow":
            assert flow_text(Flow.from_json(o)) in joined


def test_a_recording_carries_the_relay_and_its_replay_shows_it(tmp_path: Path) -> None:
    """Live links the legs; ``-w`` writes the pair as a Custom Block (kind 2); ``replay`` of the
    recording says what a run that knew the pair from the start says, byte for byte."""
    from tracer.annotate.relay import Pair
    from tracer.sinks.record import PcapngRecorder

    paths = replay("hairpin-proxy-ebpf")
    r = link_relays(paths, FixedTable([DockerProxy(4242, "docker-proxy", host_netns(paths), WEB_80)]))[0]
    assert r.outbound is not None
    i, o = r.inbound.first, r.outbound.first
    pair = Pair((4, 6, i.src, i.sport or 0, i.dst, i.dport or 0), (4, 6, o.src, o.sport or 0, o.dst, o.dport or 0),
                r.by, True).for_core({A.WEB: "web", A.CLIENT: "client"}.get)
    assert pair is not None
    rec = tmp_path / "relayed.pcapng"
    recorder = PcapngRecorder(str(rec))
    try:
        recorder.on_relays([pair])
        for batch in open_files([str(FIXTURES / "hairpin-proxy-ebpf.pcapng")], []).batches():
            recorder.on_batch(batch)
    finally:
        recorder.close()
    replayed = b"".join(lines.data for lines in Engine(open_files([str(rec)], [])).chunks())
    known, _ = relayed_replay(text=False)
    assert replayed.split(b"\n") == known
    assert replayed.count(b'"relay": {"by": {"pid": 4242, "comm": "docker-proxy"}') >= 2


def test_a_damaged_relay_block_is_left_out(tmp_path: Path) -> None:
    from tracer.annotate.relay import Pair
    from tracer.sinks.record import PcapngRecorder

    paths = replay("hairpin-proxy-ebpf")
    r = link_relays(paths, FixedTable([DockerProxy(4242, "docker-proxy", host_netns(paths), WEB_80)]))[0]
    assert r.outbound is not None
    i, o = r.inbound.first, r.outbound.first
    pair = Pair((4, 6, i.src, i.sport or 0, i.dst, i.dport or 0), (4, 6, o.src, o.sport or 0, o.dst, o.dport or 0),
                r.by, True).for_core(lambda _ip: None)
    assert pair is not None
    legs_in, legs_out, by, texts, fields = pair
    for damaged in ((legs_in, legs_out, by, texts, (b'"leg": "a\nb"', fields[1])),
                    (legs_in, legs_out, b'{"pid": 1', texts, fields)):
        rec = tmp_path / "damaged.pcapng"
        rec.unlink(missing_ok=True)
        recorder = PcapngRecorder(str(rec))
        try:
            # A newline in a leg's JSON fields would break the line; "by" must be an object:
            # refused, with the rest read (a leg of the wrong size: crates/hoptrace-core relay.rs).
            recorder.on_relays([damaged])
            for batch in open_files([str(FIXTURES / "hairpin-proxy-ebpf.pcapng")], []).batches():
                recorder.on_batch(batch)
        finally:
            recorder.close()
        out = b"".join(lines.data for lines in Engine(open_files([str(rec)], [])).chunks())
        assert b'"relay"' not in out and out.count(b'"type": "path"') == len(paths)


def test_report_counts_relayed_flows_beside_the_nat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``hoptrace report`` of a recording that carries a relay: both legs counted, said in the
    NAT section (a plain capture: 0, and nothing said)."""
    import json

    from tracer.annotate.relay import Pair
    from tracer.cli import main
    from tracer.sinks.record import PcapngRecorder

    paths = replay("hairpin-proxy-ebpf")
    r = link_relays(paths, FixedTable([DockerProxy(4242, "docker-proxy", host_netns(paths), WEB_80)]))[0]
    assert r.outbound is not None
    i, o = r.inbound.first, r.outbound.first
    pair = Pair((4, 6, i.src, i.sport or 0, i.dst, i.dport or 0), (4, 6, o.src, o.sport or 0, o.dst, o.dport or 0),
                r.by, True).for_core(lambda _ip: None)
    rec = tmp_path / "relayed.pcapng"
    recorder = PcapngRecorder(str(rec))
    try:
        recorder.on_relays([pair])
        for batch in open_files([str(FIXTURES / "hairpin-proxy-ebpf.pcapng")], []).batches():
            recorder.on_batch(batch)
    finally:
        recorder.close()
    assert main(["report", "--format", "json", str(rec)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["relayed_flows"], len(got["flows"]), got["nat"]) == (2, 2, [])
    assert main(["report", str(rec)]) == 0
    assert "  2 flows relayed by a userland proxy (docker-proxy" in capsys.readouterr().out
    assert main(["report", "--format", "json", str(FIXTURES / "hairpin-proxy-ebpf.pcapng")]) == 0
    assert json.loads(capsys.readouterr().out)["relayed_flows"] == 0
    assert main(["report", str(FIXTURES / "hairpin-proxy-ebpf.pcapng")]) == 0
    assert "relayed" not in capsys.readouterr().out
