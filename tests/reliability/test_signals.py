"""Signals while tracing, and what a run leaves behind, in the lab (netns engine).

SIGINT, SIGTERM, SIGHUP: exit 0, the last NDJSON line is the stats, the lab's paths are there,
the recording is complete for tshark, 0600, no frame beyond the snaplen, no listening socket,
and every lab namespace's ruleset is the same text as before (``--rules`` inserted trace rules
while running). SIGKILL: the tagged rules stay; doctor reports them, and the next ``--rules``
start or ``hoptrace cleanup`` removes them.
"""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_hoptrace
from tests.reliability.helpers import (
    Live,
    descendants,
    lab_inodes,
    lab_tap_ifaces,
    listening,
    owned_by,
    paths_in,
    ruleset,
    tshark_fields,
)
from tracer.annotate.nftrace import tagged_rules

pytestmark = [pytest.mark.root, pytest.mark.lab]

SERVER = "198.51.100.8"


def start(lab: Any, tmp: Path, backend: str, *extra: str) -> Live:
    ifaces = lab_tap_ifaces(lab) if backend == "pcap" else []
    # --rules only in this lab's namespaces: other labs on the machine are not ours to touch
    return Live(tmp, backend, *ifaces, *extra, env={"HOPTRACE_LAB_PREFIX": lab.prefix})


def traffic(lab: Any) -> None:
    for scenario in ("internet-ping", "udp"):
        result = lab.run(scenario)
        assert result.ok, f"{scenario}: {result.detail}"
    # 1000-byte pings: frames longer than the default snaplen (128), to see them cut
    lab.exec("client", ["busybox", "ping", "-c", "2", "-s", "1000", "-W", "1", SERVER])


@pytest.mark.parametrize("backend, sig", [
    ("ebpf", signal.SIGINT), ("ebpf", signal.SIGTERM), ("ebpf", signal.SIGHUP),
    ("pcap", signal.SIGTERM), ("pcap", signal.SIGHUP),
], ids=lambda v: v.name if isinstance(v, signal.Signals) else v)
def test_signal_exits_cleanly_and_leaves_the_host_as_it_was(
        backend: str, sig: signal.Signals, lab_netns: Any, tmp_path: Path) -> None:
    lab = lab_netns
    before = ruleset(lab)
    rec = tmp_path / "run.pcapng"
    with start(lab, tmp_path, backend, "--record", str(rec), "--rules") as live:
        mine = descendants(live.pid)
        # listening sockets (tcp, udp, raw) of hoptrace or its children, root ns and lab ns
        assert owned_by(listening(), mine) == []
        for node in ("host", "client"):
            assert owned_by(listening(lab.netns_path(node)), mine) == []
        assert tagged_rules(lab.netns_path("host"), 4, f"hoptrace:{live.pid}"), "--rules inserted nothing"
        traffic(lab)
        rc, records, err = live.stop(sig)
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert records and records[-1]["type"] == "stats", records[-3:]
    assert records[-1]["lost_events"] == 0
    paths = paths_in(records, lab_inodes(lab))
    assert any(p["proto"] == "icmp" and p["nat"] for p in paths), [p["hops"][0] for p in paths][:5]

    # the host as it was: the ruleset text of every lab namespace; none of its sockets left listening
    assert ruleset(lab) == before
    assert owned_by(listening(), mine) == []

    # the recording: flushed, complete for tshark, private, cut at the snaplen
    assert stat.S_IMODE(rec.stat().st_mode) == 0o600
    rows = tshark_fields(rec, "frame.cap_len", "frame.len")
    assert len(rows) >= records[-1]["observations"] > 0
    assert max(int(c) for c, _ in rows) <= 128
    assert max(int(w) for _, w in rows) > 128, "no long frame was traced: the snaplen check proved nothing"


def test_sigkill_leftovers_reported_and_removed(lab_netns: Any, tmp_path: Path) -> None:
    lab = lab_netns
    host = lab.netns_path("host")
    before = ruleset(lab)

    killed = start(lab, tmp_path, "ebpf", "--rules")
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.communicate(timeout=30)
    tag = f"hoptrace:{killed.pid}"
    assert tagged_rules(host, 4, tag), "a SIGKILLed run cannot clean up: its rules must still be there"

    doc = run_hoptrace("doctor", "--json", timeout=120)
    assert doc.returncode == 0, doc.stderr
    checks = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}
    assert not checks["leftovers"]["ok"] and checks["leftovers"]["fix"] == "hoptrace cleanup", checks["leftovers"]

    # the next --rules start removes them (and puts its own)
    with start(lab, tmp_path, "pcap", "--rules") as nxt:
        assert tagged_rules(host, 4, tag) == []
        assert tagged_rules(host, 4, f"hoptrace:{nxt.pid}")
        rc, _records, err = nxt.stop(signal.SIGTERM, settle_s=0.1)
        assert rc == 0, err
    assert ruleset(lab) == before

    # killed again: `hoptrace cleanup` removes them
    killed = start(lab, tmp_path, "pcap", "--rules")
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.communicate(timeout=30)
    assert tagged_rules(host, 4, f"hoptrace:{killed.pid}")
    r = run_hoptrace("cleanup", timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"hoptrace:{killed.pid}" in r.stdout
    assert ruleset(lab) == before
    doc = run_hoptrace("doctor", "--json", timeout=120)
    left = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}["leftovers"]
    assert f"hoptrace:{killed.pid}" not in left["detail"]
