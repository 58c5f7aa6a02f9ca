"""The pcapng recorder: what it writes reads back (our reader, tshark), safely, also on faults."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.record.helpers import HOPS, NS_HOST, Sighting, batch_of, masquerade_pings, ping_frames
from tests.reference.record import packet_ids
from tracer.errors import CaptureFileError, HoptraceError
from tracer.model import Dir, HopLabel, ObsBatch
from tracer.sinks.record import (
    PcapngRecorder,
    RecordingError,
    encode_epbs,
    rotated_name,
)
from tracer.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[2]
REASONS = {6: "NETFILTER_DROP"}
# What a replayed sighting must keep of the original (source and ifindex are the reader's own).
KEPT = ("ts_ns", "netns", "node", "ifname", "direction", "skb", "family", "proto", "src", "dst",
        "sport", "dport", "ip_id", "ttl", "icmp_type", "icmp_code", "icmp_id", "icmp_seq",
        "tcp_flags", "tcp_seq", "tcp_ack", "length", "digest", "inner", "drop_reason", "wire_len")  # fmt: skip


def kept(batches: list[ObsBatch]) -> list[tuple[object, ...]]:
    return [tuple(getattr(o, k) for k in KEPT) for b in batches for o in b.observations()]


def read_back(*files: str | Path) -> list[ObsBatch]:
    src = FileSource([str(f) for f in files])
    src.start()
    return list(src.batches())


def tshark(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("tshark") is None:
        pytest.skip("needs tshark (make install provides it)")
    proc = subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True, timeout=60)
    # tshark's note about running as root is about us, not about the file.
    proc.stderr = "\n".join(ln for ln in proc.stderr.splitlines() if "Running as user" not in ln)
    return proc


def test_round_trip_keeps_every_sighting(tmp_path: Path) -> None:
    batches = [batch_of(masquerade_pings(20, drop_every=4), drop_reasons=REASONS),
               batch_of(masquerade_pings(5, t0=1_795_805_090_000_000_000, with_skb=False))]  # fmt: skip
    rec_path = tmp_path / "rec.pcapng"
    with PcapngRecorder(rec_path) as rec:
        for b in batches:
            rec.on_batch(b)
    assert rec.packets == sum(len(b) for b in batches)
    back = read_back(rec_path)
    assert kept(back) == kept(batches)
    assert {o.source for b in back for o in b.observations()} == {"file"}


def test_snaplen_truncates_frames_keeps_wire_length(tmp_path: Path) -> None:
    f = ping_frames(1, payload=b"x" * 400)["req_in"]
    b = batch_of([Sighting(0, f, 10**18, Dir.TX, 0xFFFF0001)])
    with PcapngRecorder(tmp_path / "r.pcapng", snaplen=60) as rec:
        rec.on_batch(b)
    (o,) = read_back(tmp_path / "r.pcapng")[0].observations()
    assert (o.frame, o.wire_len, o.length, o.src) == (f[:60], len(f), len(f) - 14, "172.17.0.2")


def test_comment_metadata_and_blocks_as_tshark_sees_them(tmp_path: Path) -> None:
    b = batch_of(masquerade_pings(2, drop_every=2), drop_reasons=REASONS)
    path = tmp_path / "rec.pcapng"
    with PcapngRecorder(path) as rec:
        rec.on_batch(b)
    proc = tshark(path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert len(proc.stdout.splitlines()) == len(b)
    proc = tshark(path, "-T", "fields", "-E", "separator=|", "-e", "frame.interface_name",
                  "-e", "frame.interface_description", "-e", "frame.comment",
                  "-e", "frame.packet_flags_direction", "-e", "frame.packet_id", "-e", "frame.time_epoch")  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    got = [ln.split("|") for ln in proc.stdout.splitlines()]
    pids = packet_ids(b.rows).tolist()
    want = []
    for o, pid in zip(b.observations(), pids, strict=True):
        label = next(h for h in HOPS if h.name == o.hop_name)
        meta = {"v": 1, "dir": o.direction, "skb": f"0x{o.skb:x}" if o.skb else None, "hook": None,
                "netns": o.netns, "drop_reason": o.drop_reason, "ts_ns": o.ts_ns}  # fmt: skip
        flags = {"rx": "0x00000001", "tx": "0x00000002"}.get(o.direction or "", "0x00000000")
        ts = f"{o.ts_ns // 10**9}.{o.ts_ns % 10**9:09d}"
        want.append([o.hop_name, f"netns={label.netns} ifindex={label.ifindex}", meta, flags, str(pid), ts])
    assert [[g[0], g[1], json.loads(g[2]), *g[3:]] for g in got] == want
    # One packet, one id at every hop it took (NAT changed its addresses in between).
    assert len({g[4] for g in got[:5]}) == 1
    assert got[0][4] != got[5][4]  # the reply is another packet
    assert "drop_reason\":\"NETFILTER_DROP" in got[13][2]


def test_interfaces_one_per_hop_with_ns_resolution(tmp_path: Path) -> None:
    need = shutil.which("capinfos")
    if need is None:
        pytest.skip("needs capinfos (wireshark-common)")
    path = tmp_path / "rec.pcapng"
    with PcapngRecorder(path, snaplen=96) as rec:
        rec.on_batch(batch_of(masquerade_pings(3)))
    out = subprocess.run(["capinfos", str(path)], capture_output=True, text=True, check=True).stdout
    names = [ln.split("=", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith("Name =")]
    assert names == [h.name for h in HOPS]
    assert out.count("Time precision = nanoseconds (9)") == len(HOPS)
    assert out.count("Capture length = 96") == len(HOPS)


def test_file_is_0600_even_when_it_existed(tmp_path: Path) -> None:
    path = tmp_path / "rec.pcapng"
    path.write_bytes(b"old")
    path.chmod(0o644)
    with PcapngRecorder(path) as rec:
        rec.on_batch(batch_of(masquerade_pings(1)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"


def test_written_as_it_goes_not_at_close(tmp_path: Path) -> None:
    path = tmp_path / "rec.pcapng"
    rec = PcapngRecorder(path)
    rec.on_batch(batch_of(masquerade_pings(2)))
    time.sleep(0.25)
    rec.on_batch(ObsBatch(rows=np.zeros(0, batch_of([]).rows.dtype), hops=[], now_ns=1))  # a live idle tick
    assert len(kept(read_back(path))) == 20
    rec.close()


def test_unwritable_path_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HoptraceError) as err:
        PcapngRecorder(tmp_path / "no-such-dir" / "rec.pcapng")
    assert "cannot create recording" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(HoptraceError, match="needs --record-max-mb"):
        PcapngRecorder(tmp_path / "r.pcapng", files=3)


def test_rotation_names_and_sizes_like_tcpdump(tmp_path: Path) -> None:
    base = tmp_path / "rec.pcapng"
    big = batch_of(masquerade_pings(800))  # ~8000 sightings, ~2.4 MB
    with PcapngRecorder(base, max_mb=1) as rec:
        rec.on_batch(big)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rec.pcapng", "rec.pcapng1", "rec.pcapng2"]
    assert all(p.stat().st_size <= 1_000_000 for p in tmp_path.iterdir())
    back = read_back(*[tmp_path / n for n in names])
    assert kept(back) == kept([big])
    for n in names:
        proc = tshark(tmp_path / n)
        assert (proc.returncode, proc.stderr) == (0, "")


def test_rotation_ring_keeps_the_newest(tmp_path: Path) -> None:
    base = tmp_path / "rec.pcapng"
    batches = [batch_of(masquerade_pings(300, t0=10**18 + k * 10**12)) for k in range(5)]
    with PcapngRecorder(base, max_mb=1, files=2) as rec:
        for b in batches:
            rec.on_batch(b)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rec.pcapng0", "rec.pcapng1"]
    assert (rotated_name(str(base), 12, 11), rotated_name(str(base), 3, None)) == (f"{base}01", f"{base}3")
    got = kept(read_back(*[tmp_path / n for n in names]))
    everything = kept(batches)
    # The ring holds the newest sightings, contiguous, up to the very last one.
    assert got == everything[-len(got):] and 0 < len(got) < len(everything)


_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.record.helpers import batch_of, masquerade_pings
    from tracer.sinks.record import PcapngRecorder
    rec = PcapngRecorder({path!r}, on_error={on_error!r})
    k = 0
    while True:
        rec.on_batch(batch_of(masquerade_pings(50, t0=10**18 + k * 10**11)))
        rec.flush()
        k += 1
        if k == 3:
            print("ready", flush=True)
        if {limit} and k >= {limit}:
            print("stopped" if rec.error is None else "noticed:" + rec.error, flush=True)
            print(rec.packets, flush=True)
            break
""")


