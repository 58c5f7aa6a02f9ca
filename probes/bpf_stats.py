"""Kernel time per BPF program run: ``BPF_ENABLE_STATS`` and ``bpf_prog_info``.

While the fd ``enable_stats()`` returns stays open the kernel accounts every program's run
time and run count (refcounted: several users at once do not disturb each other). The figures
are read by program fd with ``BPF_OBJ_GET_INFO_BY_FD`` (``run_time_ns``, ``run_cnt``); a
program held by another process is opened by id (``BPF_PROG_GET_FD_BY_ID``, root). This is the
part of the tracer's cost paid on the packet path, in softirq, apart from the tracer process's
own CPU. Used by bench/ebpf_bench.py; bpf(2) through probes/bpf_syscall.py (x86-64).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from probes.bpf_syscall import ENABLE_STATS, OBJ_GET_INFO_BY_FD, PROG_GET_FD_BY_ID, sys_bpf
from tracer.errors import KernelFeatureMissing

_BPF_STATS_RUN_TIME = 0

# struct bpf_prog_info (include/uapi/linux/bpf.h): the offsets of the fields read here.
_INFO_ID = 4
_INFO_NAME = 64  # char name[BPF_OBJ_NAME_LEN = 16]
_INFO_RUN_TIME_NS = 192
_INFO_RUN_CNT = 200
_INFO_SIZE = 256  # more than the kernel's struct is fine while the tail is zero

def enable_stats() -> int:
    """The fd that keeps run-time accounting on (close it to stop)."""
    attr = ctypes.create_string_buffer(_BPF_STATS_RUN_TIME.to_bytes(4, "little"), 8)
    try:
        return sys_bpf(ENABLE_STATS, attr)
    except OSError as exc:
        raise KernelFeatureMissing(f"BPF_ENABLE_STATS refused: {exc.strerror}",
                                   "needs root (CAP_SYS_ADMIN) and Linux >= 5.8") from exc


def prog_fd_by_id(prog_id: int) -> int:
    attr = ctypes.create_string_buffer(prog_id.to_bytes(4, "little"), 12)
    return sys_bpf(PROG_GET_FD_BY_ID, attr)


@dataclass(frozen=True, slots=True)
class ProgRun:
    """One program's accounting so far: ``run_time_ns`` over ``run_cnt`` runs."""

    prog_id: int
    name: str  # the kernel's (at most 15 bytes: bcc's are cut to "raw_tracepoint_")
    run_time_ns: int
    run_cnt: int


def prog_run(prog_fd: int) -> ProgRun:
    info = ctypes.create_string_buffer(_INFO_SIZE)
    attr = ctypes.create_string_buffer(16)
    attr[0:4] = prog_fd.to_bytes(4, "little")
    attr[4:8] = _INFO_SIZE.to_bytes(4, "little")
    attr[8:16] = ctypes.addressof(info).to_bytes(8, "little")
    sys_bpf(OBJ_GET_INFO_BY_FD, attr)
    raw = info.raw

    def u64(off: int) -> int:
        return int.from_bytes(raw[off:off + 8], "little")

    name = raw[_INFO_NAME:_INFO_NAME + 16].split(b"\0", 1)[0].decode("ascii", "replace")
    return ProgRun(int.from_bytes(raw[_INFO_ID:_INFO_ID + 4], "little"), name, u64(_INFO_RUN_TIME_NS),
                   u64(_INFO_RUN_CNT))


def programs_of(pid: int) -> dict[int, str]:
    """prog id -> what it runs at, for the BPF programs process ``pid`` holds: the tracepoint
    of its raw tracepoint links (``tp_name``), else "" (loaded, not attached by a link)."""
    progs: dict[int, str] = {}
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            fields = dict(line.split(":\t", 1) for line in fd.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if "prog_id" not in fields:
            continue
        prog_id = int(fields["prog_id"])
        tp = fields.get("tp_name", "").strip()
        if tp or prog_id not in progs:
            progs[prog_id] = tp
    return progs


class ProgStats:
    """The programs of process ``pid``, opened by id; ``read()`` gives each one's accounting,
    named by its tracepoint (or the kernel's name for one not attached)."""

    def __init__(self, pid: int) -> None:
        self._fds: dict[int, tuple[int, str]] = {}
        try:
            for prog_id, tp in programs_of(pid).items():
                self._fds[prog_id] = (prog_fd_by_id(prog_id), tp)
        except OSError:
            self.close()
            raise

    def read(self) -> dict[str, ProgRun]:
        out = {}
        for fd, tp in self._fds.values():
            run = prog_run(fd)
            out[tp or run.name] = run
        return out

    def close(self) -> None:
        for fd, _tp in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def __enter__(self) -> ProgStats:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def per_run(before: dict[str, ProgRun], after: dict[str, ProgRun]) -> dict[str, tuple[int, float | None]]:
    """name -> (runs, ns per run) between two ``read()``s."""
    out = {}
    for name, b in after.items():
        a = before.get(name)
        runs = b.run_cnt - (a.run_cnt if a else 0)
        ns = b.run_time_ns - (a.run_time_ns if a else 0)
        out[name] = (runs, ns / runs if runs else None)
    return out


__all__ = ["ProgRun", "ProgStats", "enable_stats", "per_run", "prog_fd_by_id", "prog_run", "programs_of"]
