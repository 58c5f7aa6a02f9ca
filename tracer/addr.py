"""Address bytes <-> text, shared by decoders, the correlator and sinks."""

from __future__ import annotations

import socket


def addr_text(family: int, raw: bytes) -> str:
    """16 raw bytes (IPv4 in the first 4) as text; "" when not IP."""
    if family == 4:
        # numpy's S16 drops trailing NUL bytes: 10.1.0.0 comes back as 2 bytes.
        return socket.inet_ntop(socket.AF_INET, raw[:4].ljust(4, b"\0"))
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16].ljust(16, b"\0"))
    return ""


def addr_bytes(text: str) -> tuple[int, bytes]:
    """Text address as (family, 16 raw bytes)."""
    if ":" in text:
        return 6, socket.inet_pton(socket.AF_INET6, text)
    return 4, socket.inet_pton(socket.AF_INET, text).ljust(16, b"\0")
