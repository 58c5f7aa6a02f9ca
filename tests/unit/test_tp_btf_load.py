"""probes/tp_btf.py load(): EAGAIN (the verifier stopped for a pending signal) is tried again,
as libbpf does; any other refusal, or EAGAIN every time, raises with the errno. bpf(2) is
replaced here: the kernel gives EAGAIN only when a signal lands mid-verification."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from probes import tp_btf
from probes.bpf_syscall import PROG_LOAD, BpfError

EXIT_0 = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit


def _kernel(monkeypatch: pytest.MonkeyPatch, answers: list[int]) -> list[int]:
    """bpf(2) answering each PROG_LOAD with the next of ``answers`` (an fd, or -errno)."""
    calls: list[int] = []

    def sys_bpf(cmd: int, attr: Any) -> int:
        assert cmd == PROG_LOAD
        calls.append(cmd)
        rc = answers.pop(0) if answers else -errno.EINVAL
        if rc < 0:
            raise BpfError(-rc, "refused")
        return rc

    monkeypatch.setattr(tp_btf, "sys_bpf", sys_bpf)
    return calls


def test_eagain_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _kernel(monkeypatch, [-errno.EAGAIN, -errno.EAGAIN, 42])
    assert tp_btf.load(EXIT_0, 7, "t", "netif_receive_skb") == 42
    assert len(calls) == 3


def test_eagain_every_time_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _kernel(monkeypatch, [-errno.EAGAIN] * tp_btf.LOAD_TRIES + [-errno.EAGAIN])
    with pytest.raises(tp_btf.TpBtfError) as exc:
        tp_btf.load(EXIT_0, 7, "t", "netif_receive_skb")
    assert exc.value.errno == errno.EAGAIN
    assert len(calls) == tp_btf.LOAD_TRIES + 1  # the tries, then the load that asks for the log


def test_another_refusal_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _kernel(monkeypatch, [-errno.EACCES, -errno.EACCES])
    with pytest.raises(tp_btf.TpBtfError) as exc:
        tp_btf.load(EXIT_0, 7, "t", "netif_receive_skb")
    assert exc.value.errno == errno.EACCES
    assert len(calls) == 2  # the load, then the one for the verifier's log
