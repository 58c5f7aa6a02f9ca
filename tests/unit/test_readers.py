"""FileSource over real pcap/pcapng files written by scapy, by hand, and by hoptrace's recorder."""

from __future__ import annotations

import json
import struct
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether
from scapy.utils import PcapNgWriter, PcapWriter

import tests.reference.readers as reference
import tracer.sources.files as readers
from tracer.errors import CaptureFileError, UsageError
from tracer.model import Dir, HopLabel, ObsBatch, Observation
from tracer.sources.files import FileSource, parse_hop_arg

ETH = Ether(src="02:42:ac:11:00:02", dst="02:42:ac:11:00:01")


def ping(src: str, dst: str, seq: int, ip_id: int = 1) -> IP:
    return IP(src=src, dst=dst, id=ip_id) / ICMP(id=7, seq=seq) / b"payload-of-a-ping"


def read_all(src: FileSource) -> tuple[list[ObsBatch], list[Observation]]:
    batches = list(src.batches())
    return batches, [o for b in batches for o in b.observations()]


def write_pcap(path: Path, pkts: list[object], ts: list[float] | list[Decimal], **kw: object) -> None:
    w = PcapWriter(str(path), **kw)  # type: ignore[arg-type]
    for p, t in zip(pkts, ts, strict=True):
        p.time = t  # type: ignore[attr-defined]
        w.write(p)
    w.close()


# -- hand-written pcapng, for options scapy's writer does not produce ----------------


def _opt(code: int, val: bytes, e: str = "<") -> bytes:
    return struct.pack(e + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def _block(btype: int, body: bytes, e: str = "<") -> bytes:
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e: str = "<") -> bytes:
    return _block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def idb(linktype: int, name: str = "", desc: str = "", tsresol: int | None = None, e: str = "<") -> bytes:
    opts = b""
    if name:
        opts += _opt(2, name.encode(), e)
    if desc:
        opts += _opt(3, desc.encode(), e)
    if tsresol is not None:
        opts += _opt(9, bytes([tsresol]), e)
    if opts:
        opts += _opt(0, b"", e)
    return _block(1, struct.pack(e + "HHI", linktype, 0, 262144) + opts, e)


def epb(ifid: int, ts: int, frame: bytes, flags: int | None = None, comment: str | None = None,
        e: str = "<") -> bytes:  # fmt: skip
    opts = b""
    if flags is not None:
        opts += _opt(2, struct.pack(e + "I", flags), e)
    if comment is not None:
        opts += _opt(1, comment.encode(), e)
    if opts:
        opts += _opt(0, b"", e)
    body = struct.pack(e + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame) + 10)
    return _block(6, body + frame + b"\0" * (-len(frame) % 4) + opts, e)


# -- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(("endianness", "nano"), [("<", False), (">", False), ("<", True), (">", True)])
def test_pcap_endianness_and_resolution(tmp_path: Path, endianness: str, nano: bool) -> None:
    f = tmp_path / "web.pcap"
    pkts = [ETH / ping("172.17.0.2", "198.51.100.8", s, ip_id=100 + s) for s in range(3)]
    write_pcap(f, pkts, [Decimal("1700000000.000001"), Decimal("1700000000.5"), Decimal("1700000001.25")], endianness=endianness, nano=nano)
    _, obs = read_all(FileSource([str(f)]))
    assert [(o.node, o.ifname, o.src, o.dst, o.ip_id, o.icmp_seq, o.source) for o in obs] == [
        ("web", "if0", "172.17.0.2", "198.51.100.8", 100 + s, s, "file") for s in range(3)]
    assert [o.ts_ns for o in obs] == [1700000000_000001000, 1700000000_500000000, 1700000001_250000000]
    assert obs[0].frame == bytes(pkts[0])
    assert obs[0].wire_len == len(bytes(pkts[0]))


