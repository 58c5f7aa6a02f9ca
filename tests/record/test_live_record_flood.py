"""``hoptrace live --backend ebpf --record`` in the lab under a UDP flood (the core records as it
feeds the ring's batches: tests/probes/test_ring_record.py): tshark reads every file of the
rotated recording without a word, and the files hold every sighting the tracer consumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HOPTRACE, need_tool
from tests.record.test_record import tshark

pytestmark = [pytest.mark.root, pytest.mark.lab]

SERVER = "198.51.100.8"  # the lab's inet address (bench/ebpf_bench.py)


def block_types(path: Path) -> list[int]:
    """The pcapng file's block types, in order (whole blocks only: the walk checks each length)."""
    data = path.read_bytes()
    out, at = [], 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        assert length >= 12 and length % 4 == 0 and at + length <= len(data), f"a torn block at {at}"
        assert struct.unpack_from("<I", data, at + length - 4)[0] == length
        out.append(kind)
        at += length
    return out


def last_line(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        return dict(json.loads(f.read().decode().strip().splitlines()[-1]))


@pytest.mark.timeout(180)
def test_a_recording_under_a_flood_holds_every_sighting(lab_netns: Any, tmp_path: Path) -> None:
    need_tool("iperf3")
    rec = tmp_path / "flood.pcapng"
    out = tmp_path / "out.ndjson"
    ready = tmp_path / "ready"
    argv = [*HOPTRACE, "live", "--backend", "ebpf", "--json", "--ready-file", str(ready), "--max-cpu", "0",
            "--record", str(rec), "--record-max-mb", "4"]
    for node in ("host", "inet", "client", "web"):  # the lab only: the machine is shared
        argv += ["--iface", f"netns:{lab_netns.netns_inode(node)}/eth0"]
    with out.open("wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - t0 < 60, "no ready file"
            time.sleep(0.05)
        server = lab_netns.spawn("inet", ["iperf3", "-s", "-1", "-B", SERVER], "iperf3-server-recflood")
        time.sleep(0.3)
        r = lab_netns.exec("client", ["iperf3", "-c", SERVER, "-u", "-b", "4M", "-l", "64", "-t", "2", "-J"],
                           timeout=40)
        with contextlib.suppress(ProcessLookupError):  # iperf3 -s -1 ends after its one test
            os.kill(server.pid, signal.SIGTERM)
        sent = json.loads(r.stdout)["end"]["sum"]
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    stats = last_line(out)
    assert stats["type"] == "stats" and stats["lost_events"] == 0
    assert sent["packets"] >= 5000  # the flood was there: ~5 sightings a datagram
    files = sorted(tmp_path.glob("flood.pcapng*"), key=lambda p: (len(p.name), p.name))
    assert len(files) >= 2  # rotated under the flood
    epbs = 0
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert f.stat().st_size <= 4_000_000
        proc_t = tshark(f, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment")
        assert (proc_t.returncode, proc_t.stderr) == (0, ""), f.name
        named = [line for line in proc_t.stdout.splitlines() if line.split("\t")[0]]
        kinds = block_types(f)
        # tshark lists each hoptrace Custom Block (local answers, kept in every file) as a
        # record of its own, with no interface
        assert len(proc_t.stdout.splitlines()) - len(named) == kinds.count(0x0BAD)
        assert len(named) == kinds.count(6)  # every EPB on its interface
        assert kinds[0] == 0x0A0D0D0A and kinds.index(1) < kinds.index(6)  # SHB, IDBs before EPBs
        epbs += len(named)
    assert epbs == stats["observations"] >= 5 * sent["packets"] * 0.5
