"""Unit-test helpers: build sightings as the lab would show them, field by field."""

from __future__ import annotations

from typing import Any

import pytest

from tracer.model import Observation

# Namespaces of the lab's nodes (inodes as a kernel would hand them out).
NETNS = {"host": 4026531840, "web": 4026532001, "client": 4026532002, "inet": 4026532003}
IFINDEX = {
    ("web", "eth0"): 2, ("client", "eth0"): 2, ("inet", "eth0"): 2,
    ("host", "eth0"): 2, ("host", "docker0"): 3, ("host", "veth1"): 4, ("host", "veth2"): 5,
}  # fmt: skip

MS = 1_000_000
US = 1_000


def make_obs(**overrides: Any) -> Observation:
    """An ICMP echo request leaving web/eth0; ``at="node/iface"`` sets node, ifname, netns, ifindex."""
    at = overrides.pop("at", None)
    fields: dict[str, Any] = dict(
        ts_ns=1_000 * MS, netns=NETNS["web"], ifindex=2, ifname="eth0", node="web",
        direction="tx", source="ebpf", family=4, proto=1, src="172.17.0.2",
        dst="198.51.100.8", length=84, ttl=64, ip_id=4242, icmp_type=8, icmp_code=0,
        icmp_id=77, icmp_seq=1, digest=0x5EED,
    )  # fmt: skip
    if at is not None:
        node, iface = at.split("/")
        fields.update(node=node, ifname=iface, netns=NETNS[node], ifindex=IFINDEX[(node, iface)])
    fields.update(overrides)
    return Observation(**fields)


def internet_ping(t0: int = 1_000 * MS, **common: Any) -> list[Observation]:
    """web pings 198.51.100.8 through MASQUERADE: 5 sightings, SNAT between docker0 rx and eth0 tx."""
    return [
        make_obs(at="web/eth0", direction="tx", ts_ns=t0, **common),
        make_obs(at="host/veth1", direction="rx", ts_ns=t0 + 10 * US, **common),
        make_obs(at="host/docker0", direction="rx", ts_ns=t0 + 12 * US, **common),
        make_obs(at="host/eth0", direction="tx", ts_ns=t0 + 20 * US, src="203.0.113.2", ttl=63,
                 **{"icmp_id": 77, **common}),
        make_obs(at="inet/eth0", direction="rx", ts_ns=t0 + 30 * US, src="203.0.113.2", ttl=63,
                 **common),
    ]


def internet_pong(t0: int = 1_001 * MS, **common: Any) -> list[Observation]:
    """The echo reply to ``internet_ping``: conntrack undoes MASQUERADE (DNAT at PREROUTING)."""
    base: dict[str, Any] = dict(icmp_type=0, ip_id=999, digest=0x5EED, src="198.51.100.8",
                                dst="203.0.113.2", **common)
    return [
        make_obs(at="inet/eth0", direction="tx", ts_ns=t0, ttl=64, **base),
        make_obs(at="host/eth0", direction="rx", ts_ns=t0 + 10 * US, ttl=64, **base),
        make_obs(at="host/docker0", direction="tx", ts_ns=t0 + 18 * US, ttl=63,
                 **{**base, "dst": "172.17.0.2"}),
        make_obs(at="host/veth1", direction="tx", ts_ns=t0 + 20 * US, ttl=63,
                 **{**base, "dst": "172.17.0.2"}),
        make_obs(at="web/eth0", direction="rx", ts_ns=t0 + 30 * US, ttl=63,
                 **{**base, "dst": "172.17.0.2"}),
    ]


@pytest.fixture
def obs() -> Any:
    return make_obs
