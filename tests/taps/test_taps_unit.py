"""Pure parts of tracer.sources.taps: which filters may go into the kernel, libpcap compilation,
``--iface`` resolution; and the core's ring-block reading and reorder window
(``_core.TapReorder``, what ``_core.TapReader`` runs on every ring) against the Python oracle
(tests/reference/taps.py), row for row and byte for byte. No root, no sockets."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from tracer.errors import FilterError, UsageError
from tracer.libpcap import compile_insns
from tracer.model import HopLabel
from tracer.pcap_expr import protocol_only
from tracer.sources.taps import TapSource, resolve_ifaces, snaplen_bpf
from tracer.topology import Interface, Namespace, Topology

HOST, WEB, LAB2 = 4026531840, 4026532001, 4026532100


def _iface(netns: int, ifindex: int, name: str, kind: str | None = None) -> Interface:
    return Interface(netns=netns, ifindex=ifindex, name=name, kind=kind, mac=None, state="UP",
                     mtu=1500, addresses=())


def _topo(*, second_host: bool = False) -> Topology:
    namespaces = [
        Namespace(HOST, "host", "/proc/1/ns/net", (
            _iface(HOST, 1, "lo"), _iface(HOST, 2, "eth0"), _iface(HOST, 3, "docker0", "bridge"),
            _iface(HOST, 4, "veth1234567", "veth"))),
        Namespace(WEB, "web", "/run/netns/web", (_iface(WEB, 1, "lo"), _iface(WEB, 2, "eth0", "veth"))),
    ]
    if second_host:
        namespaces.append(Namespace(LAB2, "host", "/run/netns/lab2-host", (_iface(LAB2, 3, "docker0", "bridge"),)))
    return Topology(namespaces=tuple(namespaces), own_netns=HOST)


@pytest.mark.parametrize(
    ("expr", "safe"),
    [
        ("icmp", True),
        ("tcp or udp", True),
        ("ip and not (icmp || arp)", True),
        ("ip proto 47", True),
        ("ICMP6", True),
        ("host 198.51.100.8", False),  # MASQUERADE rewrites the source between hops
        ("tcp port 8080", False),  # DNAT rewrites 8080 -> 80
        ("icmp and src 172.17.0.2", False),
        ("tcp[tcpflags] & tcp-syn != 0", False),  # not on the list: kept out of the kernel
        ("len > 100", False),
        ("tcp&&!udp", True),  # pcap's operators need no blanks
        ("tcp & udp", False),
        ("ip[9]==6", False),
        ("", False),
        ("   ", False),
        (None, False),
    ],
)
def test_kernel_filter_only_when_every_hop_agrees(expr: str | None, safe: bool) -> None:
    assert protocol_only(expr) is safe


def test_compile_insns_returns_sock_filter_cut_to_snaplen() -> None:
    insns = compile_insns("icmp", 1, 96)
    assert len(insns) % 8 == 0 and len(insns) >= 8 * 4
    returns = {k for code, _jt, _jf, k in struct.iter_unpack("<HBBI", insns) if code == 0x06}
    assert returns == {0, 96}


def test_compile_insns_for_a_raw_ip_interface() -> None:
    # A tun/wireguard tap is LINKTYPE_RAW (101); libpcap wants its DLT_RAW (12).
    insns = compile_insns("icmp", 101, 96)
    returns = {k for code, _jt, _jf, k in struct.iter_unpack("<HBBI", insns) if code == 0x06}
    assert returns == {0, 96}


def test_compile_insns_bad_expression_is_a_filter_error() -> None:
    with pytest.raises(FilterError) as exc:
        compile_insns("hots 1.2.3.4", 1)
    assert exc.value.exit_code == 2
    assert "hots 1.2.3.4" in exc.value.message


def test_snaplen_bpf_is_one_return() -> None:
    assert snaplen_bpf(128) == struct.pack("<HBBI", 0x06, 0, 0, 128)


def test_source_keeps_address_filters_out_of_the_kernel() -> None:
    assert TapSource(["eth0"], bpf_filter="host 198.51.100.8").kernel_filter is None
    assert TapSource(["eth0"], bpf_filter="icmp or udp").kernel_filter == "icmp or udp"


def test_resolve_node_slash_iface() -> None:
    specs = resolve_ifaces(["web/eth0", "host/docker0"], _topo())
    assert [(s.netns, s.netns_path, s.ifname, s.node) for s in specs] == [
        (WEB, "/run/netns/web", "eth0", "web"),
        (HOST, "/proc/1/ns/net", "docker0", "host"),
    ]


def test_resolve_bare_name_prefers_host() -> None:
    assert [s.label for s in resolve_ifaces(["eth0"], _topo())] == ["host/eth0"]
    assert [s.label for s in resolve_ifaces(["veth1234567"], _topo())] == ["host/veth1234567"]


def test_resolve_netns_inode_names_one_of_two_hosts() -> None:
    specs = resolve_ifaces([f"netns:{LAB2}/docker0"], _topo(second_host=True))
    assert [(s.netns, s.label) for s in specs] == [(LAB2, "host/docker0")]


def test_resolve_unknown_interface_lists_what_exists() -> None:
    with pytest.raises(UsageError) as exc:
        resolve_ifaces(["web/eth9"], _topo())
    assert exc.value.exit_code == 2
    assert exc.value.message == "unknown interface 'web/eth9'"
    assert "host/docker0" in (exc.value.hint or "") and "web/eth0" in (exc.value.hint or "")


def test_resolve_unknown_is_skipped_when_not_strict() -> None:
    assert resolve_ifaces(["web/eth9", "web/eth0"], _topo(), strict=False)[0].label == "web/eth0"


def test_resolve_ambiguous_node_asks_for_the_inode() -> None:
    with pytest.raises(UsageError) as exc:
        resolve_ifaces(["host/docker0"], _topo(second_host=True))
    assert exc.value.message == (
        f"interface 'host/docker0' exists in several namespaces: netns:{HOST}/docker0 (host), "
        f"netns:{LAB2}/docker0 (host)")


def _chunk(hop: int, ts: list[int], frames: list[bytes], rank: list[int] | None = None) -> Any:
    import numpy as np

    from tests.reference.taps import _Chunk

    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    return _Chunk(hop=np.full(len(ts), hop, dtype=np.uint32), ts=np.array(ts, dtype=np.uint64),
                  rank=np.array(rank or [1] * len(ts), dtype=np.uint8),
                  dirs=np.ones(len(ts), dtype=np.uint8), wire=lens, lens=lens,
                  offs=np.cumsum([0] + [len(f) for f in frames[:-1]]).astype(np.int64),
                  frames=b"".join(frames))


def test_reorder_releases_in_time_order_with_their_frames() -> None:
    import numpy as np

    from tests.reference.taps import _Reorder
    from tracer.model import obs_dtype

    hops = [HopLabel("host", "eth0", 1, 2), HopLabel("host", "docker0", 1, 3)]
    ro = _Reorder(np, obs_dtype(), delay_ns=10)
    ro.add(_chunk(0, [100, 130], [b"a100", b"b130"]))
    ro.add(_chunk(1, [95, 125], [b"c95", b"d125"]))  # a late block of another tap
    assert ro.due(now_ns=110) and not ro.due(now_ns=104)
    first = ro.take(hops, now_ns=126)  # watermark 116: 95 and 100 are out, 125 and 130 wait
    assert first.now_ns == 116
    assert [(o.ts_ns, o.ifname, o.ifindex, o.frame, o.direction, o.source) for o in first.observations()] == [
        (95, "docker0", 3, b"c95", "rx", "pcap"), (100, "eth0", 2, b"a100", "rx", "pcap")]
    ro.add(_chunk(0, [140], [b"e140"]))
    rest = ro.take(hops, now_ns=None)
    assert [(o.ts_ns, o.frame) for o in rest.observations()] == [
        (125, b"d125"), (130, b"b130"), (140, b"e140")]
    assert rest.now_ns == 140
    assert len(ro.take(hops, now_ns=None)) == 0


def test_reorder_breaks_timestamp_ties_by_rank() -> None:
    """One skb keeps its rx timestamp from a bridge port to the bridge: equal ts, the rank
    (port before bridge on rx) decides, whatever order the taps were drained in."""
    import numpy as np

    from tests.reference.taps import _Reorder
    from tracer.model import obs_dtype

    hops = [HopLabel("host", "docker0"), HopLabel("host", "veth1")]
    ro = _Reorder(np, obs_dtype(), delay_ns=0)
    ro.add(_chunk(0, [100], [b"br"], rank=[2]))  # the bridge's tap was drained first
    ro.add(_chunk(1, [100], [b"port"], rank=[0]))
    assert [o.ifname for o in ro.take(hops, None).observations()] == ["veth1", "docker0"]


# --------------------------------------------------------------------------
# Ring blocks -> frames (TPACKET_V3 layout, built by hand)
# --------------------------------------------------------------------------

# A SOCK_RAW packet socket's frame: tpacket3_hdr (48 bytes), sockaddr_ll, the frame at
# tp_mac = 82 (netoff aligned to 16 = 96, minus the 14-byte Ethernet header).
MAC_OFF = 82


def _tp_frame(ns: int, data: bytes, pkttype: int, wire: int) -> bytes:
    size = (MAC_OFF + len(data) + 7) & ~7
    hdr = struct.pack("<IIIIIIHH", size, ns // 1_000_000_000, ns % 1_000_000_000, len(data), wire, 1,
                      MAC_OFF, MAC_OFF + 14).ljust(48, b"\0")
    sll = struct.pack("<HHiHBB8s", 17, 0x0300, 2, 1, pkttype, 6, b"").ljust(MAC_OFF - 48, b"\0")
    return hdr + sll + data + b"\xee" * (size - MAC_OFF - len(data))


def _tp_block(frames: list[bytes]) -> bytes:
    """tpacket_block_desc + frames; the kernel leaves the last frame's tp_next_offset 0."""
    if frames:
        frames = [*frames[:-1], b"\0\0\0\0" + frames[-1][4:]]
    body = b"".join(frames)
    return struct.pack("<IIIIIIQ", 1, 0, 1, len(frames), 48, 48 + len(body), 0).ljust(48, b"\0") + body


