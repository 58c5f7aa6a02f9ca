"""pcap / pcapng files -> ObsBatch, in timestamp order across files.

Reading and decoding run in the core (``tracer._core.FileReader``; Rust:
crates/hoptrace-core/src/{reader,pcap,pcapng,decode,files}.rs) with the GIL
released; this module hands it the inputs and turns its batches into
``ObsBatch``es. The Python implementation it replaced is the reference the
core is held to byte for byte (tests/reference/readers.py,
tests/unit/test_core_readers.py).

Files are read in chunks of ``CHUNK_BYTES`` with plain ``read()``: memory
stays bounded by the chunk size whatever the file size, and a FIFO or ``-``
(standard input) streams. A batch's frames are the read buffer its records
came from (one bytes object per buffer, shared by its batches).

Labels: a pcapng interface named ``node/iface`` is that hop; otherwise a
``--hop NODE/IFACE=FILE`` label, else the file name's stem as the node and
the interface's name (or ``if<N>``) as iface (``stdin`` for ``-``). Linux
cooked v2 frames carry the interface index, so a ``tcpdump -i any`` capture
yields one hop per index. Nodes without a real netns inode get small
synthetic ids (1, 2, ...) per node name, shared across files, so two
captures of one namespace are one namespace to the correlator.

In a pcapng that mixes link types, packets on interfaces of a link type
hoptrace does not decode are skipped; a file with nothing else is an
"unsupported link type" error.

hoptrace's own recordings carry a JSON comment per packet
(``{"v":1,"dir":..,"skb":..,"drop_reason":..,"ts_ns":..}``) that overrides
direction, skb, drop reason and gives the nanosecond timestamp.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tracer.errors import CaptureFileError
from tracer.model import HopLabel, ObsBatch, obs_dtype

BATCH_ROWS = 4096
CHUNK_BYTES = 1 << 20
# libpcap refuses records bigger than this (MAXIMUM_SNAPLEN); so does the core.
MAX_RECORD = 262144
MAX_BLOCK = 16 << 20
STDIN = "-"

LINKTYPE_NAMES = {
    0: "NULL", 1: "ETHERNET", 9: "PPP", 12: "RAW", 14: "RAW", 101: "RAW", 104: "C_HDLC",
    105: "IEEE802_11", 107: "FRELAY", 108: "LOOP", 113: "LINUX_SLL", 127: "IEEE802_11_RADIOTAP",
    143: "DOCSIS", 192: "PPI", 195: "IEEE802_15_4", 228: "IPV4", 229: "IPV6",
    276: "LINUX_SLL2",
}  # fmt: skip


def linktype_name(lt: int) -> str:
    return f"{lt} ({LINKTYPE_NAMES[lt]})" if lt in LINKTYPE_NAMES else str(lt)


def parse_hop_arg(text: str) -> tuple[str, str]:
    """``NODE/IFACE=FILE`` -> ("NODE/IFACE", FILE); a malformed argument is a UsageError."""
    from tracer.errors import UsageError

    label, sep, path = text.partition("=")
    node, slash, iface = label.partition("/")
    if not sep or not path or not slash or not node or not iface:
        raise UsageError(f"--hop {text!r}: expected NODE/IFACE=FILE")
    return label, path


def _wire(text: str) -> bytes:
    """Text as the core takes it: UTF-8 that keeps lone surrogates (surrogateescape'd names)."""
    return text.encode("utf-8", "surrogatepass")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _stem(path: str) -> str:
    if path == STDIN:
        return "stdin"
    return Path(path).stem or "capture"


class FileSource:
    """A Source (kind "file") over pcap/pcapng files; see the module doc."""

    kind = "file"

    def __init__(self, files: Sequence[str], hops: Sequence[tuple[str, str]] = ()) -> None:
        self._inputs: list[tuple[str, tuple[str, str] | None]] = [(f, None) for f in files]
        for label, path in hops:
            node, _, iface = label.partition("/")
            self._inputs.append((path, (node, iface or "if0")))
        self.hops: list[HopLabel] = []
        self.drop_reasons: dict[int, str] = {}
        self._stopped = False
        self.packets = 0
        self._reader: Any = None  # the core's FileReader, once batches() started
        self._sizes: int | None = None

    # -- Source protocol ----------------------------------------------------
    def start(self) -> None:
        if not self._inputs:
            from tracer.errors import UsageError

            raise UsageError("no capture file given", "hoptrace replay FILE... [--hop NODE/IFACE=FILE]")

    def stop(self) -> None:
        self._stopped = True

    @property
    def lost_events(self) -> int:
        return 0

    def progress(self) -> tuple[int, int]:
        """(bytes read so far, bytes in all the inputs), for a progress line; the total counts
        regular files only (a pipe's size is not known), taken once at the first call."""
        if self._sizes is None:
            total = 0
            for path, _label in self._inputs:
                with contextlib.suppress(OSError):
                    total += Path(path).stat().st_size if Path(path).is_file() else 0
            self._sizes = total
        return (0 if self._reader is None else int(self._reader.bytes_read)), self._sizes

    def core_inputs(self) -> list[tuple[str, bytes, tuple[bytes, bytes] | None]]:
        """The inputs as the core takes them: (path, stem, (node, iface) label or None)."""
        return [
            (str(path), _wire(_stem(str(path))), None if label is None else (_wire(label[0]), _wire(label[1])))
            for path, label in self._inputs
        ]

    def input_path(self, index: int) -> str:
        """The path of input ``index`` (the core names a damaged file by index)."""
        return self._inputs[index][0]

    def batches(self) -> Iterator[ObsBatch]:
        from tracer import _core  # type: ignore[attr-defined]  # the compiled core, no stub

        reader = self._reader = _core.FileReader(self.core_inputs(), CHUNK_BYTES, BATCH_ROWS)
        dtype = obs_dtype()
        while not self._stopped:
            try:
                got = next(reader, None)
            except _core.CaptureError as exc:
                index, problem = exc.args
                raise CaptureFileError(f"{self.input_path(index)}: {problem}") from exc
            if got is None:
                return
            rows, hops, frames, reasons = got
            for node, iface, netns, ifindex, linktype in hops:
                self.hops.append(HopLabel(node=_text(node), iface=_text(iface), netns=netns, ifindex=ifindex,
                                          linktype=linktype))  # fmt: skip
            for rid, name in reasons:
                self.drop_reasons[rid] = _text(name)
            batch = ObsBatch(rows=rows.view(dtype), hops=self.hops, frames=frames, drop_reasons=self.drop_reasons,
                             local_notes=reader.take_locals(), relay_notes=reader.take_relays(),
                             raw_sockets=reader.take_raw_sockets())
            self.packets += len(batch)
            yield batch


def open_files(files: Sequence[str], hop_args: Sequence[str]) -> FileSource:
    """A FileSource from CLI arguments (``FILE...`` and ``--hop NODE/IFACE=FILE``)."""
    hops = [parse_hop_arg(h) for h in hop_args]
    return FileSource(files, hops)
