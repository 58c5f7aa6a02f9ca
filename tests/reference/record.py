"""The recorder's EPB encoder in Python (numpy), as tracer/sinks/record.py had it before the
core took it over (crates/hoptrace-core/src/pcapng_writer.rs): the oracle that
tests/unit/test_core_record.py and tests/record/test_encoder_equivalence.py hold the core to,
byte for byte."""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import functools
import json
import struct
from typing import TYPE_CHECKING, Any

from tracer.sinks.record import BT_EPB, COMMENT_VERSION, EPB_FLAGS, EPB_PACKETID, OPT_COMMENT, OPT_ENDOFOPT

if TYPE_CHECKING:
    import numpy as np


# --------------------------------------------------------------------------
# Vectorised EPB encoding
# --------------------------------------------------------------------------

# Index = Dir value. JSON values are right-aligned in a slot as wide as the
# batch's widest (JSON allows the spaces): every comment of a batch then has
# the same length, every EPB the same layout apart from its frame bytes.
_DIR_JSON = [b"null", b'"rx"', b'"tx"', b'"drop"']
_DIR_FLAGS = [0, 1, 2, 0]  # epb_flags direction: 1 inbound, 2 outbound; a drop is neither
_DIR_W = max(len(v) for v in _DIR_JSON)  # the dir slot is as wide as the widest of all four
_FP_SEED = 0x9E3779B97F4A7C15
# Hashed into epb_packetid in this order; family and proto come first so that
# their two rounds are one table lookup (_luts).
_FP_FIELDS = ("family", "proto", "ip_id", "tcp_seq", "tcp_ack", "tcp_flags",
              "icmp_type", "icmp_code", "icmp_seq", "frag", "digest")  # fmt: skip
# A batch's distinct (hop, dir, drop reason, netns) are found with a flag
# table this large at most; beyond it (inodes far apart, odd reason codes) by sorting.
_KEY_TABLE_MAX = 1 << 20


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


