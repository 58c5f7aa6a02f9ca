"""What every source of sightings looks like to the engine (files, eBPF, taps).

A source knows nothing of sinks; the engine pulls batches and feeds the
correlator, so live and replay share one code path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from tracer.model import ObsBatch


class Source(Protocol):
    #: "ebpf", "pcap" or "file": shown in the status bar and in `stats`.
    kind: str

    def start(self) -> None:
        """Attach probes / open taps / open files. When it returns, the source is ready."""

    def batches(self) -> Iterator[ObsBatch]:
        """Batches until the source is exhausted (files) or stopped (live).

        A live source yields at least every ~100 ms, an empty batch with
        ``now_ns`` set when there was no traffic, so idle paths can finish.
        """
        ...

    def stop(self) -> None:
        """Detach and release everything; safe to call twice and from a signal handler's thread."""

    @property
    def lost_events(self) -> int:
        """Every sighting that did not reach the correlator (kernel ring full, socket drops, shedding)."""
        ...


class BatchListSource:
    """A Source over batches already in memory (tests, benchmarks, a notebook)."""

    lost_events = 0

    def __init__(self, batches: list[ObsBatch], kind: str = "file") -> None:
        self.kind = kind
        self._batches = batches

    def start(self) -> None:
        pass

    def batches(self) -> Iterator[ObsBatch]:
        yield from self._batches

    def stop(self) -> None:
        pass
