"""probes/bpf_syscall.py: bpf(2)'s result, or its errno raised, as its four callers take them
(probes/tp_btf.py, probes/bpf_stats.py, probes/skb_hops.py, tracer/commands/doctor.py)."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from probes.bpf_syscall import ENABLE_STATS, PROG_GET_FD_BY_ID, BpfError, sys_bpf
from tests.conftest import need_root


def test_a_new_fd_comes_back_and_a_refusal_raises_its_errno() -> None:
    need_root()
    fd = sys_bpf(ENABLE_STATS, ctypes.create_string_buffer(8))  # type 0: BPF_STATS_RUN_TIME
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-stats"
    finally:
        os.close(fd)
    no_such_prog = ctypes.create_string_buffer((2**32 - 1).to_bytes(4, "little"), 12)
    with pytest.raises(BpfError) as exc:
        sys_bpf(PROG_GET_FD_BY_ID, no_such_prog)
    assert (exc.value.errno, exc.value.strerror) == (errno.ENOENT, os.strerror(errno.ENOENT))
