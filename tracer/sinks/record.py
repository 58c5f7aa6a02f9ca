"""Record every sighting to pcapng as it happens (``live --record FILE.pcapng``).

The recorder is an engine batch hook (``engine.batch_hooks.append(rec.on_batch)``):
it sees the raw ``ObsBatch``es before correlation, so a recording replays into
the very paths that were shown live.

What a recording looks like (CONTRACT.md, "Recordings"):

* one Interface Description Block per hop label, ``if_name`` = ``node/iface``
  (``host/docker0``, ``web/eth0``), ``if_description`` = ``netns=<inode>
  ifindex=<n>``, ``if_tsresol`` = 9 (nanoseconds), ``if_snaplen`` = the
  recorder's snaplen, link type = the hop's ``linktype``;
* one Enhanced Packet Block per sighting, its timestamp the sighting's
  ``ts_ns``, truncated to ``snaplen``, with
  - ``epb_flags`` (option 2): direction 1 inbound (rx), 2 outbound (tx),
    0 for drops and captures that did not say;
  - ``epb_packetid`` (option 5): a 64-bit NAT-invariant fingerprint of the
    packet (protocol, IP ID, TCP seq/ack/flags, ICMP type/code/seq, fragment,
    payload digest), equal at every hop of one packet — Wireshark users can
    filter ``frame.packet_id == N`` to follow one packet;
  - ``opt_comment`` (option 1): the hop metadata as one JSON object,
    ``{"v":1,"dir":"rx"|"tx"|"drop"|null,"skb":"0x.."|null,"hook":null,
    "netns":N,"drop_reason":NAME|null,"ts_ns":N}``.

Why blocks are written with numpy here instead of scapy's ``RawPcapNgWriter``:
that writer stores microsecond timestamps only (no ``if_tsresol``; hops are
7-20 µs apart), a fixed 262144 snaplen, no ``if_description``, no packet id,
and costs a few Python calls per packet, which DESIGN.md measured far below
live rates. pcapng is a simple, documented block format, so each batch is
encoded at once with numpy: pcapng blocks are 32-bit aligned, so a batch is a
matrix of 32-bit words, one EPB a row, whose only per-row variation is the
number of frame words (``matrix[mask]`` drops the unused ones). For that, the
values in a comment are right-aligned in slots as wide as the batch's widest
value (JSON allows the spaces: ``"dir":  "rx"``); ``skb`` is zero-padded hex.
That keeps recording a small fraction of the engine's cost (bench/record_bench.py).

Safety of what is on disk: the file is created 0600 (payloads are sniffed
traffic); each batch is one ``write`` of whole blocks, buffered at most
~200 ms or 1 MiB, so after a SIGKILL everything up to the last complete block
reads. When a write fails (disk full, I/O error) the file is cut back to the
last complete block, so what was written stays valid; then either one
``RecordingError`` is raised (``on_error="stop"``) or one notice is given and
recording stops while tracing goes on (``"continue"``).

Rotation (``max_mb``/``files``) names files like ``tcpdump -C/-W``: without
``files``: ``rec.pcapng``, ``rec.pcapng1``, ``rec.pcapng2``, ...; with ``files=K``
a ring ``rec.pcapng0`` .. ``rec.pcapng<K-1>`` (numbers zero-padded to K-1's
width), the oldest overwritten. A file is cut before it would exceed
``max_mb`` * 1,000,000 bytes (at least one packet per file).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from tracer.errors import EXIT_PROBLEM, HoptraceError
from tracer.model import HopLabel, ObsBatch
from tracer.safe_text import term_safe

if TYPE_CHECKING:
    import numpy as np

OnError = Literal["stop", "continue"]

BT_SHB = 0x0A0D0D0A
BT_IDB = 1
BT_EPB = 6
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
EPB_FLAGS = 2
EPB_PACKETID = 5
BYTE_ORDER_MAGIC = 0x1A2B3C4D

FLUSH_INTERVAL_S = 0.2
FLUSH_BYTES = 1 << 20
# Rows encoded at once: bounds the temporary byte matrix (~450 B a row).
CHUNK_ROWS = 16384
COMMENT_VERSION = 1


class RecordingError(HoptraceError):
    """The recording could not be written (disk full, unwritable path, I/O error)."""

    exit_code = EXIT_PROBLEM


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def shb_block(application: str = "hoptrace") -> bytes:
    """A Section Header Block, little-endian, section length unknown (-1): we write as we go."""
    opts = _option(4, application.encode()) + _option(OPT_ENDOFOPT, b"")  # 4 = shb_userappl
    return _block(BT_SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + opts)


def idb_block(label: HopLabel, snaplen: int) -> bytes:
    desc = f"netns={label.netns} ifindex={label.ifindex}"
    opts = (
        _option(IF_NAME, label.name.encode())
        + _option(IF_DESCRIPTION, desc.encode())
        + _option(IF_TSRESOL, bytes([9]))
        + _option(OPT_ENDOFOPT, b"")
    )
    return _block(BT_IDB, struct.pack("<HHI", label.linktype & 0xFFFF, 0, snaplen) + opts)


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


# --------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------


def rotated_name(path: str, index: int, files: int | None) -> str:
    """The name of file number ``index`` (0-based), like tcpdump ``-C``/``-W``."""
    if files is None:
        return path if index == 0 else f"{path}{index}"
    return f"{path}{index % files:0{len(str(files - 1))}d}"


class PcapngRecorder:
    """Writes every sighting of every batch to pcapng, as it goes.

    Use as an engine batch hook; ``close()`` (or ``with``) flushes and closes.
    ``notice`` receives the one message given when ``on_error="continue"``
    stops the recording (default: a line on stderr).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        snaplen: int = 128,
        max_mb: int | None = None,
        files: int | None = None,
        on_error: OnError = "stop",
        notice: Callable[[str], None] | None = None,
    ) -> None:
        if snaplen <= 0:
            raise HoptraceError(f"snaplen must be > 0, not {snaplen}")
        if files is not None and max_mb is None:
            raise HoptraceError("--record-files needs --record-max-mb (like tcpdump -W needs -C)")
        if on_error not in ("stop", "continue"):
            raise HoptraceError(f"on_error must be 'stop' or 'continue', not {on_error!r}")
        self.path = os.fspath(path)
        self.snaplen = snaplen
        self.max_bytes = max_mb * 1_000_000 if max_mb else None
        self.files = files
        self.on_error: OnError = on_error
        self._notice = notice or (lambda msg: print(f"hoptrace: {term_safe(msg)}", file=sys.stderr))
        self.packets = 0  # EPBs handed to the kernel (complete blocks), over all files
        self.bytes = 0
        self.error: str | None = None  # set once recording stopped on an error
        self.paths_written: list[str] = []
        self._fd: int | None = None
        self._index = 0
        self._file_bytes = 0  # complete blocks in the current file (written or buffered)
        self._file_packets = 0
        self._written = 0  # bytes of the current file handed to the kernel
        self._buf: list[tuple[bytes | memoryview, int]] = []  # (whole blocks, packets in them)
        self._buf_len = 0
        self._last_flush = time.monotonic()
        self._ifids: dict[HopLabel, int] = {}
        self._closed = False
        self._open(0)

    # -- files -------------------------------------------------------------

    def _open(self, index: int) -> None:
        name = rotated_name(self.path, index, self.files)
        try:
            # 0600 at creation: a recording holds sniffed traffic; O_TRUNC reuses a ring slot.
            # O_NOFOLLOW: running as root, a symlink planted at the path (e.g. in /tmp) must not
            # make us truncate the file it points to.
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except ValueError as exc:  # a NUL byte in the path (only possible through the Python API)
            raise HoptraceError(f"cannot create recording {name[:200]!r}: {exc}") from exc
        except OSError as exc:
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
            raise HoptraceError(
                f"cannot create recording {name[:200]!r}: {why}", "check the directory exists and is writable"
            ) from exc
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._index = index
        self._written = 0
        self._file_bytes = 0
        self._file_packets = 0
        self._ifids = {}
        if name not in self.paths_written:
            self.paths_written.append(name)
        self._queue(shb_block())

    def _queue(self, data: bytes | memoryview, packets: int = 0) -> None:
        self._buf.append((data, packets))
        self._buf_len += len(data)
        self._file_bytes += len(data)

    def _rotate(self) -> None:
        self._flush()
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        try:
            self._open(self._index + 1)
        except HoptraceError as exc:
            self._stopped(str(exc), exc)

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buf or self._fd is None:
            return
        chunks, self._buf = self._buf, []
        self._buf_len = 0
        for data, packets in chunks:
            # Each chunk is whole blocks; the file is valid after every chunk.
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                self._fail(exc)
                return
            self._written += len(data)
            self.bytes += len(data)
            self.packets += packets

    def _fail(self, exc: OSError) -> None:
        what = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        fd, self._fd = self._fd, None
        if fd is not None:
            # Cut the torn block off: everything before this chunk is whole blocks.
            with contextlib.suppress(OSError):  # a failing device; a reader then stops at the torn block
                os.ftruncate(fd, self._written)
            os.close(fd)
        name = rotated_name(self.path, self._index, self.files)
        self._stopped(f"recording to {name} stopped: {what} after {self.packets} packets", exc)

    def _stopped(self, message: str, cause: BaseException) -> None:
        self._buf.clear()
        self._buf_len = 0
        self.error = message
        if self.on_error == "stop":
            raise RecordingError(message, "free space or choose another --record path") from cause
        self._notice(message + "; tracing continues without recording")

    # -- the hook ----------------------------------------------------------

    def on_batch(self, batch: ObsBatch) -> None:
        if self._fd is None or self._closed:
            return
        n = len(batch.rows)
        for start in range(0, n, CHUNK_ROWS):
            self._write_rows(batch, start, min(n, start + CHUNK_ROWS))
            if self._fd is None:
                return
        if self._buf_len >= FLUSH_BYTES or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self._flush()

    def _ifid_table(self, batch: ObsBatch, hops: np.ndarray) -> np.ndarray:
        import numpy as np

        table = np.zeros(len(batch.hops), np.uint32)
        used = np.zeros(len(batch.hops), bool)
        used[hops.astype(np.intp)] = True  # O(n), where np.unique would sort
        for h in np.flatnonzero(used).tolist():
            label = batch.hops[h]
            ifid = self._ifids.get(label)
            if ifid is None:
                ifid = self._ifids[label] = len(self._ifids)
                self._queue(idb_block(label, self.snaplen))
            table[h] = ifid
        return table

    def _write_rows(self, batch: ObsBatch, start: int, stop: int) -> None:
        rows = batch.rows[start:stop]
        while len(rows):
            ifids = self._ifid_table(batch, rows["hop"])
            data, ends = encode_epbs(rows, batch.frames, ifids, self.snaplen, batch.drop_reasons)
            take = len(rows)
            if self.max_bytes is not None:
                room = self.max_bytes - self._file_bytes
                take = int((ends <= room).sum())
                if take == 0 and self._file_packets == 0:
                    take = 1  # a file always holds at least one packet
            if take:
                end = int(ends[take - 1])
                self._queue(data[:end] if take < len(rows) else data, take)
                self._file_packets += take
            if take < len(rows):
                self._rotate()
                if self._fd is None:
                    return
            rows = rows[take:]

    # -- end ---------------------------------------------------------------

    def flush(self) -> None:
        self._flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._flush()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> PcapngRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
