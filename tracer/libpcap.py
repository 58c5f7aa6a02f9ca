"""libpcap, bound once through ctypes: a pcap-filter expression compiled to classic BPF.

``pcap_open_dead`` per link type + ``pcap_compile``, on the libpcap that tcpdump
installs: tcpdump's very syntax and semantics, without a capture handle. Every
caller (``--filter`` in the engine, the taps' kernel socket filters, the tests'
reference interpreter) goes through here, so there is one lock and one set of checks.
Every failure is a ``FilterError`` (exit 2, one line).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Sequence
from typing import Any

from tracer.errors import FilterError

#: libpcap's default snaplen; what a compiled program's accepting ``ret`` gives.
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
LINKTYPE_RAW = 101

# pcap_open_dead takes a DLT_*, not a LINKTYPE_*: they differ for raw IP (LINKTYPE_RAW 101 is
# DLT_RAW 12 on Linux; 14 is OpenBSD's DLT_RAW). libpcap refuses 101 ("unknown data link type").
_LINKTYPE_TO_DLT = {LINKTYPE_RAW: 12, 14: 12}


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _PktHdr(ctypes.Structure):
    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


_LIB: Any = None
# Older libpcaps compile through a global parser; one compile at a time (the taps compile on
# their re-discovery thread while the engine may compile --filter for a new link type).
_LOCK = threading.Lock()


def _lib() -> Any:
    global _LIB
    with _LOCK:
        if _LIB is None:
            name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
            try:
                lib = ctypes.CDLL(name)
            except OSError as exc:
                raise FilterError(f"--filter needs libpcap ({name}): {exc}", "apt-get install libpcap0.8") from exc
            lib.pcap_open_dead.restype = ctypes.c_void_p
            lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.pcap_compile.restype = ctypes.c_int
            lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                         ctypes.c_int, ctypes.c_uint32]  # fmt: skip
            lib.pcap_geterr.restype = ctypes.c_char_p
            lib.pcap_geterr.argtypes = [ctypes.c_void_p]
            lib.pcap_offline_filter.restype = ctypes.c_int
            lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram), ctypes.POINTER(_PktHdr),
                                                ctypes.c_char_p]  # fmt: skip
            lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
            lib.pcap_close.argtypes = [ctypes.c_void_p]
            _LIB = lib
    return _LIB


def _compile(expr: str, linktype: int, snaplen: int) -> _BpfProgram:
    """libpcap's program for ``expr`` on ``linktype``; the caller frees it (``pcap_freecode``)."""
    if "\0" in expr:
        # libpcap reads a C string: it would silently compile only the part before the NUL.
        raise FilterError(f"bad --filter {expr[:200]!r}: contains a NUL byte")
    lib = _lib()
    with _LOCK:
        handle = lib.pcap_open_dead(_LINKTYPE_TO_DLT.get(linktype, linktype), snaplen)
        if not handle:
            raise FilterError(f"libpcap cannot open a handle for link type {linktype}")
        try:
            prog = _BpfProgram()
            if lib.pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
                msg = (lib.pcap_geterr(handle) or b"syntax error").decode("utf-8", "replace")
                raise FilterError(f"bad --filter {expr[:200]!r}: {msg}")
            return prog
        finally:
            lib.pcap_close(handle)


def compile_insns(expr: str, linktype: int, snaplen: int = SNAPLEN) -> bytes:
    """``expr`` compiled by libpcap for frames of ``linktype`` (a LINKTYPE_*): its
    ``struct bpf_insn`` array (8 bytes each, native order; the kernel's ``struct sock_filter``
    and what ``tracer._core.BpfProgram`` takes). An accepted packet is cut to ``snaplen``."""
    prog = _compile(expr, linktype, snaplen)
    try:
        return ctypes.string_at(prog.bf_insns, prog.bf_len * 8) if prog.bf_len else b""
    finally:
        _lib().pcap_freecode(ctypes.byref(prog))


class LibpcapProgram:
    """``expr`` as libpcap compiles and runs it (``pcap_offline_filter``), one frame a call:
    the reference the tests compare the core with. The product never runs it."""

    def __init__(self, expr: str, linktype: int) -> None:
        self._prog: _BpfProgram | None = None  # (what __del__ sees if the compile fails)
        self._prog = _compile(expr, linktype, SNAPLEN)

    def match(self, frame: bytes, wirelen: int | None = None) -> bool:
        return self.match_each([frame], [len(frame) if wirelen is None else wirelen])[0]

    def match_each(self, frames: Sequence[bytes], wirelens: Sequence[int]) -> list[bool]:
        """``match`` per frame (frame i was ``wirelens[i]`` bytes long on the wire)."""
        assert self._prog is not None
        run, prog, hdr = _lib().pcap_offline_filter, ctypes.byref(self._prog), _PktHdr()
        out = []
        for frame, wirelen in zip(frames, wirelens, strict=True):
            hdr.caplen, hdr.len = len(frame), wirelen
            out.append(bool(run(prog, ctypes.byref(hdr), frame)))
        return out

    def __del__(self) -> None:
        if self._prog is not None and _LIB is not None:
            _LIB.pcap_freecode(ctypes.byref(self._prog))
            self._prog = None


__all__ = ["SNAPLEN", "LibpcapProgram", "compile_insns"]
