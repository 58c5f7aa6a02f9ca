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
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from tracer.errors import EXIT_PROBLEM, HoptraceError
from tracer.model import HopLabel, ObsBatch

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
        self._notice = notice or (lambda msg: print(f"hoptrace: {msg}", file=sys.stderr))
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
