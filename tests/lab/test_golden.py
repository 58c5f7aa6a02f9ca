"""Golden fixtures: replaying each recorded scenario gives exactly its reviewed expected output."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES, run_hoptrace
from tracer.lab import SCENARIOS
from tracer.lab import addresses as A
from tracer.lab.fixtures import stable, stems
from tracer.lab.scenarios import RELAYED_WITH_PROXY

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


def _flows(stem: str) -> list[tuple[str, int | None, str, int | None]]:
    return [(o["original"]["src"], o["original"]["dport"], o["original"]["dst"], o["original"]["sport"])
            for o in json.loads((FIXTURES / f"{stem}.json").read_text())
            if o.get("type") == "flow" and o["proto"] == "tcp"]


@pytest.mark.parametrize("stem", stems(list(RELAYED_WITH_PROXY)))
def test_userland_proxy_fixtures_exist(stem: str) -> None:
    """Recorded from the docker lab in both --userland-proxy modes (python -m tracer.lab.fixtures):
    a missing one is a failure, not a skip."""
    if stem in ("hairpin-ebpf", "localhost-port-ebpf"):
        return  # recorded by the kernel probes only with the proxy on (lo in both directions)
    assert (FIXTURES / f"{stem}.pcapng").exists() and (FIXTURES / f"{stem}.json").exists(), (
        f"missing fixtures/{stem}: run python -m tracer.lab.fixtures " + stem.split("-proxy")[0])


@pytest.mark.parametrize("stem", ["hairpin-proxy", "hairpin-proxy-ebpf", "localhost-port-proxy",
                                  "localhost-port-proxy-ebpf"])
def test_userland_proxy_fixtures_show_two_legs_and_no_nat(stem: str) -> None:
    """docker-proxy accepted the connection to the published port and opened its own to web:80
    from the bridge's address: two TCP connections, neither NATed."""
    flows = _flows(stem)
    client = (A.CLIENT, A.PUBLISHED_PORT, A.HOST_UPLINK) if stem.startswith("hairpin") else (
        "127.0.0.1", A.PUBLISHED_PORT, "127.0.0.1")
    assert [f[:3] for f in flows] == [client, (A.GATEWAY, A.WEB_PORT, A.WEB)]
    paths = [o for o in json.loads((FIXTURES / f"{stem}.json").read_text()) if o.get("type") == "path"]
    assert [p["nat"] for p in paths if p["proto"] == "tcp" and p["nat"]] == []
    outbound = next(p for p in paths if p["proto"] == "tcp" and p["hops"][0]["src"] == A.GATEWAY)
    assert (outbound["hops"][0]["node"], outbound["hops"][0]["iface"], outbound["hops"][-1]["node"]) == (
        "host", "docker0", "web")


def test_without_the_proxy_the_published_port_is_natted() -> None:
    """The same scenarios with --userland-proxy=false: one connection, DNATed (hairpin: at the
    bridge; localhost: in OUTPUT, before any device, so only the replies' un-DNAT shows)."""
    assert [f[:3] for f in _flows("hairpin")] == [(A.CLIENT, A.PUBLISHED_PORT, A.HOST_UPLINK)]
    assert [f[:3] for f in _flows("localhost-port")] == [(A.GATEWAY, A.WEB_PORT, A.WEB)]


def test_ebpf_fixtures_show_the_drop_and_the_skb() -> None:
    """Recorded by the kernel probes: the drop and its reason, skb ids on every hop."""
    paths = [o for o in json.loads((FIXTURES / "blocked-ebpf.json").read_text()) if o.get("type") == "path"]
    echo = next(p for p in paths if p["proto"] == "icmp")
    assert echo["verdict"] == "dropped"
    assert (echo["hops"][-1]["node"], echo["hops"][-1]["iface"], echo["hops"][-1]["drop_reason"]) == (
        "host", "docker0", "NETFILTER_DROP")
    ping = [o for o in json.loads((FIXTURES / "internet-ping-ebpf.json").read_text()) if o.get("type") == "path"]
    assert all(h["skb"] for p in ping for h in p["hops"])