def _reference_walk(blocks: list[bytes]) -> list[tuple[int, int, bytes, int, int]]:
    """(ts, dir, frame bytes, wire length, block) per frame by following tp_next_offset."""
    out = []
    for b, blk in enumerate(blocks):
        num, off = struct.unpack_from("<II", blk, 12)
        for _ in range(num):
            nxt, sec, nsec, snap, wire = struct.unpack_from("<IIIII", blk, off)
            mac = struct.unpack_from("<H", blk, off + 24)[0]
            out.append((sec * 1_000_000_000 + nsec, 2 if blk[off + 58] == 4 else 1,
                        blk[off + mac : off + mac + snap], wire, b))
            off += nxt
    return out


@pytest.mark.parametrize("sizes", [
    [[60] * 170, [60] * 3, [1]],  # one kind of traffic: every block is one stride
    [[60, 128, 60, 54, 128], [128] * 4 + [60], [54] * 7],  # mixed sizes: walked
    [[], [60] * 5, [], [128]],  # a retired block may hold nothing
])
def test_frames_of_blocks_match_a_frame_by_frame_walk(sizes: list[list[int]]) -> None:
    from tests.reference.taps import _frames_of

    blocks, ns = [], 1_700_000_000_999_999_000
    for b, block_sizes in enumerate(sizes):
        frames = []
        for i, n in enumerate(block_sizes):
            ns += 1_000
            frames.append(_tp_frame(ns, bytes((b * 7 + i + j) % 256 for j in range(n)),
                                    4 if (b + i) % 3 == 0 else 0, n + 1000))
        blocks.append(_tp_block(frames))
    meta = [(b % 2, 0, 2) for b in range(len(blocks))]  # (hop, rx rank, tx rank)
    chunk = _frames_of(b"".join(blocks), [len(b) for b in blocks], meta)
    ref = _reference_walk(blocks)
    assert chunk is not None
    got = [(int(t), int(d), chunk.frames[o : o + n], int(w), int(h), int(r))
           for t, d, o, n, w, h, r in zip(chunk.ts, chunk.dirs, chunk.offs, chunk.lens, chunk.wire,
                                          chunk.hop, chunk.rank, strict=True)]
    assert got == [(t, d, f, w, b % 2, 2 if d == 2 else 0) for t, d, f, w, b in ref]


