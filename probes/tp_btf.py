"""BTF-typed raw tracepoints (tp_btf) for programs bcc compiled: load and attach by bpf(2).

bcc 0.26 knows raw tracepoints, not their BTF-typed kind. A tp_btf program gets its
arguments as kernel pointers whose type the verifier knows (``struct sk_buff *``), so the
fields behind them are plain loads (checked against the kernel's BTF at load time,
JITed with a fault fixup) instead of a ``bpf_probe_read_kernel`` call each. The program's
instructions come from bcc (``BPF.dump_func``, map fds already in place); this module
loads them as ``BPF_PROG_TYPE_TRACING`` / ``BPF_TRACE_RAW_TP`` against the tracepoint's
``btf_trace_<name>`` type (probes/btf.py ``KernelLayout.tp_btf_ids``) and attaches them
with ``BPF_RAW_TRACEPOINT_OPEN``. Closing the two fds detaches; a killed process leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from dataclasses import dataclass

from probes.bpf_syscall import PROG_LOAD, RAW_TRACEPOINT_OPEN, BpfError, sys_bpf

_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_RAW_TP = 23
_ATTR_SIZE = 160  # union bpf_attr for BPF_PROG_LOAD up to attach_btf_obj_fd, zero-padded
_LOG_SIZE = 1 << 16
# Loads tried when the kernel says EAGAIN (the verifier stops when a signal is pending), as
# libbpf's sys_bpf_prog_load does.
LOAD_TRIES = 5


class TpBtfError(OSError):
    """The kernel refused a tp_btf program (load or attach); ``log`` is the verifier's tail."""

    def __init__(self, what: str, err: int, log: str = "") -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.log = log

    @property
    def why(self) -> str:
        """One line for a person: what was refused, why, and the verifier's last line."""
        last = self.log.splitlines()[-1:]
        return f"{self.strerror}; the verifier: {last[0][:160]}" if last else str(self.strerror)


@dataclass
class TpBtfProgram:
    """One loaded and attached program: ``prog_fd`` (what BPF_ENABLE_STATS and
    probes/bpf_stats.py read) and ``link_fd`` (the attachment)."""

    tracepoint: str
    prog_fd: int
    link_fd: int

    def close(self) -> None:
        for fd in (self.link_fd, self.prog_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.link_fd = self.prog_fd = -1


def load(insns: bytes, btf_id: int, name: str, tracepoint: str) -> int:
    """The fd of ``insns`` loaded as a tp_btf program for ``btf_id`` (btf_trace_<tracepoint>)."""
    if not insns or len(insns) % 8:
        raise TpBtfError(f"{tracepoint}: no program", 22)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # prog_type, insn_cnt, insns, license; log_level 0: no verifier log (see _refusal_log)
    struct.pack_into("<IIQQ", attr, 0, _BPF_PROG_TYPE_TRACING, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(lic))
    struct.pack_into("16s", attr, 48, name.encode()[:15])  # prog_name
    struct.pack_into("<I", attr, 68, _BPF_TRACE_RAW_TP)  # expected_attach_type
    struct.pack_into("<I", attr, 108, btf_id)  # attach_btf_id
    tries = LOAD_TRIES
    while True:
        try:
            return sys_bpf(PROG_LOAD, attr)
        except BpfError as exc:
            tries -= 1
            # EAGAIN: a signal arrived while the verifier ran; it stopped, it did not refuse
            if exc.errno != errno.EAGAIN or not tries:
                raise TpBtfError(f"{tracepoint}: tp_btf load refused", exc.errno, _refusal_log(attr)) from exc


def _refusal_log(attr: ctypes.Array[ctypes.c_char]) -> str:
    """The last lines of the verifier's log for the refused program in ``attr``, loaded a
    second time with a log only to say why. The first load goes without: at log level 1 the
    verifier writes every instruction it walks; skb_hops.c's three programs took 143-155 ms
    each to load instead of 39-42, and netif_receive_skb's log was 72,894 bytes, refused
    (ENOSPC) with this 64 KiB buffer. The verifier decides the same way twice; a refusal
    that would pass on a retry (``load`` tries EAGAIN again, up to LOAD_TRIES) stays a
    refusal: skb_hops.c's programs cannot pass the logged load anyway (ENOSPC), and a small
    program that does is closed. skb_hops then falls back to raw tracepoints."""
    log = ctypes.create_string_buffer(_LOG_SIZE)
    struct.pack_into("<IIQ", attr, 24, 1, _LOG_SIZE, ctypes.addressof(log))  # log_level, log_size, log_buf
    with contextlib.suppress(BpfError):
        os.close(sys_bpf(PROG_LOAD, attr))
    return "\n".join(log.value.decode("utf-8", "replace").strip().splitlines()[-6:])


def attach(prog_fd: int, tracepoint: str) -> int:
    """The link fd of ``prog_fd`` attached to the tracepoint it was loaded for."""
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", attr, 0, 0, prog_fd)  # name = NULL: the program's attach_btf_id
    try:
        return sys_bpf(RAW_TRACEPOINT_OPEN, attr)
    except BpfError as exc:
        raise TpBtfError(f"{tracepoint}: tp_btf attach refused", exc.errno) from exc


def load_and_attach(insns: bytes, btf_id: int, name: str, tracepoint: str) -> TpBtfProgram:
    prog_fd = load(insns, btf_id, name, tracepoint)
    try:
        return TpBtfProgram(tracepoint, prog_fd, attach(prog_fd, tracepoint))
    except BaseException:
        os.close(prog_fd)
        raise


__all__ = ["TpBtfError", "TpBtfProgram", "attach", "load", "load_and_attach"]
