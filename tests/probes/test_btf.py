"""probes.btf: the BTF binary parser on hand-built blobs, and on the running kernel's BTF."""

from __future__ import annotations

import functools
import struct
import subprocess

import pytest

from probes import btf
from probes.btf import Btf, BtfError, KernelLayout, parse_layout


class BlobBuilder:
    """A minimal BTF writer: enough kinds to exercise nesting, bitfields, enums and typedefs."""

    def __init__(self) -> None:
        self.strs = b"\0"
        self.types: list[bytes] = []

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strs)
        self.strs += name.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"",
            kflag: bool = False) -> int:
        info = (kind << 24) | vlen | (1 << 31 if kflag else 0)
        self.types.append(struct.pack("<III", self.s(name), info, size_or_type) + extra)
        return len(self.types)

    def int_(self, name: str, size: int) -> int:
        return self.add(name, btf.INT, 0, size, struct.pack("<I", size * 8))

    def struct_(self, name: str, size: int, members: list[tuple[str, int, int, int]], union: bool = False) -> int:
        kflag = any(bits for _, _, _, bits in members)
        extra = b"".join(
            struct.pack("<III", self.s(n), t, (bits << 24 | off) if kflag else off) for n, t, off, bits in members
        )
        return self.add(name, btf.UNION if union else btf.STRUCT, len(members), size, extra, kflag)

    def blob(self) -> bytes:
        types = b"".join(self.types)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strs))
        return hdr + types + self.strs


def test_members_through_anonymous_unions_and_structs() -> None:
    b = BlobBuilder()
    u32 = b.int_("u32", 4)
    u16 = b.int_("u16", 2)
    ptr = b.add("", btf.PTR, 0, 0)
    # struct inner { u32 a; u16 dev; } nested in an anonymous union in an anonymous struct
    inner = b.struct_("", 8, [("a", u32, 0, 0), ("dev", u16, 32, 0)])
    anon_union = b.struct_("", 8, [("rb", ptr, 0, 0), ("", inner, 0, 0)], union=True)
    b.struct_("sk_buff", 64, [("x", u32, 0, 0), ("", anon_union, 64, 0), ("flag", u32, 192, 1),
                              ("len", u32, 224, 0)])
    parsed = Btf(b.blob())
    assert (parsed.member("sk_buff", "dev"), parsed.member("sk_buff", "len"),
            parsed.member("sk_buff", "a")) == ((12, 2), (28, 4), (8, 4))
    with pytest.raises(BtfError, match="bitfield"):
        parsed.member("sk_buff", "flag")
    with pytest.raises(BtfError, match="no member"):
        parsed.member("sk_buff", "nope")


def test_dotted_path_and_enum_and_tracepoint_args() -> None:
    b = BlobBuilder()
    u32 = b.int_("unsigned int", 4)
    net = b.struct_("net", 16, [("pad", u32, 0, 0)])
    net_ptr = b.add("", btf.PTR, 0, net)
    pnet = b.struct_("", 8, [("net", net_ptr, 0, 0)])
    pnet_td = b.add("possible_net_t", btf.TYPEDEF, 0, pnet)
    b.struct_("net_device", 64, [("ifindex", u32, 0, 0), ("nd_net", pnet_td, 256, 0)])
    enum_extra = struct.pack("<Ii", b.s("SKB_NOT_DROPPED_YET"), 0) + struct.pack("<Ii", b.s("SKB_DROP_REASON_NO_SOCKET"), 3)
    reason = b.add("skb_drop_reason", btf.ENUM, 2, 4, enum_extra)
    skb = b.struct_("sk_buff", 8, [("len", u32, 0, 0)])
    skb_ptr = b.add("", btf.PTR, 0, skb)
    void_ptr = b.add("", btf.PTR, 0, 0)
    params = [(0, void_ptr), (0, skb_ptr), (0, void_ptr), (0, reason)]
    proto = b.add("", btf.FUNC_PROTO, len(params), 0, b"".join(struct.pack("<II", n, t) for n, t in params))
    fptr = b.add("", btf.PTR, 0, proto)
    b.add("btf_trace_kfree_skb", btf.TYPEDEF, 0, fptr)
    parsed = Btf(b.blob())
    assert parsed.member("net_device", "nd_net.net") == (32, 8)
    assert parsed.enum_values("skb_drop_reason") == {0: "SKB_NOT_DROPPED_YET", 3: "SKB_DROP_REASON_NO_SOCKET"}
    assert parsed.tracepoint_args("kfree_skb") == ["skb", "location", "reason"]


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(BtfError, match="magic"):
        Btf(b"\x00" * 64)
    with pytest.raises(BtfError, match="too short"):
        Btf(b"\x9f\xeb")


@functools.cache
def _bpftool_raw() -> list[str]:
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(btf.VMLINUX_BTF), "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _bpftool_member_offset(struct_name: str, member: str) -> int:
    """Offset of a direct member, from bpftool's independent BTF reader."""
    lines = _bpftool_raw()
    start = next(i for i, ln in enumerate(lines) if f"STRUCT '{struct_name}' " in ln)
    for ln in lines[start + 1:]:
        if not ln.startswith("\t"):
            break
        if ln.strip().startswith(f"'{member}' "):
            return int(ln.split("bits_offset=")[1].split()[0]) // 8
    raise AssertionError(f"bpftool shows no {struct_name}.{member}")