def test_frames_of_empty_blocks_is_nothing() -> None:
    from tests.reference.taps import _frames_of

    blk = _tp_block([])
    assert _frames_of(blk + blk, [len(blk)] * 2, [(0, 0, 2)] * 2) is None


@pytest.mark.parametrize("via", ["add_rounds", "parse_rounds"])
def test_rounds_through_the_reorder_come_out_in_time_order_with_their_bytes(via: str) -> None:
    """Two taps, three poll rounds of ring blocks (one stride and mixed sizes), released at
    two watermarks that split chunks: every frame comes out once, in (ts, rank) order, with
    its own bytes. ``add_rounds`` (the source's way) moves the held frames into the new
    rounds' buffer; chunks added one by one are joined from their spans at release."""
    import numpy as np

    from tests.reference.taps import _Reorder, _Round, parse_rounds
    from tracer.model import obs_dtype

    hops = [HopLabel("host", "veth1", 1, 4), HopLabel("host", "docker0", 1, 3)]
    ranks = {0: (0, 2), 1: (2, 0)}  # (rx, tx): a port receives before its bridge
    expect = []
    rounds = []
    for r in range(3):
        blocks, meta = [], []
        for hop in (1, 0):  # the bridge's tap first: ring order must not decide
            for b in range(2):
                frames = []
                for i in range(5 if b == 0 else 3):
                    ts = 1_000_000 * (10 * r + 2 * i + b) + (hop if i % 2 else 0)
                    n = 60 if (r + b) % 2 == 0 else [60, 128, 54][i % 3]
                    data = bytes([r, hop, b, i]) + bytes(n - 4)
                    pkttype = 4 if i % 2 else 0
                    frames.append(_tp_frame(ts, data, pkttype, n))
                    rank = ranks[hop][1] if pkttype == 4 else ranks[hop][0]
                    expect.append((ts, rank, len(expect), hop, data))
                blocks.append(_tp_block(frames))
                meta.append((hop, *ranks[hop]))
        rounds.append(_Round(b"".join(blocks), [len(b) for b in blocks], meta, 0))
    ro = _Reorder(np, obs_dtype(), delay_ns=0)
    got = []
    for rnds, now in (([rounds[0]], 5_000_000), (rounds[1:], 21_000_000), ([], None)):
        if via == "add_rounds":
            ro.add_rounds(rnds)
        elif (chunk := parse_rounds(rnds)) is not None:
            ro.add(chunk)
        batch = ro.take(hops, now)
        got += [(o.ts_ns, o.ifname, o.frame) for o in batch.observations()]
    want = [(ts, hops[hop].iface, data) for ts, _, _, hop, data in sorted(expect)]
    assert got == want