def complete_epbs(path: Path) -> int:
    """EPBs in the file up to the last complete block, walked independently of tracer.sources.files."""
    data = path.read_bytes()
    pos = count = 0
    while pos + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if blen < 12 or pos + blen > len(data) or struct.unpack_from("<I", data, pos + blen - 4)[0] != blen:
            break
        count += btype == 6
        pos += blen
    return count


def test_sigkill_leaves_a_file_that_reads_to_the_last_block(tmp_path: Path) -> None:
    path = tmp_path / "rec.pcapng"
    code = _WRITER.format(root=str(ROOT), path=str(path), on_error="stop", limit=0)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # A kill inside write(2) can leave half a block at the end (the kernel stops a
    # write on a fatal signal); everything before it must read.
    src = FileSource([str(path)])
    src.start()
    got = 0
    with contextlib.suppress(CaptureFileError):
        for b in src.batches():
            got += len(b)
    assert got == complete_epbs(path) and got >= 3 * 500  # at least what was flushed before "ready"


def _disk_full_run(tmp_path: Path, on_error: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Record into a 256 KiB tmpfs mounted in a private mount namespace (gone with the process)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = tmp_path / "copy.pcapng"
    code = _WRITER.format(root=str(ROOT), path=str(mnt / "rec.pcapng"), on_error=on_error, limit=40)
    script = (f"mount -t tmpfs -o size=256k hoptest-tmpfs {mnt} && "
              f"{sys.executable} -c \"$0\"; rc=$?; cp {mnt}/rec.pcapng {out}; exit $rc")  # fmt: skip
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, code],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return proc, out