def test_running_kernel_layout_matches_bpftool() -> None:
    if not btf.VMLINUX_BTF.exists():
        pytest.skip("kernel without BTF")
    lay = parse_layout(btf.VMLINUX_BTF.read_bytes())
    expected = {
        "SKB_HEAD": _bpftool_member_offset("sk_buff", "head"),
        "SKB_LEN": _bpftool_member_offset("sk_buff", "len"),
        "DEV_IFINDEX": _bpftool_member_offset("net_device", "ifindex"),
        "DEV_NAME": _bpftool_member_offset("net_device", "name"),
        "NET_NS": _bpftool_member_offset("net", "ns"),
        "NS_INUM": _bpftool_member_offset("ns_common", "inum"),
    }
    assert {k: lay.offsets[k] for k in expected} == expected
    assert lay.tp_args["kfree_skb"]["skb"] == 0 and lay.tp_args["kfree_skb"]["reason"] == 2
    names = set(lay.drop_reasons.values())
    assert {"NETFILTER_DROP", "NO_SOCKET", "NOT_DROPPED_YET", "CONSUMED"} <= names
    # what the tp_btf programs load against (probes/tp_btf.py): bpftool names the same typedefs
    raw = _bpftool_raw()
    for tp in ("netif_receive_skb", "net_dev_start_xmit", "kfree_skb"):
        assert any(ln.startswith(f"[{lay.tp_btf_ids[tp]}] TYPEDEF 'btf_trace_{tp}' ") for ln in raw)


def test_cache_round_trip(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if not btf.VMLINUX_BTF.exists():
        pytest.skip("kernel without BTF")
    monkeypatch.setattr(btf, "_cache_file", lambda build_id: tmp_path / f"btf-{build_id}.json")
    first = btf.load_layout()
    second = btf.load_layout()
    assert (first.cached, second.cached) == (False, True)
    assert (first.offsets, first.tp_args, first.drop_reasons, first.tp_btf_ids) == (
        second.offsets, second.tp_args, second.drop_reasons, second.tp_btf_ids)
    assert len(second.tp_btf_ids) == 3


def _layout(dev_off: int) -> KernelLayout:
    offsets = {"SKB_HEAD": 192, "SKB_DATA": 200, "SKB_LEN": 112, "SKB_DATA_LEN": 116, "SKB_NETWORK_HEADER": 180,
               "SKB_MAC_HEADER": 182, "SKB_TRANSPORT_HEADER": 178, "SKB_PROTOCOL": 176, "SKB_DEV": dev_off,
               "DEV_IFINDEX": 224, "DEV_NAME": 280, "DEV_ND_NET": 264, "NET_NS": 152, "NS_INUM": 24}
    sizes = {"SKB_HEAD": 8, "SKB_DATA": 8, "SKB_LEN": 4, "SKB_DATA_LEN": 4, "SKB_NETWORK_HEADER": 2,
             "SKB_MAC_HEADER": 2, "SKB_TRANSPORT_HEADER": 2, "SKB_PROTOCOL": 2, "SKB_DEV": 8,
             "DEV_IFINDEX": 4, "DEV_NAME": 16, "DEV_ND_NET": 8, "NET_NS": 4, "NS_INUM": 4}
    return KernelLayout(offsets=offsets, sizes=sizes, tp_args={})


def test_sk_buff_span_takes_in_dev_only_when_one_read_stays_within_256_bytes() -> None:
    def span(layout: KernelLayout) -> tuple[str, str]:
        flags = layout.cflags()
        lo = next(f for f in flags if f.startswith("-DHT_SKB_LO="))
        hi = next(f for f in flags if f.startswith("-DHT_SKB_HI="))
        return lo, hi

    assert span(_layout(16)) == ("-DHT_SKB_LO=16", "-DHT_SKB_HI=208")  # this kernel's layout
    assert span(_layout(2000)) == ("-DHT_SKB_LO=112", "-DHT_SKB_HI=208")  # too far: read on its own


def test_the_drop_reason_table_has_every_reason_of_the_running_kernel() -> None:
    """crates/hoptrace-core/data/drop_reasons.tsv (shipped, with a meaning per reason) knows
    every name of this kernel's enum skb_drop_reason, and names nothing the kernel lacks but
    what older or newer kernels have."""
    from tracer import _core

    if not btf.VMLINUX_BTF.exists():
        pytest.fail(f"{btf.VMLINUX_BTF} is missing: this kernel has no BTF")
    kernel = set(parse_layout(btf.VMLINUX_BTF.read_bytes()).drop_reasons.values()) - {"SUBSYS_MASK", "MAX"}
    table = {line.split("\t")[0] for line in _core.drop_reason_table().splitlines()
             if line and not line.startswith("#")}
    assert kernel - table == set()
    assert len(kernel) > 100 and "QUEUE_PURGE" in table
