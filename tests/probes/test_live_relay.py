"""`hoptrace live --json` over the published port in the docker lab, with Docker's userland proxy
on and off: with it on, the connection docker-proxy accepted and the one it opened to web:80 name
each other (CONTRACT.md's ``"relay"``); off, nothing is relayed and the port is NATed. (The netns
engine has no docker-proxy: it is the "off" case, tested by the NAT tests of tests/probes.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.probes.test_live_cli import Traced
from tracer.lab import addresses as A

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module", params=["proxy-on", "proxy-off"])
def traced(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]], Path]:
    """One traced (and recorded) run of the scenarios that reach the published port from the lab."""
    lab = request.getfixturevalue("lab_docker" if request.param == "proxy-on" else "lab_docker_noproxy")
    tmp: Path = tmp_path_factory.mktemp("relay")
    rec = tmp / "relay.pcapng"
    live = Traced(tmp, "-w", str(rec), "tcp and (port 8080 or port 80)")
    try:
        for scenario in ("hairpin", "localhost-port"):
            result = lab.run(scenario)
            assert result.ok, result.detail
        # Who took the packets is looked up off the hot path, after each path finishes (500 ms
        # quiet): on a loaded machine give the lookups time to land before the flows close.
        time.sleep(2)
    finally:
        rc, out, err = live.stop()
    assert rc == 0, err
    assert "Traceback" not in err
    return lab, out, rec


def flows(out: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in out if o["type"] == "flow"}


def test_both_legs_name_each_other_only_with_the_proxy(traced: tuple[Any, list[dict[str, Any]], Path]) -> None:
    lab, out, _ = traced
    fl = flows(out)
    accepted = [f for f in fl.values() if f["original"]["dport"] == A.PUBLISHED_PORT
                and f["original"]["src"] in (A.CLIENT, "127.0.0.1")]
    if not lab.userland_proxy:
        assert all("relay" not in o for o in out), "nothing is relayed with --userland-proxy=false"
        assert any(n["kind"] == "dnat" for o in out if o["type"] == "path" for n in o["nat"])
        return
    assert sorted(f["original"]["src"] for f in accepted) == ["127.0.0.1", A.CLIENT]
    for f in accepted:
        relay = f["relay"]
        assert (relay["by"]["comm"], relay["leg"]) == ("docker-proxy", "accepted"), relay
        peer = fl[relay["peer_flow"]]
        # The proxy's own connection: from the bridge's address to web:80, naming this one back.
        assert (peer["original"]["src"], peer["original"]["dst"], peer["original"]["dport"]) == (
            A.GATEWAY, A.WEB, A.WEB_PORT)
        assert (peer["relay"]["peer_flow"], peer["relay"]["leg"], peer["relay"]["by"]) == (
            f["id"], "opened", relay["by"])
        assert relay["peer_paths"] == peer["paths"] and peer["relay"]["peer_paths"] == f["paths"]
        assert (relay["peer"]["src"], relay["peer"]["dport"], relay["peer_node"]) == (A.GATEWAY, A.WEB_PORT, "web")
        # Who took the client's connection: docker-proxy itself (tracer/annotate/local.py).
        assert f.get("local", {}).get("comm") == "docker-proxy"
    # No NAT on either leg: the proxy relays, the kernel does not rewrite.
    assert [n for o in out if o["type"] == "path" for n in o["nat"]] == []


def _legs(out: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """Each relayed flow as (its endpoints, the peer's endpoints, its leg, who relayed it)."""
    fl = flows(out)
    ends = {fid: tuple(f["original"].values()) for fid, f in fl.items()}
    return {(ends[fid], ends.get(f["relay"]["peer_flow"]), f["relay"]["leg"], f["relay"]["by"]["pid"])
            for fid, f in fl.items() if "relay" in f}


def test_a_recording_replays_with_the_same_relays(traced: tuple[Any, list[dict[str, Any]], Path]) -> None:
    import json

    from tests.conftest import run_hoptrace

    lab, out, rec = traced
    r = run_hoptrace("replay", "--json", str(rec))
    assert r.returncode == 0, r.stderr
    replayed = [json.loads(line) for line in r.stdout.splitlines()]
    assert _legs(replayed) == _legs(out)
    assert len(_legs(out)) == (4 if lab.userland_proxy else 0)
