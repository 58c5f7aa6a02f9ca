"""`hoptrace probe` in the lab, both engines: every verdict from real traffic.

Each probe runs the real CLI as a subprocess (eBPF backend: the real kernel),
inside the test module's own lab (a unique prefix, removed afterwards).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.conftest import run_hoptrace
from tracer.lab import addresses as A

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module", params=["netns", "docker"])
def lab(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"lab_{request.param}")


def probe(lab: Any, *args: str) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    env = {**os.environ, "HOPTRACE_LAB_PREFIX": lab.prefix}
    r = run_hoptrace("probe", "--json", *args, env=env, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    verdicts = [o for o in lines if o["type"] == "verdict"]
    assert len(verdicts) == 1, (r.stdout, r.stderr)
    assert lines[-1]["type"] == "stats"
    return r.returncode, verdicts[0], [o for o in lines if o["type"] == "path"]


def nat_of(paths: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(n["kind"], n["node"], n["hook"]) for p in paths for n in p["nat"]]


def test_internet_ping_is_reachable_through_masquerade(lab: Any) -> None:
    rc, v, paths = probe(lab, "--from", "client", "--to", A.SERVER)
    assert (rc, v["verdict"]) == (0, "reachable")
    request = paths[0]
    hops = [(h["node"], h["iface"][:4], h["dir"]) for h in request["hops"]]
    assert hops == [("client", "eth0", "tx"), ("host", "veth", "rx"), ("host", "dock", "rx"),
                    ("host", "eth0", "tx"), ("inet", "eth0", "rx")], json.dumps(paths, indent=1)
    assert ("snat", "host", "POSTROUTING") in nat_of([request])
    snat = next(n for n in request["nat"] if n["kind"] == "snat")
    assert (snat["before"]["src"], snat["after"]["src"]) == (A.CLIENT, A.HOST_UPLINK)
    assert "MASQUERADE" in (snat["rule"] or "")


def test_container_to_container_is_bridged_without_nat(lab: Any) -> None:
    rc, v, paths = probe(lab, "--from", "client", "--to", A.WEB)
    assert (rc, v["verdict"]) == (0, "reachable")
    assert nat_of(paths) == []
    assert paths[0]["hops"][-1]["node"] == "web"


def test_published_port_is_reachable_through_dnat(lab: Any) -> None:
    rc, v, paths = probe(lab, "--from", "inet", "--to", f"{A.HOST_UPLINK}:{A.PUBLISHED_PORT}")
    assert (rc, v["verdict"]) == (0, "reachable")
    assert ("dnat", "host", "PREROUTING") in nat_of(paths)


def test_udp_echo_is_reachable(lab: Any) -> None:
    rc, v, _ = probe(lab, "--from", "client", "--to", f"{A.SERVER}:{A.UDP_ECHO_PORT}", "--proto", "udp")
    assert (rc, v["verdict"]) == (0, "reachable")


def test_drop_rule_gives_dropped_with_the_kernel_reason(lab: Any) -> None:
    from tracer.lab.scenarios import BLOCK_RULE

    lab.iptables("host", "-I", "DOCKER-USER", "1", *BLOCK_RULE)
    try:
        rc, v, _ = probe(lab, "--from", "client", "--to", A.SERVER, "--timeout", "1")
    finally:
        lab.iptables("host", "-D", "DOCKER-USER", *BLOCK_RULE)
    assert (rc, v["verdict"]) == (1, "dropped")
    assert v["detail"].startswith("dropped at host/")
    assert "NETFILTER_DROP" in v["detail"]


def test_unpublished_port_is_rejected_by_the_host(lab: Any) -> None:
    rc, v, _ = probe(lab, "--from", "inet", "--to", f"{A.HOST_UPLINK}:9090", "--timeout", "1")
    assert (rc, v["verdict"]) == (1, "rejected")
    assert f"TCP RST from {A.HOST_UPLINK}:9090" in v["detail"]


def test_no_server_on_the_port_gives_a_reset_from_the_container(lab: Any) -> None:
    rc, v, _ = probe(lab, "--from", "client", "--to", f"{A.WEB}:81", "--timeout", "1")
    assert (rc, v["verdict"]) == (1, "rejected")
    assert "first seen at web/eth0" in v["detail"]


def test_no_route(lab: Any) -> None:
    # inet has no default route: 192.0.2.1 (TEST-NET-1) is unroutable there, nothing leaves.
    rc, v, _ = probe(lab, "--from", "inet", "--to", "192.0.2.1", "--timeout", "1")
    assert (rc, v["verdict"]) == (1, "no route")


def test_containers_own_traffic_is_unaffected(lab: Any) -> None:
    probe(lab, "--from", "client", "--to", f"{A.WEB}:{A.WEB_PORT}", "--count", "3")
    assert lab.run("container-ping").ok
    assert lab.run("published-port").ok


def test_bad_usage_lists_known_nodes(lab: Any) -> None:
    env = {**os.environ, "HOPTRACE_LAB_PREFIX": lab.prefix}
    r = run_hoptrace("probe", "--from", "nosuch", "--to", A.SERVER, env=env)
    assert r.returncode == 2
    assert "unknown node 'nosuch'" in r.stderr and "client" in r.stderr
    r = run_hoptrace("probe", "--from", "client", "--to", "not-an-address", env=env)
    assert (r.returncode, r.stderr.count("\n") <= 2) == (2, True)
