"""One clock: ``hoptrace live --backend ebpf`` stamps sightings in UTC nanoseconds like every
other source, so its NDJSON ts_ns are now and a --record file is dated today, not 1970."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_hoptrace
from tests.record.test_record import tshark
from tests.taps.helpers import Live, lab_inodes

pytestmark = [pytest.mark.root, pytest.mark.lab]

SLACK_NS = 60 * 1_000_000_000


def test_ebpf_stamps_are_utc_now(lab_netns: Any, tmp_path: Path) -> None:
    rec = tmp_path / "ebpf.pcapng"
    inodes = lab_inodes(lab_netns)
    t0 = time.time_ns()
    tracing = Live("ebpf", (), "--record", str(rec))
    try:
        result = lab_netns.run("internet-ping")
        assert result.ok, result.detail
        live, _err = tracing.stop(settle_s=1.0)
    finally:
        tracing.kill()
    t1 = time.time_ns()
    hops = [h for d in live if d["type"] == "path" for h in d["hops"] if h["netns"] in inodes]
    assert hops, "no sighting in the lab's namespaces"
    for h in hops:
        assert t0 - SLACK_NS <= h["ts_ns"] <= t1 + SLACK_NS, (h["ts_ns"], t0, t1)
    # the recording, read back by the core's reader: the same instants
    r = run_hoptrace("replay", str(rec), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    replayed = [h for line in r.stdout.splitlines() if (d := json.loads(line))["type"] == "path"
                for h in d["hops"]]
    assert replayed and all(t0 - SLACK_NS <= h["ts_ns"] <= t1 + SLACK_NS for h in replayed)
    # and as Wireshark dates it: today (UTC), not Jan 1, 1970
    out = tshark(rec, "-T", "fields", "-e", "frame.time_epoch", "-c", "50")
    assert out.returncode == 0, out.stderr
    epochs = [float(x) for x in out.stdout.split()]
    assert epochs
    today = datetime.now(UTC).date()
    for e in epochs:
        assert abs(e * 1e9 - (t0 + t1) / 2) <= (t1 - t0) / 2 + SLACK_NS, e
        day = datetime.fromtimestamp(e, UTC).date()
        assert abs((day - today).days) <= 1, day