# --------------------------------------------------------------------------
# The core's ring reading (_core.TapReorder) against the oracle (tests/reference/taps.py)
# --------------------------------------------------------------------------


def _fixture_frames() -> list[bytes]:
    """Every frame of the committed fixtures (Ethernet): real packets for the decoder."""
    from scapy.utils import RawPcapNgReader

    from tests.conftest import FIXTURES

    names = sorted(FIXTURES.glob("*.pcapng"))
    assert len(names) >= 10
    out = []
    for path in names:
        with RawPcapNgReader(str(path)) as r:
            out += [bytes(data) for data, _meta in r]
    return out


def _strip_off(rows: Any) -> Any:
    rows = rows.copy()
    rows["frame_off"] = 0
    return rows


def _core_vs_oracle(rounds: list[list[tuple[bytes, tuple[int, int, int]]]], marks: list[int | None],
                    hops: list[HopLabel], delay_ns: int) -> int:
    """Feed the same ring blocks (per round: (block bytes, (hop, rx rank, tx rank)))
    to the core's TapReorder and the oracle's _Reorder, release at ``marks[i]`` after round
    ``i`` (None: everything) and compare every batch: rows byte for byte (frame_off apart:
    the two lay their frame buffers out differently) and each row's frame bytes. Returns
    how many rows came out."""
    import numpy as np

    from tests.reference.taps import _Reorder, _Round
    from tracer import _core
    from tracer.model import obs_dtype

    dt = obs_dtype()
    ro = _Reorder(np, dt, delay_ns)
    core = _core.TapReorder(delay_ns)
    table = [(h.netns, h.ifindex, h.linktype) for h in hops]
    n = 0
    for blocks, now in zip(rounds, marks, strict=True):
        buf = b"".join(b for b, _ in blocks)
        used, meta = [len(b) for b, _ in blocks], [m for _, m in blocks]
        if blocks:
            ro.add_rounds([_Round(buf, used, meta, 0)])
            core.add_blocks(buf, used, meta)
        assert len(core) == len(ro)
        want = ro.take(hops, now)
        rows, frames, mark = core.release(now, table, want.now_ns or 0)
        got = rows.view(dt)
        assert mark == want.now_ns
        assert _strip_off(got).tobytes() == _strip_off(want.rows).tobytes()
        assert [frames[o : o + k] for o, k in zip(got["frame_off"].tolist(), got["frame_len"].tolist(), strict=True)] \
            == [bytes(want.frames[o : o + k])
                for o, k in zip(want.rows["frame_off"].tolist(), want.rows["frame_len"].tolist(), strict=True)]
        n += len(got)
    assert len(core) == len(ro)
    return n


