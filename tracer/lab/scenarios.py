"""The lab's experiments (DESIGN.md, "The lab"): each makes its traffic once and says whether it
did what it should — got its answer, or, for ``blocked``, died at the rule made to drop it.

Traffic is sent from inside the node's network namespace with the host's tools
(Python sockets): for the kernel a packet from a container is a
packet from its namespace, and the same code then works for both engines.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from tracer.lab import addresses as A
from tracer.netns import run_in_netns

if TYPE_CHECKING:
    from tracer.lab.lab import Lab, ScenarioResult


def _result(ok: bool, detail: str) -> ScenarioResult:
    from tracer.lab.lab import ScenarioResult

    return ScenarioResult(ok, detail)


PING_PAYLOAD = b"hoptrace lab ping".ljust(56, b".")


def ping(lab: Lab, node: str, dst: str, wait_s: float = 2.0) -> ScenarioResult:
    """One ICMP echo from a ping (datagram) socket, as iputils' ping sends it.

    Not a raw socket (busybox ping): the kernel hands an echo reply to a raw socket as a copy
    and frees the original with SKB_DROP_REASON_NO_SOCKET, which a tracer rightly shows as a
    drop. A ping socket consumes the reply. ``up()`` opens ping_group_range in every node.
    """
    request = struct.pack("!BBHHH", 8, 0, 0, 0, 1) + PING_PAYLOAD  # id and checksum: the kernel's

    def exchange() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as s:
            s.settimeout(wait_s)
            s.sendto(request, (dst, 0))
            try:
                while True:
                    reply = s.recv(2048)
                    if reply[0] == 0 and reply[6:8] == request[6:8] and reply[8:] == PING_PAYLOAD:
                        return True
            except TimeoutError:
                return False

    try:
        ok = run_in_netns(lab.netns_path(node), exchange, timeout=wait_s + 10)
    except OSError as exc:
        return _result(False, f"{node} -> {dst}: ping failed: {exc}")
    return _result(ok, f"{node} -> {dst}: ping, {int(ok)} of 1 replies")


def http_get(lab: Lab, node: str, dst: str, port: int, expect: str) -> ScenarioResult:
    def get() -> str:
        with socket.create_connection((dst, port), timeout=3) as s:
            s.sendall(f"GET / HTTP/1.0\r\nHost: {dst}\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    try:
        reply = run_in_netns(lab.netns_path(node), get, timeout=10)
    except OSError as exc:
        return _result(False, f"{node} -> {dst}:{port}: HTTP failed: {exc}")
    status = reply.split("\r\n", 1)[0]
    ok = status.startswith("HTTP/1.") and " 200 " in status and expect in reply
    return _result(ok, f"{node} -> {dst}:{port}: {status or 'no answer'}"
                   + ("" if expect in reply else f" (expected body {expect.strip()!r})"))


def udp_echo(lab: Lab, node: str, dst: str, port: int) -> ScenarioResult:
    payload = b"hoptrace lab udp echo"

    def exchange() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(payload, (dst, port))
            return s.recv(2048)

    try:
        reply = run_in_netns(lab.netns_path(node), exchange, timeout=10)
    except OSError as exc:
        return _result(False, f"{node} -> {dst}:{port}: UDP echo failed: {exc}")
    return _result(reply == payload, f"{node} -> {dst}:{port}: UDP echo "
                   + ("returned the datagram" if reply == payload else f"returned {reply!r}"))


def gateway_ping(lab: Lab) -> ScenarioResult:
    return ping(lab, "client", A.GATEWAY)


def internet_ping(lab: Lab) -> ScenarioResult:
    return ping(lab, "client", A.SERVER)


def host_ping(lab: Lab) -> ScenarioResult:
    return ping(lab, "host", A.CLIENT)


def container_ping(lab: Lab) -> ScenarioResult:
    return ping(lab, "client", A.WEB)


def published_port(lab: Lab) -> ScenarioResult:
    return http_get(lab, "inet", A.HOST_UPLINK, A.PUBLISHED_PORT, A.WEB_BODY)


def hairpin(lab: Lab) -> ScenarioResult:
    return http_get(lab, "client", A.HOST_UPLINK, A.PUBLISHED_PORT, A.WEB_BODY)


def localhost_port(lab: Lab) -> ScenarioResult:
    """A client on the host itself: 127.0.0.1:8080. With the userland proxy on, docker-proxy
    accepts it on lo and connects to web:80 from 172.17.0.1; off, OUTPUT DNATs it (route_localnet)
    and MASQUERADE gives it 172.17.0.1 as its source."""
    return http_get(lab, "host", "127.0.0.1", A.PUBLISHED_PORT, A.WEB_BODY)


def udp(lab: Lab) -> ScenarioResult:
    return udp_echo(lab, "client", A.SERVER, A.UDP_ECHO_PORT)


# The scenarios that touch the published port: each runs under both userland-proxy modes. With
# the proxy on, docker-proxy relays those from the host and from containers; inet's is DNATed.
PUBLISHED_PORT_SCENARIOS = ("published-port", "hairpin", "localhost-port")
RELAYED_WITH_PROXY = ("hairpin", "localhost-port")

# The rule `blocked` inserts, as iptables arguments after the chain name.
BLOCK_RULE = ["-s", A.CLIENT, "-d", A.SERVER, "-p", "icmp", "-j", "DROP"]


def blocked(lab: Lab) -> ScenarioResult:
    """client pings the server while a DOCKER-USER rule drops it: it must die there."""
    lab.iptables("host", "-I", "DOCKER-USER", "1", *BLOCK_RULE)
    try:
        sent = ping(lab, "client", A.SERVER, wait_s=1.0)
        listing = lab.iptables("host", "-L", "DOCKER-USER", "1", "-v", "-x", "-n")
    finally:
        lab.iptables("host", "-D", "DOCKER-USER", *BLOCK_RULE)
    fields = listing.split()
    dropped = int(fields[0]) if fields and fields[0].isdigit() else 0
    ok = not sent.ok and dropped >= 1
    return _result(ok, f"client -> {A.SERVER}: ping, no reply; DOCKER-USER DROP rule matched "
                   f"{dropped} packet(s)" if ok else f"{sent.detail}; DROP rule matched {dropped}")


SCENARIOS: dict[str, Callable[[Lab], ScenarioResult]] = {
    "gateway-ping": gateway_ping,
    "internet-ping": internet_ping,
    "host-ping": host_ping,
    "container-ping": container_ping,
    "published-port": published_port,
    "hairpin": hairpin,
    "localhost-port": localhost_port,
    "udp": udp,
    "blocked": blocked,
}
