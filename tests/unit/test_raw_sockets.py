"""Where and when raw ICMP sockets were open (tracer/annotate/raw_sockets.py), and the engine
handing the spans to the core: a NO_SOCKET echo reply where one was open is delivered."""

from __future__ import annotations

import json
import os
import socket
import struct
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
from tracer.model import Observation

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
    # each poll reads the clock as it begins and as it is done: 100-105, 200-205, 300-305
    times = iter([100, 105, 200, 205, 300, 305])
    spans = RawSocketSpans(list_namespaces=lambda: {7: 70, 8: 80}, has_raw=lambda pid: seen.get(pid, False),
                           clock=lambda: next(times))
    seen[80] = True
    spans.poll()  # open before hoptrace looked: from 0
    seen[70] = True
    spans.poll()
    g = spans.generation
    assert sorted(spans.spans()) == [(7, 100, OPEN_NS), (8, 0, OPEN_NS)]  # open: no end yet
    seen[70] = False
    spans.poll()
    assert spans.generation > g
    assert sorted(spans.spans()) == [(7, 100, 305), (8, 0, OPEN_NS)]


def test_a_socket_closed_while_a_poll_reads_is_open_until_the_poll_is_done() -> None:
    """busybox ping closes its raw socket just after its last echo reply; a poll that began
    before and reads that namespace after must not end the span before the reply was freed
    (seen: a clean-clone run called that reply lost)."""
    now = [0]
    seen = {70: True}
    closing = [False]

    def has_raw(pid: int) -> bool:
        if pid == 80 and closing[0]:
            # reading the first namespace takes 30 ms; meanwhile ping gets its last reply
            # (freed at 210 ms) and exits
            now[0] += 30_000_000
            seen[70] = False
        return seen.get(pid, False)

    spans = RawSocketSpans(list_namespaces=lambda: {8: 80, 7: 70}, has_raw=has_raw, clock=lambda: now[0])
    spans.poll()  # at 0: ping's socket is open
    now[0], closing[0] = 200_000_000, True
    spans.poll()  # begins at 200 ms, reads namespace 7 at 230 ms: closed
    (span,) = spans.spans()
    reply_freed = 210_000_000
    assert span[0] == 7 and span[1] <= reply_freed <= span[2] == 230_000_000


def test_the_watch_polls_until_closed() -> None:
    polls: list[int] = []

    class Counting(RawSocketSpans):
        def poll(self) -> None:
            polls.append(time.monotonic_ns())
            super().poll()

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


# ------------------------------------------------------------------ recordings carry the spans


def with_frame(o: Observation) -> Observation:
    """``o`` with the Ethernet frame of its ICMP echo reply (a replay decodes the frames)."""
    icmp = struct.pack("!BBHHH", o.icmp_type, 0, 0, o.icmp_id, o.icmp_seq) + bytes(56)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), o.ip_id, 0x4000, o.ttl, 1, 0,
                     socket.inet_aton(o.src), socket.inet_aton(o.dst))  # fmt: skip
    frame = b"\x02\x42\xac\x11\x00\x01\x02\x42\xac\x11\x00\x02\x08\x00" + ip + icmp
    return replace(o, frame=frame, wire_len=len(frame))


def record_pong(tmp_path: Path, raw: Fixed | None, name: str = "rec.pcapng") -> tuple[Path, str]:
    """The engine run live-like with the real recorder (PcapngRecorder, hooked as
    tracer/pipeline.py hooks it): the file, and the verdict live showed."""
    from tracer.engine import Engine
    from tracer.model import ObsBatch
    from tracer.sinks.record import PcapngRecorder
    from tracer.sources.base import BatchListSource

    pong = [with_frame(o) for o in internet_pong()]
    free = replace(pong[-1], direction="drop", drop_reason="NO_SOCKET", ts_ns=pong[-1].ts_ns + 700)
    out = tmp_path / name
    with PcapngRecorder(out, snaplen=262144) as rec:
        eng = Engine(BatchListSource([ObsBatch.from_observations([*pong, free])]), raw_sockets=raw)
        eng.batch_hooks.append(rec.on_batch)
        eng.local_hooks.append(rec)
        lines = b"".join(chunk.data for chunk in eng.chunks()).decode().splitlines()
    (path,) = [json.loads(x) for x in lines if x.startswith('{"type": "path"')]
    return out, str(path["verdict"])