def _rounds_of(frames: list[bytes], taps: int, seed: int) -> tuple[list[list[tuple[bytes, tuple[int, int, int]]]], list[int | None]]:
    """``frames`` spread over ``taps`` taps and several rounds of blocks of 1-40 frames,
    timestamps rising per tap with ties across taps, both directions; a watermark per round."""
    import random

    rnd = random.Random(seed)
    ranks = [((0, 2), (1, 1), (2, 0))[t % 3] for t in range(taps)]
    clock = [1_700_000_000_000_000_000] * taps
    rounds, marks, i = [], [], 0
    while i < len(frames):
        blocks = []
        for _ in range(rnd.randint(0, 2 * taps)):
            t = rnd.randrange(taps)
            tp = []
            for _ in range(rnd.randint(0, 40)):
                if i == len(frames):
                    break
                clock[t] += rnd.choice([0, 1, 5, 1000, 3_000_000])
                tp.append(_tp_frame(clock[t], frames[i], rnd.choice([0, 0, 4, 1, 3]), len(frames[i]) + rnd.randint(0, 9)))
                i += 1
            blocks.append((_tp_block(tp), (t, *ranks[t])))
        rounds.append(blocks)
        marks.append(max(clock) - rnd.randint(0, 6_000_000))
    rounds.append([])
    marks.append(None)
    return rounds, marks


