"""Record every sighting to pcapng as it happens (``live --record FILE.pcapng``).

The recorder is an engine batch hook (``engine.batch_hooks.append(rec.on_batch)``):
it sees the raw ``ObsBatch``es before correlation, so a recording replays into
the very paths that were shown live. With the eBPF backend the core feeds the ring's
batches itself (no rows for Python): there the engine hands the recorder to the core at a
step boundary (``ring_recorder``, tracer/engine.py ``RecordsRing``), which makes the same
IDBs and EPBs as ``on_batch`` would for the same batches (crates/hoptrace-core/src/record_step.rs),
taken here once a step (``ring_take``) and written, rotated and flushed as below.

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

What the lookups of who took a packet found (``"local"``, tracer/annotate/local.py) goes in as
it comes, so ``hoptrace replay`` shows what live showed: one Custom Block (type 0x00000BAD,
copiable) per answer, its Private Enterprise Number 0 (hoptrace has none: readers match the
magic), then ``b"hoptrace"``, kind (u16 LE: 1 = local; 2 is kept for ``relay``), version
(u16 LE, 1), and three length-prefixed (u32 LE) fields: the core's miss record (the key: the
namespace and the 5-tuple as the packet arrived, crates/hoptrace-core/src/local.rs), the
``"local"`` object's JSON fields, their text. Wireshark and tshark skip blocks they do not
know (Wireshark lists each as a record of its own, "PCAPNG Custom Block"); the core reads them back as untrusted input (``local::parse_block``). A rotated file
starts with every answer so far (at most ``MAX_LOCAL_BLOCKS``).

Why blocks are not written with scapy's ``RawPcapNgWriter``: that writer stores
microsecond timestamps only (no ``if_tsresol``; hops are 7-20 µs apart), a fixed 262144
snaplen, no ``if_description``, no packet id, and costs a few Python calls per packet.
Each batch's EPBs are rendered by the core in one call (``encode_epbs`` below,
crates/hoptrace-core/src/pcapng_writer.rs; the Python encoder it replaced is the
oracle in tests/reference/record.py). The values in a comment are right-aligned in
slots as wide as the batch's widest value (JSON allows the spaces: ``"dir":  "rx"``);
``skb`` is zero-padded hex. Recording is a small fraction of the engine's cost
(bench/record_bench.py).

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
import os
import stat
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

BT_CUSTOM_COPY = 0x00000BAD  # copiable (0x40000BAD: not)
#: hoptrace has no IANA Private Enterprise Number: 0, and the magic after it says whose.
CUSTOM_PEN = 0
CUSTOM_MAGIC = b"hoptrace"
KIND_LOCAL = 1
KIND_RELAY = 2  # a relayed connection (tracer/annotate/relay.py relay_block_fields)
KIND_RAW_SOCKETS = 3  # raw ICMP socket spans (crates/hoptrace-core/src/raw_block.rs)
MAX_LOCAL_BLOCKS = 100_000

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

def custom_block(kind: int, fields: tuple[bytes, ...]) -> bytes:
    """A hoptrace Custom Block: PEN, magic, kind, version 1, length-prefixed fields."""
    body = struct.pack("<I", CUSTOM_PEN) + CUSTOM_MAGIC + struct.pack("<HH", kind, 1)
    body += b"".join(struct.pack("<I", len(f)) + f for f in fields)
    return _block(BT_CUSTOM_COPY, _pad4(body))


def local_block(record: bytes, json_fields: bytes, text: bytes) -> bytes:
    """Who took the packets of one key (see the module documentation)."""
    return custom_block(KIND_LOCAL, (record, json_fields, text))


def raw_sockets_block(spans: list[tuple[int, int, int]]) -> bytes:
    """Where and when raw ICMP sockets were open: every ``(netns, from_ns, to_ns)`` span so far
    (tracer/annotate/raw_sockets.py), as u64 LE triples in one field. A later block supersedes
    an earlier one's span of the same ``(netns, from_ns)``."""
    return custom_block(KIND_RAW_SOCKETS, (b"".join(struct.pack("<QQQ", *s) for s in spans),))

# --------------------------------------------------------------------------
# EPB encoding (the core: crates/hoptrace-core/src/pcapng_writer.rs)
# --------------------------------------------------------------------------


