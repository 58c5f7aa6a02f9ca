"""``--filter EXPR``: a pcap-filter expression (tcpdump syntax) matched at any hop.

libpcap itself compiles the expression (tracer/libpcap.py): the very syntax and
semantics users know from tcpdump, without a capture handle. The core
(``tracer._core.BpfProgram``, crates/hoptrace-core/src/bpf.rs) runs the compiled
classic BPF over batches of frames, as libpcap's ``bpf_filter`` would;
libpcap's own interpreter stays only as the reference tests compare it with
(``tracer.libpcap.LibpcapProgram``). A path is kept when the frame of any of its hops
matches, so ``host 198.51.100.8`` keeps the container's packet both before and
after MASQUERADE rewrote its source.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracer.errors import FilterError
from tracer.libpcap import compile_insns
from tracer.linktypes import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
)

if TYPE_CHECKING:
    import numpy as np

    from tracer._core import BpfProgram
from tracer.model import Observation, PacketPath

# Link types a sighting's frame is tried as, when only the frame is known (see _linktype_of).
_CANDIDATES = (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, LINKTYPE_LINUX_SLL, LINKTYPE_RAW)


def core_program(expr: str, linktype: int) -> BpfProgram:
    """``expr`` compiled by libpcap for ``linktype``, as the core runs it."""
    from tracer import _core

    insns = compile_insns(expr, linktype)
    try:
        return _core.BpfProgram(insns)
    except ValueError as exc:  # libpcap's output always validates: a bug on one side or the other
        raise FilterError(f"--filter {expr[:200]!r}: libpcap's program does not validate: {exc}") from exc


def _frames_arg(frames: bytes | bytearray | memoryview) -> Any:
    """``frames`` as ``BpfProgram.match_frames`` takes it, without a copy."""
    if type(frames) is bytes:
        return frames
    import numpy as np

    return np.frombuffer(frames, dtype=np.uint8)


class PathFilter:
    """A compiled pcap-filter expression; ``keep(path)`` is True when any hop matches."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self._progs: dict[int, BpfProgram | None] = {}
        # Compile for Ethernet now: a bad expression fails before any capture starts.
        self._progs[LINKTYPE_ETHERNET] = core_program(expr, LINKTYPE_ETHERNET)
        self._linktypes: dict[tuple[str, str], int] = {}

    def _prog(self, linktype: int) -> BpfProgram | None:
        if linktype not in self._progs:
            try:
                self._progs[linktype] = core_program(self.expr, linktype)
            except FilterError:
                # Valid for Ethernet but meaningless here (e.g. "ether host" on raw IP):
                # frames of this link type simply never match.
                self._progs[linktype] = None
        return self._progs[linktype]

    def insns(self, linktype: int) -> bytes | None:
        """The program for frames of ``linktype`` as the core's engine runs it (libpcap's
        ``struct bpf_insn`` bytes); None when the expression means nothing there."""
        try:
            return compile_insns(self.expr, linktype)
        except FilterError:
            return None

    def match_frames(self, frames: bytes | bytearray | memoryview, offsets: np.ndarray[Any, Any],
                     lengths: np.ndarray[Any, Any], linktype: int) -> np.ndarray[Any, Any]:
        """One verdict per frame ``frames[offsets[i]:][:lengths[i]]``, all of ``linktype``."""
        import numpy as np

        prog = self._prog(linktype)
        if prog is None:
            return np.zeros(len(offsets), dtype=bool)
        lengths = np.ascontiguousarray(lengths, dtype=np.uint32)
        # The captured length stands for the wire length too (what `len` reads), as before.
        return prog.match_frames(_frames_arg(frames), np.ascontiguousarray(offsets, dtype=np.uint64),
                                 lengths, lengths)  # fmt: skip

    def match(self, frame: bytes | bytearray | memoryview, linktype: int) -> bool:
        """One frame (tests, small callers; the engine matches batches)."""
        import numpy as np

        return bool(self.match_frames(frame, np.zeros(1, np.uint64), np.array([len(frame)]), linktype)[0])

    def _match_list(self, frames: list[bytes], linktype: int) -> bool:
        """Whether any of ``frames`` (all of ``linktype``) matches: one call into the core."""
        import numpy as np

        lengths = np.fromiter(map(len, frames), dtype=np.uint64, count=len(frames))
        offsets = np.cumsum(lengths) - lengths
        return bool(self.match_frames(b"".join(frames), offsets, lengths, linktype).any())

    def learn_linktype(self, node: str, iface: str, linktype: int) -> None:
        """Tell the filter a hop's link type (sources know it: ``HopLabel.linktype``)."""
        self._linktypes[(node, iface)] = linktype

    def keep(self, path: PacketPath) -> bool:
        return self.keep_hops(path.hops)

    def keep_hops(self, hops: Sequence[Observation]) -> bool:
        by_linktype: dict[int, list[bytes]] = {}
        for obs in hops:
            if obs.frame:
                lt = self._linktype_of(obs)
                if lt is not None:
                    by_linktype.setdefault(lt, []).append(bytes(obs.frame))
                    continue
            synth = synth_frame(obs)
            if synth:
                by_linktype.setdefault(LINKTYPE_RAW, []).append(synth)
        return any(self._match_list(frames, lt) for lt, frames in by_linktype.items())

    def _linktype_of(self, obs: Observation) -> int | None:
        """The link type of a sighting's frame: told, or the one whose decode gives this sighting."""
        key = (obs.node, obs.ifname)
        lt = self._linktypes.get(key)
        if lt is not None:
            return lt
        from tracer import _core
        from tracer.addr import addr_text
        from tracer.model import obs_dtype

        # The frame decoded as each candidate, in one call into the core.
        rows = _core.decode_frames([bytes(obs.frame)] * len(_CANDIDATES), list(_CANDIDATES)).view(obs_dtype())
        for cand, (family, proto, ethertype, src) in zip(
            _CANDIDATES, rows[["family", "proto", "ethertype", "src"]].tolist(), strict=True
        ):
            if family == obs.family and ethertype == obs.ethertype and proto == obs.proto and (
                obs.family == 0 or addr_text(family, src) == obs.src
            ):
                self._linktypes[key] = cand
                return cand
        return None


