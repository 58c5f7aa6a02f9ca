"""The reference ``hoptrace replay --json``: batches -> tests/reference/engine.py -> NDJSON lines.

The reference engine (the reference correlator, driven batch by batch) over batches or
over files read by the reference reader; a damaged file ends the input, what was read
before the damage still comes out, the stats line last, and the error is held.

With a filter (``--filter``), a path is shown when the frame of any of its hops matches
the expression as libpcap itself runs it (``pcap_offline_filter``, the captured length
standing for the wire length); a hidden path keeps its number and teaches what any path
does, but is not written or counted, and a flow lists only shown paths (none: no line).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.reference.correlate import Correlator
from tests.reference.engine import Engine, NdjsonSink, run
from tracer.errors import CaptureFileError
from tracer.model import ObsBatch, Observation, PacketPath

LINKTYPE_RAW = 101


def synth_frame(obs: Observation) -> bytes:
    """A raw IP header (+ L4 ports / ICMP type) rebuilt from a sighting without frame bytes."""
    from tracer.addr import addr_bytes

    if obs.family not in (4, 6) or not obs.src or not obs.dst:
        return b""
    src, dst = addr_bytes(obs.src)[1], addr_bytes(obs.dst)[1]
    if obs.proto in (6, 17, 132, 136):
        l4 = struct.pack("!HH", obs.sport or 0, obs.dport or 0)
        if obs.proto == 6:
            l4 += struct.pack("!IIBBHHH", obs.tcp_seq or 0, obs.tcp_ack or 0, 0x50, obs.tcp_flags or 0, 0, 0, 0)
        else:
            l4 += bytes(4)
    elif obs.proto in (1, 58):
        l4 = struct.pack("!BBHHH", obs.icmp_type or 0, obs.icmp_code or 0, 0, obs.icmp_id or 0, obs.icmp_seq or 0)
    else:
        l4 = b""
    if obs.family == 4:
        frag = (obs.frag_offset // 8) | (0x2000 if obs.more_fragments else 0)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), obs.ip_id or 0, frag, obs.ttl, obs.proto, 0,
                          src[:4], dst[:4])
        return hdr + (b"" if obs.frag_offset else l4)
    return struct.pack("!IHBB16s16s", (6 << 28) | (obs.flow_label or 0), len(l4), obs.proto, obs.ttl, src, dst) + l4


class Filter:
    """A pcap-filter expression, as libpcap compiles and runs it, per link type."""

    def __init__(self, expr: str) -> None:
        from tracer.libpcap import LibpcapProgram

        self.expr = expr
        self.programs: dict[int, Any] = {1: LibpcapProgram(expr, 1)}  # a bad expression fails here
        self.linktypes: dict[tuple[str, str], int] = {}

    def learn(self, batch: ObsBatch) -> None:
        for h in batch.hops:
            self.linktypes[(h.node, h.iface)] = h.linktype

    def program(self, linktype: int) -> Any:
        from tracer.errors import FilterError
        from tracer.libpcap import LibpcapProgram

        if linktype not in self.programs:
            try:
                self.programs[linktype] = LibpcapProgram(self.expr, linktype)
            except FilterError:
                self.programs[linktype] = None  # meaningless on this link type: never matches
        return self.programs[linktype]

    def hop_matches(self, obs: Observation) -> bool:
        lt = self.linktypes.get((obs.node, obs.ifname))
        if obs.frame and lt is not None:
            frame = obs.frame
        else:
            frame, lt = synth_frame(obs), LINKTYPE_RAW
            if not frame:
                return False
        prog = self.program(lt)
        return prog is not None and bool(prog.match(frame))

    def keep(self, path: PacketPath) -> bool:
        return any(self.hop_matches(h) for h in path.hops)


@dataclass
class Outcome:
    lines: list[str] = field(default_factory=list)
    error: CaptureFileError | None = None  # the damage that ended the input, held until the end
    observations: int = 0
    paths: int = 0


class Batches:
    """A source over batches already made (or being made: a reader's, which may fail)."""

    kind = "file"

    def __init__(self, batches: Iterable[ObsBatch], lost_events: int = 0) -> None:
        self._batches = batches
        self.lost_events = lost_events

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def batches(self) -> Iterable[ObsBatch]:
        return self._batches


def replay_engine(batches: Iterable[ObsBatch], *, expr: str | None = None, count: int | None = None,
                  lost_events: int = 0, correlator: Correlator | None = None) -> Engine:
    """The reference engine over ``batches`` as replay sets it up (``expr``: --filter, ``count``:
    --count)."""
    path_filter = Filter(expr) if expr else None
    engine = Engine(Batches(batches, lost_events), path_filter=path_filter, count=count, correlator=correlator)
    if path_filter is not None:
        engine.batch_hooks.append(path_filter.learn)  # each hop's link type, as the pipeline tells it
    return engine


def replay(batches: Iterable[ObsBatch], *, expr: str | None = None, count: int | None = None,
           lost_events: int = 0, correlator: Correlator | None = None) -> Outcome:
    """NDJSON lines (without newlines) of a stream of batches through the reference engine; a
    ``CaptureFileError`` raised by the stream ends it (what was read before it still comes
    out, the stats line last) and is held in the outcome."""
    engine = replay_engine(batches, expr=expr, count=count, lost_events=lost_events, correlator=correlator)
    out = io.StringIO()
    error = None
    try:
        run(engine, [NdjsonSink(out)])
    except CaptureFileError as exc:
        error = exc
    return Outcome(out.getvalue().splitlines(), error, engine.observations, engine.paths)


def replay_files(files: Sequence[str] = (), hops: Sequence[tuple[str, str]] = (), *, expr: str | None = None,
                 count: int | None = None, correlator: Correlator | None = None) -> Outcome:
    """``hoptrace replay --json FILE... [--hop NODE/IFACE=FILE]... [--filter EXPR]``, read by the
    reference reader (tests/reference/readers.py)."""
    from tests.reference.readers import FileSource

    source = FileSource(files, hops)
    source.start()
    return replay(source.batches(), expr=expr, count=count, correlator=correlator)
