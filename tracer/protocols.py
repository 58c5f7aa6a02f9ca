"""The optional capabilities the pipeline's parts declare, as Protocols.

Every source is a ``tracer.sources.base.Source``; some can do more, and say so by having
these members (checked with ``isinstance``, never by probing attributes or reading
another object's private ones). The pipeline (tracer/pipeline.py) and the commands
ask for a capability by its Protocol:

- a live source (eBPF probes, AF_PACKET taps): ``LiveSource`` — its snaplen, what it
  attached and the namespaces it is limited to;
- a source that labels hops with node names and takes container names: ``NamesContainers``;
- a source that knows how far through its input it is: ``ReportsProgress``;
- a source that holds a capture file's error back until the paths are out: ``HoldsError``;
- an annotator that knows where NAT can happen live (rules, conntrack): ``NatScope``;
- an annotator or helper with start-up notices for stderr: ``HasNotices``; with
  threads or tables to release at the end: ``Closable``;
- a recorder (``tracer.sinks.record.PcapngRecorder``): ``Recorder``, passed in, never found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from tracer.sources.base import Source

if TYPE_CHECKING:
    from tracer.errors import HoptraceError
    from tracer.model import ObsBatch, PacketPath
    from tracer.sampling import SamplingState

#: What the engine runs over each finished path (attribution, --rules).
Annotator = Callable[["PacketPath"], "PacketPath"]
#: What the engine calls with each batch before correlating it (recorder, progress).
BatchHook = Callable[["ObsBatch"], None]


@dataclass(frozen=True, slots=True)
class Attachments:
    """What a started live source holds: ``count`` probes or taps on ``namespaces`` namespaces."""

    count: int
    what: str  # "probes" or "taps"
    namespaces: int


@runtime_checkable
class LiveSource(Source, Protocol):
    """A source over the running kernel (probes.skb_hops.EbpfSource, tracer.sources.taps.TapSource)."""

    #: Bytes kept of each frame.
    snaplen: int

    def attachments(self) -> Attachments:
        """What is attached now (for the "ready: ..." line)."""
        ...

    @property
    def traced_netns(self) -> frozenset[int]:
        """The namespaces tracing is limited to (inodes); empty: every one."""
        ...


@runtime_checkable
class NamesContainers(Protocol):
    """A source that names hops' nodes itself and takes container names (inode -> name) from
    whoever asked Docker (the topology discovery)."""

    def name_containers(self, names: Mapping[int, str]) -> None: ...


@runtime_checkable
class ReportsProgress(Protocol):
    """A source that knows how far it is (tracer.sources.files.FileSource): bytes read, bytes in all."""

    def progress(self) -> tuple[int, int]: ...


@runtime_checkable
class ReportsSampling(Protocol):
    """A source whose sightings may be sampled (live --sample / --max-cpu: tracer.sampling)."""

    def sampling(self) -> SamplingState | None: ...


@runtime_checkable
class HoldsError(Protocol):
    """A source that ends its batches at a capture error and keeps it to be reported after the
    paths read before it."""

    @property
    def error(self) -> HoptraceError | None: ...


@runtime_checkable
class HasNotices(Protocol):
    """Something set up for a run with one-line notices for stderr (what it could not do)."""

    @property
    def notices(self) -> list[str]: ...


@runtime_checkable
class NatScope(Protocol):
    """Knows where NAT can rewrite a packet's header while tracing live
    (tracer.annotate.attribution.Attributor): the join accepts a changed source or destination
    between two sightings only in those namespaces (docs/correlation.md). Asked between batches."""

    def nat_netns(self) -> frozenset[int]:
        """Inodes of the namespaces with NAT rules or conntrack entries."""
        ...


@runtime_checkable
class Closable(Protocol):
    """Something that started threads or tables of its own and releases them on ``close()``."""

    def close(self) -> None: ...


@runtime_checkable
class Recorder(Protocol):
    """Writes every batch of sightings to a capture file (tracer.sinks.record.PcapngRecorder)."""

    path: str

    def on_batch(self, batch: ObsBatch) -> None: ...

    def close(self) -> None: ...


__all__ = ["Annotator", "Attachments", "BatchHook", "Closable", "HasNotices", "HoldsError", "LiveSource",
           "NamesContainers", "NatScope", "Recorder", "ReportsProgress"]