def synth_frame(obs: Observation) -> bytes:
    """A raw IP header (+ L4 ports / ICMP type) rebuilt from a sighting's fields.

    For sightings without frame bytes: enough for host/net/proto/port/icmp
    filters, which is what people filter paths by.
    """
    from tracer.addr import addr_bytes

    if obs.family not in (4, 6) or not obs.src or not obs.dst:
        return b""
    _, src = addr_bytes(obs.src)
    _, dst = addr_bytes(obs.dst)
    if obs.proto in (6, 17, 132, 136):
        l4 = struct.pack("!HH", obs.sport or 0, obs.dport or 0)
        if obs.proto == 6:
            l4 += struct.pack("!IIBBHHH", obs.tcp_seq or 0, obs.tcp_ack or 0, 0x50, obs.tcp_flags or 0, 0, 0, 0)
        else:
            l4 += bytes(4)
    elif obs.proto in (1, 58):
        l4 = struct.pack("!BBHHH", obs.icmp_type or 0, obs.icmp_code or 0, 0, obs.icmp_id or 0, obs.icmp_seq or 0)
    else:
        l4 = b""
    if obs.family == 4:
        frag = (obs.frag_offset // 8) | (0x2000 if obs.more_fragments else 0)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), obs.ip_id or 0, frag, obs.ttl,
                          obs.proto, 0, src[:4], dst[:4])  # fmt: skip
        if obs.frag_offset:
            l4 = b""
        return hdr + l4
    hdr = struct.pack("!IHBB16s16s", (6 << 28) | (obs.flow_label or 0), len(l4), obs.proto, obs.ttl, src, dst)
    return hdr + l4
