"""hoptrace report: the summary of a capture, in text, markdown and JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.reference.correlate import correlate
from tests.unit.conftest import MS, US, internet_ping, internet_pong, make_obs
from tracer.commands.report import Summary, render
from tracer.model import Stats

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def build() -> Summary:
    s = Summary()
    obs = internet_ping() + internet_pong()
    obs += [replace(o, ts_ns=o.ts_ns + 5_000 * MS, ip_id=5, icmp_seq=2) for o in internet_ping()]
    obs += [make_obs(at="web/eth0", ts_ns=9_000 * MS, ip_id=9),
            make_obs(at="host/veth1", direction="drop", drop_reason="NETFILTER_DROP",
                     ts_ns=9_000 * MS + 4 * US, ip_id=9)]
    for p in correlate(obs):
        s.add_path(p)
    s.stats = Stats(observations=len(obs), paths=4, lost_events=0, elapsed_s=0.5)
    return s


def test_summary_json() -> None:
    j = build().to_json()
    assert (j["paths"], j["by_verdict"], j["by_proto"]) == (
        4, {"delivered": 3, "dropped": 1, "left": 0, "incomplete": 0},
        {"icmp": {"delivered": 3, "dropped": 1}})
    assert j["nat"] == [
        {"node": "host", "kind": "snat", "hook": "POSTROUTING", "before": "172.17.0.2",
         "after": "203.0.113.2", "rule": None, "packets": 2},
        {"node": "host", "kind": "dnat", "hook": "PREROUTING", "before": "203.0.113.2",
         "after": "172.17.0.2", "rule": None, "packets": 1}]
    assert j["drops"] == [{"hop": "host/veth1", "reason": "NETFILTER_DROP", "packets": 1}]
    # Most frequent pairs first; web/eth0 tx -> host/veth1 rx: 10 µs in both pings.
    assert j["hop_latency"][0] == {"from": "host/docker0 rx", "to": "host/eth0 tx", "count": 2,
                                   "p50_ns": 8000, "p90_ns": 8000, "p99_ns": 8000}
    pairs = {(r["from"], r["to"]): (r["count"], r["p50_ns"]) for r in j["hop_latency"]}
    assert pairs[("web/eth0 tx", "host/veth1 rx")] == (2, 10_000)
    assert pairs[("web/eth0 tx", "host/veth1 drop")] == (1, 4_000)
    assert pairs[("host/eth0 rx", "host/docker0 tx")] == (1, 8_000)
    assert j["path_latency"] == {"count": 4, "p50_ns": 30_000, "p90_ns": 30_000, "p99_ns": 30_000}


def test_render_text_and_markdown() -> None:
    s = build()
    text = render(s, "text", ["a.pcapng"])
    assert text.splitlines()[:2] == ["hoptrace report: a.pcapng",
                                     "17 observations, 4 paths, 0 flows, 0 lost events"]
    assert "  host  SNAT  POSTROUTING  172.17.0.2 → 203.0.113.2  -     2" in text
    assert "  host/veth1  NETFILTER_DROP  1" in text
    md = render(s, "markdown", ["a.pcapng"])
    assert "| host | SNAT | POSTROUTING | 172.17.0.2 → 203.0.113.2 | - | 2 |" in md
    assert "| icmp | 3 | 1 | 0 | 0 | 4 |" in md
    j = json.loads(render(s, "json", ["a.pcapng"]))
    assert (j["type"], j["files"], j["stats"]["observations"]) == ("report", ["a.pcapng"], 17)


def test_report_command_on_a_recording(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tracer.cli import main

    assert main(["report", "--format", "json", str(FIXTURES / "published-port.pcapng")]) == 0
    j = json.loads(capsys.readouterr().out)
    assert [(n["kind"], n["hook"], n["before"], n["after"]) for n in j["nat"]] == [
        ("dnat", "PREROUTING", "203.0.113.2:8080", "172.17.0.2:80"),
        ("snat", "POSTROUTING", "172.17.0.2:80", "203.0.113.2:8080")]
    assert j["by_verdict"]["delivered"] == j["paths"]
    # A damaged file: the report of what was read, then one error line and exit 2.
    bad = tmp_path / "cut.pcapng"
    data = (FIXTURES / "published-port.pcapng").read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    assert main(["report", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"hoptrace report: {bad}")
    assert err.count("\n") <= 2 and str(bad.name) in err


def test_report_of_nothing_readable_is_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tracer.cli import main

    assert (main(["report", str(tmp_path / "missing.pcap")]), main(["report", str(tmp_path)])) == (2, 2)
    out, err = capsys.readouterr()
    assert out == ""
    assert [line.startswith("hoptrace: ") for line in err.splitlines()] == [True, True]
