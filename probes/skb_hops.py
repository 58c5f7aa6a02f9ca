"""Loader for probes/skb_hops.c: every packet at every hop, from the kernel, as ObsBatch.

``EbpfSource`` compiles skb_hops.c with bcc, with each kernel offset passed as
``-DHT_OFF_*`` from the running kernel's BTF (probes/btf.py), attaches the
raw tracepoints. A reader thread of the core (``tracer._core.EbpfRing``, no GIL)
polls the ring buffer's mmap on a timer (no wake-up per event: the C side
reserves with ``BPF_RB_NO_WAKEUP`` and batches events per record), flushes quiet
CPUs' stages, and decodes the records in bulk (hop events -> rows in UTC, hop
labels, the frames decoded). ``batches()`` hands its batches on as ObsBatch,
naming the hop labels it reports as new, and re-samples the clock meanwhile;
``stream_steps()`` has the core feed them to the engine's ``Stream`` itself
(``Stream.feed_ring``: no numpy array, no Python per batch but the step).

This is the only module that imports ``bcc``.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes import tp_btf
from probes.bpf_syscall import PROG_TEST_RUN, BpfError, sys_bpf
from probes.btf import KernelLayout, load_layout
from probes.headers import HeaderTree, ensure_bcc_env
from probes.utc_clock import MonoToUtc
from tracer.errors import KernelFeatureMissing, PrivilegeError, ProbeLoadError, UsageError
from tracer.model import Dir, HopLabel, ObsBatch, obs_dtype
from tracer.pcap_expr import PROTO_NUMBERS, kernel_sets
from tracer.protocols import Attachments
from tracer.sources.names import NodeNamer

if TYPE_CHECKING:
    from tracer.engine import RingStep, StreamTables

C_SOURCE = Path(__file__).with_suffix(".c")
# skb_hops.c's HT_PROBE functions and the tracepoints they attach to (as tp_btf)
PROBES = {"ht_rx": "netif_receive_skb", "ht_tx": "net_dev_start_xmit", "ht_drop": "kfree_skb"}
# "raw_tp" forces bcc's raw tracepoints (the fallback where the kernel refuses tp_btf): tests
# compare the two kinds, the bench times them
ATTACH_ENV = "HOPTRACE_EBPF_ATTACH"
IFNAMSIZ = 16
HEADER_LEN = 16  # struct hop_batch: count, busy, first_ts
DEFAULT_BATCH = 32
# 32 MiB: ~170k events of 192 B, ~0.45 s of a one-sender UDP flood here (380k events/s).
# Nothing reads the ring between the ready file and the consumer's start, while `live`
# discovers the topology (0.17-0.2 s the first time, measured under a flood): with 16 MiB
# (~0.23 s of it) 2 runs in 25 of bench/ebpf_bench.py lost events at the start.
DEFAULT_RING_PAGES = 8192
# Poll period (the 1-5 ms timer): the ring is read this often, so it never holds
# more than a few ms of events.
POLL_S = 0.005
# Quiet CPUs' stages are flushed this often (by the core's reader thread).
FLUSH_S = 0.005
# With nothing read for this long, a step says the source's clock (paths idle finish); the
# consumer waits for a batch this long at most.
IDLE_YIELD_S = 0.05
# The clock is re-sampled at most this often (MonoToUtc re-samples once a second).
CLOCK_S = 0.1
# What was read is held until there are this many events or the oldest is this old: each
# batch costs the consumer a fixed amount (a wake-up, a step in Python), so a flood comes in
# few large batches (400k events/s: ~50 a second) and a trickle within HOLD_S.
HOLD_EVENTS = 8192
HOLD_S = 0.04
# Decoded events the core's reader thread keeps for a consumer that is behind (~24 MB);
# past it the reader waits and the kernel's ring takes the rest (its overflow counted).
MAX_QUEUED = 65536


class HopKind(IntEnum):
    """enum hop_kind in skb_hops.c; the values equal tracer.model.Dir's."""

    RX = 1
    TX = 2
    DROP = 3

    @classmethod
    def label(cls, value: int) -> str:
        try:
            return cls(value).name
        except ValueError:
            return f"UNKNOWN({value})"


