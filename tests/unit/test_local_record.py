"""Recordings carry who took each packet (tracer/sinks/record.py's custom blocks), so a replay
shows what live showed: the flows' ``"local"`` the same, and every path that had one live has
it in the replay; the blocks are read back as untrusted input."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_core_engine import in_process
from tests.unit.test_core_stream import Batches
from tests.unit.test_local import Answers, split_run
from tracer.engine import Engine
from tracer.sinks.record import PcapngRecorder, custom_block, local_block
from tracer.sources.files import FileSource


class Recorded(Answers):
    """Answers that keep their records (the key a recording stores), as LocalWorker's do."""

    records: list[bytes]

    def submit(self, misses: bytes) -> None:
        if not hasattr(self, "records"):
            self.records = []
        self.records += [misses[j:j + 64] for j in range(0, len(misses), 64)]
        before = len(self.pending)
        super().submit(misses)
        for k in range(before, len(self.pending)):
            slot, epoch, fields, text, _ = self.pending[k]
            j = k - before
            self.pending[k] = (slot, epoch, fields, text, misses[j * 64:(j + 1) * 64])


def record_live(tmp_path: Path, fixture: str) -> tuple[list[dict[str, Any]], Path]:
    """A live-like run (answers a step late) recorded as live records: the lines and the file."""
    out = tmp_path / "rec.pcapng"
    with PcapngRecorder(out, snaplen=262144) as rec:
        _, data = split_run(fixture, Recorded(), recorder=rec)
    return [json.loads(x) for x in data.decode().splitlines()], out


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in lines if d["type"] in ("path", "flow")}


@pytest.mark.parametrize("fixture", ["published-port.pcapng", "host-ping.pcapng"])
def test_a_replay_shows_what_live_showed(tmp_path: Path, fixture: str) -> None:
    live, out = record_live(tmp_path, fixture)
    assert any("local" in d for d in live if d["type"] == "flow")
    replayed = in_process(str(out))
    assert replayed.status == 0, replayed.err
    got = by_id([json.loads(x) for x in replayed.lines])
    want = by_id(live)
    assert got.keys() == want.keys()
    for pid, d in want.items():
        if "local" in d:
            assert got[pid]["local"] == d["local"], pid
    # The flows as live wrote them, "local" and all.
    assert [got[k] for k in want if k.startswith("f")] == [want[k] for k in want if k.startswith("f")]
    # The TUI's way in (FileSource -> the Python engine) reads them too.
    src = FileSource([str(out)])
    events = [e for lines in Engine(src).chunks() for e in lines.events()]
    flows = {e.id: e.local for e in events if not hasattr(e, "hops")}
    assert flows == {k: want[k].get("local") for k in want if k.startswith("f")}


def test_tshark_reads_a_recording_with_local_blocks(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("needs tshark (make install provides it)")
    _, out = record_live(tmp_path, "host-ping.pcapng")
    assert b"hoptrace" in out.read_bytes()
    r = subprocess.run(["tshark", "-r", str(out), "-Y", "ip", "-T", "fields", "-e", "frame.number"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 6  # the packets; the custom blocks are records of their own
    r = subprocess.run(["tshark", "-r", str(out), "-Y", "not ip"], capture_output=True, text=True, timeout=60)
    assert "Custom Block" in r.stdout and "will not be copied" not in r.stdout


def hostile_file(tmp_path: Path, blocks: list[bytes]) -> Path:
    """host-ping's recording with ``blocks`` (local blocks, damaged or hostile) after its packets."""
    from tests.unit.test_core_stream import FIXTURES, read

    batches, _ = read([str(FIXTURES / "host-ping.pcapng")])
    out = tmp_path / "h.pcapng"
    rec = PcapngRecorder(out, snaplen=262144)
    for b in batches:
        rec.on_batch(b)
    rec.flush()
    rec.close()
    with out.open("ab") as f:
        for blk in blocks:
            f.write(blk)
    return out


def test_damaged_or_hostile_blocks_are_left_out_or_made_safe(tmp_path: Path) -> None:
    ans = Recorded()
    from tests.unit.test_core_stream import FIXTURES, read

    batches, _ = read([str(FIXTURES / "host-ping.pcapng")])
    list(Engine(Batches(batches), local=ans).chunks())
    record = ans.records[0]  # the echo request's key, at client: its flow's original direction
    blocks = [
        local_block(record, b'"kernel": "icmp echo"', b"answered by the kernel (icmp echo)"),
        local_block(record, b'"kernel": "\\u001b]0;owned\\u0007"', b"answered by \x1b]0;owned\x07 evil"),
        # Each of these, were it read, would replace the one before:
        local_block(record, b'"pid": 1}, "x": {"y": 2', b"x"),         # fields that would break the line
        local_block(record, b'"pid": 1\n', b"x"),                      # not one line
        local_block(record[:10], b'"kernel": "x"', b"x"),               # a record cut short
        custom_block(2, (b"relay, not known yet",)),                    # another kind
        struct.pack("<II", 0x00000BAD, 20) + b"\0" * 8 + struct.pack("<I", 20),  # too short for the magic
    ]
    out = hostile_file(tmp_path, blocks)
    replayed = in_process(str(out))
    assert replayed.status == 0, replayed.err
    flows = [json.loads(x) for x in replayed.lines if '"type": "flow"' in x]
    # The last good block wins; its JSON is as written (escaped), its text made safe.
    assert [f["local"] for f in flows] == [{"node": "client", "kernel": "\x1b]0;owned\x07"}]
    text = subprocess.run([*main_cmd(), "replay", str(out)], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "answered by \\x1b]0;owned\\x07 evil on client" in text.stdout
    assert "\x1b" not in text.stdout


def main_cmd() -> list[str]:
    import sys

    root = Path(__file__).resolve().parents[2]
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(root)!r}); from tracer.cli import main; "
            "sys.exit(main())"]
