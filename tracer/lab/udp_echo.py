"""A UDP echo server for the lab's "internet" (busybox's nc has no UDP).

Run inside the inet namespace: ``python -m tracer.lab.udp_echo ADDR PORT``. Bound to one address, because a
socket bound to 0.0.0.0 would answer from the outgoing interface's address and the
NAT on the way back would not recognise the reply.
"""

from __future__ import annotations

import contextlib
import socket
import sys


def serve(addr: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(data, peer)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        serve(sys.argv[1], int(sys.argv[2]))
