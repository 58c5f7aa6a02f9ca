"""The EPB encoder as it was before the template rewrite (commit 73d3a67), kept verbatim as the
reference that tracer.sinks.record's encoder must match byte for byte (test_encoder_equivalence.py)."""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import json
from typing import Any

import numpy as np

from tracer.sinks.record import BT_EPB, COMMENT_VERSION, EPB_FLAGS, EPB_PACKETID, OPT_COMMENT, OPT_ENDOFOPT


# Index = Dir value. JSON values are right-aligned in a slot as wide as the
# batch's widest (JSON allows the spaces): every comment of a batch then has
# the same length, every EPB the same layout apart from its frame bytes, and
# a batch is laid out as 32-bit words with no per-byte work.
_DIR_JSON = [b"null", b'"rx"', b'"tx"', b'"drop"']
_DIR_FLAGS = [0, 1, 2, 0]  # epb_flags direction: 1 inbound, 2 outbound; a drop is neither


def _right_aligned(values: list[bytes], codes: np.ndarray) -> np.ndarray:
    """Row i = values[codes[i]], right-aligned with spaces, as an (n, width) byte matrix."""
    import numpy as np

    width = max(1, *(len(v) for v in values))
    table = np.full((len(values), width), ord(" "), np.uint8)
    for i, v in enumerate(values):
        if v:
            table[i, width - len(v) :] = np.frombuffer(v, np.uint8)
    return table[codes]


def _decimal(x: np.ndarray) -> np.ndarray:
    """Unsigned ints in decimal, right-aligned with spaces, as many columns as the largest needs."""
    import numpy as np

    x = x.astype(np.uint64)
    width = len(str(int(x.max(initial=0))))
    out = np.empty((len(x), width), np.uint8)
    # 64-bit division is the slow part: split into 9-digit limbs once, then
    # take digits with 32-bit arithmetic.
    col = width
    rest = x
    billion = np.uint64(1_000_000_000)
    ten = np.uint32(10)
    while col > 0:
        limb = (rest % billion).astype(np.uint32)
        rest = rest // billion
        for _ in range(min(9, col)):
            q = limb // ten
            col -= 1
            out[:, col] = (limb - q * ten).astype(np.uint8)
            limb = q
    ndig = np.ones(len(x), np.int64)
    for k in range(1, width):
        ndig += x >= np.uint64(10**k)
    out += ord("0")
    out[np.arange(width)[None, :] < (width - ndig)[:, None]] = ord(" ")
    return out


def _hex(x: np.ndarray, width: int) -> np.ndarray:
    """Unsigned ints as ``width`` lower-case hex digits, zero-padded."""
    import numpy as np

    lut = np.frombuffer(b"0123456789abcdef", np.uint8)
    shifts = np.arange(4 * (width - 1), -1, -4, dtype=np.uint64)
    return lut[((x.astype(np.uint64)[:, None] >> shifts[None, :]) & np.uint64(15)).astype(np.intp)]


def _decimal_near(x: np.ndarray) -> np.ndarray:
    """``_decimal`` for values in a narrow range (namespace inodes): each formatted once."""
    import numpy as np

    if not len(x):
        return _decimal(x)
    lo = int(x.min())
    span = int(x.max()) - lo
    if span < 4096:
        table = _decimal(np.arange(lo, lo + span + 1, dtype=np.uint64))
        return table[(x - np.uint64(lo)).astype(np.intp)]
    return _decimal(x)


def _mix64(h: np.ndarray) -> np.ndarray:
    import numpy as np

    # splitmix64's finaliser: every input bit reaches every output bit.
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def packet_ids(rows: np.ndarray) -> np.ndarray:
    """The NAT-invariant fingerprint written as ``epb_packetid``: equal at every hop of a packet.

    Only fields NAT and routing leave alone (not addresses, ports, ICMP id, TTL).
    """
    import numpy as np

    with np.errstate(over="ignore"):
        h = np.full(len(rows), 0x9E3779B97F4A7C15, np.uint64)
        for name in ("family", "proto", "ip_id", "tcp_seq", "tcp_ack", "tcp_flags",
                     "icmp_type", "icmp_code", "icmp_seq", "frag", "digest"):  # fmt: skip
            h = _mix64(h ^ rows[name].astype(np.uint64))
    return h


