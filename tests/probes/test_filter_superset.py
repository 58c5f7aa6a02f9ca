"""The in-kernel filter translation never drops a packet the full pcap-filter keeps (checked with libpcap)."""

from __future__ import annotations

import struct

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from probes.skb_hops import PROTO_NUMBERS, KernelFilter, kernel_filter_from_pcap
from tracer.errors import FilterError
from tracer.filter import PathFilter

ADDRS = ["10.0.0.1", "10.0.0.2", "198.51.100.8"]
PORTS = [53, 80, 8080]
PROTOS = ["tcp", "udp", "icmp"]


def frame(proto: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    if proto == "tcp":
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 512, 0, 0)
    elif proto == "udp":
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    else:
        l4 = struct.pack("!BBHHH", 8, 0, 0, 1, 1)
    num = PROTO_NUMBERS[proto]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, num, 0,
                     bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def kernel_accepts(kf: KernelFilter | None, proto: str, src: str, dst: str, sport: int, dport: int) -> bool:
    """What skb_hops.c's filter decides (without skb tracking)."""
    if kf is None:
        return True
    num = PROTO_NUMBERS[proto]
    if kf.protos and num not in kf.protos:
        return False
    if kf.addrs and src not in kf.addrs and dst not in kf.addrs:
        return False
    return not (kf.ports and (proto not in ("tcp", "udp") or (sport not in kf.ports and dport not in kf.ports)))


term = st.one_of(
    st.sampled_from(ADDRS).map(lambda a: f"host {a}"),
    st.sampled_from(PORTS).map(lambda p: f"port {p}"),
    st.sampled_from(PROTOS),
    st.sampled_from(ADDRS).map(lambda a: f"src host {a}"),
    st.sampled_from(PORTS).map(lambda p: f"dst port {p}"),
)


def _expr(depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(term, term.map(lambda t: f"not {t}"))
    if depth == 0:
        return leaf
    sub = _expr(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(["and", "or"]), sub).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        sub.map(lambda e: f"({e})"),
    )


packets = st.tuples(st.sampled_from(PROTOS), st.sampled_from(ADDRS), st.sampled_from(ADDRS),
                    st.sampled_from([*PORTS, 40000]), st.sampled_from([*PORTS, 40001]))


@settings(max_examples=500, deadline=None)
@given(_expr(3), st.lists(packets, min_size=1, max_size=8))
@example("port 80 and host 10.0.0.1 or host 10.0.0.2", [("udp", "10.0.0.2", "10.0.0.1", 40000, 53)])
@example("tcp and (port 53 or port 80) and not host 10.0.0.1", [("tcp", "10.0.0.2", "10.0.0.2", 80, 40001)])
def test_kernel_filter_is_a_superset_of_libpcap(expr: str, pkts: list[tuple[str, str, str, int, int]]) -> None:
    try:
        full = PathFilter(expr)
    except FilterError:  # libpcap refuses expressions that match nothing ("port 53 and icmp")
        assume(False)
        return
    kf = kernel_filter_from_pcap(expr)
    for p in pkts:
        if full.match(frame(*p), 1):
            assert kernel_accepts(kf, *p), (expr, kf, p)


def test_the_translation_does_filter_something() -> None:
    kf = kernel_filter_from_pcap("udp and port 53")
    assert kernel_accepts(kf, "udp", "10.0.0.1", "10.0.0.2", 40000, 53)
    assert not kernel_accepts(kf, "tcp", "10.0.0.1", "10.0.0.2", 40000, 53)
    assert not kernel_accepts(kf, "udp", "10.0.0.1", "10.0.0.2", 40000, 80)
