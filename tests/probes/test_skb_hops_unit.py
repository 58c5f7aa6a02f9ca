"""probes.skb_hops without a kernel: the event mirror, bulk decoding of ring records, filter translation."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import Any

import pytest

from probes.skb_hops import (
    HEADER_LEN,
    EbpfSource,
    HopEvent,
    HopKind,
    KernelFilter,
    c_snaplen,
    event_type,
    kernel_filter_from_pcap,
)
from probes.utc_clock import MonoToUtc
from tracer.model import Dir, obs_dtype

UTC0 = 1_765_000_000_000_000_000  # a December 2025 instant, in ns

C_FILE = Path(__file__).resolve().parents[2] / "probes" / "skb_hops.c"


def test_mirror_has_the_c_struct_fields_in_order() -> None:
    src = C_FILE.read_text()
    body = src[src.index("struct hop_event {"):]
    body = body[: body.index("};")]
    c_fields = []
    for line in body.splitlines()[1:]:
        decl = line.split("//")[0].strip().rstrip(";")
        if decl:
            c_fields.append(decl.split()[-1].split("[")[0])
    assert [f[0] for f in HopEvent._fields_] == c_fields


def test_event_size_is_8_aligned_for_any_snaplen() -> None:
    assert {n: ctypes.sizeof(event_type(n)) % 8 for n in (14, 64, 100, 128, 1500)} == dict.fromkeys(
        (14, 64, 100, 128, 1500), 0)
    assert (c_snaplen(100), c_snaplen(128)) == (104, 128)


def test_kind_labels() -> None:
    assert [HopKind.label(v) for v in (1, 2, 3, 9)] == ["RX", "TX", "DROP", "UNKNOWN(9)"]
    assert [int(k) for k in HopKind] == [int(Dir.RX), int(Dir.TX), int(Dir.DROP)]


def _icmp_frame(src: bytes, dst: bytes, ip_id: int, seq: int) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    payload = bytes(range(16))
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, seq) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ip_id, 0, 64, 1, 0, src, dst)
    return eth + ip + icmp


def _event(kind: HopKind, frame: bytes, mac_len: int, *, skb: int, netns: int, ifindex: int, ifname: bytes,
           reason: int = 0, ts: int = 1000) -> HopEvent:
    ev = HopEvent()
    ev.ts_ns, ev.skb, ev.netns, ev.ifindex = ts, skb, netns, ifindex
    ev.kind, ev.drop_reason, ev.mac_len = int(kind), reason, mac_len
    ev.len = ev.wire_len = len(frame)
    ev.cap_len = min(len(frame), 128)
    ev.ifname = ifname
    ctypes.memmove(ctypes.addressof(ev) + HopEvent.frame.offset, frame, ev.cap_len)
    return ev


def _record(*events: HopEvent) -> bytes:
    return struct.pack("<IIQ", len(events), 0, events[0].ts_ns) + b"".join(bytes(e) for e in events)


def test_records_decode_in_bulk_into_rows_and_hops() -> None:
    frame = _icmp_frame(bytes([172, 17, 0, 2]), bytes([198, 51, 100, 8]), 777, 5)
    e1 = _event(HopKind.TX, frame, 14, skb=0xFFFF1, netns=4026532526, ifindex=2, ifname=b"eth0", ts=100)
    e2 = _event(HopKind.RX, frame, 14, skb=0xFFFF1, netns=22, ifindex=7, ifname=b"veth1", ts=200)
    e3 = _event(HopKind.DROP, frame[14:], 0, skb=0xFFFF1, netns=22, ifindex=3, ifname=b"docker0\x00\x00747", reason=77,
                ts=300)
    src = EbpfSource()
    src._dtype = __import__("numpy").dtype(HopEvent)
    src._obs_dtype = obs_dtype()
    src.layout = None
    src.clock = MonoToUtc(mono=lambda: 0, real=lambda: UTC0)  # kernel time 0 is UTC0
    batch = src._decode([_record(e1, e2), _record(e3)])
    obs = batch.observations()
    assert [(o.ts_ns, o.direction, o.netns, o.ifname, o.skb, o.src, o.dst, o.proto, o.ip_id, o.icmp_seq)
            for o in obs] == [
        (UTC0 + 100, "tx", 4026532526, "eth0", 0xFFFF1, "172.17.0.2", "198.51.100.8", 1, 777, 5),
        (UTC0 + 200, "rx", 22, "veth1", 0xFFFF1, "172.17.0.2", "198.51.100.8", 1, 777, 5),
        (UTC0 + 300, "drop", 22, "docker0", 0xFFFF1, "172.17.0.2", "198.51.100.8", 1, 777, 5),
    ]
    assert [o.drop_reason for o in obs] == [None, None, "UNKNOWN(77)"]
    assert (obs[0].frame, obs[2].frame) == (frame, frame[14:])
    assert [o.source for o in obs] == ["ebpf"] * 3
    assert len({o.digest for o in obs}) == 1 and obs[0].digest != 0
    assert sorted((h.node, h.iface, h.netns, h.ifindex, h.linktype) for h in batch.hops) == [
        ("netns:22", "docker0", 22, 3, 101), ("netns:22", "veth1", 22, 7, 1),
        ("netns:4026532526", "eth0", 4026532526, 2, 1)]
    assert HEADER_LEN == 16


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("host 198.51.100.8", KernelFilter(addrs=frozenset({"198.51.100.8"}))),
        ("icmp", KernelFilter(protos=frozenset({1}))),
        ("udp and (port 53 or port 5353) and host 198.51.100.8",
         KernelFilter(protos=frozenset({17}), ports=frozenset({53, 5353}), addrs=frozenset({"198.51.100.8"}))),
        ("tcp or udp", KernelFilter(protos=frozenset({6, 17}))),
        ("host 2001:db8::1 or host 203.0.113.1", KernelFilter(addrs=frozenset({"2001:db8::1", "203.0.113.1"}))),
        ("port 8080 && tcp", KernelFilter(protos=frozenset({6}), ports=frozenset({8080}))),
        # conjuncts the kernel cannot express are left out: still a superset
        ("udp and not host 10.0.0.1", KernelFilter(protos=frozenset({17}))),
        ("src host 1.2.3.4 and port 80", KernelFilter(ports=frozenset({80}))),
        ("port 80 and port 81", KernelFilter(ports=frozenset({80}))),
        ("host 1.2.3.4 or host 5.6.7.8 and tcp",  # = (host or host) and tcp
         KernelFilter(protos=frozenset({6}), addrs=frozenset({"1.2.3.4", "5.6.7.8"}))),
    ],
)
def test_simple_pcap_filters_go_to_the_kernel(expr: str, expected: KernelFilter) -> None:
    assert kernel_filter_from_pcap(expr) == expected


@pytest.mark.parametrize(
    "expr",
    [None, "", "not icmp", "src host 1.2.3.4", "net 10.0.0.0/8", "host 1.2.3.4 or port 80",
     "(icmp", "host nosuchname", "port 99999", "ether host 00:11:22:33:44:55",
     "icmp[icmptype] == 8",
     "tcp and port 80 or host 1.2.3.4",  # = (tcp and port 80) or host: no conjunct holds for all
     "(host 1.2.3.4 and port 80) or icmp", "udp port 53"],
)
def test_other_filters_stay_in_userspace(expr: str | None) -> None:
    assert kernel_filter_from_pcap(expr) is None


def test_filter_flags() -> None:
    assert KernelFilter().flags == 0
    assert KernelFilter(netns=frozenset({1})).flags == 1
    assert KernelFilter(protos=frozenset({1}), addrs=frozenset({"1.2.3.4"})).flags == 2 | 4 | 16
    assert KernelFilter(ports=frozenset({80}), track=False).flags == 8


def _fake_ring(tmp_path: Path, data_size: int, records: list[tuple[int, bytes]], cons: int = 0) -> tuple[Any, int]:
    """A file laid out like a BPF ring buffer map's mmap (consumer page, producer page, data):
    records are (flags, payload) written from ``cons`` on; returns (open file, producer pos)."""
    import mmap

    page = mmap.PAGESIZE
    body = bytearray(page + page + 2 * data_size)
    pos = cons
    for flags, payload in records:
        off = page * 2 + (pos & (data_size - 1))
        body[off : off + 8] = struct.pack("<II", len(payload) | flags, 0)
        body[off + 8 : off + 8 + len(payload)] = payload
        pos += (len(payload) + 8 + 7) & ~7
    body[0:8] = struct.pack("<Q", cons)
    body[page : page + 8] = struct.pack("<Q", pos)
    f = (tmp_path / "ring").open("w+b")
    f.write(body)
    f.flush()
    return f, pos


def test_ring_reader_joins_events_skips_discarded_and_stops_at_busy(tmp_path: Path) -> None:
    from probes.skb_hops import event_layout
    from tracer import _core

    size = ctypes.sizeof(HopEvent)
    evs = [bytes([i]) * size for i in range(5)]
    busy, discard = 1 << 31, 1 << 30
    records = [
        (0, _record_raw(evs[0], evs[1])),
        (discard, _record_raw(evs[2])),
        (0, _record_raw(evs[3])),
        (busy, _record_raw(evs[4])),  # reserved, not submitted: it and what follows wait
    ]
    f, prod = _fake_ring(tmp_path, 1 << 16, records, cons=4096)
    ring = _core.EbpfRing(event_layout(128), HEADER_LEN)
    ring.open(f.fileno(), 1 << 16)
    try:
        assert ring.poll() == 3
        assert ring.take()[1] == evs[0] + evs[1] + evs[3]
        # the consumer position now points at the busy record; nothing more until it is submitted
        f.seek(0)
        consumed = struct.unpack("<Q", f.read(8))[0]
        busy_at = 4096 + sum((len(p) + 8 + 7) & ~7 for _, p in records[:3])
        assert (consumed, busy_at < prod) == (busy_at, True)
        assert ring.poll() == 0
        assert ring.take()[1] == b""
    finally:
        ring.close()
        f.close()


def _record_raw(*events: bytes) -> bytes:
    return struct.pack("<IIQ", len(events), 0, 0) + b"".join(events)