@pytest.mark.parametrize("seed", range(4))
def test_core_reorder_is_the_oracle_on_the_fixtures_frames(seed: int) -> None:
    """Every fixture frame through synthetic ring blocks of three taps: the core's rows and
    frames are the oracle's (the reference decoder's fields, time order, ranks on ties)."""
    frames = _fixture_frames()
    hops = [HopLabel("host", "veth1", 11, 4, 1), HopLabel("host", "docker0", 11, 3, 1),
            HopLabel("web", "eth0", 12, 2, 1)]
    rounds, marks = _rounds_of(frames, 3, seed)
    assert _core_vs_oracle(rounds, marks, hops, delay_ns=2_000_000) == len(frames)


def test_core_reorder_keeps_the_oracles_order_on_equal_keys() -> None:
    """Equal timestamps and ranks on two taps: arrival order (tap, block, frame) decides."""
    frames = [bytes([k]) * 60 for k in range(12)]
    hops = [HopLabel("host", "a", 1, 1, 1), HopLabel("host", "b", 1, 2, 1)]
    blocks = [(_tp_block([_tp_frame(500, f, 0, 60) for f in frames[6 * h : 6 * h + 6]]), (h, 1, 1)) for h in (1, 0)]
    assert _core_vs_oracle([blocks, []], [500, None], hops, delay_ns=0) == 12


def test_core_release_with_hops_outside_the_table_and_an_empty_window() -> None:
    from tracer import _core

    core = _core.TapReorder(0)
    rows, frames, mark = core.release(None, [], 1234)
    assert (len(rows), frames, mark) == (0, b"", 1234)
    core.add_blocks(_tp_block([_tp_frame(7, b"\x00" * 60, 0, 60)]), [48 + 144], [(5, 0, 0)])
    rows, frames, mark = core.release(None, [])
    assert (len(rows) // 171, frames, mark) == (1, b"\x00" * 60, 7)


def test_core_add_blocks_checks_its_arguments() -> None:
    from tracer import _core

    core = _core.TapReorder(0)
    with pytest.raises(ValueError, match="exceed the buffer"):
        core.add_blocks(b"\0" * 10, [11], [(0, 0, 0)])
    with pytest.raises(ValueError, match="block metas"):
        core.add_blocks(b"\0" * 10, [10], [])


def _malformed(seed: int) -> bytes:
    import random

    rnd = random.Random(seed)
    blk = bytearray(_tp_block([_tp_frame(100 + k, bytes([k]) * rnd.randint(0, 150), rnd.choice([0, 4]), 9)
                               for k in range(rnd.randint(0, 6))]))
    for _ in range(rnd.randint(1, 4)):
        at = rnd.randrange(max(len(blk) - 4, 1))
        blk[at : at + 4] = rnd.choice([0, 1, 8, 47, 48, 0xFFFF, 0xFFFFFFFF, rnd.getrandbits(32)]).to_bytes(4, "little")
    return bytes(blk[: rnd.randint(0, len(blk))]) if rnd.random() < 0.3 else bytes(blk)


@pytest.mark.parametrize("seed", range(60))
def test_core_walks_a_damaged_block_as_the_oracle_does(seed: int) -> None:
    """Block headers and frame headers overwritten with edge values, blocks cut short: the
    core hands over exactly the frames the bounded walk (tests/reference/taps.py
    ``walk_block``) finds, with their bytes, and never reads past the block."""
    from tests.reference.taps import walk_block
    from tracer import _core
    from tracer.model import obs_dtype

    blk = _malformed(seed)
    want = walk_block(blk)
    core = _core.TapReorder(0)
    assert core.add_blocks(blk, [len(blk)], [(0, 1, 1)]) == len(want)
    rows, frames, _ = core.release(None, [(1, 2, 1)], 0)
    got = rows.view(obs_dtype())
    key = [(t, d, f, w) for t, d, f, w in want]
    order = sorted(range(len(key)), key=lambda k: key[k][0])  # stable: the core's release order
    assert [(int(r["ts_ns"]), int(r["dir"]), frames[int(r["frame_off"]):][: int(r["frame_len"])], int(r["wire_len"]))
            for r in got] == [key[k] for k in order]
