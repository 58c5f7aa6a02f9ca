"""The netns engine: Docker's default bridge network built by hand.

Same names, addresses, MACs and iptables rules as ``dockerd --userland-proxy=false``
writes (the docker engine runs it that way so that hairpin traffic is NATed,
DESIGN.md "hairpin NAT"), for machines without dockerd and for fast tests.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from tracer.lab import addresses as A

if TYPE_CHECKING:
    from tracer.lab.lab import Lab

CONTAINERS = ("web", "client")

# iptables-save of dockerd 20.10 (--userland-proxy=false) with `web` published -p 8080:80.
# In hairpin mode Docker omits "-A DOCKER -i docker0 -j RETURN" and the "! -i docker0" on the
# DNAT, so a container reaching the host's published port is DNATed too.
RULES = f"""\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -o {A.BRIDGE} -m addrtype --src-type LOCAL -j MASQUERADE
-A POSTROUTING -s {A.BRIDGE_NET} ! -o {A.BRIDGE} -j MASQUERADE
-A POSTROUTING -s {A.WEB}/32 -d {A.WEB}/32 -p tcp -m tcp --dport {A.WEB_PORT} -j MASQUERADE
-A DOCKER -p tcp -m tcp --dport {A.PUBLISHED_PORT} -j DNAT --to-destination {A.WEB}:{A.WEB_PORT}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o {A.BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o {A.BRIDGE} -j DOCKER
-A FORWARD -i {A.BRIDGE} ! -o {A.BRIDGE} -j ACCEPT
-A FORWARD -i {A.BRIDGE} -o {A.BRIDGE} -j ACCEPT
-A DOCKER -d {A.WEB}/32 ! -i {A.BRIDGE} -o {A.BRIDGE} -p tcp -m tcp --dport {A.WEB_PORT} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i {A.BRIDGE} ! -o {A.BRIDGE} -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o {A.BRIDGE} -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""


def veth_name(prefix: str, node: str) -> str:
    """Docker names host-side veths ``veth`` + 7 hex digits; ours are stable per lab and node."""
    return "veth" + hashlib.sha1(f"{prefix}/{node}".encode()).hexdigest()[:7]


def build(lab: Lab) -> None:
    """Bridge, veth pairs, addresses, routes, sysctls and rules; then web's httpd."""
    host = lab.state.ns_name("host")
    batch = [
        f"link add {A.BRIDGE} type bridge",
        f"addr add {A.GATEWAY}/{A.PREFIXLEN} dev {A.BRIDGE}",
        f"link set {A.BRIDGE} up",
    ]
    for node in CONTAINERS:
        veth = veth_name(lab.prefix, node)
        # Created inside the host namespace with the peer born in the container's: nothing
        # ever appears in the root namespace, not even for a moment.
        batch += [
            f"link add {veth} type veth peer name eth0 netns {lab.state.ns_name(node)}",
            f"link set {veth} master {A.BRIDGE}",
            f"link set {veth} type bridge_slave hairpin on",
            f"link set {veth} up",
        ]
    lab.ip_batch(host, batch)
    for node in CONTAINERS:
        # Docker turns IPv6 off on a container's eth0 when the network has none (before it is up,
        # so no DAD or router solicitations leave it).
        lab.sysctls(node, {"net/ipv6/conf/eth0/disable_ipv6": "1"})
        lab.ip_batch(
            lab.state.ns_name(node),
            [
                "link set lo up",
                f"link set eth0 address {A.MAC[node]}",
                f"addr add {A.CONTAINER_IP[node]}/{A.PREFIXLEN} dev eth0",
                "link set eth0 up",
                f"route add default via {A.GATEWAY}",
            ],
        )
    lab.sysctls(
        "host",
        {
            "net/ipv4/ip_forward": "1",
            # Docker sets these when the userland proxy is off: hairpin NAT needs bridged
            # replies to pass conntrack, and OUTPUT DNAT of 127.0.0.1 needs route_localnet.
            "net/bridge/bridge-nf-call-iptables": "1",
            f"net/ipv4/conf/{A.BRIDGE}/route_localnet": "1",
        },
    )
    lab.iptables_restore("host", RULES)
    www = lab.www("web", A.WEB_BODY)
    lab.spawn("web", ["busybox", "httpd", "-f", "-p", str(A.WEB_PORT), "-h", str(www)], "httpd web")
    lab.wait_tcp("web", "127.0.0.1", A.WEB_PORT, "httpd in web")