class Counter(IntEnum):
    """Indexes of the ``counters`` per-CPU array in skb_hops.c (C_*)."""

    LOST = 0
    EMITTED = 1
    FILTERED = 2
    NESTED = 3
    SAMPLED = 4


def _event_fields(snaplen: int) -> list[tuple[str, Any]]:
    # Field for field struct hop_event in skb_hops.c.
    return [
        ("ts_ns", ctypes.c_uint64),
        ("skb", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("drop_reason", ctypes.c_uint32),
        ("wire_len", ctypes.c_uint32),
        ("cap_len", ctypes.c_uint16),
        ("mac_len", ctypes.c_uint16),
        ("protocol", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("ifname", ctypes.c_char * IFNAMSIZ),
        ("frame", ctypes.c_uint8 * snaplen),
    ]


class HopEvent(ctypes.Structure):
    """Mirror of ``struct hop_event`` in skb_hops.c (HT_SNAPLEN 128); ``event_type(n)`` for other snaplens."""

    _fields_ = _event_fields(128)


_EVENT_TYPES: dict[int, type[ctypes.Structure]] = {128: HopEvent}


def c_snaplen(snaplen: int) -> int:
    """The frame array size in C: a multiple of 8 keeps the event 8-byte aligned."""
    return max(8, (snaplen + 7) // 8 * 8)


#: The kernel's limit on one per-CPU map value (PCPU_MIN_UNIT_SIZE): the stage holds a batch.
PERCPU_VALUE_MAX = 32768
BATCH_HEADER = 16  # struct hop_batch before its events: count, busy, first_ts


def max_snaplen(batch: int = DEFAULT_BATCH) -> int:
    """The largest snaplen whose staged batch (struct hop_batch) the kernel accepts as a per-CPU
    map value: 952 bytes with 32 events a batch. Above it the stage map fails with E2BIG."""
    frame_at = event_type(8).frame.offset  # type: ignore[attr-defined]
    per_event = (PERCPU_VALUE_MAX - BATCH_HEADER) // batch // 8 * 8  # events are 8-byte aligned
    return min(1500, (per_event - frame_at) // 8 * 8)


def event_type(snaplen: int) -> type[ctypes.Structure]:
    n = c_snaplen(snaplen)
    t = _EVENT_TYPES.get(n)
    if t is None:
        t = type(f"HopEvent{n}", (ctypes.Structure,), {"_fields_": _event_fields(n)})
        _EVENT_TYPES[n] = t
    return t


def event_dtype(snaplen: int) -> Any:
    import numpy as np

    return np.dtype(event_type(snaplen))


# --------------------------------------------------------------------------
# In-kernel filter
# --------------------------------------------------------------------------

F_NETNS, F_PROTO, F_ADDR, F_PORT, F_TRACK, F_SAMPLE = 1, 2, 4, 8, 16, 32
F_READY = 1 << 31
NETNS_INLINE = 8  # HT_NETNS_INLINE in skb_hops.c
SET_INLINE = 8  # HT_SET_INLINE: ports and addresses compared in the config value


@dataclass(frozen=True, slots=True)
class KernelFilter:
    """What the kernel keeps: a conjunction of sets (an empty set = no condition).

    ``track``: an skb that matched once is kept at all its later hops (so the
    MASQUERADEd or DNATed copy of a matching packet is not lost).
    """

    netns: frozenset[int] = frozenset()
    protos: frozenset[int] = frozenset()
    addrs: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()
    track: bool = True

    @property
    def flags(self) -> int:
        f = 0
        f |= F_NETNS if self.netns else 0
        f |= F_PROTO if self.protos else 0
        f |= F_ADDR if self.addrs else 0
        f |= F_PORT if self.ports else 0
        if f & (F_PROTO | F_ADDR | F_PORT) and self.track:
            f |= F_TRACK
        return f

    @property
    def empty(self) -> bool:
        return not (self.netns or self.protos or self.addrs or self.ports)


def kernel_filter_from_pcap(expr: str | None) -> KernelFilter | None:
    """The part of a pcap-filter expression the kernel filter can express, or None: the
    protocols, addresses and ports every match has (``tracer.pcap_expr.kernel_sets``), a
    superset of the expression, which still applies whole in userspace.
    Example: ``udp and (port 53 or port 5353) and not host 10.0.0.1`` ->
    protos {17}, ports {53, 5353}.
    """
    sets = kernel_sets(expr)
    if sets is None:
        return None
    protos, addrs, ports = sets
    return KernelFilter(protos=protos, addrs=addrs, ports=ports)


def _addr_key(addr: str) -> bytes:
    a = ip_address(addr)
    return a.packed.ljust(16, b"\0")


# --------------------------------------------------------------------------
# BPF_PROG_TEST_RUN, to flush a quiet CPU's stage
# --------------------------------------------------------------------------

_BPF_F_TEST_RUN_ON_CPU = 1 << 0


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def _test_run_on_cpu(prog_fd: int, cpu: int, ctx_buf: ctypes.Array[ctypes.c_uint64]) -> int:
    attr = _TestRunAttr()
    attr.prog_fd = prog_fd
    attr.ctx_in = ctypes.addressof(ctx_buf)
    attr.ctx_size_in = ctypes.sizeof(ctx_buf)
    attr.flags = _BPF_F_TEST_RUN_ON_CPU
    attr.cpu = cpu
    try:
        sys_bpf(PROG_TEST_RUN, attr)
    except BpfError as exc:
        return exc.errno
    return 0


# --------------------------------------------------------------------------
# The ring buffer: read and decoded by the core
# --------------------------------------------------------------------------


def event_layout(snaplen: int) -> dict[str, int]:
    """``struct hop_event``'s field offsets and its size, as ``_core.EbpfRing`` takes them."""
    t = event_type(snaplen)
    out = {f[0]: getattr(t, f[0]).offset for f in t._fields_}
    out["size"] = ctypes.sizeof(t)
    return out


# --------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(
            "the eBPF backend needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN)",
            "run as root, or use --backend pcap",
        )


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError as exc:
        raise KernelFeatureMissing(
            "bcc's Python module is not importable",
            "apt-get install python3-bpfcc, and create the venv with --system-site-packages",
        ) from exc
    return bcc


@dataclass(slots=True)
class _Labels:
    """The hop table, shared by all batches; the core keeps the index of its keys
    ((netns, ifindex, ifname, link type) -> position) and says which are new."""

    hops: list[HopLabel] = field(default_factory=list)


class EbpfSource:
    """A tracer.sources.base.Source over the skb_hops raw tracepoints (kind "ebpf")."""

    kind = "ebpf"

    def __init__(
        self,
        snaplen: int = 128,
        netns: Iterable[int] | None = None,
        kernel_filter: KernelFilter | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        ring_pages: int = DEFAULT_RING_PAGES,
        poll_s: float = POLL_S,
    ) -> None:
        top = max_snaplen(batch)
        if not 14 <= snaplen <= top:
            # bad usage (exit 2), not a kernel problem: a batch of events must fit a per-CPU map value
            raise UsageError(f"--snaplen {snaplen}: the eBPF backend captures 14..{top} bytes",
                             "-s 0 takes the most the backend can")
        self.snaplen = snaplen
        kf = kernel_filter or KernelFilter()
        if netns is not None:
            kf = KernelFilter(frozenset(netns), kf.protos, kf.addrs, kf.ports, kf.track)
        self.kernel_filter = kf
        self.batch = batch
        self.ring_pages = ring_pages
        self.poll_s = poll_s
        self.layout: KernelLayout | None = None
        self.header_tree: HeaderTree | None = None
        self.start_s: float = 0.0
        self._bpf: Any = None
        self._flush_fd = -1
        self._tp_btf: list[tp_btf.TpBtfProgram] = []
        #: "tp_btf" or "raw_tp": how the programs were attached
        self.attach_kind = ""
        #: what the start could not do, one line each (why not tp_btf): live prints them (HasNotices)
        self.notices: list[str] = []
        self._ring: Any = None  # tracer._core.EbpfRing: the ring's mmap, the events read, the decoder
        self._mapped = False
        self._stop = threading.Event()
        self._labels = _Labels()
        self._namer: NodeNamer | None = None
        self._user_lost = 0
        self._lock = threading.Lock()
        self._ev_type = event_type(snaplen)
        self._ev_size = ctypes.sizeof(self._ev_type)
        self._dtype: Any = None
        self._obs_dtype: Any = None
        self._frame_off = self._ev_type.frame.offset  # type: ignore[attr-defined]
        self._cpus: list[int] = []
        self._ctx = (ctypes.c_uint64 * 4)()
        self._final_counters: dict[Counter, int] = {}
        self.clock: MonoToUtc | None = None  # kernel monotonic -> UTC ns, from start()
        self._sample_n = 1  # one packet in N (F_SAMPLE), tracer/sampling.py
        self._leaf: Any = None  # the config value last written, for set_sample()

    # --- Source protocol -------------------------------------------------

    def start(self) -> None:
        if self._bpf is not None:
            return  # already attached
        t0 = time.perf_counter()
        check_privileges()
        self.layout = load_layout()
        self.header_tree = ensure_bcc_env()
        bcc = import_bcc()
        self._dtype = event_dtype(self.snaplen)
        self._obs_dtype = obs_dtype()  # building it costs ~60 us: once, not per batch
        reasons = {name: val for val, name in self.layout.drop_reasons.items()}
        ignored = max(reasons.get("NOT_DROPPED_YET", 0), reasons.get("CONSUMED", 1))
        cflags = [
            *self.layout.cflags(),
            f"-DHT_SNAPLEN={c_snaplen(self.snaplen)}",
            f"-DHT_BATCH={self.batch}",
            f"-DHT_RING_PAGES={self.ring_pages}",
            f"-DHT_REASON_MAX_IGNORED={ignored}",
            "-Wno-unused-function",
        ]
        try:
            self._bpf = self._load(bcc, cflags)
        except Exception as exc:  # bcc raises bare Exception for compile/load/attach failures
            raise ProbeLoadError(
                f"bcc could not load {C_SOURCE.name}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                f"header tree: {self.header_tree.path}; run `hoptrace doctor`",
            ) from exc
        try:
            self._flush_fd = self._bpf.load_func(b"flush_stage", bcc.BPF.RAW_TRACEPOINT).fd
            self.set_filter(self.kernel_filter)
            events = self._bpf[b"events"]
            ring = self._core_ring()
            ring.open(events.map_fd, events.max_entries)
            self._mapped = True
            self._cpus = _online_cpus()
            self._namer = NodeNamer()
            self.clock = MonoToUtc()
            ring.set_clock(*self.clock.knots())  # before the reader thread converts anything
        except Exception as exc:
            self.stop()
            raise ProbeLoadError(f"could not set up the probes: {exc}") from exc
        self.start_s = time.perf_counter() - t0

    def _load(self, bcc: Any, cflags: list[str]) -> Any:
        """skb_hops.c compiled, loaded and attached: as tp_btf programs when the kernel takes
        them (the sk_buff and net_device fields read without a helper call), else as bcc's raw
        tracepoints (bcc attaches RAW_TRACEPOINT_PROBE functions when it loads them)."""
        assert self.layout is not None
        ids = self.layout.tp_btf_ids
        forced = os.environ.get(ATTACH_ENV, "")
        if forced != "raw_tp" and all(tp in ids for tp in PROBES.values()):
            bpf = None
            try:
                bpf = bcc.BPF(src_file=str(C_SOURCE).encode(), cflags=[*cflags, "-DHT_TP_BTF"])
                for fn, tp in PROBES.items():
                    self._tp_btf.append(tp_btf.load_and_attach(bpf.dump_func(fn.encode()), ids[tp], tp, tp))
            except Exception as exc:  # bcc's compile errors are bare Exceptions; the kernel's, TpBtfError
                self._close_tp_btf()
                if bpf is not None:
                    bpf.cleanup()
                self.notices.append(f"tp_btf not taken ({_why_not_tp_btf(exc)}): raw tracepoints instead (slower)")
            else:
                self.attach_kind = "tp_btf"
                return bpf
        elif forced != "raw_tp":
            self.notices.append("the kernel's BTF has no btf_trace_* types: raw tracepoints (slower)")
        self.attach_kind = "raw_tp"
        return bcc.BPF(src_file=str(C_SOURCE).encode(), cflags=cflags)

    def _close_tp_btf(self) -> None:
        progs, self._tp_btf = self._tp_btf, []
        for prog in progs:
            prog.close()

    def stop(self) -> None:
        """Detach now if no poll is running, else the polling loop detaches when it sees the flag.

        Never waits for the poll lock: stop() may run in a signal handler on
        the very thread that holds it. What the kernel had seen by then is
        drained first and still comes out of ``batches()``.
        """
        self._stop.set()
        if self._lock.acquire(blocking=False):
            try:
                self._detach()
            finally:
                self._lock.release()

    def _detach(self) -> None:
        """Drain the stages and the ring into the held events, then detach (caller holds the lock)."""
        bpf = self._bpf
        if bpf is None:
            return
        self._flush_cpus()
        mapped, self._mapped = self._mapped, False
        if mapped:
            self._ring.stop()  # the reader thread (if it ran) reads the ring a last time, then ends
            self._ring.poll()  # what is left (all of it when no consumer started the thread)
        self._final_counters = {c: self._kernel_counter(c) for c in Counter}
        self._bpf = None
        try:
            self._close_tp_btf()  # detached (the links closed) before bcc's maps go
            bpf.cleanup()  # detaches the programs first: nothing below may keep them attached
        finally:
            if mapped:
                self._ring.close()  # unmapped; what was read stays queued

    @property
    def lost_events(self) -> int:
        return self._kernel_counter(Counter.LOST) + self._user_lost

    def counters(self) -> dict[str, int]:
        return {c.name.lower(): self._kernel_counter(c) for c in Counter}

    # --- tracer.protocols.LiveSource, NamesContainers ----------------------

    def attachments(self) -> Attachments:
        bpf = self._bpf
        count = 0
        if bpf is not None:
            count = len(bpf.raw_tracepoint_fds or ()) + len(self._tp_btf)
            count += int(bpf.num_open_kprobes()) + int(bpf.num_open_tracepoints())
        netns = self.kernel_filter.netns
        if not netns:
            from tracer.topology import find_namespaces

            netns = frozenset(find_namespaces())  # every namespace: the probes see them all
        return Attachments(count, "probes", len(netns))

    @property
    def traced_netns(self) -> frozenset[int]:
        return self.kernel_filter.netns

    def name_containers(self, names: Mapping[int, str]) -> None:
        """Container names for the hop labels (from the topology's Docker API answer); a
        source not started yet has no namer: nothing to name."""
        if self._namer is not None:
            self._namer.containers.update(names)

    def batches(self) -> Iterator[ObsBatch]:
        """The decoded batches, in order. The core's reader thread polls the ring every
        ``poll_s``, flushes quiet CPUs' stages every ``FLUSH_S``, and decodes what it read
        once ``HOLD_EVENTS`` are held or the oldest is ``HOLD_S`` old
        (``_core.EbpfRing.start``); this thread re-samples the clock, names new hop labels
        and waits for batches without the GIL. Ends after stop(): the stages and the ring
        drained, probes detached."""
        for step in self._steps(None, None, None):
            if isinstance(step, ObsBatch):
                yield step

    def stream_steps(self, stream: Any, tables: StreamTables,
                     batch_mode: Callable[[], bool]) -> Iterator[ObsBatch | RingStep]:
        """``batches()`` for the engine's core ``stream`` (``tracer._core.Stream``): the core
        feeds each batch the reader thread decoded to it (``Stream.feed_ring``), and a step is
        ``(sightings, ndjson, index, hops)`` as the stream returns its output. ``tables``
        hears of the hop labels (in order, all of them so far: new ones named here before
        any row that points to them is fed) and the drop reasons. While ``batch_mode()``
        (a consumer needs the rows: a recorder) a step is an ObsBatch, as from ``batches()``;
        the two mix, in order. Ends as ``batches()`` does."""
        return self._steps(stream, tables, batch_mode)

    def _steps(self, stream: Any, tables: StreamTables | None,
               batch_mode: Callable[[], bool] | None) -> Iterator[ObsBatch | RingStep]:
        ring = self._core_ring()
        if tables is not None:
            tables.name_reasons(self.layout.drop_reasons if self.layout else {})
            tables.learn(self._labels.hops)
        last_yield = time.monotonic()
        next_clock = 0.0
        try:
            with self._lock:
                if self._mapped:
                    # reading starts with the consumer: until then the kernel's ring holds the events
                    ring.start(self.poll_s, HOLD_EVENTS, HOLD_S, MAX_QUEUED,
                               self._flush_fd if self._flush_fd >= 0 else None, self._cpus, FLUSH_S,
                               *self._stage_map())
            while True:
                with self._lock:
                    if self._bpf is not None and self._stop.is_set():
                        self._detach()  # drains what is left into the queue
                    detached = self._bpf is None
                now = time.monotonic()
                if not detached and now >= next_clock:
                    # no event is converted meanwhile: the new function applies after now only
                    ring.resample_clock(self._utc())
                    next_clock = now + CLOCK_S
                wait = 0.0 if detached else IDLE_YIELD_S
                direct = stream is not None and tables is not None and not (batch_mode and batch_mode())
                step: ObsBatch | RingStep | None
                if direct:
                    step = self._fed(stream, tables, ring, wait, detached)  # type: ignore[arg-type]
                else:
                    step = self._next_batch(ring, wait, detached)
                if step is not None:
                    yield step
                    last_yield = time.monotonic()
                elif detached and ring.finished and not ring.held:
                    # the source's clock at the end: paths idle since before it can finish normally
                    yield self._idle(stream if direct else None)
                    break
                elif time.monotonic() - last_yield >= IDLE_YIELD_S:
                    yield self._idle(stream if direct else None)
                    last_yield = time.monotonic()
        finally:
            with self._lock:
                self._detach()

    def _next_batch(self, ring: Any, wait: float, detached: bool) -> ObsBatch | None:
        got = ring.next_batch(wait)
        if got is not None:
            return self._batch(*got)
        if detached and ring.held:
            with self._lock:
                return self._take()  # what the last poll read
        return None

    def _fed(self, stream: Any, tables: StreamTables, ring: Any, wait: float, detached: bool) -> RingStep | None:
        """One ``Stream.feed_ring``: the batches ready fed to ``stream``, their new hop labels
        named first."""
        if detached and ring.held:
            ring.set_clock(*self._utc().knots())  # what the last poll read decodes with the clock now
        n, misses, data, index, hops = stream.feed_ring(ring, wait)
        if misses:
            self._name(misses)
            tables.learn(self._labels.hops)
            n, misses, data, index, hops = stream.feed_ring(ring, 0.0)
            if misses:
                raise RuntimeError(f"hop label {misses[0][0]} out of step with the core's table")
        if not (n or len(data) or len(index)):
            return None
        return n, data, index, hops

    def _idle(self, stream: Any) -> ObsBatch | RingStep:
        """Nothing read: the source's clock (UTC, as the sightings), as an empty batch or fed."""
        if stream is None:
            return self._empty()
        data, index, hops = stream.advance(self._utc().now_utc())
        return 0, data, index, hops

    # --- runtime control -----------------------------------------------------

    def set_sample(self, n: int) -> None:
        """Keep one packet in ``n`` (1: all), every hop of a kept packet (skb_hops.c sample_keep);
        ``sampled_out`` counts the hops skipped. One config write: the filter stays as it is."""
        from tracer.sampling import threshold

        with self._lock:
            self._sample_n = max(1, int(n))
            leaf = self._leaf
            if self._bpf is None or leaf is None:
                return
            leaf.sample_thresh = threshold(self._sample_n)
            if self._sample_n > 1:
                leaf.flags |= F_SAMPLE
            else:
                leaf.flags &= ~F_SAMPLE
            self._bpf[b"config"][ctypes.c_int(0)] = leaf

    @property
    def sampled_out(self) -> int:
        """Hops that passed the filter but sampling skipped (the kernel's C_SAMPLED)."""
        return self._kernel_counter(Counter.SAMPLED)

    def set_filter(self, kf: KernelFilter) -> None:
        """Replace the in-kernel filter while running (maps first, then the switch)."""
        with self._lock:
            self._set_filter(kf)

    def _set_filter(self, kf: KernelFilter) -> None:
        bpf = self._bpf
        if bpf is None:
            self.kernel_filter = kf
            return
        ct = ctypes
        cfg = bpf[b"config"]
        leaf = cfg.Leaf()  # all zero: not ready, the programs emit nothing while the sets change
        cfg[ct.c_int(0)] = leaf
        for name, values in ((b"netns_set", kf.netns), (b"port_set", kf.ports)):
            table = bpf[name]
            table.clear()
            for v in values:
                table[table.Key(v)] = table.Leaf(1)
        addrs = bpf[b"addr_set"]
        addrs.clear()
        for a in kf.addrs:
            key = addrs.Key()
            ct.memmove(ct.addressof(key), _addr_key(a), 16)
            addrs[key] = addrs.Leaf(1)
        # Small netns, port and address sets and the protocol set go inline in the config value
        # (see struct ht_config). Written twice, first not ready: a map update is a plain copy
        # that a program on another CPU may read half-done, and the second copy changes only flags.
        if 0 < len(kf.netns) <= NETNS_INLINE:
            leaf.n_netns = len(kf.netns)
            for i, ino in enumerate(sorted(kf.netns)):
                leaf.netns[i] = ino
        if 0 < len(kf.ports) <= SET_INLINE:
            leaf.n_ports = len(kf.ports)
            for i, port in enumerate(sorted(kf.ports)):
                leaf.ports[i] = port
        if 0 < len(kf.addrs) <= SET_INLINE:
            leaf.n_addrs = len(kf.addrs)
            for i, key in enumerate(sorted(_addr_key(a) for a in kf.addrs)):
                leaf.addrs[2 * i] = int.from_bytes(key[:8], "little")
                leaf.addrs[2 * i + 1] = int.from_bytes(key[8:], "little")
        for proto in kf.protos:
            leaf.protos[proto >> 5] |= 1 << (proto & 31)
        from tracer.sampling import threshold

        leaf.sample_thresh = threshold(self._sample_n)
        cfg[ct.c_int(0)] = leaf
        leaf.flags = kf.flags | F_READY | (F_SAMPLE if self._sample_n > 1 else 0)
        cfg[ct.c_int(0)] = leaf
        self._leaf = leaf
        self.kernel_filter = kf

    # --- internals -------------------------------------------------------------

    def _core_ring(self) -> Any:
        if self._ring is None:
            from tracer import _core  # type: ignore[attr-defined]  # the compiled core, no stub

            self._ring = _core.EbpfRing(event_layout(self.snaplen), HEADER_LEN, len(self._labels.hops))
        return self._ring

    def _stage_map(self) -> tuple[int | None, int, int]:
        """The per-CPU ``stage`` map for the reader thread (fd, value size, possible CPUs): it
        flushes only the CPUs whose stage holds events. None: every CPU, each time."""
        try:
            stage = self._bpf[b"stage"]
        except (KeyError, TypeError):
            return None, 0, 0
        # bcc's Leaf of a per-CPU map is the array of every CPU's value; sLeaf is one of them
        return stage.map_fd, ctypes.sizeof(getattr(stage, "sLeaf", stage.Leaf)), max(_online_cpus("possible")) + 1

    def _flush_cpus(self) -> None:
        for cpu in self._cpus:
            _test_run_on_cpu(self._flush_fd, cpu, self._ctx)

    def _kernel_counter(self, c: Counter) -> int:
        bpf = self._bpf
        if bpf is None:
            return self._final_counters.get(c, 0)
        try:
            vals = bpf[b"counters"][ctypes.c_int(int(c))]
        except (KeyError, ValueError):
            return 0
        return int(sum(vals))

    def _utc(self) -> MonoToUtc:
        if self.clock is None:
            self.clock = MonoToUtc()
        return self.clock

    def _empty(self) -> ObsBatch:
        return ObsBatch(
            rows=__import__("numpy").zeros(0, dtype=self._obs_dtype if self._obs_dtype is not None else obs_dtype()),
            hops=self._labels.hops,
            now_ns=self._utc().now_utc(),  # UTC, as the sightings
            drop_reasons=self.layout.drop_reasons if self.layout else {},
        )

    def _decode(self, records: Sequence[bytes]) -> ObsBatch:
        """Ring records (struct hop_batch: header, then ``count`` events) -> one batch."""
        ev_size = self._ev_size
        parts = []
        for c in records:
            n = int.from_bytes(c[:4], "little")
            parts.append(memoryview(c)[HEADER_LEN : HEADER_LEN + n * ev_size])
        return self._decode_events(b"".join(parts))

    def _decode_events(self, buf: bytes) -> ObsBatch:
        """Hop events back to back (a ring's records' contents) -> one batch."""
        self._core_ring().push(buf)
        return self._take()

    def _take(self) -> ObsBatch:
        """The events pushed to the core (no reader thread), decoded with the clock's current
        function."""
        ring = self._core_ring()
        ring.set_clock(*self._utc().knots())  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        return self._batch(*ring.take())

    def _batch(self, rows: Any, frames: bytes, misses: list[tuple[int, int, int, bytes, int]]) -> ObsBatch:
        """A decoded batch. The core stamped it in UTC and gave each (netns, ifindex, ifname,
        link type) it had not seen the next hop index at once: those labels are named here,
        before the batch leaves (no row waits for a name)."""
        self._name(misses)
        return ObsBatch(
            rows=rows,
            hops=self._labels.hops,
            frames=frames,
            now_ns=None,
            drop_reasons=self.layout.drop_reasons if self.layout else {},
        )

    def _name(self, misses: list[tuple[int, int, int, bytes, int]]) -> None:
        """Labels for the hop keys the core reports as new, at the indexes it gave them."""
        for index, netns, ifindex, ifname, linktype in misses:
            if self._new_label(netns, ifindex, ifname, linktype) != index:
                raise RuntimeError(f"hop label {index} out of step with the core's table")

    def _new_label(self, netns: int, ifindex: int, ifname: bytes, linktype: int) -> int:
        namer = self._namer
        node = namer.name(netns) if namer else f"netns:{netns}"
        if namer is not None and node.startswith("netns:"):
            namer.refresh()  # a namespace created after start
            node = namer.name(netns)
        if netns == 0:
            node = "?"  # no device: the core names the hop by its neighbour (drops.rs name_hops)
        iface = ifname.decode("ascii", "replace") or (f"if{ifindex}" if ifindex else "(no device)")
        labels = self._labels
        labels.hops.append(HopLabel(node=node, iface=iface, netns=netns, ifindex=ifindex, linktype=linktype))
        return len(labels.hops) - 1


def _why_not_tp_btf(exc: Exception) -> str:
    """One line: the kernel's refusal with the verifier's last line (TpBtfError), an errno's
    text, or the first line of bcc's compile error (a bare Exception)."""
    if isinstance(exc, tp_btf.TpBtfError):
        return exc.why
    if isinstance(exc, OSError):
        return str(exc.strerror)
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


def _online_cpus(which: str = "online") -> list[int]:
    """The CPUs ``/sys/devices/system/cpu/<which>`` lists ("online", "possible")."""
    try:
        text = Path(f"/sys/devices/system/cpu/{which}").read_text().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus.extend(range(int(a), int(b) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


__all__ = [
    "PROTO_NUMBERS",
    "Dir",
    "EbpfSource",
    "HopEvent",
    "HopKind",
    "KernelFilter",
    "event_type",
    "kernel_filter_from_pcap",
]


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m probes.skb_hops``: the source alone (no correlator), for benchmarks and debugging.

    Prints one JSON line at the end: events, lost and the kernel counters.
    """
    import argparse
    import json
    import signal

    p = argparse.ArgumentParser(prog="python -m probes.skb_hops")
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--ready-file")
    p.add_argument("--snaplen", type=int, default=128)
    p.add_argument("--filter", help="pcap-filter; only the part the kernel can do is applied")
    p.add_argument("--netns", type=int, action="append", help="trace only this namespace inode (repeatable)")
    p.add_argument("--print-c", action="store_true", help="print the C program and the -D flags, then exit")
    args = p.parse_args(argv)
    if args.print_c:
        print("// cflags: " + " ".join(load_layout().cflags()))
        print(C_SOURCE.read_text())
        return 0
    src = EbpfSource(snaplen=args.snaplen, netns=args.netns, kernel_filter=kernel_filter_from_pcap(args.filter))
    src.start()
    signal.signal(signal.SIGINT, lambda *_: src.stop())
    signal.signal(signal.SIGTERM, lambda *_: src.stop())
    if args.ready_file:
        Path(args.ready_file).write_text(f"{os.getpid()} ebpf\n")
    t0 = time.monotonic()
    events = 0
    for b in src.batches():
        events += len(b)
        if args.duration and time.monotonic() - t0 >= args.duration:
            src.stop()
    elapsed = time.monotonic() - t0
    print(json.dumps({"events": events, "lost_events": src.lost_events, "elapsed_s": round(elapsed, 3),
                      "start_s": round(src.start_s, 3), **src.counters()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