def test_pcapng_multi_interface_labels_flags_comments(tmp_path: Path) -> None:
    f = tmp_path / "rec.pcapng"
    a = bytes(ETH / ping("172.17.0.2", "198.51.100.8", 1))
    b = bytes(ETH / ping("203.0.113.2", "198.51.100.8", 1))
    meta = {"v": 1, "dir": "drop", "skb": "0xffff888108472600", "hook": None, "netns": 4026532466,
            "drop_reason": "NETFILTER_DROP", "ts_ns": 1795805084432385123}  # fmt: skip
    data = (shb() + idb(1, "web/eth0", "netns=4026532466 ifindex=9", tsresol=9) + idb(1, "host/eth0", tsresol=9)
            + idb(1, "plain", tsresol=9) + epb(0, 1795805084432385000, a, flags=2)
            + epb(1, 1795805084432390000, b, flags=1) + epb(2, 1795805084432391000, b)
            + epb(0, 1795805084432392000, a, flags=1, comment=json.dumps(meta)))  # fmt: skip
    f.write_bytes(data)
    src = FileSource([str(f)])
    _batches, obs = read_all(src)
    got = [(o.node, o.ifname, o.netns, o.ifindex, o.direction, o.ts_ns, o.skb, o.drop_reason) for o in obs]
    assert got == [
        ("web", "eth0", 4026532466, 9, "tx", 1795805084432385000, None, None),
        ("host", "eth0", 1, 0, "rx", 1795805084432390000, None, None),
        ("rec", "plain", 2, 0, None, 1795805084432391000, None, None),
        ("web", "eth0", 4026532466, 9, "drop", 1795805084432385123, 0xFFFF888108472600, "NETFILTER_DROP"),
    ]
    assert [h.name for h in src.hops] == ["web/eth0", "host/eth0", "rec/plain"]


def test_pcapng_big_endian_and_tsresol(tmp_path: Path) -> None:
    f = tmp_path / "be.pcapng"
    fr = bytes(ETH / ping("10.0.0.1", "10.0.0.2", 1))
    # 2^-10 s units, then a second section (big endian) with microseconds
    f.write_bytes(shb() + idb(1, "a/x", tsresol=0x80 | 10) + epb(0, 1024 * 5 + 512, fr)
                  + shb(">") + idb(101, "b/y", e=">") + epb(0, 2_000_001, fr[14:], e=">"))  # fmt: skip
    _, obs = read_all(FileSource([str(f)]))
    assert [(o.hop_name, o.ts_ns, o.src) for o in obs] == [
        ("a/x", 5_500_000_000, "10.0.0.1"), ("b/y", 2_000_001_000, "10.0.0.1")]


def test_scapy_pcapng_writer_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "s.pcapng"
    w = PcapNgWriter(str(f))
    for i, (label, d) in enumerate([("web/eth0", 2), ("host/veth1", 1), ("host/docker0", 1)]):
        p = ETH / ping("172.17.0.2", "198.51.100.8", 1)
        p.time = 1000 + i * 0.00001
        p.sniffed_on = label
        p.direction = d
        w.write(p)
    w.close()
    _, obs = read_all(FileSource([str(f)]))
    assert [(o.hop_name, o.direction, o.netns) for o in obs] == [
        ("web/eth0", "tx", 1), ("host/veth1", "rx", 2), ("host/docker0", "rx", 2)]