def comments(rows: np.ndarray, drop_reasons: dict[int, str]) -> np.ndarray:
    """The hop-metadata JSON of every row, as an (n, width) byte matrix (one width per batch)."""
    import numpy as np

    n = len(rows)
    dirs = rows["dir"].astype(np.intp).clip(0, 3)
    skb = rows["skb"]
    skb_w = max(1, (int(skb.max(initial=0)).bit_length() + 3) // 4)
    skb_slot = np.full((n, skb_w + 4), ord(" "), np.uint8)
    skb_slot[:, :3] = np.frombuffer(b'"0x', np.uint8)
    skb_slot[:, 3:-1] = _hex(skb, skb_w)
    skb_slot[:, -1] = ord('"')
    none = skb == 0
    skb_slot[none] = ord(" ")
    skb_slot[np.ix_(none, np.arange(skb_w, skb_w + 4))] = np.frombuffer(b"null", np.uint8)
    codes, inv = np.unique(rows["drop_reason"], return_inverse=True)
    reasons = [b"null" if c == 0 else json.dumps(drop_reasons.get(c, f"UNKNOWN({c})")).encode()
               for c in codes.tolist()]  # fmt: skip
    parts: list[bytes | np.ndarray] = [
        b'{"v":%d,"dir":' % COMMENT_VERSION, _right_aligned(_DIR_JSON, dirs),
        b',"skb":', skb_slot,
        b',"hook":null,"netns":', _decimal_near(rows["netns"]),
        b',"drop_reason":', _right_aligned(reasons, inv.reshape(-1)),
        b',"ts_ns":', _decimal(rows["ts_ns"]),
        b"}",
    ]  # fmt: skip
    width = sum(len(p) if isinstance(p, bytes) else p.shape[1] for p in parts)
    out = np.empty((n, width), np.uint8)
    col = 0
    for p in parts:
        w = len(p) if isinstance(p, bytes) else p.shape[1]
        out[:, col : col + w] = np.frombuffer(p, np.uint8) if isinstance(p, bytes) else p
        col += w
    return out


def _frame_words(rows: np.ndarray, frames: Any, snaplen: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's frame (truncated to snaplen) as little-endian 32-bit words, zero-padded; and caplen."""
    import numpy as np

    n = len(rows)
    size = len(frames)
    off = rows["frame_off"].astype(np.int64)
    # A source that points past its own buffer gets what is there, never a crash.
    avail = np.clip(size - off, 0, None)
    caplen = np.minimum(np.minimum(rows["frame_len"].astype(np.int64), avail), snaplen)
    nwords = -(-int(caplen.max(initial=0)) // 4)
    if nwords == 0:
        return np.zeros((n, 0), "<u4"), caplen
    fb = np.frombuffer(frames, np.uint8)
    stride = int(off[1] - off[0]) if n > 1 else 0
    if (caplen > 0).all() and stride >= 0 and (n == 1 or (np.diff(off) == stride).all()):
        # Frames at a fixed stride (the eBPF source's event records, equal-size
        # frames packed back to back): a strided view, no gather at all.
        need = int(off[0]) + stride * (n - 1) + 4 * nwords
        if need > size:  # the last word of the last frame runs past the buffer
            fb = np.concatenate([fb, np.zeros(need - size, np.uint8)])
        words = np.ndarray((n, nwords), "<u4", fb, int(off[0]), (stride, 4)).copy()
    else:
        # Frames start at any byte: a view that reads a little-endian word at every
        # byte offset (stride 1) lets a word gather, not a byte gather, fetch them.
        padded = np.zeros(size + 4 * nwords + 4, np.uint8)
        padded[:size] = fb
        at_byte = np.ndarray((size + 4 * nwords,), "<u4", padded, 0, (1,))
        off = np.where(caplen > 0, off, 0)
        words = at_byte[off[:, None] + 4 * np.arange(nwords)[None, :]]
    # Bytes past caplen in its last word are the next frame's: zero them.
    rem = caplen & 3
    part = np.flatnonzero(rem)
    if len(part):
        keep = ((np.uint64(1) << (rem[part].astype(np.uint64) * np.uint64(8))) - np.uint64(1)).astype("<u4")
        words[part, caplen[part] >> 2] &= keep
    return words, caplen


def encode_epbs(
    rows: np.ndarray,
    frames: Any,
    ifids: np.ndarray,
    snaplen: int,
    drop_reasons: dict[int, str],
) -> tuple[memoryview, np.ndarray]:
    """EPBs for ``rows`` (one per row, in row order) and the byte offset where each ends.

    ``ifids[hop]`` is the interface id of each hop label in the file being written.
    """
    import numpy as np

    n = len(rows)
    if n == 0:
        return memoryview(b""), np.zeros(0, np.int64)
    data, caplen = _frame_words(rows, frames, snaplen)
    dw = data.shape[1]
    row_words = -(-caplen // 4)
    wire = rows["wire_len"].astype(np.int64)
    origlen = np.where(wire > 0, np.maximum(wire, caplen), np.maximum(rows["frame_len"].astype(np.int64), caplen))
    text = comments(rows, drop_reasons)
    clen = text.shape[1]
    cw = -(-clen // 4)
    ctext = np.zeros((n, cw * 4), np.uint8)
    ctext[:, :clen] = text
    # [7 header][frame words][comment opt: 1 + cw][flags: 2][packet id: 3][end: 1][total: 1]
    c = 7 + dw
    ncols = c + 1 + cw + 2 + 3 + 1 + 1
    total = 4 * (ncols - dw + row_words)
    ts = rows["ts_ns"].astype(np.uint64)
    pid = packet_ids(rows)
    mat = np.empty((n, ncols), "<u4")
    mat[:, 0] = BT_EPB
    mat[:, 1] = total
    mat[:, 2] = ifids[rows["hop"].astype(np.intp)]
    mat[:, 3] = ts >> np.uint64(32)
    mat[:, 4] = ts & np.uint64(0xFFFFFFFF)
    mat[:, 5] = caplen
    mat[:, 6] = origlen
    mat[:, 7:c] = data
    mat[:, c] = OPT_COMMENT | (clen << 16)
    mat[:, c + 1 : c + 1 + cw] = ctext.view("<u4")
    c += 1 + cw
    mat[:, c] = EPB_FLAGS | (4 << 16)
    mat[:, c + 1] = np.array(_DIR_FLAGS, np.uint32)[rows["dir"].astype(np.intp).clip(0, 3)]
    mat[:, c + 2] = EPB_PACKETID | (8 << 16)
    mat[:, c + 3] = pid & np.uint64(0xFFFFFFFF)
    mat[:, c + 4] = pid >> np.uint64(32)
    mat[:, c + 5] = OPT_ENDOFOPT
    mat[:, c + 6] = total
    if (row_words == dw).all():
        out = mat.reshape(-1)
    else:
        # Only frame words vary per row; drop each row's unused ones.
        mask = np.ones((n, ncols), bool)
        mask[:, 7 : 7 + dw] = np.arange(dw)[None, :] < row_words[:, None]
        out = mat[mask]
    return out.data.cast("B"), np.cumsum(total)

