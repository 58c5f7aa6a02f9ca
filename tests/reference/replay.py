"""The reference ``hoptrace replay --json``: batches -> tests/reference/correlate.py -> NDJSON lines.

Drives the reference correlator as the engine drives the core's: each batch fed (an empty
one only moves the clock, if it carries one), the flows taken after it; at the end of
input (or at a damaged file: what was read before the damage still comes out) the open
paths flushed in slices of ``FLUSH_SLICE``, then the flows; the stats line last.

With a filter (``--filter``), a path is shown when the frame of any of its hops matches
the expression as libpcap itself runs it (``pcap_offline_filter``, the captured length
standing for the wire length); a hidden path keeps its number and teaches what any path
does, but is not written or counted, and a flow lists only shown paths (none: no line).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.reference.correlate import Correlator
from tests.reference.render import flow_json, line, path_json, stats_json
from tracer.errors import CaptureFileError
from tracer.model import Flow, ObsBatch, Observation, PacketPath

FLUSH_SLICE = 4096
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


class Run:
    """One run: what it wrote so far (``out.lines``)."""

    def __init__(self, correlator: Correlator | None = None, expr: str | None = None, count: int | None = None,
                 lost_events: int = 0) -> None:
        self.corr = correlator or Correlator()
        self.filter = Filter(expr) if expr else None
        self.count = count
        self.lost_events = lost_events
        self.out = Outcome()
        self.kept: set[str] = set()  # shown paths that have a flow, until their flow is written

    def done(self) -> bool:
        return self.count is not None and self.out.paths >= self.count

    def batch(self, batch: ObsBatch) -> None:
        self.out.observations += len(batch)
        if self.filter is not None:
            self.filter.learn(batch)
        if len(batch):
            paths = self.corr.feed_batch(batch)
        else:
            paths = self.corr.advance(batch.now_ns) if batch.now_ns is not None else []
        self.emit(paths, self.corr.take_flows())

    def end(self, elapsed_s: float = 0.0) -> Outcome:
        paths = self.corr.flush(FLUSH_SLICE)
        while True:
            more = self.corr.flush(FLUSH_SLICE) if paths else []
            if not more:
                self.emit(paths, self.corr.take_flows())
                break
            self.emit(paths, [])
            paths = more
        self.out.lines.append(line(stats_json(self.out.observations, self.out.paths, self.lost_events, elapsed_s)))
        return self.out

    def emit(self, paths: list[PacketPath], flows: list[Flow]) -> None:
        for p in paths:
            if self.done():
                break
            if self.filter is not None and not self.filter.keep(p):
                continue
            self.out.paths += 1
            if p.flow is not None:
                self.kept.add(p.id)
            self.out.lines.append(line(path_json(p)))
        for f in flows:
            shown = tuple(pid for pid in f.paths if pid in self.kept)
            self.kept.difference_update(f.paths)
            if shown:
                self.out.lines.append(line(flow_json(Flow(f.id, f.proto, f.original, f.reply, shown))))


def replay(batches: Iterable[ObsBatch], *, expr: str | None = None, count: int | None = None,
           lost_events: int = 0, correlator: Correlator | None = None) -> Outcome:
    """NDJSON lines (without newlines) of a stream of batches; a ``CaptureFileError`` raised by
    the stream ends it and is held in the outcome."""
    t0 = time.monotonic()
    run = Run(correlator, expr, count, lost_events)
    it = iter(batches)
    while not run.done():
        try:
            batch = next(it)
        except StopIteration:
            break
        except CaptureFileError as exc:
            run.out.error = exc
            break
        run.batch(batch)
    return run.end(time.monotonic() - t0)


def replay_files(files: Sequence[str] = (), hops: Sequence[tuple[str, str]] = (), *, expr: str | None = None,
                 count: int | None = None, correlator: Correlator | None = None) -> Outcome:
    """``hoptrace replay --json FILE... [--hop NODE/IFACE=FILE]... [--filter EXPR]``, read by the
    reference reader (tests/reference/readers.py)."""
    from tests.reference.readers import FileSource

    source = FileSource(files, hops)
    source.start()
    return replay(source.batches(), expr=expr, count=count, correlator=correlator)
