"""The lab's addresses (DESIGN.md, "The lab"): Docker's defaults plus TEST-NET "internet".

Never a real public address: the uplink is 203.0.113.0/24 (TEST-NET-3) and the
public server 198.51.100.8 (TEST-NET-2).
"""

from __future__ import annotations

BRIDGE = "docker0"
BRIDGE_NET = "172.17.0.0/16"
GATEWAY = "172.17.0.1"
WEB = "172.17.0.2"
CLIENT = "172.17.0.3"
PREFIXLEN = 16

HOST_UPLINK = "203.0.113.2"
INET_UPLINK = "203.0.113.1"
UPLINK_PREFIXLEN = 24
SERVER = "198.51.100.8"

PUBLISHED_PORT = 8080
WEB_PORT = 80
UDP_ECHO_PORT = 7

# Docker derives a container's MAC from its address: 02:42 + the four IPv4 bytes.
MAC = {
    "web": "02:42:ac:11:00:02",
    "client": "02:42:ac:11:00:03",
}
CONTAINER_IP = {"web": WEB, "client": CLIENT}

# What each server answers with, so scenarios can tell a real answer from an accident.
WEB_BODY = "hoptrace lab: web\n"
INET_BODY = "hoptrace lab: inet\n"