def test_disk_full_stop_is_one_error_and_the_file_stays_valid(tmp_path: Path) -> None:
    proc, copy = _disk_full_run(tmp_path, "stop")
    assert proc.returncode != 0
    assert "RecordingError: recording to" in proc.stderr and "disk full" in proc.stderr
    n = len(kept(read_back(copy)))
    assert 0 < n < 40 * 500
    res = tshark(copy)
    assert (res.returncode, res.stderr) == (0, "")


def test_disk_full_continue_gives_one_notice_and_keeps_going(tmp_path: Path) -> None:
    proc, copy = _disk_full_run(tmp_path, "continue")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "ready" and lines[1].startswith("noticed:recording to")
    assert proc.stderr.count("tracing continues without recording") == 1
    assert len(kept(read_back(copy))) == int(lines[2])
    res = tshark(copy)
    assert (res.returncode, res.stderr) == (0, "")


def test_encoder_survives_odd_rows() -> None:
    b = batch_of(masquerade_pings(1))
    rows = b.rows[:3].copy()
    rows["frame_len"][0] = 0  # a sighting without bytes
    rows["frame_off"][1] = 10**9  # pointing past the buffer
    rows["wire_len"][2] = 0
    rows["skb"][2] = 0
    data, ends = encode_epbs(rows, b.frames, np.zeros(len(HOPS), np.uint32), 128, {})
    assert ends.tolist()[-1] == len(data) and all(e % 4 == 0 for e in ends.tolist())
    empty, e2 = encode_epbs(rows[:0], b"", np.zeros(1, np.uint32), 128, {})
    assert (empty, e2.tolist()) == (b"", [])


def test_host_hop_labels_are_shared_across_batches(tmp_path: Path) -> None:
    # Two batches of one source share the hop table; each label gets one IDB.
    hops = [*HOPS, HopLabel("netns:4026539999", "eth1", 4026539999, 9)]
    s = masquerade_pings(1)
    path = tmp_path / "r.pcapng"
    with PcapngRecorder(path) as rec:
        rec.on_batch(batch_of(s, hops=hops))
        rec.on_batch(batch_of([Sighting(5, s[0].frame, s[-1].ts_ns + 1, Dir.RX)], hops=hops))
    back = read_back(path)
    labels = [(h.node, h.iface, h.netns) for h in back[0].hops]
    assert labels == [(h.node, h.iface, h.netns) for h in hops]
    assert NS_HOST in {h.netns for h in back[0].hops}


