"""Entering network namespaces from a thread.

Python 3.11 has no ``os.setns``; ``setns(2)`` through libc applies to the
calling *thread* only, so work that must happen inside a namespace (opening a
socket there, sending a probe) runs in a short-lived thread that enters it;
the sockets it opens stay bound to that namespace after the thread ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from tracer.errors import HoptraceError, PrivilegeError

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def setns_fd(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == 1:
            raise PrivilegeError("cannot enter a network namespace: CAP_SYS_ADMIN is needed")
        raise OSError(err, os.strerror(err))


def setns_thread(netns_path: str) -> None:
    """Move the calling thread into the network namespace at ``netns_path``."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns_fd(fd)
    except OSError as exc:
        raise HoptraceError(f"cannot enter network namespace {netns_path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def run_in_netns(netns_path: str, func: Callable[[], T], timeout: float | None = None) -> T:
    """Run ``func`` in a new thread inside ``netns_path`` and return its result (or raise its error)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            setns_thread(netns_path)
            result.append(func())
        except BaseException as exc:  # handed to the caller's thread, re-raised there
            error.append(exc)

    t = threading.Thread(target=target, name=f"netns:{os.path.basename(netns_path)}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise HoptraceError(f"work inside {netns_path} did not finish within {timeout} s")
    if error:
        raise error[0]
    return result[0]
