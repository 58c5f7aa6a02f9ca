"""Golden fixtures: replaying each recorded scenario gives exactly its reviewed expected output."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES, run_hoptrace
from tracer.lab import SCENARIOS
from tracer.lab.fixtures import stable

GOLDEN = sorted(p.stem for p in FIXTURES.glob("*.json"))


def test_every_scenario_has_a_golden_fixture() -> None:
    assert set(SCENARIOS) <= set(GOLDEN)


@pytest.mark.parametrize("scenario", GOLDEN)
def test_replay_matches_expected(scenario: str) -> None:
    pcap, expected = FIXTURES / f"{scenario}.pcapng", FIXTURES / f"{scenario}.json"
    r = run_hoptrace("replay", "--json", str(pcap))
    assert r.returncode == 0, r.stderr
    got = [stable(json.loads(line)) for line in r.stdout.splitlines() if line.strip()]
    assert got == json.loads(expected.read_text()), (
        f"replay of {pcap.name} changed; if on purpose, review and run "
        "python -m tracer.lab.fixtures --json-only"
    )


def test_fixtures_show_their_nat() -> None:
    """The reviewed facts behind the JSON, so a regenerated file cannot silently lose them."""
    def nat(scenario: str) -> list[tuple[str, str, str]]:
        out = []
        for obj in json.loads((FIXTURES / f"{scenario}.json").read_text()):
            for ev in obj.get("nat", []) if obj.get("type") == "path" else []:
                out.append((obj["proto"], ev["kind"], ev["hook"]))
        return out

    assert nat("internet-ping") == [("icmp", "snat", "POSTROUTING"), ("icmp", "dnat", "PREROUTING")]
    assert ("tcp", "dnat", "PREROUTING") in nat("published-port")
    assert ("tcp", "dnat", "PREROUTING") in nat("hairpin")
    assert nat("container-ping") == [] and nat("gateway-ping") == [] and nat("host-ping") == []
    assert nat("udp") == [("udp", "snat", "POSTROUTING"), ("udp", "dnat", "PREROUTING")]


def test_ebpf_fixtures_show_the_drop_and_the_skb() -> None:
    """Recorded by the kernel probes: the drop and its reason, skb ids on every hop."""
    if not (FIXTURES / "blocked-ebpf.json").exists():
        pytest.skip("no eBPF fixtures (recorded only where eBPF works: make fixtures)")
    paths = [o for o in json.loads((FIXTURES / "blocked-ebpf.json").read_text()) if o.get("type") == "path"]
    echo = next(p for p in paths if p["proto"] == "icmp")
    assert echo["verdict"] == "dropped"
    assert (echo["hops"][-1]["node"], echo["hops"][-1]["iface"], echo["hops"][-1]["drop_reason"]) == (
        "host", "docker0", "NETFILTER_DROP")
    ping = [o for o in json.loads((FIXTURES / "internet-ping-ebpf.json").read_text()) if o.get("type") == "path"]
    assert all(h["skb"] for p in ping for h in p["hops"])