def test_hops_args_merge_by_time_and_share_node_netns(tmp_path: Path) -> None:
    f1, f2, f3 = tmp_path / "one.pcap", tmp_path / "two.pcap", tmp_path / "three.pcap"
    write_pcap(f1, [ETH / ping("172.17.0.2", "198.51.100.8", s) for s in range(4)], [10, 12, 14, 16])
    write_pcap(f2, [ETH / ping("203.0.113.2", "198.51.100.8", s) for s in range(4)], [10.5, 12.5, 14.5, 16.5])
    write_pcap(f3, [ETH / ping("203.0.113.2", "198.51.100.8", s) for s in range(2)], [11, 11.1])
    src = FileSource([], [parse_hop_arg(f"host/veth1={f1}"), parse_hop_arg(f"host/eth0={f2}"),
                          parse_hop_arg(f"inet/eth0={f3}")])  # fmt: skip
    _batches, obs = read_all(src)
    assert [o.ts_ns // 100_000_000 for o in obs] == [100, 105, 110, 111, 120, 125, 140, 145, 160, 165]
    assert [o.hop_name for o in obs[:4]] == ["host/veth1", "host/eth0", "inet/eth0", "inet/eth0"]
    assert {(o.node, o.netns) for o in obs} == {("host", 1), ("inet", 2)}
    # each merged batch's frames hold each row's own bytes
    assert obs[1].frame == bytes(ETH / ping("203.0.113.2", "198.51.100.8", 0))


def test_file_stem_labels_without_hop_args(tmp_path: Path) -> None:
    f1, f2 = tmp_path / "web.pcap", tmp_path / "host.pcap"
    write_pcap(f1, [ETH / ping("1.1.1.1", "2.2.2.2", 0)], [1])
    write_pcap(f2, [ETH / ping("1.1.1.1", "2.2.2.2", 0)], [2])
    _, obs = read_all(FileSource([str(f1), str(f2)]))
    assert [(o.node, o.ifname) for o in obs] == [("web", "if0"), ("host", "if0")]


def test_sll2_any_capture_one_hop_per_ifindex_with_direction(tmp_path: Path) -> None:
    f = tmp_path / "any.pcap"
    ip = ping("172.17.0.2", "198.51.100.8", 1)
    pkts = [CookedLinuxV2(proto=0x0800, ifindex=5, pkttype=0) / ip,
            CookedLinuxV2(proto=0x0800, ifindex=3, pkttype=4) / ip,
            CookedLinuxV2(proto=0x0800, ifindex=5, pkttype=4) / ip]  # fmt: skip
    write_pcap(f, pkts, [1, 2, 3], linktype=276)
    src = FileSource([], [parse_hop_arg(f"host/any={f}")])
    _, obs = read_all(src)
    assert [(o.hop_name, o.ifindex, o.direction, o.src) for o in obs] == [
        ("host/if5", 5, "rx", "172.17.0.2"), ("host/if3", 3, "tx", "172.17.0.2"),
        ("host/if5", 5, "tx", "172.17.0.2")]  # fmt: skip
    assert len({o.netns for o in obs}) == 1


def test_sll_v1_packet_type_gives_direction(tmp_path: Path) -> None:
    f = tmp_path / "sll.pcap"
    ip = ping("172.17.0.2", "198.51.100.8", 1)
    write_pcap(f, [CookedLinux(pkttype=4, proto=0x0800) / ip, CookedLinux(pkttype=0, proto=0x0800) / ip],
               [1, 2], linktype=113)  # fmt: skip
    _, obs = read_all(FileSource([str(f)]))
    assert [(o.direction, o.src) for o in obs] == [("tx", "172.17.0.2"), ("rx", "172.17.0.2")]


def test_many_packets_small_chunks_batches_and_frames_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(readers, "BATCH_ROWS", 100)
    f = tmp_path / "many.pcapng"
    frames = [bytes(ETH / IP(src="10.0.0.1", dst="10.0.0.2", id=i % 65536) / UDP(sport=1, dport=2) / (b"x" * (i % 50)))
              for i in range(1500)]  # fmt: skip
    f.write_bytes(shb() + idb(1, "h/i", tsresol=9) + b"".join(epb(0, 1000 + i, fr) for i, fr in enumerate(frames)))
    batches = list(FileSource([str(f)]).batches())
    assert max(len(b) for b in batches) <= 100
    rows = np.concatenate([b.rows for b in batches])
    assert rows["ip_id"].tolist() == list(range(1500))
    assert rows["ts_ns"].tolist() == [1000 + i for i in range(1500)]
    got = [bytes(b.frames[int(r["frame_off"]) : int(r["frame_off"]) + int(r["frame_len"])])
           for b in batches for r in b.rows]  # fmt: skip
    assert got == frames


def test_recorder_round_trip(tmp_path: Path) -> None:
    from tests.reference.decode import decode_frames
    from tracer.sinks import record

    frames = [bytes(ETH / ping("172.17.0.2", "198.51.100.8", 1)), bytes(ETH / ping("203.0.113.2", "198.51.100.8", 1))]
    rows = decode_frames(frames, 1)
    rows["ts_ns"] = [1795805084432385000, 1795805084432397123]
    rows["hop"] = [0, 1]
    rows["ifindex"] = [9, 2]
    rows["dir"] = [Dir.TX, Dir.DROP]
    rows["skb"] = [0xFFFF888108472600, 0]
    rows["netns"] = [4026532466, 4026531840]
    rows["drop_reason"] = [0, 6]
    rows["frame_off"] = [0, len(frames[0])]
    rows["frame_len"] = [len(f) for f in frames]
    rows["wire_len"] = [len(f) for f in frames]
    hops = [HopLabel("web", "eth0", 4026532466, 9, 1), HopLabel("host", "eth0", 4026531840, 2, 1)]
    batch = ObsBatch(rows=rows, hops=hops, frames=b"".join(frames), drop_reasons={6: "NETFILTER_DROP"})
    out = tmp_path / "rec.pcapng"
    rec = record.PcapngRecorder(str(out))
    rec.on_batch(batch)
    rec.close()
    _, obs = read_all(FileSource([str(out)]))
    want = batch.observations()
    key = ("ts_ns", "netns", "ifindex", "ifname", "node", "direction", "skb", "src", "dst", "ip_id",
           "icmp_seq", "digest", "drop_reason", "frame")  # fmt: skip
    assert [tuple(getattr(o, k) for k in key) for o in obs] == [tuple(getattr(o, k) for k in key) for o in want]


# -- bad input ------------------------------------------------------------------------


def _err(paths: list[str]) -> tuple[int, str]:
    n = 0
    with pytest.raises(CaptureFileError) as ei:
        for b in FileSource(paths).batches():
            n += len(b)
    return n, str(ei.value)


def test_bad_inputs_name_the_file_and_the_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a capture file at all" * 10)
    nopkts = tmp_path / "nopkts.pcap"
    write_pcap(nopkts, [], [])
    unknown = tmp_path / "wifi.pcap"
    write_pcap(unknown, [ETH / ping("1.1.1.1", "2.2.2.2", 1)], [1], linktype=127)
    assert _err([str(empty)]) == (0, f"{empty}: empty file")
    assert _err([str(garbage)]) == (0, f"{garbage}: not a pcap or pcapng file (magic 0x74686973)")
    assert _err([str(nopkts)]) == (0, f"{nopkts}: no packets")
    assert _err([str(unknown)]) == (0, f"{unknown}: unsupported link type 127 (IEEE802_11_RADIOTAP)")
    assert _err([str(tmp_path)]) == (0, f"{tmp_path}: is a directory, not a capture file")
    assert _err([str(tmp_path / "nope.pcap")]) == (0, f"{tmp_path / 'nope.pcap'}: No such file or directory")


def test_truncated_file_yields_what_was_read_then_raises(tmp_path: Path) -> None:
    good = tmp_path / "good.pcap"
    write_pcap(good, [ETH / ping("1.1.1.1", "2.2.2.2", s) for s in range(10)], [float(s) for s in range(10)])
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good.read_bytes()[:-20])
    assert _err([str(cut)]) == (9, f"{cut}: truncated packet after 9 packets")
    # another file still delivers everything; the error comes at the end
    n, msg = _err([str(cut), str(good)])
    assert (n, msg) == (19, f"{cut}: truncated packet after 9 packets")
    ng = tmp_path / "cut.pcapng"
    fr = bytes(ETH / ping("1.1.1.1", "2.2.2.2", 1))
    ng.write_bytes((shb() + idb(1, "a/b") + epb(0, 1, fr) + epb(0, 2, fr))[:-7])
    assert _err([str(ng)]) == (1, f"{ng}: truncated block after 1 packets")
    bad = tmp_path / "badlen.pcapng"
    bad.write_bytes(shb() + idb(1, "a/b") + epb(0, 1, fr) + struct.pack("<II", 6, 13) + b"\0" * 20)
    assert _err([str(bad)]) == (1, f"{bad}: bad block length 13 after 1 packets")
    undeclared = tmp_path / "undeclared.pcapng"
    undeclared.write_bytes(shb() + idb(1, "a/b") + epb(0, 1, fr) + epb(3, 2, fr))
    assert _err([str(undeclared)]) == (1, f"{undeclared}: packet on undeclared interface 3 after 1 packets")


