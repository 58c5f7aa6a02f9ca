"""probes.bulk_decode must equal tracer.decode field for field, on fast-path and fallback frames."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.bulk_decode import decode_bulk
from tracer.decode import DECODED_FIELDS, decode_into
from tracer.model import obs_dtype

SNAP = 128
ETH4 = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
ETH6 = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
A, B = bytes([172, 17, 0, 2]), bytes([198, 51, 100, 8])
A6, B6 = bytes(15) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02"


def ip4(proto: int, l4: bytes, *, ip_id: int = 7, frag: int = 0, total: int | None = None, ihl: int = 5) -> bytes:
    opts = bytes((ihl - 5) * 4)
    tl = 4 * ihl + len(l4) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tl, ip_id, frag, 63, proto, 0, A, B) + opts + l4


def ip6(nxt: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60012345, len(l4), nxt, 64, A6, B6) + l4


def tcp(payload: bytes = b"hello world, this is tcp", flags: int = 0x18) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, 80, 1000, 2000, 0x50, flags, 512, 0, 0) + payload


def udp(payload: bytes = b"x" * 40) -> bytes:
    return struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload


def icmp(t: int = 8, payload: bytes = bytes(range(56))) -> bytes:
    return struct.pack("!BBHHH", t, 0, 0, 0x4242, 9) + payload


FRAMES: list[tuple[bytes, int]] = [
    (ETH4 + ip4(6, tcp()), 14),
    (ETH4 + ip4(6, tcp(b"")), 14),
    (ETH4 + ip4(6, tcp(b"z" * 300)), 14),  # truncated by snaplen
    (ETH4 + ip4(6, tcp(b"q" * 3000), total=0), 14),  # GSO: total length 0
    (ETH4 + ip4(17, udp()), 14),
    (ETH4 + ip4(17, udp(b"ab")), 14),
    (ETH4 + ip4(1, icmp()), 14),
    (ETH4 + ip4(1, icmp(0)), 14),
    (ETH4 + ip4(1, icmp(13, b"")), 14),
    (ETH4 + ip4(1, icmp(3, ip4(17, udp())[:28])), 14),  # ICMP error: fallback
    (ETH4 + ip4(17, udp(), frag=0x2000), 14),  # first fragment: fallback
    (ETH4 + ip4(17, udp(), frag=0x4000), 14),  # DF only: fast
    (ETH4 + ip4(6, tcp(), ihl=6), 14),  # options
    (ETH4 + ip4(47, b"\0" * 30), 14),  # GRE: fallback
    (ETH6 + ip6(6, tcp()), 14),
    (ETH6 + ip6(17, udp()), 14),
    (ETH6 + ip6(58, icmp(128)), 14),
    (ETH6 + ip6(58, icmp(1, ip6(17, udp())[:48])), 14),  # ICMPv6 error: fallback
    (ETH6 + ip6(0, b"\x11\x00" + bytes(6) + udp()), 14),  # hop-by-hop: fallback
    (b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x800, 6, 4, 1) + bytes(6) + A + bytes(6) + B,
     14),  # ARP: fallback
    (b"\x02" * 12 + b"\x81\x00\x00\x05\x08\x00" + ip4(17, udp()), 18),  # VLAN: fallback
    (ip4(17, udp()), 0),  # raw IP (no mac header): fallback
    (ETH4 + ip4(6, tcp())[:30], 14),  # truncated IP header
    (ETH4[:10], 14),  # garbage
]


def run_both(frames: list[tuple[bytes, int]]) -> tuple[np.ndarray, np.ndarray, int]:
    n = len(frames)
    mat = np.zeros((n, SNAP), dtype=np.uint8)
    cap = np.zeros(n, dtype=np.uint32)
    mac = np.zeros(n, dtype=np.uint16)
    for i, (fr, ml) in enumerate(frames):
        c = min(len(fr), SNAP)
        mat[i, :c] = np.frombuffer(fr[:c], dtype=np.uint8)
        cap[i], mac[i] = c, ml
    buf = mat.tobytes()
    offs = np.arange(n, dtype=np.uint64) * SNAP
    fast = np.zeros(n, dtype=obs_dtype())
    slow_count = decode_bulk(fast, mat, cap, mac, buf, offs)
    ref = np.zeros(n, dtype=obs_dtype())
    decode_into(ref, buf, offs.tolist(), cap.tolist(), [1 if m >= 14 else 101 for m in mac.tolist()])
    return fast, ref, slow_count


def as_dicts(rows: np.ndarray) -> list[dict[str, object]]:
    return [{f: (bytes(r[f]) if isinstance(r[f], bytes) else int(r[f])) for f in DECODED_FIELDS} for r in rows]


def test_equal_to_decode_into_on_every_kind() -> None:
    fast, ref, slow = run_both(FRAMES)
    assert as_dicts(fast) == as_dicts(ref)
    assert slow == 10  # the fallback rows listed above, and only those
    assert int(fast[0]["family"]) == 4 and int(fast[0]["digest"]) != 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FRAMES), st.binary(max_size=40), st.integers(0, 140)), min_size=1,
                max_size=20))
def test_equal_on_mutated_frames(items: list[tuple[tuple[bytes, int], bytes, int]]) -> None:
    """Garbage in any header byte and any truncation: still the same fields as the reference."""
    frames = []
    for (fr, ml), noise, cut in items:
        mutated = bytearray(fr)
        for j, b in enumerate(noise):
            mutated[(j * 7 + b) % len(mutated)] = b
        frames.append((bytes(mutated[: max(cut, 1)]), ml))
    fast, ref, _ = run_both(frames)
    assert as_dicts(fast) == as_dicts(ref)
