"""The core's classic BPF interpreter (``tracer._core.BpfProgram``) against libpcap's own
(``pcap_offline_filter``): for many pcap-filter expressions, compiled by libpcap for Ethernet,
Linux cooked (SLL, SLL2) and raw IP, the verdicts are equal on every frame of the fixtures and
of the tcpdump corpus (as captured, and re-wrapped in each of those link types) and on
generated frames. Then ``PathFilter.keep_hops`` (a path's hops, with frames or rebuilt
headers) against libpcap frame by frame."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import CORPUS, FIXTURES
from tracer import _core
from tracer.errors import FilterError, HoptraceError
from tracer.filter import PathFilter, synth_frame
from tracer.libpcap import LibpcapProgram, compile_insns
from tracer.model import ObsBatch
from tracer.sources.files import FileSource

ETHERNET, SLL, SLL2, RAW = 1, 113, 276, 101
LINKTYPES = (ETHERNET, SLL, SLL2, RAW)

EXPRS = [
    # hosts, nets, ports, protocols
    "host 172.17.0.2", "src host 198.51.100.8", "dst host 203.0.113.2", "host 10.0.0.1",
    "net 172.17.0.0/16", "src net 10.0.0.0/8", "dst net 192.168.0.0/16", "ip6 net fe80::/10",
    "port 80", "tcp port 8080", "udp port 53", "portrange 1-1023", "tcp dst port 80 or udp src port 53",
    "ip", "ip6", "arp", "tcp", "udp", "icmp", "icmp6", "sctp", "igmp", "ip proto 47",
    "ip6 and tcp", "ip6 protochain 6", "ip protochain 17",
    # header fields and flags
    "icmp[icmptype] == 8", "icmp[icmptype] == icmp-echoreply", "icmp6 and ip6[40] == 135",
    "tcp[tcpflags] & tcp-syn != 0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "tcp[13] = 0x18", "ip[6:2] & 0x1fff != 0", "ip[8] < 64", "ip[2:2] > 100", "udp[4:2] > 100",
    "ip[0] & 0xf > 5", "ip6[6] == 17",
    # arithmetic (every ALU operation, X operands)
    "ip[2:2] - ((ip[0] & 0xf) << 2) > 40", "(ip[2:2] * 3) / 7 % 5 == 1", "ip[1] ^ 0xff != 0xff",
    "ip[8] >> 2 == 16", "ip[0] | 0x10 == 0x55", "ip[0] & ip[9] != 0", "-ip[8] + 300 > 240",
    "len > ip[2:2] + 14", "ip[2:2] >= len - 14", "tcp[12] / 4 > 20",
    # lengths
    "len > 100", "len <= 64", "greater 200", "less 60",
    # link layer
    "vlan", "vlan and udp", "vlan 100", "ether host 02:42:ac:11:00:02", "ether broadcast",
    "ether multicast", "ether proto 0x0806", "ether[0] & 1 != 0",
    # negations and combinations
    "not icmp", "not host 172.17.0.2 and not arp", "!(tcp or udp)", "not (ip6 or port 80)",
    "icmp and host 198.51.100.8", "(tcp or udp) and not port 22 and src net 172.16.0.0/12",
]  # fmt: skip


@cache
def programs(expr: str) -> list[tuple[int, _core.BpfProgram, LibpcapProgram]]:
    """(link type, the core's program, libpcap's) for each link type ``expr`` compiles for."""
    out = []
    for lt in LINKTYPES:
        try:
            insns = compile_insns(expr, lt)
        except FilterError:
            continue  # e.g. "ether host" on raw IP
        out.append((lt, _core.BpfProgram(insns), LibpcapProgram(expr, lt)))
    return out


def core_verdicts(prog: _core.BpfProgram, frames: list[bytes], wirelens: list[int]) -> list[bool]:
    lengths = np.array([len(f) for f in frames], dtype=np.uint32)
    offsets = (np.cumsum(lengths, dtype=np.uint64) - lengths).astype(np.uint64)
    got = prog.match_frames(b"".join(frames), offsets, lengths, np.array(wirelens, dtype=np.uint32))
    assert got.dtype == np.bool_ and got.shape == (len(frames),)
    return got.tolist()


def assert_same(expr: str, lt: int, core: _core.BpfProgram, ref: LibpcapProgram,
                frames: list[bytes], wirelens: list[int]) -> tuple[int, int]:
    """The two verdict lists are equal; (matches, frames)."""
    got = core_verdicts(core, frames, wirelens)
    want = ref.match_each(frames, wirelens)
    if got != want:
        bad = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w][:3]
        detail = [(frames[i].hex(), wirelens[i], got[i], want[i]) for i in bad]
        pytest.fail(f"{expr!r} for link type {lt}: core != libpcap on {len(bad)}+ frames: {detail}")
    return sum(want), len(want)


# --- real frames --------------------------------------------------------------------------


def capture_files() -> list[Path]:
    files = sorted(FIXTURES.glob("*.pcapng"))
    assert files, f"no fixtures in {FIXTURES}"
    assert CORPUS.is_dir(), f"the tcpdump corpus is not at {CORPUS} (set HOPTRACE_CORPUS)"
    return files + sorted(p for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def file_frames(path: Path) -> Iterator[tuple[bytes, int, int]]:
    """(captured bytes, wire length, link type) of each frame a file has before any damage."""
    try:
        for b in FileSource([str(path)]).batches():
            lts = [h.linktype for h in b.hops]
            frames = bytes(b.frames)
            for off, n, wire, hop in zip(b.rows["frame_off"].tolist(), b.rows["frame_len"].tolist(),
                                         b.rows["wire_len"].tolist(), b.rows["hop"].tolist(), strict=True):
                yield frames[off : off + n], max(wire, n), lts[hop]
    except HoptraceError:
        return


# (link-layer header length, where the ethertype is) per link type whose payload can be re-wrapped
_UNWRAP = {ETHERNET: (14, 12), SLL: (16, 14), SLL2: (20, 0)}
_VERSION_TYPE = {4: 0x0800, 6: 0x86DD}


def unwrap(frame: bytes, lt: int) -> tuple[int, bytes] | None:
    """(ethertype, network-layer bytes) of an IPv4, IPv6 or ARP frame."""
    if lt in _UNWRAP:
        hlen, at = _UNWRAP[lt]
        if len(frame) < hlen:
            return None
        etype = struct.unpack_from("!H", frame, at)[0]
        return (etype, frame[hlen:]) if etype in (0x0800, 0x86DD, 0x0806) else None
    if lt in (RAW, 228, 229) and frame:
        etype = _VERSION_TYPE.get(frame[0] >> 4)
        return (etype, frame) if etype else None
    return None


def wrap(etype: int, payload: bytes, lt: int, seed: int) -> bytes | None:
    """``payload`` behind a link-layer header of ``lt`` (addresses vary with ``seed``)."""
    mac = (bytes.fromhex("0242ac110002"), b"\xff" * 6, bytes.fromhex("01005e000001"), bytes(6))[seed % 4]
    if lt == ETHERNET:
        return mac + bytes.fromhex("0242ac110001") + struct.pack("!H", etype) + payload
    if lt == SLL:
        return struct.pack("!HHH8sH", seed % 5, 1, 6, mac, etype) + payload
    if lt == SLL2:
        return struct.pack("!HHIHBB8s", etype, 0, 3 + seed % 7, 1, seed % 5, 6, mac) + payload
    return payload if etype != 0x0806 else None


@cache
def real_frames() -> tuple[list[bytes], list[int], dict[int, tuple[list[bytes], list[int]]]]:
    """Every frame as captured (bytes, wire lengths), and per link type every IP/ARP frame
    re-wrapped in it (its own too: other addresses)."""
    frames, wirelens = [], []
    wrapped: dict[int, tuple[list[bytes], list[int]]] = {lt: ([], []) for lt in LINKTYPES}
    for path in capture_files():
        for frame, wire, lt in file_frames(path):
            frames.append(frame)
            wirelens.append(wire)
            got = unwrap(frame, lt)
            if got is None:
                continue
            etype, payload = got
            for to in LINKTYPES:
                w = wrap(etype, payload, to, len(frames))
                if w is not None:
                    wrapped[to][0].append(w)
                    wrapped[to][1].append(len(w) + wire - len(frame))
    return frames, wirelens, wrapped


def test_the_frames_are_there() -> None:
    frames, _, wrapped = real_frames()
    assert len(frames) > 9000
    assert all(len(wrapped[lt][0]) > 5000 for lt in LINKTYPES), {lt: len(w[0]) for lt, w in wrapped.items()}


def test_every_expression_compiles_for_ethernet() -> None:
    assert [e for e in EXPRS if not programs(e) or programs(e)[0][0] != ETHERNET] == []
    # ... and the link-layer-free ones for every link type
    assert {lt for lt, _, _ in programs("udp port 53")} == set(LINKTYPES)


@pytest.mark.parametrize("expr", EXPRS)
def test_core_equals_libpcap_on_real_frames(expr: str) -> None:
    frames, wirelens, wrapped = real_frames()
    matched = total = 0
    for lt, core, ref in programs(expr):
        # every captured frame through every link type's program: the interpreter does not care
        m, n = assert_same(expr, lt, core, ref, frames, wirelens)
        # and the frames of its own link type, as captures of it would have them
        m2, n2 = assert_same(expr, lt, core, ref, *wrapped[lt])
        matched, total = matched + m + m2, total + n + n2
    assert 0 < matched < total, f"{expr!r} matched {matched} of {total} frames: the test would not tell"


# --- generated frames ---------------------------------------------------------------------

ADDRS4 = [bytes([172, 17, 0, 2]), bytes([198, 51, 100, 8]), bytes([203, 0, 113, 2]), bytes([10, 0, 0, 1])]
ADDRS6 = [bytes.fromhex("fe80" + "00" * 12 + "0001"), bytes.fromhex("fd00" + "00" * 12 + "0002")]
PORTS = [22, 53, 80, 443, 8080, 40000]

addr4 = st.one_of(st.sampled_from(ADDRS4), st.binary(min_size=4, max_size=4))
port = st.one_of(st.sampled_from(PORTS), st.integers(0, 65535))


@st.composite
def l4(draw: st.DrawFn, proto: int) -> bytes:
    if proto in (6, 17, 132):
        head = struct.pack("!HH", draw(port), draw(port))
        if proto == 6:
            flags = draw(st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04])) if draw(st.booleans()) else draw(
                st.integers(0, 255))
            head += struct.pack("!IIBB", draw(st.integers(0, 2**32 - 1)), 0, draw(st.sampled_from([0x50, 0x80, 0xF0])),
                                flags)  # fmt: skip
        return head + draw(st.binary(max_size=24))
    if proto in (1, 58):
        return bytes([draw(st.sampled_from([0, 3, 8, 11, 128, 129])), draw(st.integers(0, 255))]) + draw(
            st.binary(max_size=24))
    return draw(st.binary(max_size=24))


@st.composite
def ipv4(draw: st.DrawFn) -> bytes:
    proto = draw(st.sampled_from([1, 2, 6, 17, 47, 132, 58]) | st.integers(0, 255))
    ihl = draw(st.sampled_from([5, 5, 5, 6, 15]) | st.integers(0, 15))
    frag = draw(st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x1FFF]) | st.integers(0, 0xFFFF))
    total = draw(st.integers(0, 1600))
    hdr = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, draw(st.integers(0, 255)), total, draw(st.integers(0, 0xFFFF)),
                      frag, draw(st.sampled_from([1, 63, 64, 255]) | st.integers(0, 255)), proto, 0, draw(addr4),
                      draw(addr4))  # fmt: skip
    hdr += draw(st.binary(min_size=max(0, ihl * 4 - 20), max_size=max(0, ihl * 4 - 20)))
    return hdr + draw(l4(proto))


@st.composite
def ipv6(draw: st.DrawFn) -> bytes:
    chain = draw(st.lists(st.sampled_from([0, 43, 44, 51, 60]), max_size=5))
    last = draw(st.sampled_from([6, 17, 58, 59]) | st.integers(0, 255))
    nexts = [*chain, last]
    addr = st.sampled_from(ADDRS6) | st.binary(min_size=16, max_size=16)
    out = struct.pack("!IHBB16s16s", 6 << 28, draw(st.integers(0, 1600)), nexts[0], 64, draw(addr), draw(addr))
    for i, kind in enumerate(chain):
        # fragment (44): 8 bytes; AH (51): length in 4-byte units + 2; others in 8-byte units + 1
        n = draw(st.integers(0, 2))
        body = 8 if kind == 44 else (n + 2) * 4 if kind == 51 else (n + 1) * 8
        out += bytes([nexts[i + 1], n]) + draw(st.binary(min_size=body - 2, max_size=body - 2))
    return out + draw(l4(last))


@st.composite
def arp(draw: st.DrawFn) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, draw(st.sampled_from([1, 2])), bytes(6), draw(addr4),
                       bytes(6), draw(addr4))  # fmt: skip


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, bytes, int]:
    """(link type, captured bytes, wire length): a plausible frame, cut short at any point,
    or plain random bytes."""
    lt = draw(st.sampled_from(LINKTYPES))
    if draw(st.integers(0, 9)) == 0:
        frame = draw(st.binary(max_size=120))
    else:
        etype, payload = draw(st.sampled_from([(0x0800, ipv4()), (0x86DD, ipv6()), (0x0806, arp())]).flatmap(
            lambda t: st.tuples(st.just(t[0]), t[1])))
        vlan = lt == ETHERNET and draw(st.integers(0, 4)) == 0
        if vlan:
            payload = struct.pack("!HH", draw(st.sampled_from([100, 200])), etype) + payload
            etype = 0x8100
        frame = wrap(etype, payload, lt, draw(st.integers(0, 3))) or payload
        if draw(st.booleans()):
            frame = frame[: draw(st.integers(0, len(frame)))]
    wire = len(frame) + draw(st.sampled_from([0, 0, 1, 1500]))
    return lt, frame, wire


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=12))
@example([(ETHERNET, b"", 0), (RAW, b"\x45", 1), (SLL2, b"\x86\xdd" + bytes(18), 20)])
def test_core_equals_libpcap_on_generated_frames(batch: list[tuple[int, bytes, int]]) -> None:
    fs = [f for _, f, _ in batch]
    wires = [w for _, _, w in batch]
    for expr in EXPRS:
        for lt, core, ref in programs(expr):
            assert_same(expr, lt, core, ref, fs, wires)


# --- the binding's contract ---------------------------------------------------------------


def test_match_frames_takes_bytes_or_a_uint8_array_and_checks_its_arguments() -> None:
    core = _core.BpfProgram(compile_insns("icmp", ETHERNET))
    frames = [bytes.fromhex("ffffffffffff0242ac1100010800") + bytes.fromhex("4500001c0001000040010000ac110002c6336408")
              + bytes([8, 0]) + bytes(6), bytes(40)]  # fmt: skip
    buf = b"".join(frames)
    offs = np.array([0, len(frames[0])], dtype=np.uint64)
    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    want = [True, False]
    assert core.match_frames(buf, offs, lens, lens).tolist() == want
    assert core.match_frames(np.frombuffer(bytearray(buf), dtype=np.uint8), offs, lens, lens).tolist() == want
    assert core.match_frames(np.frombuffer(memoryview(buf), dtype=np.uint8), offs, lens, lens).tolist() == want
    with pytest.raises(ValueError, match="outside the 81-byte frames buffer"):
        core.match_frames(buf[:-1], offs, lens, lens)
    with pytest.raises(ValueError, match="differ in length"):
        core.match_frames(buf, offs, lens[:1], lens)
    with pytest.raises(TypeError, match="frames must be bytes or a 1-D uint8 numpy array"):
        core.match_frames("text", offs, lens, lens)
    with pytest.raises(TypeError):
        core.match_frames(buf, offs.astype(np.int64), lens, lens)
    assert core.match_frames(b"", np.zeros(0, np.uint64), np.zeros(0, np.uint32), np.zeros(0, np.uint32)).tolist() == []


def test_bpf_program_refuses_what_libpcap_would_not_run() -> None:
    ret1 = struct.pack("=HBBI", 0x06, 0, 0, 1)
    assert len(_core.BpfProgram(ret1)) == 1
    for raw, msg in [
        (b"", "empty"),
        (ret1 + b"\x00", "not a whole number of 8-byte instructions"),
        (struct.pack("=HBBI", 0xFFFF, 0, 0, 0) + ret1, "unknown opcode 0xffff"),
        (struct.pack("=HBBI", 0x02, 0, 0, 16) + ret1, "scratch memory slot 16"),
        (struct.pack("=HBBI", 0x34, 0, 0, 0) + ret1, "division or modulo by constant 0"),
        (struct.pack("=HBBI", 0x15, 1, 0, 0) + ret1, "jump lands outside"),
        (struct.pack("=HBBI", 0x00, 0, 0, 0), "does not end with a return"),
    ]:
        with pytest.raises(ValueError, match=msg):
            _core.BpfProgram(raw)


# --- PathFilter's batch paths -------------------------------------------------------------

KEEP_EXPRS = ["icmp", "host 198.51.100.8", "src net 172.17.0.0/16", "len > 90", "udp",
              "icmp[icmptype] == 8", "ether host 02:42:ac:11:00:02", "not arp"]  # fmt: skip


class Reference:
    """libpcap frame by frame, per link type; False where the expression does not compile."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.progs: dict[int, LibpcapProgram | None] = {}

    def match(self, lt: int, frame: bytes) -> bool:
        if lt not in self.progs:
            try:
                self.progs[lt] = LibpcapProgram(self.expr, lt)
            except FilterError:
                self.progs[lt] = None
        prog = self.progs[lt]
        return prog is not None and prog.match(frame)  # the captured length as the wire's, as PathFilter