def test_hop_arg_and_no_files() -> None:
    assert parse_hop_arg("host/eth0=/x/y.pcap") == ("host/eth0", "/x/y.pcap")
    for bad in ("host=/x.pcap", "host/eth0", "/eth0=x", "host/=x"):
        with pytest.raises(UsageError):
            parse_hop_arg(bad)
    with pytest.raises(UsageError):
        FileSource([]).start()


def test_comment_fast_path_and_json_path_agree(tmp_path: Path) -> None:
    """The recorder's padded layout takes the regex path; any other layout the JSON path; same rows."""
    fr = bytes(ETH / ping("172.17.0.2", "198.51.100.8", 1))
    padded = '{"v":1,"dir":"drop","skb":"0x00000005","hook":null,"netns":9,"drop_reason":"NETFILTER_DROP","ts_ns": 333}'
    reordered = '{"ts_ns": 333, "v": 1, "netns": 9, "skb": "0x5", "dir": "drop", "drop_reason": "NETFILTER_DROP"}'
    results = []
    for name, comment in (("fast", padded), ("json", reordered)):
        f = tmp_path / f"{name}.pcapng"
        f.write_bytes(shb() + idb(1, "h/i", tsresol=9) + epb(0, 100, fr, flags=1, comment=comment))
        # Which path a layout takes, on the Python reference (the core's matcher is unit-tested in meta.rs).
        ref = reference.FileSource([str(f)])
        used: list[bool] = []
        fast = ref._apply_meta_fast
        ref._apply_meta_fast = lambda rows, metas, used=used, fast=fast: used.append(fast(rows, metas)) or used[-1]  # type: ignore[method-assign,misc]
        for src in (ref, FileSource([str(f)])):
            _, obs = read_all(src)  # type: ignore[arg-type]
            results.append([(o.ts_ns, o.direction, o.skb, o.netns, o.drop_reason) for o in obs])
        assert used == [name == "fast"]
    assert results == [[(333, "drop", 5, 9, "NETFILTER_DROP")]] * 4


