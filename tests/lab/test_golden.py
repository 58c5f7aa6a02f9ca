"""Golden fixtures: replaying each recorded scenario gives exactly its reviewed expected output."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES, run_hoptrace
from tracer.lab import SCENARIOS
from tracer.lab.fixtures import stable


@pytest.mark.parametrize("scenario", list(SCENARIOS))
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
