"""The bpf(2) system call, for the commands bcc 0.26 does not make for us.

Its users: probes/tp_btf.py (PROG_LOAD of a tp_btf program, RAW_TRACEPOINT_OPEN),
probes/bpf_stats.py (ENABLE_STATS, PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD),
probes/skb_hops.py (PROG_TEST_RUN at stop) and tracer/commands/doctor.py (a test load).
Each builds its own ``union bpf_attr`` (a ctypes buffer or Structure, zero beyond the fields
it sets: the kernel refuses non-zero bytes it does not know). Imports nothing but the
standard library, so doctor works where bcc is missing.
"""

from __future__ import annotations

import ctypes
import os

NR_BPF = 321  # __NR_bpf on x86_64 (arch/x86/entry/syscalls/syscall_64.tbl): the probes are x86-64 only

# enum bpf_cmd (include/uapi/linux/bpf.h)
PROG_LOAD = 5
PROG_TEST_RUN = 10
PROG_GET_FD_BY_ID = 13
OBJ_GET_INFO_BY_FD = 15
RAW_TRACEPOINT_OPEN = 17
ENABLE_STATS = 32

_libc = ctypes.CDLL(None, use_errno=True)


class BpfError(OSError):
    """bpf(2) failed; ``errno`` is the kernel's, always set (OSError's may be None)."""

    errno: int


def sys_bpf(cmd: int, attr: ctypes.Array[ctypes.c_char] | ctypes.Structure) -> int:
    """``bpf(cmd, &attr, sizeof(attr))``: what it returns (a new fd for the commands that
    make one, else 0); ``BpfError`` with the errno when it fails."""
    rc = int(_libc.syscall(NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return rc


__all__ = ["ENABLE_STATS", "NR_BPF", "OBJ_GET_INFO_BY_FD", "PROG_GET_FD_BY_ID", "PROG_LOAD", "PROG_TEST_RUN",
           "RAW_TRACEPOINT_OPEN", "BpfError", "sys_bpf"]