def encode_epbs(
    rows: np.ndarray,
    frames: Any,
    ifids: np.ndarray,
    snaplen: int,
    drop_reasons: dict[int, str],
) -> tuple[memoryview, np.ndarray]:
    """EPBs for ``rows`` (one per row, in row order) and the byte offset where each ends.

    ``ifids[hop]`` is the interface id of each hop label in the file being written.
    Rendered by the core in one call (the GIL released); byte for byte what the Python
    encoder wrote (tests/reference/record.py, tests/unit/test_core_record.py).
    """
    import numpy as np

    from tracer import _core

    data, ends = _core.encode_epbs(
        rows,
        np.frombuffer(frames, np.uint8),
        np.ascontiguousarray(ifids, np.uint32),
        snaplen,
        drop_reasons,
    )
    return memoryview(data), ends



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
        self._locals: list[bytes] = []  # every local block so far, for each rotated file
        self._raw_block: bytes | None = None  # the latest raw socket spans, for each rotated file
        self._header_len = len(shb_block())  # what a new file starts with (SHB, locals, raw spans)
        self._closed = False
        # The core's part when it records the eBPF ring's steps itself (``ring_recorder``): the
        # labels its rows point to, the first index of each label, and (file index, interface
        # ids) as last told.
        self._ring: Any = None
        self._ring_labels: list[HopLabel] = []
        self._ring_keys: dict[HopLabel, int] = {}
        self._ring_told: tuple[int, int] | None = None
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
            # an existing file keeps its mode through O_CREAT; a FIFO or a device (a pipe to
            # Wireshark, /dev/full) is not ours to change
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fchmod(fd, 0o600)
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
        for block in self._locals:
            self._queue(block)
        if self._raw_block is not None:
            self._queue(self._raw_block)

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

    def on_relays(self, pairs: list[tuple[Any, ...]]) -> None:
        """Relayed connections linked live (tracer/engine.py ``RecordsRelays``), as
        ``Stream.add_relays`` takes them: one Custom Block each (kind 2: both legs, who relayed,
        each leg's text and JSON fields; crates/hoptrace-core/src/relay.rs ``parse_block``)."""
        from tracer.annotate.relay import relay_block_fields

        if self._fd is None or self._closed:
            return
        for pair in pairs:
            block = custom_block(KIND_RELAY, relay_block_fields(pair))
            if len(self._locals) < MAX_LOCAL_BLOCKS:
                self._locals.append(block)
                self._header_len += len(block)
            self._queue(block)

    def on_raw_sockets(self, spans: list[tuple[int, int, int]]) -> None:
        """The raw ICMP socket spans changed (tracer/engine.py ``RecordsRawSockets``): one Custom
        Block (kind 3) with every span, so a replay judges a NO_SOCKET free of ICMP as live did
        (crates/hoptrace-core/src/raw_block.rs ``parse_block``)."""
        if self._fd is None or self._closed:
            return
        self._header_len -= len(self._raw_block or b"")
        self._raw_block = raw_sockets_block(spans)
        self._header_len += len(self._raw_block)
        self._queue(self._raw_block)

    def on_local(self, answers: list[tuple[bytes, bytes, bytes]]) -> None:
        """What the lookups found (tracer/engine.py ``RecordsLocal``): ``(record, json, text)`` each."""
        if self._fd is None or self._closed:
            return
        for record, json_fields, text in answers:
            block = local_block(record, json_fields, text)
            if len(self._locals) < MAX_LOCAL_BLOCKS:
                self._locals.append(block)
                self._header_len += len(block)
            self._queue(block)

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

    # -- the eBPF ring's steps, recorded by the core (tracer/engine.py RecordsRing) ----

    @property
    def ring_active(self) -> bool:
        """Still recording (no error stopped it, not closed)."""
        return self._fd is not None and not self._closed

    def ring_recorder(self, reasons: dict[int, str]) -> Any:
        """A ``tracer._core.RingRecorder`` for this recording (``Stream.set_recorder``): the core
        makes the IDBs and EPBs of each step's sightings as ``on_batch`` would for the same
        batches (crates/hoptrace-core/src/record_step.rs); ``ring_take`` queues them here.
        ``reasons``: the drop reason names the rows' codes have."""
        from tracer import _core  # type: ignore[attr-defined]  # the compiled core, no stub

        self._ring = _core.RingRecorder(self.snaplen, self.max_bytes, reasons)
        self._ring_labels, self._ring_keys, self._ring_told = [], {}, None
        return self._ring

    def ring_learn(self, labels: list[HopLabel]) -> None:
        """The labels the ring's rows point to (the source's one table, append-only): each one
        not told yet, with the first index of an equal label (one interface for both)."""
        self._ring_labels = labels
        ring = self._ring
        for k in range(ring.hops, len(labels)):
            label = labels[k]
            ring.add_hop(self._ring_keys.setdefault(label, k), idb_block(label, self.snaplen))

    def ring_sync(self, labels: list[HopLabel]) -> None:
        """Before a step: the labels, what the file holds (blocks queued here meanwhile) and,
        when rows recorded here or a rotation changed them, the file's interface ids."""
        import numpy as np

        self.ring_learn(labels)
        ring = self._ring
        ring.set_file(self._file_bytes, self._file_packets, self._header_len)
        told = (self._index, len(self._ifids))
        if told != self._ring_told:
            ifids = np.full(len(labels), ring.NO_IFID, np.uint32)
            for k, label in enumerate(labels):
                ifid = self._ifids.get(label)
                if ifid is not None:
                    ifids[k] = ifid
            ring.set_ifids(ifids, len(self._ifids))
            self._ring_told = told

    def ring_take(self) -> None:
        """After a step: the blocks the core made, queued (whole blocks per segment), the file
        rotated where the core found it full; then flushed as ``on_batch`` does."""
        data, segments, new_hops = self._ring.take()
        if self._fd is None or self._closed or not len(segments):
            return
        labels = self._ring_labels
        new = new_hops.tolist()
        view = memoryview(data)
        at = h = 0
        for end, packets, hops_end, rotate in segments.reshape(-1, 4).tolist():
            for k in new[h:hops_end]:
                self._ifids[labels[k]] = len(self._ifids)  # as the core numbered them
            h = hops_end
            if end > at:
                self._queue(view[at:end], packets)
            self._file_packets += packets
            at = end
            if rotate:
                self._rotate()
                if self._fd is None:
                    return
        self._ring_told = (self._index, len(self._ifids))
        if self._buf_len >= FLUSH_BYTES or time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self._flush()

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