def _mix64(h: np.ndarray, tmp: np.ndarray) -> None:
    """splitmix64's finaliser, in place (every input bit reaches every output bit)."""
    import numpy as np

    np.right_shift(h, np.uint64(30), out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    np.multiply(h, np.uint64(0xBF58476D1CE4E5B9), out=h)
    np.right_shift(h, np.uint64(27), out=tmp)
    np.bitwise_xor(h, tmp, out=h)
    np.multiply(h, np.uint64(0x94D049BB133111EB), out=h)
    np.right_shift(h, np.uint64(31), out=tmp)
    np.bitwise_xor(h, tmp, out=h)


@functools.cache
def _luts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables: four hex digits per 0..0xffff, four decimal digits per 0..9999, and the
    packet id's state after its first two rounds (family, proto) for every pair."""
    import numpy as np

    hex2 = np.frombuffer(b"".join(b"%02x" % v for v in range(256)), "<u2").astype(np.uint32)
    v = np.arange(1 << 16)
    hex4 = hex2[v >> 8] | (hex2[v & 0xFF] << 16)  # little-endian: the high byte's digits first
    dec4 = np.frombuffer(b"".join(b"%04d" % v for v in range(10000)), "<u4")
    pair = np.arange(1 << 16, dtype=np.uint64)
    h = np.full(1 << 16, _FP_SEED, np.uint64)
    tmp = np.empty_like(h)
    for part in (pair >> np.uint64(8), pair & np.uint64(0xFF)):
        np.bitwise_xor(h, part, out=h)
        _mix64(h, tmp)
    return hex4, dec4, h


def packet_ids(rows: np.ndarray) -> np.ndarray:
    """The NAT-invariant fingerprint written as ``epb_packetid``: equal at every hop of a packet.

    Only fields NAT and routing leave alone (not addresses, ports, ICMP id, TTL):
    h = seed, then h = mix64(h ^ field) for each of ``_FP_FIELDS`` in order.
    """
    import numpy as np

    _, _, fp2 = _luts()
    pair = rows["family"].astype(np.intp) << 8
    pair |= rows["proto"]
    h = fp2[pair]
    tmp = np.empty_like(h)
    for name in _FP_FIELDS[2:]:
        np.bitwise_xor(h, rows[name], out=h, casting="unsafe")
        _mix64(h, tmp)
    return h


def _cells(mat8: np.ndarray, byte_off: int, dtype: str) -> np.ndarray:
    """One ``dtype`` value per row of a byte matrix at ``byte_off`` (unaligned is fine)."""
    import numpy as np

    return np.ndarray((mat8.shape[0],), dtype, mat8, byte_off, (mat8.strides[0],))


def _caplen(rows: np.ndarray, frames: Any, snaplen: int) -> np.ndarray:
    """Bytes of each row's frame that are recorded: its length, cut to snaplen and to the buffer."""
    import numpy as np

    # A source that points past its own buffer gets what is there, never a crash.
    avail = np.clip(len(frames) - rows["frame_off"].astype(np.int64), 0, None)
    return np.minimum(np.minimum(rows["frame_len"].astype(np.int64), avail), snaplen)


def _frames_into(dst: np.ndarray, rows: np.ndarray, frames: Any, caplen: np.ndarray) -> None:
    """Each row's frame into ``dst`` (n, words) as little-endian words, zero past caplen.

    Words past a row's own caplen are left holding anything (the caller drops them).
    """
    import numpy as np

    n, nwords = dst.shape
    if nwords == 0:
        return
    size = len(frames)
    off = rows["frame_off"].astype(np.int64)
    cmin, cmax = int(caplen.min()), int(caplen.max())
    fb = np.frombuffer(frames, np.uint8)
    off0 = int(off[0])
    stride = int(off[1] - off[0]) if n > 1 else 0
    if cmin > 0 and stride >= 0 and (n == 1 or (np.diff(off) == stride).all()):
        # Frames at a fixed stride (the eBPF source's event records, equal-size
        # frames packed back to back): copied from a strided view, no gather.
        fit = n
        if off0 + stride * (n - 1) + 4 * nwords > size:  # the last words run past the buffer
            fit = min(n, max(0, (size - 4 * nwords - off0) // stride + 1)) if stride else 0
        if fit:
            dst[:fit] = np.ndarray((fit, nwords), "<u4", fb, off0, (stride, 4))
        if fit < n:
            start = off0 + stride * fit
            tail = np.zeros(stride * (n - fit - 1) + 4 * nwords, np.uint8)
            have = fb[start : start + len(tail)]
            tail[: len(have)] = have
            dst[fit:] = np.ndarray((n - fit, nwords), "<u4", tail, 0, (stride, 4))
    else:
        # Frames start at any byte: a view that reads a little-endian word at every
        # byte offset (stride 1) lets a word gather, not a byte gather, fetch them.
        padded = np.zeros(size + 4 * nwords + 4, np.uint8)
        padded[:size] = fb
        at_byte = np.ndarray((size + 4 * nwords,), "<u4", padded, 0, (1,))
        off = np.where(caplen > 0, off, 0)
        dst[:] = at_byte[off[:, None] + 4 * np.arange(nwords)[None, :]]
    # Bytes past caplen in its last word are the next frame's: zero them.
    if cmin == cmax:
        if cmax & 3:
            dst[:, nwords - 1] &= np.uint32((1 << (8 * (cmax & 3))) - 1)
    else:
        rem = caplen & 3
        part = np.flatnonzero(rem)
        if len(part):
            keep = ((np.uint64(1) << (rem[part].astype(np.uint64) * np.uint64(8))) - np.uint64(1)).astype("<u4")
            dst[part, caplen[part] >> 2] &= keep


def _row_kinds(rows: np.ndarray, nhops: int, ns_lo: int, ns_span: int, dr_max: int) -> tuple[np.ndarray, list[int]]:
    """Each row's index into the batch's distinct (hop, dir, drop_reason, netns - ns_lo),
    and those distinct keys (mixed radix: ((hop * 4 + dir) * (dr_max + 1) + reason) * (ns_span + 1) + ns)."""
    import numpy as np

    size = nhops * 4 * (dr_max + 1) * (ns_span + 1)
    if size <= _KEY_TABLE_MAX:
        key = rows["hop"].astype(np.int64)
        key *= 4
        key += np.minimum(rows["dir"], 3)
        key *= dr_max + 1
        key += rows["drop_reason"]
        key *= ns_span + 1
        key += (rows["netns"] - np.uint64(ns_lo)).astype(np.int64)
        seen = np.zeros(size, bool)
        seen[key] = True
        present = np.flatnonzero(seen)
        if len(present) == 1:
            return np.zeros(len(rows), np.intp), present.tolist()
        lut = np.empty(size, np.intp)
        lut[present] = np.arange(len(present))
        return lut[key], present.tolist()
    # Rare (netns values far apart, or large reason codes): a sort.
    import numpy.lib.recfunctions as rfn

    cols = rfn.repack_fields(rows[["hop", "dir", "drop_reason", "netns"]])
    uniq, inv = np.unique(cols, return_inverse=True)
    kinds = [((int(h) * 4 + min(int(d), 3)) * (dr_max + 1) + int(r)) * (ns_span + 1) + int(ns) - ns_lo
             for h, d, r, ns in uniq.tolist()]  # fmt: skip
    # Rows differing only in dir > 3 share a kind; that is fine, they encode alike.
    return inv.reshape(-1), kinds


def encode_epbs(
    rows: np.ndarray,
    frames: Any,
    ifids: np.ndarray,
    snaplen: int,
    drop_reasons: dict[int, str],
) -> tuple[memoryview, np.ndarray]:
    """EPBs for ``rows`` (one per row, in row order) and the byte offset where each ends.

    ``ifids[hop]`` is the interface id of each hop label in the file being written.

    A batch is a matrix of 32-bit words, one EPB a row, whose only per-row
    variation in length is the number of frame words (``matrix[mask]`` drops the
    unused ones). Everything a row's (hop, dir, drop reason, netns) decides —
    constant words, interface id, flags, the comment's text around skb and
    ts_ns — is rendered once per distinct combination in Python and copied
    to the rows in one gather; then only the per-row values are written:
    timestamps, lengths, frame words, skb hex, ts_ns digits and packet id.
    """
    import numpy as np

    n = len(rows)
    if n == 0:
        return memoryview(b""), np.zeros(0, np.int64)
    hex4, dec4, _ = _luts()
    ts = np.ascontiguousarray(rows["ts_ns"], np.uint64)
    skb = np.ascontiguousarray(rows["skb"], np.uint64)
    netns = rows["netns"]
    ns_lo, ns_hi = int(netns.min()), int(netns.max())
    dr_max = int(rows["drop_reason"].max())
    t_min, t_max = int(ts.min()), int(ts.max())

    # Slot widths of this batch's comments.
    skb_w = max(1, (int(skb.max()).bit_length() + 3) // 4)
    ns_w = len(str(ns_hi))
    ts_w = len(str(t_max))
    idx, kinds = _row_kinds(rows, len(ifids), ns_lo, ns_hi - ns_lo, dr_max)
    reason_json: dict[int, bytes] = {}
    for k in kinds:
        code = k // (ns_hi - ns_lo + 1) % (dr_max + 1)
        if code not in reason_json:
            reason_json[code] = (b"null" if code == 0
                                 else json.dumps(drop_reasons.get(code, f"UNKNOWN({code})")).encode())  # fmt: skip
    dr_w = max(len(v) for v in reason_json.values())
    head = b'{"v":%d,"dir":' % COMMENT_VERSION
    skb_at = len(head) + _DIR_W + len(b',"skb":')  # comment offset of the skb slot
    tail_len = len(b',"hook":null,"netns":') + ns_w + len(b',"drop_reason":') + dr_w + len(b',"ts_ns":')
    ts_at = skb_at + skb_w + 4 + tail_len
    clen = ts_at + ts_w + 1
    cw = -(-clen // 4)

    # Row layout in words:
    # [7 header][dw frame words][comment opt: 1 + cw][flags: 2][packet id: 3][end: 1][total: 1]
    caplen = _caplen(rows, frames, snaplen)
    row_words = -(-caplen // 4)
    dw = int(row_words.max())
    c = 7 + dw
    ncols = c + 1 + cw + 2 + 3 + 1 + 1

    # What is the same in every row goes into the templates: the seconds of ts_ns when the
    # batch is within one second, the block length when every frame has as many words.
    ts_fast = ts_w >= 10 and t_min >= 10 ** (ts_w - 1)  # every ts_ns has ts_w digits
    one_second = ts_fast and t_min // 1_000_000_000 == t_max // 1_000_000_000
    ts_text = b"%d" % (t_min // 1_000_000_000) + b" " * 9 if one_second else b" " * ts_w
    same_len = int(row_words.min()) == dw
    total = 4 * (ncols - dw + row_words)
    total0 = int(total[0]) if same_len else 0
    templates = []
    for k in kinds:
        k, ns = divmod(k, ns_hi - ns_lo + 1)
        k, code = divmod(k, dr_max + 1)
        hop, d = divmod(k, 4)
        comment = b"".join((
            head, _DIR_JSON[d].rjust(_DIR_W), b',"skb":"0x', b"0" * skb_w, b'"',
            b',"hook":null,"netns":', str(ns + ns_lo).encode().rjust(ns_w),
            b',"drop_reason":', reason_json[code].rjust(dr_w), b',"ts_ns":', ts_text, b"}",
        ))  # fmt: skip
        templates.append(b"".join((
            struct.pack("<7I", BT_EPB, total0, int(ifids[hop]), 0, 0, 0, 0), bytes(4 * dw),
            struct.pack("<I", OPT_COMMENT | (clen << 16)), comment.ljust(4 * cw, b"\0"),
            struct.pack("<7I", EPB_FLAGS | (4 << 16), _DIR_FLAGS[d], EPB_PACKETID | (8 << 16), 0, 0, OPT_ENDOFOPT,
                        total0),
        )))  # fmt: skip
    table = np.frombuffer(b"".join(templates), np.uint8).reshape(len(kinds), 4 * ncols)
    mat8 = table[idx]
    mat = mat8.view("<u4")

    _frames_into(mat[:, 7 : 7 + dw], rows, frames, caplen)
    wire = rows["wire_len"].astype(np.int64)
    if not same_len:
        mat[:, 1] = total
        mat[:, -1] = total
    tsw = ts.view("<u4").reshape(n, 2)
    mat[:, 3] = tsw[:, 1]
    mat[:, 4] = tsw[:, 0]
    mat[:, 5] = caplen
    mat[:, 6] = np.maximum(np.where(wire > 0, wire, rows["frame_len"]), caplen)
    _cells(mat8, 4 * (c + 1 + cw + 3), "<u8")[:] = packet_ids(rows)

    # skb: "0x" + hex digits, or a right-aligned null.
    at = 4 * (c + 1) + skb_at
    digits = hex4.take(skb.view("<u2").reshape(n, 4)[:, ::-1].astype(np.intp)).view(np.uint8)
    mat8[:, at + 3 : at + 3 + skb_w] = digits[:, 16 - skb_w :]
    none = np.flatnonzero(skb == 0)
    if len(none):
        mat8[none, at : at + skb_w + 4] = np.frombuffer(b"null".rjust(skb_w + 4), np.uint8)

    # ts_ns in decimal: when every value has the same number of digits (>= 10),
    # 9 low digits from a 4-digit table, the rest (seconds) formatted per distinct value.
    at = 4 * (c + 1) + ts_at
    if ts_fast:
        sec, sub = np.divmod(ts, np.uint64(1_000_000_000))
        top, low8 = np.divmod(sub.astype(np.uint32), np.uint32(100_000_000))
        hi4, lo4 = np.divmod(low8, np.uint32(10_000))
        s_lo, s_hi = t_min // 1_000_000_000, t_max // 1_000_000_000
        sw = ts_w - 9
        if one_second:
            pass  # in the templates
        elif s_hi - s_lo < 64:
            secs = np.frombuffer(b"".join(b"%d" % s for s in range(s_lo, s_hi + 1)), np.uint8).reshape(-1, sw)
            mat8[:, at : at + sw] = secs[(sec - np.uint64(s_lo)).astype(np.intp)]
        else:
            mat8[:, at : at + sw] = _decimal(sec)
        top += ord("0")
        mat8[:, at + sw] = top
        _cells(mat8, at + sw + 1, "<u4")[:] = dec4[hi4]
        _cells(mat8, at + sw + 5, "<u4")[:] = dec4[lo4]
    else:
        mat8[:, at : at + ts_w] = _decimal(ts)

    if same_len:
        out = mat.reshape(-1)
    else:
        # Only frame words vary per row; drop each row's unused ones.
        mask = np.ones((n, ncols), bool)
        mask[:, 7 : 7 + dw] = np.arange(dw)[None, :] < row_words[:, None]
        out = mat[mask]
    return out.data.cast("B"), np.cumsum(total)

