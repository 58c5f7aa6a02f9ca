"""PathFilter: libpcap's own compiler and matcher, per link type, and path-level keep()."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether

from tests.reference.decode import decode_frames
from tracer.errors import FilterError
from tracer.filter import PathFilter, synth_frame
from tracer.model import HopLabel, ObsBatch, Observation, PacketPath

ETH = Ether(src="02:42:ac:11:00:02", dst="02:42:ac:11:00:01")
PING = IP(src="172.17.0.2", dst="198.51.100.8") / ICMP(id=7, seq=1) / b"data"
NATED = IP(src="203.0.113.2", dst="198.51.100.8") / ICMP(id=33, seq=1) / b"data"


@pytest.mark.parametrize(("expr", "want"), [
    ("icmp", True), ("tcp", False), ("host 198.51.100.8", True), ("src host 172.17.0.2", True),
    ("dst host 172.17.0.2", False), ("net 172.17.0.0/16", True), ("icmp[icmptype] == icmp-echo", True),
    ("ip6", False), ("", True),
])  # fmt: skip
def test_match_on_every_link_type(expr: str, want: bool) -> None:
    f = PathFilter(expr)
    frames = {
        1: bytes(ETH / PING),
        113: bytes(CookedLinux(pkttype=4, proto=0x0800) / PING),
        276: bytes(CookedLinuxV2(proto=0x0800, ifindex=3) / PING),
        101: bytes(PING),
        228: bytes(PING),
    }
    assert {lt: f.match(fr, lt) for lt, fr in frames.items()} == {lt: want for lt in frames}


def test_ports_and_ipv6() -> None:
    f = PathFilter("tcp port 80")
    assert f.match(bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=40000, dport=80)), 1) is True
    assert f.match(bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=40000, dport=80)), 1) is False
    assert PathFilter("ip6 host fd00::1").match(bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP()), 229) is True


def test_bad_expression_is_a_filter_error_with_libpcap_message() -> None:
    with pytest.raises(FilterError, match=r"bad --filter 'hots 1\.2\.3\.4': .*syntax error"):
        PathFilter("hots 1.2.3.4")
    with pytest.raises(FilterError):
        PathFilter("port 99999999")


def test_link_specific_expression_never_matches_where_it_does_not_compile() -> None:
    f = PathFilter("ether host 02:42:ac:11:00:02")
    assert (f.match(bytes(ETH / PING), 1), f.match(bytes(PING), 101)) == (True, False)


def _path(frames: list[tuple[bytes, int, str]]) -> PacketPath:
    obs: list[Observation] = []
    for fr, lt, hop in frames:
        rows = decode_frames([fr], lt)
        rows["frame_len"] = len(fr)
        node, iface = hop.split("/")
        obs += ObsBatch(rows=rows, hops=[HopLabel(node, iface, linktype=lt)], frames=fr).observations()
    return PacketPath(id="p1", hops=tuple(obs), nat=(), verdict="left")


def test_keep_matches_at_any_hop_across_nat() -> None:
    path = _path([(bytes(ETH / PING), 1, "web/eth0"), (bytes(ETH / NATED), 1, "host/eth0")])
    assert PathFilter("src host 203.0.113.2").keep(path) is True  # only after SNAT
    assert PathFilter("src host 172.17.0.2").keep(path) is True  # only before
    assert PathFilter("host 10.9.9.9").keep(path) is False
    # link types of the hops are recognised from the frames themselves
    mixed = _path([(bytes(CookedLinuxV2(proto=0x0800, ifindex=3) / PING), 276, "host/any"),
                   (bytes(NATED), 101, "inet/raw")])  # fmt: skip
    assert PathFilter("src host 203.0.113.2").keep(mixed) is True
    assert PathFilter("dst host 172.17.0.2").keep(mixed) is False


def test_keep_without_frame_bytes_uses_the_decoded_fields() -> None:
    rows = decode_frames([bytes(ETH / IP(src="172.17.0.2", dst="1.2.3.4") / TCP(sport=40000, dport=443))], 1)
    obs = ObsBatch(rows=rows, hops=[HopLabel("web", "eth0")]).observations()  # frame_len 0: no bytes
    assert obs[0].frame == b""
    path = PacketPath(id="p", hops=tuple(obs), nat=(), verdict="left")
    assert (PathFilter("tcp dst port 443").keep(path), PathFilter("udp").keep(path)) == (True, False)
    assert synth_frame(obs[0])[:1] == b"\x45"
