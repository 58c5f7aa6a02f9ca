"""Disk full while ``hoptrace live --record`` runs (a 256 KiB tmpfs in a private mount namespace,
gone with the process): one clear error line, exit 1, nothing else left behind, and the file
written so far is valid for tshark with as many packets as the error says."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HOPTRACE
from tests.reliability.helpers import lab_tap_ifaces, tshark_fields

pytestmark = [pytest.mark.root, pytest.mark.lab]

# The tmpfs exists only in the private mount namespace: the file is copied out after hoptrace
# ends. Values come in as positional parameters, never pasted into the script.
SCRIPT = """
mnt=$1; copy=$2; shift 2
mount -t tmpfs -o size=256k hoptest-tmpfs "$mnt" || exit 99
"$@" --record "$mnt/rec.pcapng"
rc=$?
cp "$mnt/rec.pcapng" "$copy"
exit $rc
"""

BURST = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    s.sendto(b"hoptrace disk-full burst %d" % i, ("198.51.100.8", 9))
"""


def test_disk_full_while_recording(lab_netns: Any, tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) (util-linux)")
    lab = lab_netns
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    copy = tmp_path / "copy.pcapng"
    ready = tmp_path / "ready"
    argv = [*HOPTRACE, "live", "--backend", "pcap", "--json", "--ready-file", str(ready), *lab_tap_ifaces(lab)]
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", SCRIPT, "sh",
                             str(mnt), str(copy), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 60, "no ready file"
            time.sleep(0.05)
        # a few paths first, flushed (every ~200 ms) before the disk fills: they must survive
        for scenario in ("internet-ping", "udp"):
            assert lab.run(scenario).ok
        time.sleep(1.0)
        # ~5 sightings of ~200 bytes per datagram: 2000 datagrams overflow 256 KiB several times
        for _ in range(5):
            lab.exec("client", [sys.executable, "-c", BURST, "2000"])
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("hoptrace: hint:")]
    assert len(lines) == 1, err
    m = re.fullmatch(r"hoptrace: recording to .*rec\.pcapng stopped: disk full after (\d+) packets", lines[0])
    assert m, lines[0]
    rows = tshark_fields(copy, "frame.cap_len")
    assert len(rows) == int(m.group(1)) > 0
    assert not ready.exists(), "the ready file was left behind"
    assert out == "" or out.splitlines()[-1].startswith('{"type": "stats"'), out[-300:]