def test_replay_cli_joins_hops_from_separate_files_across_snat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two single-interface captures (--hop) of one ping before and after MASQUERADE: one path, one SNAT."""
    from tracer.cli import main

    veth, uplink = tmp_path / "veth.pcap", tmp_path / "uplink.pcap"
    before = ETH / IP(src="172.17.0.2", dst="198.51.100.8", id=4242, ttl=64) / ICMP(id=7, seq=1) / b"payload-of-a-ping"
    after = ETH / IP(src="203.0.113.2", dst="198.51.100.8", id=4242, ttl=63) / ICMP(id=33, seq=1) / b"payload-of-a-ping"
    write_pcap(veth, [before], [Decimal("1000.000010")])
    write_pcap(uplink, [after], [Decimal("1000.000030")])
    code = main(["replay", "--json", "--hop", f"host/veth1={veth}", "--hop", f"host/eth0={uplink}"])
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    paths = [o for o in objs if o["type"] == "path"]
    assert [[(h["node"], h["iface"], h["src"]) for h in p["hops"]] for p in paths] == [
        [("host", "veth1", "172.17.0.2"), ("host", "eth0", "203.0.113.2")]]
    assert [(n["kind"], n["before"]["src"], n["after"]["src"]) for n in paths[0]["nat"]] == [
        ("snat", "172.17.0.2", "203.0.113.2")]
    assert objs[-1]["type"] == "stats"


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_mutated_and_cut_files_only_ever_raise_capture_file_error(tmp_path: Path, fmt: str) -> None:
    import random

    rng = random.Random(11)
    fr = [bytes(ETH / ping("172.17.0.2", "198.51.100.8", s, ip_id=s)) for s in range(40)]
    if fmt == "pcapng":
        meta = '{"v":1,"dir":"tx","skb":"0x00000005","hook":null,"netns":9,"drop_reason":null,"ts_ns":333}'
        good = shb() + idb(1, "h/i", "netns=7", tsresol=9) + idb(276, "h/any") + b"".join(
            epb(i % 2, 1000 + i, f if i % 2 == 0 else bytes(CookedLinuxV2(proto=0x0800, ifindex=3)) + f[14:],
                flags=1, comment=meta)
            for i, f in enumerate(fr))  # fmt: skip
    else:
        p = tmp_path / "base.pcap"
        write_pcap(p, [ETH / ping("172.17.0.2", "198.51.100.8", s, ip_id=s) for s in range(40)], list(range(40)))
        good = p.read_bytes()
    outcomes = {"ok": 0, "error": 0}
    for k in range(300):
        data = bytearray(good)
        for _ in range(rng.randrange(0, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if k % 2:
            data = data[: rng.randrange(0, len(data))]
        f = tmp_path / f"m{k}.{fmt}"
        f.write_bytes(bytes(data))
        try:
            for b in FileSource([str(f)]).batches():
                b.observations()
            outcomes["ok"] += 1
        except CaptureFileError as exc:
            assert str(exc).startswith(f"{f}: ")
            outcomes["error"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0


def test_a_recorded_netns_0_replays_as_0(tmp_path: Path) -> None:
    """A drop the kernel saw on no device has netns 0; a recording must not turn it into a synthetic id."""
    from tests.unit.conftest import make_obs
    from tracer.model import ObsBatch
    from tracer.sinks.record import PcapngRecorder
    from tracer.sources.files import FileSource

    frame = bytes(14) + bytes([0x45]) + bytes(19)
    drop = make_obs(node="?", ifname="?", netns=0, ifindex=0, direction="drop", frame=frame)
    out = tmp_path / "drop.pcapng"
    rec = PcapngRecorder(str(out))
    rec.on_batch(ObsBatch.from_observations([drop]))
    rec.close()
    src = FileSource([str(out)])
    src.start()
    hops = [(h.node, h.netns) for b in src.batches() for h in b.hops]
    assert hops == [("?", 0)]
