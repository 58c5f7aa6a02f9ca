"""--rules against the real lab: netfilter TRACE names the rule; the ruleset is left as found
(after a normal exit, after SIGTERM, and after a SIGKILL followed by `hoptrace cleanup`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, need_tool, run_hoptrace
from tests.topology.helpers import capture, replay_paths, ruleset
from tracer.annotate.nftrace import RuleTrace, filter_matches, tagged_rules
from tracer.lab import addresses as A

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def lab(lab_netns: object) -> object:
    need_tool("xtables-monitor")
    return lab_netns


def test_filter_translation() -> None:
    assert filter_matches("icmp and host 198.51.100.8") == (
        [["-p", "icmp", "-s", "198.51.100.8"], ["-p", "icmp", "-d", "198.51.100.8"]], None)
    assert filter_matches("tcp dst port 8080") == ([["-p", "tcp", "-m", "tcp", "--dport", "8080"]], None)
    assert filter_matches(None) == ([[]], None)
    matches, notice = filter_matches("ip[8] > 3 or vlan")
    assert matches == [[]] and notice is not None and "every packet" in notice


def test_trace_names_the_rule_and_leaves_the_ruleset_as_found(lab: Any, tmp_path: Path) -> None:
    from tracer.annotate.attribution import annotator
    from tracer.topology import Topology

    before = ruleset(lab)
    host = lab.netns_path("host")
    host_inode = lab.netns_inode("host")
    with RuleTrace({host_inode: host}, filter_expr="icmp or tcp") as rt:
        # "or" is not expressible: everything is traced (rate-limited), and it says so.
        assert rt.notices and "every packet" in rt.notices[-1]
        assert tagged_rules(host, 4, rt.tag)
        files = capture(lab, ("internet-ping", "published-port"), tmp_path)
        time.sleep(0.2)  # xtables-monitor's last lines
    assert ruleset(lab) == before
    inferred = annotator(Topology.discover(), conntrack=False, refresh_s=None)
    paths = [rt.annotate(inferred(p)) for p in replay_paths(lab, files)]
    events = {(ev.kind, p.proto, ev.before.src): ev for p in paths for ev in p.nat}
    masq = events[("snat", "icmp", A.CLIENT)]
    assert masq.rule_source == "trace"
    assert re.fullmatch(r"nat:POSTROUTING handle \d+: -A POSTROUTING -s 172\.17\.0\.0/16 ! -o docker0 "
                        r"-j MASQUERADE", masq.rule or ""), masq.rule
    dnat = events[("dnat", "tcp", A.INET_UPLINK)]
    assert dnat.rule_source == "trace"
    assert re.fullmatch(rf"nat:DOCKER handle \d+: -A DOCKER -p tcp -m tcp --dport {A.PUBLISHED_PORT} "
                        rf"-j DNAT --to-destination {A.WEB}:{A.WEB_PORT}", dnat.rule or ""), dnat.rule
    # Replies never traverse the nat table: their rule stays the inferred one.
    reply = events[("dnat", "icmp", A.SERVER)]
    assert (reply.rule_source, reply.rule) == ("inferred", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")


HOLDER = """
import sys, time
from tracer.annotate.nftrace import RuleTrace
with RuleTrace({%(inode)d: %(path)r}, filter_expr="icmp"):
    open(%(ready)r, "w").close()
    while True:
        time.sleep(0.1)
"""


def _holder(lab: Any, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp_path / "ready"
    code = HOLDER % {"inode": lab.netns_inode("host"), "path": lab.netns_path("host"), "ready": str(ready)}
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert p.poll() is None, "the tracer exited before it was ready"
        assert time.monotonic() < deadline, "the tracer did not get ready"
        time.sleep(0.05)
    return p, ready


def test_sigterm_removes_the_rules(lab: Any, tmp_path: Path) -> None:
    before = ruleset(lab)
    p, _ = _holder(lab, tmp_path)
    try:
        assert tagged_rules(lab.netns_path("host"), 4, f"hoptrace:{p.pid}")
        assert ruleset(lab, (p.pid,)) != before
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert ruleset(lab, (p.pid,)) == before


def test_cleanup_removes_what_a_killed_run_left(lab: Any, tmp_path: Path) -> None:
    before = ruleset(lab)
    p, _ = _holder(lab, tmp_path)
    p.kill()  # no chance to clean up
    p.wait()
    host = lab.netns_path("host")
    assert tagged_rules(host, 4, f"hoptrace:{p.pid}")
    r = run_hoptrace("cleanup", timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"hoptrace:{p.pid}" in r.stdout
    assert ruleset(lab, (p.pid,)) == before
    again = run_hoptrace("cleanup", timeout=60)  # (other runs' leftovers elsewhere may show up)
    assert again.returncode == 0 and f"hoptrace:{p.pid}" not in again.stdout


def test_cleanup_leaves_a_running_tracers_rules(lab: Any, tmp_path: Path) -> None:
    p, _ = _holder(lab, tmp_path)
    try:
        r = run_hoptrace("cleanup", timeout=60)
        assert r.returncode == 0, r.stderr
        assert tagged_rules(lab.netns_path("host"), 4, f"hoptrace:{p.pid}")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
    assert not tagged_rules(lab.netns_path("host"), 4)
    assert os.path.exists(lab.netns_path("host"))
