"""decode_frames: every link type, protocol and edge case, frames built with scapy."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP

from tests.reference.decode import (
    DECODED_FIELDS,
    decode_frames,
    decode_one,
    digest_array,
    digest_bytes,
    mix64,
)
from tracer.model import (
    HAS_FLOW_LABEL,
    HAS_FRAG,
    HAS_ICMP,
    HAS_INNER,
    HAS_IP_ID,
    HAS_L4_PORTS,
    HAS_TCP,
    HopLabel,
    ObsBatch,
    Observation,
)

ETH = Ether(src="02:42:ac:11:00:02", dst="02:42:ac:11:00:01")
PAYLOAD = b"hoptrace-payload-0123456789"


def one(frame: bytes, linktype: int = 1) -> Observation:
    rows = decode_frames([frame], linktype)
    return ObsBatch(rows=rows, hops=[HopLabel("n", "i")]).observations()[0]


def fields(o: Observation, *names: str) -> tuple[object, ...]:
    return tuple(getattr(o, n) for n in names)


def test_ipv4_icmp_echo_over_ethernet() -> None:
    o = one(bytes(ETH / IP(src="172.17.0.2", dst="198.51.100.8", id=19776, ttl=64) / ICMP(id=7, seq=3) / PAYLOAD))
    assert fields(o, "family", "proto", "ethertype", "src", "dst", "ip_id", "ttl", "icmp_type",
                  "icmp_code", "icmp_id", "icmp_seq", "length", "sport", "dport", "inner") == (
        4, 1, 0x0800, "172.17.0.2", "198.51.100.8", 19776, 64, 8, 0, 7, 3, 20 + 8 + len(PAYLOAD),
        None, None, None)  # fmt: skip


def test_tcp_fields() -> None:
    f = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", id=5) / TCP(sport=40000, dport=80, seq=123456, ack=654321, flags="PA") / PAYLOAD)
    o = one(f)
    assert fields(o, "proto", "sport", "dport", "tcp_seq", "tcp_ack", "tcp_flags", "ip_id") == (
        6, 40000, 80, 123456, 654321, 0x18, 5)


def test_udp_and_sctp_ports() -> None:
    o = one(bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5353, dport=53) / PAYLOAD))
    assert fields(o, "proto", "sport", "dport", "tcp_flags", "icmp_type") == (17, 5353, 53, None, None)
    o = one(bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / SCTP(sport=9, dport=10)))
    assert fields(o, "proto", "sport", "dport") == (132, 9, 10)


def test_ipv4_options_shift_l4() -> None:
    o = one(bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR()]) / UDP(sport=1, dport=2) / PAYLOAD))
    assert fields(o, "proto", "sport", "dport") == (17, 1, 2)


@pytest.mark.parametrize("tags", [
    [Dot1Q(vlan=5)],
    [Dot1AD(vlan=100), Dot1Q(vlan=5)],  # QinQ
])  # fmt: skip
def test_vlan_tags(tags: list[object]) -> None:
    pkt = ETH
    for t in tags:
        pkt = pkt / t  # type: ignore[operator]
    o = one(bytes(pkt / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=3, dport=4)))
    assert fields(o, "family", "ethertype", "src", "dst", "sport", "dport") == (4, 0x0800, "1.1.1.1", "2.2.2.2", 3, 4)


def test_linux_cooked_v1_v2_and_raw_give_the_same_fields() -> None:
    ip = IP(src="172.17.0.2", dst="198.51.100.8", id=99) / ICMP(id=1, seq=2) / PAYLOAD
    want = one(bytes(ETH / ip))
    for frame, lt in [
        (bytes(CookedLinux(pkttype=4, proto=0x0800) / ip), 113),
        (bytes(CookedLinuxV2(proto=0x0800, ifindex=7, pkttype=0) / ip), 276),
        (bytes(ip), 101),
        (bytes(ip), 12),
        (bytes(ip), 14),
        (bytes(ip), 228),
    ]:
        got = one(frame, lt)
        assert fields(got, *_cmp) == fields(want, *_cmp), lt
    ip6 = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / PAYLOAD
    assert one(bytes(ip6), 229).src == "fd00::1"
    assert one(bytes(ip6), 101).src == "fd00::1"
    # a mislabelled raw packet: as tshark does, 228 goes by the version nibble, 229 does not
    assert (one(bytes(ip6), 228).family, one(bytes(ip), 229).family) == (6, 0)
    assert one(b"\x75" + bytes(ip)[1:], 101).family == 0


_cmp = ("family", "proto", "ethertype", "src", "dst", "ip_id", "icmp_id", "icmp_seq", "length", "digest")


def test_ipv4_fragments() -> None:
    big = IP(src="10.0.0.1", dst="10.0.0.2", id=777) / UDP(sport=1000, dport=2000) / (bytes(range(251)) * 12)
    frags = [bytes(ETH / f) for f in _fragment(big)]
    obs = ObsBatch(rows=decode_frames(frags, 1), hops=[HopLabel("n", "i")]).observations()
    first, later = obs[0], obs[1]
    assert fields(first, "is_fragment", "more_fragments", "frag_offset", "sport", "dport", "ip_id") == (
        True, True, 0, 1000, 2000, 777)
    assert fields(later, "is_fragment", "frag_offset", "sport", "dport", "ip_id", "proto") == (
        True, later.frag_offset, None, None, 777, 17)
    assert later.frag_offset > 0
    assert obs[-1].more_fragments is False
    # fragments of one datagram carry different data: different digests (equal data is told
    # apart by the correlator through ``frag``, not the digest)
    assert len({o.digest for o in obs}) == len(obs)


def _fragment(pkt: IP) -> list[IP]:
    from scapy.layers.inet import fragment

    return list(fragment(pkt, fragsize=1000))


def test_ipv6_extension_headers_and_flow_label() -> None:
    pkt = (ETH / IPv6(src="2001:db8::1", dst="2001:db8::2", fl=0xABCDE, hlim=63) / IPv6ExtHdrHopByHop()
           / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / TCP(sport=5, dport=6, flags="S"))  # fmt: skip
    o = one(bytes(pkt))
    assert fields(o, "family", "proto", "flow_label", "ttl", "sport", "dport", "ip_id", "is_fragment") == (
        6, 6, 0xABCDE, 63, 5, 6, None, False)
    assert o.length == len(bytes(pkt)) - 14


def test_ipv6_fragment_header() -> None:
    first = ETH / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=0xDEADBEEF, m=1, offset=0) / UDP(sport=7, dport=8) / PAYLOAD
    later = ETH / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=0xDEADBEEF, m=0, offset=100, nh=17) / PAYLOAD
    a, b = one(bytes(first)), one(bytes(later))
    assert fields(a, "proto", "ip_id", "is_fragment", "more_fragments", "sport", "dport") == (17, 0xDEADBEEF, True, True, 7, 8)
    assert fields(b, "proto", "ip_id", "is_fragment", "more_fragments", "frag_offset", "sport") == (
        17, 0xDEADBEEF, True, False, 800, None)


def test_icmp6_echo_and_error() -> None:
    o = one(bytes(ETH / IPv6(src="fd00::2", dst="fd00::8") / ICMPv6EchoRequest(id=44, seq=5) / PAYLOAD))
    assert fields(o, "proto", "icmp_type", "icmp_id", "icmp_seq") == (58, 128, 44, 5)
    o = one(bytes(ETH / IPv6(src="fd00::8", dst="fd00::2") / ICMPv6EchoReply(id=44, seq=5)))
    assert fields(o, "icmp_type", "icmp_id") == (129, 44)
    quoted = IPv6(src="fd00::2", dst="fd00::99") / UDP(sport=4444, dport=53) / PAYLOAD
    o = one(bytes(ETH / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6DestUnreach(code=3) / quoted))
    assert o.inner is not None
    assert (o.icmp_type, o.inner.src, o.inner.dst, o.inner.proto, o.inner.sport, o.inner.dport) == (
        1, "fd00::2", "fd00::99", 17, 4444, 53)


def test_icmp_error_quotes_header_and_digest_is_nat_invariant() -> None:
    """The quoted packet of an ICMP error is NATed too: its digest must not change."""

    def err(outer_dst: str, inner_src: str, sport: int) -> bytes:
        quoted = IP(src=inner_src, dst="198.51.100.8", id=4242, ttl=1) / UDP(sport=sport, dport=33434) / PAYLOAD
        return bytes(ETH / IP(src="203.0.113.1", dst=outer_dst, ttl=64) / ICMP(type=11, code=0) / quoted)

    before = one(err("203.0.113.2", "203.0.113.2", 61000))  # outside, before conntrack un-NATs it
    after = one(err("172.17.0.2", "172.17.0.2", 40000))  # inside, after
    assert after.inner is not None
    assert (after.inner.src, after.inner.dst, after.inner.proto, after.inner.sport, after.inner.dport) == (
        "172.17.0.2", "198.51.100.8", 17, 40000, 33434)
    assert after.digest == before.digest
    # a different quoted packet (another IP ID) is a different digest
    other = bytes(ETH / IP(src="203.0.113.1", dst="172.17.0.2") / ICMP(type=11)
                  / IP(src="172.17.0.2", dst="198.51.100.8", id=4243, ttl=1) / UDP(sport=40000, dport=33434) / PAYLOAD)  # fmt: skip
    assert one(other).digest != after.digest


def test_icmp_error_quoting_an_echo_gives_its_id() -> None:
    quoted = IP(src="172.17.0.2", dst="198.51.100.9") / ICMP(id=555, seq=1) / PAYLOAD
    o = one(bytes(ETH / IP(src="172.17.0.1", dst="172.17.0.2") / ICMP(type=3, code=1) / quoted))
    assert o.inner is not None
    assert (o.inner.proto, o.inner.sport, o.icmp_id, o.icmp_seq) == (1, 555, 0, 0)
    # NAT rewrites the quoted echo id: the digest must not see it
    quoted2 = IP(src="203.0.113.2", dst="198.51.100.9") / ICMP(id=9999, seq=1) / PAYLOAD
    o2 = one(bytes(ETH / IP(src="203.0.113.1", dst="203.0.113.2") / ICMP(type=3, code=1) / quoted2))
    assert o2.digest == o.digest


def test_digest_is_nat_invariant_and_payload_sensitive() -> None:
    a = one(bytes(ETH / IP(src="172.17.0.2", dst="198.51.100.8", ttl=64) / ICMP(id=7, seq=1) / PAYLOAD))
    b = one(bytes(ETH / IP(src="203.0.113.2", dst="198.51.100.8", ttl=63) / ICMP(id=33, seq=1) / PAYLOAD))
    c = one(bytes(ETH / IP(src="172.17.0.2", dst="198.51.100.8") / ICMP(id=7, seq=1) / (b"!" + PAYLOAD[1:])))
    assert a.digest == b.digest
    assert a.digest != c.digest
    t1 = one(bytes(ETH / IP(src="172.17.0.2", dst="1.2.3.4") / TCP(sport=40000, dport=80) / PAYLOAD))
    t2 = one(bytes(ETH / IP(src="203.0.113.2", dst="1.2.3.4") / TCP(sport=61000, dport=80) / PAYLOAD))
    assert t1.digest == t2.digest


def test_digest_numpy_twin_matches_python() -> None:
    rng = random.Random(7)
    ns = [rng.randrange(0, 70000) for _ in range(200)]
    datas = [bytes(rng.randrange(256) for _ in range(16)) for _ in range(200)]
    w = np.array([struct.unpack("<QQ", d) for d in datas], dtype=np.uint64)
    got = digest_array(np.array(ns, dtype=np.uint64), w[:, 0], w[:, 1])
    assert got.tolist() == [mix64(n, *struct.unpack("<QQ", d)) for n, d in zip(ns, datas, strict=True)]
    assert digest_bytes(5, b"abc") == mix64(5, int.from_bytes(b"abc", "little"), 0)


def test_arp_is_l2_with_protocol_addresses() -> None:
    rows = decode_frames([bytes(ETH / ARP(op=1, psrc="172.17.0.2", pdst="172.17.0.1"))], 1)
    r = rows[0]
    assert (int(r["family"]), int(r["ethertype"]), bytes(r["src"]), bytes(r["dst"]), int(r["length"])) == (
        0, 0x0806, bytes([172, 17, 0, 2]), bytes([172, 17, 0, 1]), 28)
    reply = decode_frames([bytes(ETH / ARP(op=2, psrc="172.17.0.2", pdst="172.17.0.1"))], 1)[0]
    assert int(reply["digest"]) != int(r["digest"])


def test_other_ethertype_and_802_3() -> None:
    o = one(bytes(Ether(type=0x88CC) / (b"\0" * 40)))
    assert fields(o, "family", "ethertype") == (0, 0x88CC)
    o = one(bytes(Ether(dst="01:80:c2:00:00:00", type=0x26)) + b"\x42\x42\x03" + b"\0" * 35)
    assert fields(o, "family") == (0,)


@pytest.mark.parametrize("cut", range(0, 80, 3))
def test_truncated_frames_never_raise(cut: int) -> None:
    f = bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=3) / IP(src="10.0.0.2", dst="10.0.0.3") / TCP())
    rows = decode_frames([f[:cut]], 1)
    fam = int(rows[0]["family"])
    assert fam == (4 if cut >= 34 else 0)


def test_garbage_never_raises() -> None:
    rng = random.Random(1)
    frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120))) for _ in range(3000)]
    for lt in (1, 113, 276, 101, 228, 229, 12345):
        rows = decode_frames(frames, lt)
        assert len(rows) == len(frames)
    # bad version nibble / header length: not IP
    bad = bytearray(bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / UDP()))
    bad[14] = 0x43  # IHL 3
    assert one(bytes(bad)).family == 0
    bad[14] = 0x45
    bad[16:18] = b"\x00\x13"  # total length 19 < header length: bogus
    assert one(bytes(bad)).family == 0
    bad[16:18] = b"\x00\x00"  # total length 0: TSO, the captured length counts
    assert (one(bytes(bad)).family, one(bytes(bad)).length) == (4, 0)


def test_has_bits_and_mixed_linktypes() -> None:
    frames = [
        bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / TCP()),
        bytes(IPv6(src="::1", dst="::2") / UDP()),
        bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP()),
    ]
    rows = decode_frames(frames, [1, 101, 1])
    assert rows["has"].tolist() == [
        HAS_IP_ID | HAS_L4_PORTS | HAS_TCP,
        HAS_FLOW_LABEL | HAS_L4_PORTS,
        HAS_IP_ID | HAS_ICMP,
    ]
    # fields decode does not own stay zero for the caller
    assert (rows["ts_ns"].tolist(), rows["hop"].tolist(), rows["dir"].tolist()) == ([0] * 3, [0] * 3, [0] * 3)
    assert HAS_FRAG and HAS_INNER


def test_decode_one_matches_batch_and_memoryview() -> None:
    f = bytes(ETH / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=1, dport=2) / PAYLOAD)
    t = decode_one(f, 0, len(f), 1)
    assert len(t) == len(DECODED_FIELDS)
    rows = decode_frames([memoryview(f)], 1)
    assert int(rows[0]["digest"]) == t[DECODED_FIELDS.index("digest")]


def test_empty_input() -> None:
    assert len(decode_frames([], 1)) == 0


def test_ipv6_header_behind_ipv4_ethertype_is_decoded_as_ipv6() -> None:
    """tshark (the oracle) hands a version-6 header on the IPv4 ethertype to IPv6: so do we."""
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2)
    o = one(bytes(Ether(type=0x0800) / ip6))
    assert fields(o, "family", "ethertype", "src", "dst", "proto", "sport") == (6, 0x0800, "2001:db8::1", "2001:db8::2", 17, 1)


def test_vector_path_equals_scalar_reference() -> None:
    """The numpy fast path and decode_one agree byte for byte, on good, odd and broken frames."""
    from tests.reference.decode import _vector, decode_scalar

    rng = random.Random(3)
    good = [
        bytes(ETH / IP(src="172.17.0.2", dst="198.51.100.8", id=9) / ICMP(id=7, seq=3) / PAYLOAD),
        bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2, flags="S") / PAYLOAD),
        bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3, dport=4)),
        bytes(ETH / IPv6(src="fd00::1", dst="fd00::2", fl=5) / ICMPv6EchoRequest(id=1, seq=2) / PAYLOAD),
        bytes(ETH / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=5, dport=6)),
        bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=11) / IP(src="1.1.1.1", dst="2.2.2.2") / UDP()),
        bytes(ETH / Dot1Q(vlan=2) / IP(src="1.1.1.1", dst="2.2.2.2") / UDP()),
        bytes(ETH / ARP(psrc="172.17.0.2", pdst="172.17.0.1")),
        bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP() / (b"x" * 40)),
        bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", proto=47) / (b"y" * 20)),
    ]
    frames = list(good)
    for _ in range(3000):  # mutations: flipped bytes and cuts
        f = bytearray(rng.choice(good))
        for _ in range(rng.randrange(0, 4)):
            f[rng.randrange(len(f))] = rng.randrange(256)
        frames.append(bytes(f[: rng.randrange(0, len(f) + 1)]))
    for lt, cut in ((1, 0), (101, 14), (228, 14), (229, 14), (113, -2), (276, -6)):
        fs = [(b"\0" * -cut + f) if cut < 0 else f[cut:] for f in frames]
        buf = b"".join(fs)
        offs = [0]
        for f in fs[:-1]:
            offs.append(offs[-1] + len(f))
        lens = [len(f) for f in fs]
        assert _vector(buf, offs, lens, lt).tobytes() == decode_scalar(buf, offs, lens, lt).tobytes(), lt


def test_addresses_ending_in_zero_bytes_survive_the_row_view() -> None:
    """numpy's S16 drops trailing NULs: 10.1.0.0 must still read back as 10.1.0.0."""
    o = one(bytes(ETH / IP(src="10.1.0.0", dst="192.168.1.0") / ICMP()))
    assert (o.src, o.dst) == ("10.1.0.0", "192.168.1.0")
    o6 = one(bytes(ETH / IPv6(src="2001:db8::", dst="fd00::") / UDP()))
    assert (o6.src, o6.dst) == ("2001:db8::", "fd00::")
