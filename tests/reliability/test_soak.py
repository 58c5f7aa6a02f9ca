"""60 s soak (bench/soak.py): ``hoptrace live --backend ebpf --record`` under steady UDP load in a
lab of its own; RSS growth <= 10 % after warm-up, no lost events, fds and threads flat, every
delivered datagram traced.

The load is 50 % of the capacity the script measures first (without the tracer), capped at
10000 datagrams/s: on this 2-core machine the capacity is ~120k datagrams/s when quiet (15k-75k
when shared), ~5 hops (sightings) each, and the eBPF backend's userspace with recording on
keeps up with ~120k sightings/s (24k datagrams/s held for 60 s at 79 % of a core, 21k/s for 10 min); above
that it loses events at the ring (docs/reliability.md has the figures). The cap keeps 60 %
of that as margin for a slower or busier machine. The checks are those of the issue; ``bench/soak.py``
(default 600 s at 50 %, no cap) is the benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, need_root, need_tool

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_soak_60s() -> None:
    need_root()
    need_tool("iperf3")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "60", "--load", "0.5",
                        "--max-pps", "10000", "--every", "3", "--json"],
                       capture_output=True, text=True, timeout=220, cwd=ROOT)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    result = json.loads(r.stdout.splitlines()[-1])
    summary = {k: result[k] for k in ("checks", "stats", "rss_after_warmup_kb", "rss_end_kb", "fds_steady",
                                      "threads_steady", "udp_paths", "delivered_datagrams", "tracer_cpu")}
    assert all(result["checks"].values()), json.dumps(summary)
    assert len(result["samples"]) >= 15
    assert result["under_load"]["sent_packets"] >= 60 * 1000, "the load was not there"
    assert not list(Path("/run/netns").glob(f"{result['lab']}-*")), "the soak's lab was left behind"