@pytest.mark.parametrize("expr", KEEP_EXPRS)
def test_keep_hops_equals_libpcap_hop_by_hop(expr: str) -> None:
    """Hops with frame bytes (their link type found from the frame) and hops without, through
    the raw IP header rebuilt from their fields."""
    ref = Reference(expr)
    outcomes = set()
    for path in sorted(FIXTURES.glob("*.pcapng")):
        b = next(iter(FileSource([str(path)]).batches()))
        lt_of = {(h.node, h.iface): h.linktype for h in b.hops}
        obs = b.observations()
        bare = ObsBatch(rows=b.rows.copy(), hops=b.hops).observations()  # no frame bytes
        assert all(o.frame == b"" for o in bare)
        for k in range(0, len(obs) - 2, 3):
            hops = obs[k : k + 3]
            want = any(ref.match(lt_of[(o.node, o.ifname)], o.frame) for o in hops)
            assert PathFilter(expr).keep_hops(hops) is want, (path.name, k)
            synth = [synth_frame(o) for o in bare[k : k + 3]]
            want_bare = any(ref.match(RAW, s) for s in synth if s)
            assert PathFilter(expr).keep_hops(bare[k : k + 3]) is want_bare, (path.name, k)
            outcomes |= {want, want_bare}
    assert outcomes == {True, False}