def replayed_verdicts(out: Path) -> list[str]:
    """The verdict of the recording's one path by each way in: ``replay --json`` (the core's
    replay), the Python engine on a FileSource (the TUI's and text's), and ``report``."""
    from tests.unit.test_core_engine import in_process
    from tests.unit.test_core_report import run
    from tracer.commands import report
    from tracer.engine import Engine
    from tracer.sources.files import FileSource

    got = in_process(str(out))
    assert got.status == 0, got.err
    (path,) = [json.loads(x) for x in got.lines if x.startswith('{"type": "path"')]
    lines = b"".join(c.data for c in Engine(FileSource([str(out)])).chunks()).decode().splitlines()
    (py,) = [json.loads(x) for x in lines if x.startswith('{"type": "path"')]
    text, err, status = run(report.run, ["--format", "json", str(out)])
    assert status == 0, err
    (verdict,) = [v for v, n in json.loads(text)["by_verdict"].items() if n]
    return [path["verdict"], py["verdict"], verdict]


def test_a_replay_of_a_recording_shows_the_verdict_live_showed(tmp_path: Path) -> None:
    web = NETNS["web"]
    with_raw, live = record_pong(tmp_path, Fixed([(web, 0, OPEN_NS), (NETNS["host"], 5, 10)]))
    assert live == "delivered"
    assert b"hoptrace\x03\x00\x01\x00" in with_raw.read_bytes()  # a kind 3 block
    assert replayed_verdicts(with_raw) == ["delivered"] * 3
    # Without the block (no raw socket watched live), the same packets are a drop.
    without, live = record_pong(tmp_path, None, "plain.pcapng")
    assert live == "dropped"
    assert b"hoptrace\x03\x00" not in without.read_bytes()
    assert replayed_verdicts(without) == ["dropped"] * 3
    # A span in another namespace, or one that closed before the packet, is no raw socket then.
    other, live = record_pong(tmp_path, Fixed([(NETNS["host"], 0, OPEN_NS)]), "other.pcapng")
    assert live == "dropped" and replayed_verdicts(other) == ["dropped"] * 3


def test_a_later_block_closes_a_span_an_earlier_one_left_open(tmp_path: Path) -> None:
    """The recorder writes the whole table each time it changes; a replay takes the latest
    word on each span, and damaged kind 3 blocks are left out."""
    from tracer.sinks.record import KIND_RAW_SOCKETS, custom_block, raw_sockets_block

    pong = internet_pong()
    at = pong[-1].ts_ns + 700
    web = NETNS["web"]
    base, _ = record_pong(tmp_path, None)
    data = base.read_bytes()
    shb_len = struct.unpack_from("<I", data, 4)[0]

    def with_blocks(name: str, *blocks: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(data[:shb_len] + b"".join(blocks) + data[shb_len:])
        return p

    opened = raw_sockets_block([(web, 0, OPEN_NS)])
    assert replayed_verdicts(with_blocks("open.pcapng", opened)) == ["delivered"] * 3
    closed = raw_sockets_block([(web, 0, at - 1)])
    assert replayed_verdicts(with_blocks("closed.pcapng", opened, closed)) == ["dropped"] * 3
    damaged = [
        custom_block(KIND_RAW_SOCKETS, (struct.pack("<QQ", web, 0),)),  # not whole spans
        custom_block(KIND_RAW_SOCKETS, ()),  # no field
        custom_block(KIND_RAW_SOCKETS, (b"\0" * 24, b"x")),  # fine, then a stray field: kept
    ]
    bad = opened[:24] + struct.pack("<I", 0xFFFFFFF0) + opened[28:]  # a length past the block
    assert replayed_verdicts(with_blocks("bad.pcapng", bad, *damaged)) == ["dropped"] * 3


def test_the_recorder_writes_the_spans_again_in_each_rotated_file(tmp_path: Path) -> None:
    from tracer.model import ObsBatch
    from tracer.sinks.record import PcapngRecorder, raw_sockets_block

    pong = internet_pong()
    block = raw_sockets_block([(NETNS["web"], 0, OPEN_NS)])
    out = tmp_path / "ring.pcapng"
    with PcapngRecorder(out, snaplen=262144, max_mb=1) as rec:
        rec.max_bytes = 600  # a file per packet or two
        rec.on_raw_sockets([(NETNS["web"], 0, OPEN_NS)])
        for obs in pong:
            rec.on_batch(ObsBatch.from_observations([obs]))
    assert len(rec.paths_written) > 1
    for name in rec.paths_written:
        assert Path(name).read_bytes().count(block) == 1, name
