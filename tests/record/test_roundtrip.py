"""A recording replays into exactly the paths the engine built from the original batches.

The engine runs once with the recorder as a batch hook; the recording is then
replayed through a second engine (tracer.sources.files.FileSource); both sets of
paths and flows must be equal as JSON (tracer.sinks.output, CONTRACT.md's shape).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, run_hoptrace
from tests.record.helpers import batch_of, masquerade_pings
from tests.record.test_record import tshark
from tracer.engine import Engine
from tracer.model import Flow, PacketPath
from tracer.sinks.output import flow_json, path_json
from tracer.sinks.record import PcapngRecorder
from tracer.sources.base import BatchListSource
from tracer.sources.files import FileSource


def run_engine(source: Any, record: Path | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    engine = Engine(source)
    rec = None
    if record is not None:
        rec = PcapngRecorder(record)
        engine.batch_hooks.append(rec.on_batch)
    paths, flows = [], []
    try:
        for events in engine.events():
            for e in events:
                if isinstance(e, PacketPath):
                    paths.append(path_json(e))
                elif isinstance(e, Flow):
                    flows.append(flow_json(e))
    finally:
        if rec is not None:
            rec.close()
    return paths, flows


def replay(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return run_engine(FileSource([str(path)]))


def test_ebpf_like_batches_round_trip(tmp_path: Path) -> None:
    # skb addresses, MASQUERADE, drops with a reason, and a second batch without skb ids.
    batches = [
        batch_of(masquerade_pings(30, drop_every=5), drop_reasons={6: "NETFILTER_DROP"}),
        batch_of(masquerade_pings(10, t0=1_795_805_099_000_000_000, with_skb=False)),
    ]
    rec = tmp_path / "rec.pcapng"
    live = run_engine(BatchListSource(batches, kind="ebpf"), record=rec)
    replayed = replay(rec)
    assert replayed == live
    paths = live[0]
    # The comparison means something: NAT events, drops with their reason, several hops.
    assert sum(1 for p in paths if p["verdict"] == "dropped") == 6
    assert any(n["kind"] == "snat" for p in paths for n in p["nat"])
    assert {h["drop_reason"] for p in paths for h in p["hops"]} == {None, "NETFILTER_DROP"}
    assert max(len(p["hops"]) for p in paths) >= 5
    assert any(h["skb"] for p in paths for h in p["hops"])


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.pcapng")))
def test_lab_fixtures_round_trip(fixture: str, tmp_path: Path) -> None:
    rec = tmp_path / "rec.pcapng"
    original = run_engine(FileSource([str(FIXTURES / fixture)]), record=rec)
    assert original[0], f"{fixture} gave no paths"
    assert replay(rec) == original
    # ... and Wireshark reads the recording without a word, one interface per hop.
    proc = tshark(rec, "-T", "fields", "-e", "frame.interface_name", "-e", "frame.comment")
    assert (proc.returncode, proc.stderr) == (0, "")
    seen = [ln.split("\t") for ln in proc.stdout.splitlines()]
    hops_in_paths = {f"{h['node']}/{h['iface']}" for p in original[0] for h in p["hops"]}
    assert {name for name, _ in seen} >= hops_in_paths
    assert all(json.loads(comment)["v"] == 1 for _, comment in seen)


def test_cli_replay_of_a_recording_prints_the_same_paths(tmp_path: Path) -> None:
    batches = [batch_of(masquerade_pings(8, drop_every=4), drop_reasons={6: "NETFILTER_DROP"})]
    rec = tmp_path / "rec.pcapng"
    live_paths, live_flows = run_engine(BatchListSource(batches, kind="ebpf"), record=rec)
    proc = run_hoptrace("replay", str(rec), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert [ln for ln in lines if ln["type"] == "path"] == live_paths
    assert [ln for ln in lines if ln["type"] == "flow"] == live_flows
    assert lines[-1]["type"] == "stats" and lines[-1]["observations"] == len(batches[0])
