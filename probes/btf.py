"""The running kernel's layout, from BTF (/sys/kernel/btf/vmlinux), never from headers.

Parses the BTF binary format directly with ``struct`` (header, type section,
string section; see the kernel's Documentation/bpf/btf.rst) and extracts only
what probes/skb_hops.c reads: member offsets of sk_buff, net_device, net and
ns_common (through anonymous unions/structs, and bitfields), the argument
order of the raw tracepoints (``btf_trace_<name>`` typedefs) and the names of
``enum skb_drop_reason``. The result is small and cached as JSON, keyed by the
kernel's build id, so later starts skip the ~0.5 s parse.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.errors import KernelFeatureMissing

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
KERNEL_NOTES = Path("/sys/kernel/notes")
CACHE_VERSION = 5

BTF_MAGIC = 0xEB9F
# BTF kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}

# (struct, member path) -> macro name passed to the C program as -DHT_OFF_<name>.
# A dotted path walks into named members (net_device.nd_net is possible_net_t {struct net *net}).
FIELDS: dict[str, tuple[str, str]] = {
    "SKB_HEAD": ("sk_buff", "head"),
    "SKB_DATA": ("sk_buff", "data"),
    "SKB_LEN": ("sk_buff", "len"),
    "SKB_DATA_LEN": ("sk_buff", "data_len"),
    "SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "SKB_MAC_HEADER": ("sk_buff", "mac_header"),
    "SKB_TRANSPORT_HEADER": ("sk_buff", "transport_header"),
    "SKB_PROTOCOL": ("sk_buff", "protocol"),
    "SKB_DEV": ("sk_buff", "dev"),
    "SKB_SK": ("sk_buff", "sk"),
    "DEV_IFINDEX": ("net_device", "ifindex"),
    "DEV_NAME": ("net_device", "name"),
    "DEV_ND_NET": ("net_device", "nd_net.net"),
    "NET_NS": ("net", "ns"),
    "NS_INUM": ("ns_common", "inum"),
    "SK_NET": ("sock_common", "skc_net.net"),
}
# raw tracepoint -> argument names whose index (in ctx->args) the program needs
TRACEPOINT_ARGS: dict[str, tuple[str, ...]] = {
    "netif_receive_skb": ("skb",),
    "net_dev_start_xmit": ("skb", "dev"),
    "kfree_skb": ("skb", "location", "reason"),
}


@dataclass(frozen=True, slots=True)
class KernelLayout:
    """What the probes need to know about the running kernel."""

    offsets: dict[str, int]  # HT_OFF_<name> -> byte offset
    sizes: dict[str, int]  # HT_OFF_<name> -> size in bytes of that member
    tp_args: dict[str, dict[str, int]]  # tracepoint -> {arg name: index into ctx->args}
    drop_reasons: dict[int, str] = field(default_factory=dict)  # value -> name without prefix
    # tracepoint -> BTF type id of its btf_trace_<tp> typedef (what a tp_btf program is loaded
    # against: probes/tp_btf.py); empty when the kernel's BTF has none
    tp_btf_ids: dict[str, int] = field(default_factory=dict)
    build_id: str = ""
    parse_s: float = 0.0  # time the BTF parse took (0 when read from the cache)
    cached: bool = False

    def span(self, prefix: str, extra: dict[str, int] | None = None) -> tuple[int, int]:
        """[lo, hi) covering every field named prefix*, lo rounded down to 8 (keeps alignment)."""
        sizes = {**self.sizes, **(extra or {})}
        # skb->dev and skb->sk are read apart (dev only when close enough, sk only without a device)
        keys = [k for k in self.offsets if k.startswith(prefix) and k not in ("SKB_DEV", "SKB_SK")]
        lo = min(self.offsets[k] for k in keys) // 8 * 8
        hi = max(self.offsets[k] + sizes[k] for k in keys)
        return lo, (hi + 7) // 8 * 8

    def cflags(self) -> list[str]:
        flags = [f"-DHT_OFF_{k}={v}" for k, v in sorted(self.offsets.items())]
        skb_lo, skb_hi = self.span("SKB_")
        # skb->dev in the same read when that keeps it to one read of <= 256 bytes: one
        # bpf_probe_read_kernel less per rx/drop event (~15 ns here, BPF_ENABLE_STATS)
        dev_off = self.offsets["SKB_DEV"]
        lo8 = min(skb_lo, dev_off // 8 * 8)
        hi8 = max(skb_hi, (dev_off + 8 + 7) // 8 * 8)
        if hi8 - lo8 <= 256:
            skb_lo, skb_hi = lo8, hi8
        dev_lo, dev_hi = self.span("DEV_", {"DEV_NAME": 16})  # char name[IFNAMSIZ]
        if skb_hi - skb_lo > 256 or dev_hi - dev_lo > 256:
            raise BtfError("sk_buff/net_device fields are spread too far apart for one read each")
        flags += [f"-DHT_SKB_LO={skb_lo}", f"-DHT_SKB_HI={skb_hi}",
                  f"-DHT_DEV_LO={dev_lo}", f"-DHT_DEV_HI={dev_hi}"]
        for tp, args in sorted(self.tp_args.items()):
            for name, idx in sorted(args.items()):
                flags.append(f"-DHT_ARG_{tp.upper()}_{name.upper()}={idx}")
        return flags


class BtfError(KernelFeatureMissing):
    pass


@dataclass(slots=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    kind_flag: bool
    members: list[tuple[str, int, int, int]]  # (name, type id, bit offset, bitfield size) / enum (name, value, 0, 0)


class Btf:
    """A parsed BTF blob: types by id, lookup by (kind, name)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"not BTF (magic 0x{magic:04x}); only little-endian BTF is supported")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        tstart = hdr_len + type_off
        sstart = hdr_len + str_off
        self._strs = data[sstart : sstart + str_len]
        self.types: list[_Type | None] = [None]  # id 0 is void
        self.by_name: dict[tuple[int, str], int] = {}
        self._parse(data, tstart, tstart + type_len)

    def _str(self, off: int) -> str:
        end = self._strs.find(b"\0", off)
        return self._strs[off:end].decode("ascii", "replace")

    def _parse(self, data: bytes, pos: int, end: int) -> None:
        unpack3 = struct.Struct("<III").unpack_from
        unpack2 = struct.Struct("<Ii").unpack_from
        types = self.types
        by_name = self.by_name
        strs = self._str
        while pos < end:
            name_off, info, size_or_type = unpack3(data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = bool(info >> 31)
            members: list[tuple[str, int, int, int]] = []
            if kind in (STRUCT, UNION):
                for i in range(vlen):
                    m_name, m_type, m_off = unpack3(data, pos + 12 * i)
                    if kflag:
                        members.append((strs(m_name), m_type, m_off & 0xFFFFFF, m_off >> 24))
                    else:
                        members.append((strs(m_name), m_type, m_off, 0))
                pos += 12 * vlen
            elif kind == ENUM:
                for i in range(vlen):
                    e_name, e_val = unpack2(data, pos + 8 * i)
                    members.append((strs(e_name), e_val, 0, 0))
                pos += 8 * vlen
            elif kind == ENUM64:
                for i in range(vlen):
                    e_name, lo, hi = unpack3(data, pos + 12 * i)
                    members.append((strs(e_name), lo | (hi << 32), 0, 0))
                pos += 12 * vlen
            elif kind == FUNC_PROTO:
                for i in range(vlen):
                    p_name, p_type = struct.unpack_from("<II", data, pos + 8 * i)
                    members.append((strs(p_name), p_type, 0, 0))
                pos += 8 * vlen
            elif kind in (INT, VAR, DECL_TAG):
                pos += 4
            elif kind == ARRAY:
                pos += 12
            elif kind == DATASEC:
                pos += 12 * vlen
            elif kind > ENUM64:
                raise BtfError(f"unknown BTF kind {kind}")
            name = strs(name_off) if name_off else ""
            tid = len(types)
            types.append(_Type(kind, name, size_or_type, kflag, members))
            if name and kind in (STRUCT, UNION, ENUM, ENUM64, TYPEDEF):
                by_name.setdefault((kind, name), tid)

    def find(self, kind: int, name: str) -> _Type:
        tid = self.by_name.get((kind, name))
        if tid is None:
            raise BtfError(f"BTF of the running kernel has no {name!r}")
        t = self.types[tid]
        assert t is not None
        return t

    def resolve(self, tid: int) -> _Type | None:
        """Skip typedefs and qualifiers."""
        t = self.types[tid]
        while t is not None and t.kind in _MODIFIERS:
            t = self.types[t.size_or_type]
        return t

    def member(self, struct_name: str, path: str) -> tuple[int, int]:
        """(byte offset, byte size) of a dotted member path, through anonymous members."""
        t = self.find(STRUCT, struct_name)
        bit_total = 0
        size = 0
        for part in path.split("."):
            found = self._find_member(t, part)
            if found is None:
                raise BtfError(f"BTF: struct {struct_name} has no member {path!r}")
            bit_off, bitfield, mtype = found
            if bitfield:
                raise BtfError(f"BTF: {struct_name}.{path} is a bitfield; the probe cannot read it")
            bit_total += bit_off
            resolved = self.resolve(mtype)
            if resolved is None:
                raise BtfError(f"BTF: {struct_name}.{path} has no type")
            t = resolved
            size = self._size(mtype)
        if bit_total % 8:
            raise BtfError(f"BTF: {struct_name}.{path} is not byte aligned")
        return bit_total // 8, size

    def _find_member(self, t: _Type, name: str) -> tuple[int, int, int] | None:
        """Breadth-first through anonymous struct/union members (struct_group, unions)."""
        for m_name, m_type, m_off, m_bits in t.members:
            if m_name == name:
                return m_off, m_bits, m_type
        for m_name, m_type, m_off, _ in t.members:
            if m_name:
                continue
            inner = self.resolve(m_type)
            if inner is not None and inner.kind in (STRUCT, UNION):
                found = self._find_member(inner, name)
                if found is not None:
                    return m_off + found[0], found[1], found[2]
        return None

    def _size(self, tid: int) -> int:
        t = self.resolve(tid)
        if t is None:
            return 0
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY:
            return 0  # not needed: arrays are read with their own bound (IFNAMSIZ)
        return t.size_or_type

    def enum_values(self, name: str) -> dict[int, str]:
        try:
            t = self.find(ENUM, name)
        except BtfError:
            t = self.find(ENUM64, name)
        return {val: m_name for m_name, val, _, _ in t.members}

    def tracepoint_args(self, tp: str) -> list[str]:
        """Argument kinds of a raw tracepoint, in ctx->args order (the leading void *__data is dropped).

        The btf_trace_<tp> prototypes carry no parameter names, so arguments
        are named by type: "skb" (struct sk_buff *), "dev" (struct net_device *),
        "reason" (enum skb_drop_reason), "location" (the first void * after skb);
        anything else is "?".
        """
        td = self.find(TYPEDEF, f"btf_trace_{tp}")
        ptr = self.types[td.size_or_type]
        if ptr is None or ptr.kind != PTR:
            raise BtfError(f"BTF: btf_trace_{tp} is not a function pointer")
        proto = self.types[ptr.size_or_type]
        if proto is None or proto.kind != FUNC_PROTO:
            raise BtfError(f"BTF: btf_trace_{tp} is not a function pointer")
        names: list[str] = []
        for _, ptype, _, _ in proto.members[1:]:
            names.append(self._arg_kind(ptype, names))
        return names

    def _arg_kind(self, tid: int, seen: list[str]) -> str:
        t = self.resolve(tid)
        if t is None:
            return "?"
        if t.kind in (ENUM, ENUM64) and t.name == "skb_drop_reason":
            return "reason"
        if t.kind != PTR:
            return "?"
        target = self.resolve(t.size_or_type)
        if target is None:
            return "location" if "skb" in seen and "location" not in seen else "?"
        if target.kind == STRUCT and target.name == "sk_buff":
            return "skb"
        if target.kind == STRUCT and target.name == "net_device":
            return "dev"
        return "?"


def kernel_build_id() -> str:
    """The GNU build id note of the running kernel; falls back to release + version + BTF size."""
    try:
        notes = KERNEL_NOTES.read_bytes()
    except OSError:
        notes = b""
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        name_start = pos + 12
        desc_start = name_start + ((namesz + 3) & ~3)
        if ntype == 3 and notes[name_start : name_start + namesz].rstrip(b"\0") == b"GNU":
            return notes[desc_start : desc_start + descsz].hex()
        pos = desc_start + ((descsz + 3) & ~3)
    try:
        size = VMLINUX_BTF.stat().st_size
    except OSError:
        size = 0
    raw = f"{platform.release()} {platform.version()} {size}".encode()
    return "noid-" + hashlib.sha1(raw).hexdigest()


def _reason_name(enumerator: str) -> str:
    """SKB_DROP_REASON_NO_SOCKET -> NO_SOCKET, SKB_CONSUMED -> CONSUMED (what the kernel's tracepoint prints)."""
    for prefix in ("SKB_DROP_REASON_", "SKB_"):
        if enumerator.startswith(prefix):
            return enumerator[len(prefix) :]
    return enumerator


def parse_layout(data: bytes, build_id: str = "") -> KernelLayout:
    t0 = time.perf_counter()
    btf = Btf(data)
    offsets: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for macro, (sname, path) in FIELDS.items():
        off, size = btf.member(sname, path)
        offsets[macro] = off
        sizes[macro] = size
    tp_args: dict[str, dict[str, int]] = {}
    for tp, wanted in TRACEPOINT_ARGS.items():
        names = btf.tracepoint_args(tp)
        missing = [w for w in wanted if w not in names]
        if missing:
            raise BtfError(f"BTF: raw tracepoint {tp} has no argument(s) {missing} (has {names})")
        tp_args[tp] = {w: names.index(w) for w in wanted}
    reasons = {v: _reason_name(n) for v, n in btf.enum_values("skb_drop_reason").items()}
    tp_ids = {tp: tid for tp in TRACEPOINT_ARGS if (tid := btf.by_name.get((TYPEDEF, f"btf_trace_{tp}")))}
    return KernelLayout(offsets, sizes, tp_args, reasons, tp_ids, build_id, time.perf_counter() - t0)


def _cache_file(build_id: str) -> Path | None:
    from probes.headers import cache_root

    try:
        return cache_root() / f"btf-{build_id}.v{CACHE_VERSION}.json"
    except KernelFeatureMissing:
        return None


def load_layout(btf_path: Path = VMLINUX_BTF, use_cache: bool = True) -> KernelLayout:
    """The running kernel's layout, from the cache when its build id matches."""
    if not btf_path.exists():
        raise BtfError(
            f"{btf_path} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF",
            "use --backend pcap, or a kernel with BTF",
        )
    build_id = kernel_build_id() if btf_path == VMLINUX_BTF else ""
    cache = _cache_file(build_id) if (use_cache and build_id) else None
    if cache is not None and cache.exists():
        try:
            d: dict[str, Any] = json.loads(cache.read_text())
            return KernelLayout(
                offsets=d["offsets"],
                sizes=d["sizes"],
                tp_args=d["tp_args"],
                drop_reasons={int(k): v for k, v in d["drop_reasons"].items()},
                tp_btf_ids=d["tp_btf_ids"],
                build_id=build_id,
                cached=True,
            )
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache is rebuilt below
    try:
        data = btf_path.read_bytes()
    except OSError as exc:
        raise BtfError(f"cannot read {btf_path}: {exc.strerror}", "run as root") from exc
    layout = parse_layout(data, build_id)
    if cache is not None:
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps(
                {
                    "offsets": layout.offsets,
                    "sizes": layout.sizes,
                    "tp_args": layout.tp_args,
                    "drop_reasons": {str(k): v for k, v in layout.drop_reasons.items()},
                    "tp_btf_ids": layout.tp_btf_ids,
                }
            )
        )
        tmp.replace(cache)
    return layout


if __name__ == "__main__":
    lay = load_layout(use_cache=False)
    print(json.dumps({"offsets": lay.offsets, "tp_args": lay.tp_args, "parse_s": round(lay.parse_s, 3),
                      "drop_reasons": len(lay.drop_reasons), "build_id": lay.build_id}, indent=1))
