"""`hoptrace probe` to a published port, in the docker lab with the userland proxy on (Docker's
default) and off, and in the netns lab (which has no docker-proxy: it builds what
--userland-proxy=false writes). With the proxy on, the probe follows docker-proxy's own
connection to the container and gives the far end's verdict: docker-proxy accepts even when
nothing answers behind it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.probe.test_probe_lab import nat_of, probe
from tracer.lab import addresses as A

pytestmark = [pytest.mark.root, pytest.mark.lab]

HAIRPIN = f"{A.HOST_UPLINK}:{A.PUBLISHED_PORT}"
LOCALHOST = f"127.0.0.1:{A.PUBLISHED_PORT}"


@pytest.fixture(scope="module", params=["proxy-on", "proxy-off", "netns"])
def lab(request: pytest.FixtureRequest) -> Any:
    name = {"proxy-on": "lab_docker", "proxy-off": "lab_docker_noproxy", "netns": "lab_netns"}[request.param]
    return request.getfixturevalue(name)


def need_proxy(lab: Any) -> None:
    if lab.engine == "netns":
        pytest.skip("the netns engine has no docker-proxy (it builds what --userland-proxy=false writes)")
    if not lab.userland_proxy:
        pytest.skip("this docker lab runs --userland-proxy=false: no docker-proxy to answer for the far end")


@contextmanager
def web_port_80(lab: Any, target: str) -> Iterator[None]:
    """web's port 80 behind an iptables rule (REJECT with a reset, or DROP) while inside."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(A.WEB_PORT), "-j", *target.split()]
    lab.iptables("web", "-I", *rule)
    try:
        yield
    finally:
        lab.iptables("web", "-D", *rule)


def relayed_detail(v: dict[str, Any], end: str) -> None:
    head = "accepted by docker-proxy (pid "
    assert v["detail"].startswith(head), v["detail"]
    assert f") on host, relayed to web:{A.WEB_PORT} from {A.GATEWAY}:" in v["detail"], v["detail"]
    assert v["detail"].endswith(end), v["detail"]
    relay = v["relay"]
    assert relay["by"]["comm"] == "docker-proxy" and relay["by"]["pid"] > 1
    assert (relay["to"], relay["from"]["addr"]) == ({"addr": A.WEB, "port": A.WEB_PORT, "node": "web"}, A.GATEWAY)
    assert relay["peer_flow"] and relay["peer_paths"]


@pytest.mark.parametrize(("node", "to"), [("client", HAIRPIN), ("host", LOCALHOST)])
def test_published_port_from_a_container_and_from_the_host(lab: Any, node: str, to: str) -> None:
    rc, v, paths = probe(lab, "--from", node, "--to", to)
    assert (rc, v["verdict"]) == (0, "reachable"), v
    if lab.userland_proxy:
        relayed_detail(v, "web answered")
        assert nat_of(paths) == []
        # The proxy's own connection is among the paths shown: 172.17.0.1:N -> web:80, to web/eth0.
        out = [p for p in paths if p["flow"] == v["relay"]["peer_flow"]]
        assert out and out[0]["hops"][0]["src"] == A.GATEWAY and out[0]["hops"][-1]["node"] == "web"
    else:
        assert "relay" not in v
        assert v["detail"] == f"{to} answered"
        assert [k for k, *_ in nat_of(paths)].count("dnat") >= 1


def test_the_far_end_refusing_is_the_verdict(lab: Any) -> None:
    with web_port_80(lab, "REJECT --reject-with tcp-reset"):
        rc, v, _ = probe(lab, "--from", "client", "--to", HAIRPIN, "--timeout", "1")
    assert (rc, v["verdict"]) == (1, "rejected"), v
    if lab.userland_proxy:
        relayed_detail(v, "web refused: RST")
        assert v["relay"]["answer"] == "refused"
    else:
        assert v["detail"].startswith(f"TCP RST from {A.WEB}:{A.WEB_PORT}"), v


def test_no_answer_behind_the_proxy_is_no_reply(lab: Any) -> None:
    need_proxy(lab)
    with web_port_80(lab, "DROP"):
        rc, v, _ = probe(lab, "--from", "client", "--to", HAIRPIN, "--timeout", "1")
    assert (rc, v["verdict"]) == (1, "no reply"), v
    relayed_detail(v, "no answer from web")
