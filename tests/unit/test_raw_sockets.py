"""Where and when raw ICMP sockets were open (tracer/annotate/raw_sockets.py), and the engine
handing the spans to the core: a NO_SOCKET echo reply where one was open is delivered."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.conftest import NETNS, internet_pong
from tracer.annotate.raw_sockets import (
    OPEN_NS,
    RawSocketSpans,
    RawSocketWatch,
    namespaces,
    raw_icmp_in,
)

RAW = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123 2 0000000000000000 0
"""
RAW_UDP = RAW.replace("00000000:0001", "00000000:0011")
RAW6_ICMP6 = RAW.replace("00000000:0001", "00000000000000000000000000000000:003A")


def test_raw_icmp_sockets_are_read_from_proc_net(tmp_path: Path) -> None:
    for files, want in [({"raw": RAW}, True), ({"raw": RAW_UDP}, False), ({"raw6": RAW6_ICMP6}, True),
                        ({"raw": RAW_UDP, "raw6": RAW.replace("0001", "0011")}, False), ({}, False),
                        ({"raw": "header only\n"}, False)]:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text)
        assert raw_icmp_in(d) is want, files


def test_the_running_kernel_lists_a_raw_icmp_socket_of_ours() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (a raw socket): run the suite as root")
    me = Path(f"/proc/{os.getpid()}/net")
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP):
        assert raw_icmp_in(me)
    own = int(os.readlink("/proc/self/ns/net")[5:-1])
    assert own in namespaces()


def test_spans_run_from_the_poll_before_to_the_poll_that_no_longer_sees_it() -> None:
    seen: dict[int, bool] = {}
    spans = RawSocketSpans(list_namespaces=lambda: {7: 70, 8: 80}, has_raw=lambda pid: seen.get(pid, False))
    seen[80] = True
    spans.poll(100)  # open before hoptrace looked: from 0
    seen[70] = True
    spans.poll(200)
    g = spans.generation
    assert sorted(spans.spans()) == [(7, 100, OPEN_NS), (8, 0, OPEN_NS)]  # open: no end yet
    seen[70] = False
    spans.poll(300)
    assert spans.generation > g
    assert sorted(spans.spans()) == [(7, 100, 300), (8, 0, OPEN_NS)]


def test_the_watch_polls_until_closed() -> None:
    polls: list[int] = []

    class Counting(RawSocketSpans):
        def poll(self, now_ns: int) -> None:
            polls.append(now_ns)
            super().poll(now_ns)

    w = RawSocketWatch(period_s=0.01, spans=Counting(list_namespaces=dict))
    time.sleep(0.1)
    w.close()
    n = len(polls)
    assert n >= 3 and w.generation == n
    time.sleep(0.05)
    assert len(polls) == n


class Fixed:
    generation = 1

    def __init__(self, spans: list[tuple[int, int, int]]) -> None:
        self._spans = spans

    def spans(self) -> list[tuple[int, int, int]]:
        return self._spans


def test_the_engine_hands_the_spans_to_the_core() -> None:
    from tracer.engine import Engine
    from tracer.model import ObsBatch
    from tracer.sources.base import BatchListSource

    pong = internet_pong()
    free = replace(pong[-1], direction="drop", drop_reason="NO_SOCKET", ts_ns=pong[-1].ts_ns + 700)
    batch = ObsBatch.from_observations([*pong, free])

    def verdict(raw: Fixed | None) -> str:
        eng = Engine(BatchListSource([batch]), raw_sockets=raw)
        lines = b"".join(chunk.data for chunk in eng.chunks()).decode().splitlines()
        (path,) = [json.loads(x) for x in lines if x.startswith('{"type": "path"')]
        return str(path["verdict"])

    assert verdict(None) == "dropped"
    assert verdict(Fixed([(NETNS["web"], free.ts_ns - 5, free.ts_ns)])) == "delivered"
    assert verdict(Fixed([(NETNS["host"], 0, 2**63)])) == "dropped"
