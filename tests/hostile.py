"""Captures whose names attack the terminal, and the check that none got through raw.

``fixtures/hostile-names.pcapng`` is ``capture(FIXTURE_NAMES)``: one ICMP echo request
seen at two hops, interfaces named like issue 19's report (an SGR recolour and an OSC 0
window title in the first, a clear-screen CSI in the second). Regenerate it with
``.venv/bin/python -m tests.hostile``; ``test_safe_output`` checks the file is exactly that.

Hand-written pcapng (the block format is small and documented) rather than scapy's writer,
so the bytes do not change with a scapy release and names can be any bytes at all.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.conftest import FIXTURES

FIXTURE = FIXTURES / "hostile-names.pcapng"
FIXTURE_NAMES = ("\x1b[31mweb\x1b[0m/eth0\x1b]0;PWNED\x07", "host/veth\x1b[2J")

# Names a test pushes through every writer: each is something a terminal, Textual's
# markup or a markdown table would act on. Bytes: an IDB name is any bytes.
HOSTILE_NAMES: tuple[bytes, ...] = (
    b"\x1b[31mweb\x1b[0m/eth0\x1b]0;PWNED\x07",
    b"host/veth\x1b]52;c;cHduZWQ=\x07|x`y`",  # OSC 52 sets the clipboard; | and ` for markdown
    "host/\x9b2J\u202egol\u2066[bold]red[/]".encode(),  # C1 CSI, RLO, an isolate, Textual markup
    b"inet/eth0\r\nINJECTED: forged line\x00\x7f\xff",  # CR LF, NUL, DEL, invalid UTF-8
)
HOSTILE_DROP_REASON = "NETFILTER_DROP\x1b[2J\x1b]0;PWNED\x07"

# What may not reach a terminal raw: C0 (bar the newline that ends a line), DEL, C1,
# bidi controls, line/paragraph separators. ESC, BEL and CSI (0x9b) are among them.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")

_T0_NS = 1_700_000_000_000_000_000


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _checksum(data: bytes) -> int:
    data = data + b"\0" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _echo_frame(ttl: int) -> bytes:
    """Ethernet + IPv4 + ICMP echo request 172.17.0.2 -> 198.51.100.8 (IP ID 4242, seq 1)."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, 77, 1) + b"hoptrace-hostile"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 4242, 0, ttl, 1, 0,
                     bytes([172, 17, 0, 2]), bytes([198, 51, 100, 8]))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex("02420a000002" "0242ac110002") + b"\x08\x00"
    return eth + ip + icmp


def capture(names: Sequence[str | bytes], drop_reason: str | None = None) -> bytes:
    """A pcapng: one interface per name, the same echo request seen at each in turn.

    The first sighting is ``tx``, the others ``rx``; with ``drop_reason`` the last is a
    drop with that reason (hoptrace's comment metadata, as a recording carries it).
    """
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
                 + _option(4, b"tests.hostile") + _option(0, b""))
    for name in names:
        raw = name.encode() if isinstance(name, str) else name
        out += _block(1, struct.pack("<HHI", 1, 0, 262144)
                      + _option(2, raw) + _option(9, bytes([9])) + _option(0, b""))
    for i in range(len(names)):
        ts = _T0_NS + i * 20_000
        direction = "tx" if i == 0 else "rx"
        meta: dict[str, object] = {"v": 1, "dir": direction, "skb": "0xffff888100000100"}
        if drop_reason is not None and i == len(names) - 1:
            meta.update(dir="drop", drop_reason=drop_reason)
        frame = _echo_frame(64 if i == 0 else 63)
        flags = {"tx": 2, "rx": 1}.get(str(meta["dir"]), 0)
        opts = (_option(1, json.dumps(meta).encode()) + _option(2, struct.pack("<I", flags))
                + _option(0, b""))
        out += _block(6, struct.pack("<IIIII", i, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
                      + _pad4(frame) + opts)
    return out


def replay_events(data: bytes) -> list[Any]:
    """The paths and flows hoptrace's engine makes of a capture (given as its bytes)."""
    from tracer.engine import Engine
    from tracer.sources.files import open_files

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "capture.pcapng"
        f.write_bytes(data)
        engine = Engine(open_files([str(f)], []))
        return [ev for batch in engine.events() for ev in batch]


def raw_controls(text: str) -> list[str]:
    """The characters in ``text`` that would reach a terminal raw (none, when escaped)."""
    return RAW_CONTROL.findall(text)


if __name__ == "__main__":
    FIXTURE.write_bytes(capture(FIXTURE_NAMES))
    print(f"wrote {FIXTURE}")