def test_write_error_raises_recording_error_or_notices_once() -> None:
    mode = os.stat("/dev/full").st_mode
    batch = batch_of(masquerade_pings(1))  # made first: on_batch within FLUSH_INTERVAL_S of the open only queues
    rec = PcapngRecorder("/dev/full")
    rec.on_batch(batch)
    with pytest.raises(RecordingError, match=r"recording to /dev/full stopped: disk full after 0 packets"):
        rec.flush()
    rec.close()
    notices: list[str] = []
    rec = PcapngRecorder("/dev/full", on_error="continue", notice=notices.append)
    for _ in range(3):
        rec.on_batch(batch_of(masquerade_pings(1)))
        rec.flush()
    rec.close()
    assert notices == ["recording to /dev/full stopped: disk full after 0 packets; tracing continues without recording"]
    assert rec.error is not None and rec.packets == 0
    assert os.stat("/dev/full").st_mode == mode  # a device is not ours to chmod (only a file we record into)


def test_a_fifo_keeps_its_mode(tmp_path: Path) -> None:
    fifo = tmp_path / "to-wireshark"
    os.mkfifo(fifo, 0o644)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        rec = PcapngRecorder(str(fifo))
        rec.on_batch(batch_of(masquerade_pings(1)))
        rec.close()
        assert os.read(reader, 4) == b"\x0a\x0d\x0d\x0a"  # the SHB came through the pipe
    finally:
        os.close(reader)
    assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o644


def test_frames_of_every_length_and_alignment_come_back_exactly(tmp_path: Path) -> None:
    # Odd lengths put frames at every byte alignment in the batch buffer, and the
    # snaplen cut lands inside a 32-bit word: the bytes must still be exact.
    base = ping_frames(3)["req_in"]
    sightings = [Sighting(0, base + bytes(range(k)), 10**18 + k, Dir.TX, 0xFFFF0000 + k) for k in range(40)]
    b = batch_of(sightings)
    with PcapngRecorder(tmp_path / "r.pcapng", snaplen=93) as rec:
        rec.on_batch(b)
    back = [o for bb in read_back(tmp_path / "r.pcapng") for o in bb.observations()]
    assert [(o.frame, o.wire_len) for o in back] == [(s.frame[:93], len(s.frame)) for s in sightings]


def test_frames_in_fixed_size_slots_like_ebpf_records(tmp_path: Path) -> None:
    # The eBPF source hands frames inside fixed-size event records: offsets at a
    # fixed stride, each frame shorter than its slot (the strided fast path).
    slot = 150
    frames = [ping_frames(k)["req_in"] + bytes(range(k % 7)) for k in range(50)]
    buf = bytearray(slot * len(frames))
    for i, f in enumerate(frames):
        buf[i * slot : i * slot + len(f)] = f
        buf[i * slot + len(f) : (i + 1) * slot] = b"\xee" * (slot - len(f))  # junk after each frame
    b = batch_of([Sighting(0, f, 10**18 + i, Dir.TX, 0xFFFF0000 + i) for i, f in enumerate(frames)])
    b.rows["frame_off"] = np.arange(len(frames)) * slot
    b = ObsBatch(rows=b.rows, hops=b.hops, frames=bytes(buf))
    with PcapngRecorder(tmp_path / "r.pcapng", snaplen=80) as rec:
        rec.on_batch(b)
    back = [o for bb in read_back(tmp_path / "r.pcapng") for o in bb.observations()]
    assert [o.frame for o in back] == [f[:80] for f in frames]


@pytest.mark.parametrize("values", [
    [0], [7, 0, 10, 99, 100], [2**64 - 1, 0, 10**19], [4026532466, 4026531840, 4026532466],
    [1_795_805_084_000_000_000, 1_795_805_084_000_007_000, 999_999_999_999_999_999],
    [10**9 - 1, 10**9, 10**9 + 4095],
])  # fmt: skip
def test_comment_numbers_are_exact_decimal(values: list[int]) -> None:
    from tests.reference.record import _decimal

    got = [bytes(r).decode() for r in _decimal(np.array(values, np.uint64))]
    assert [g.strip() for g in got] == [str(v) for v in values] and len({len(g) for g in got}) == 1
