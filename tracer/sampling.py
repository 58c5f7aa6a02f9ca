"""``live --sample N`` and ``live --max-cpu PCT``: one packet path in N, and a CPU budget that
raises N rather than fall behind.

The rule (the same for both backends): a packet is kept or skipped whole, at every hop,
because the decision depends only on fields NAT leaves alone (protocol, IPv4 id, length and
fragment field, TCP seq/ack/flags, ICMP echo type/code/seq, the payload's digest; never
addresses, ports, the ICMP echo id, TTL or checksums). A packet is kept when the hash of
those fields is below ``2**32 // N``, so raising N keeps a subset of what was kept. Always
kept, so that a flow of few packets is never silenced: non-IP frames, TCP SYN/FIN/RST
(every connection's start and end), ICMP other than echo (errors), ICMP echoes with a
sequence below ``SAMPLE_HEAD`` (a ping's first packets). A UDP datagram has no such mark:
a UDP flow of k datagrams shows with probability 1 - (1 - 1/N)**k.

The eBPF backend applies the rule in the kernel (probes/skb_hops.c ``sample_keep``, its own
hash over the header bytes: what matters is that every hop of a packet hashes alike);
``keep_mask`` applies it to a batch's rows for sources that do not sample themselves (the
pcap taps), before correlation and recording. What is skipped is counted, in sightings:
the stats line's ``sampled_out``, the text stats and the TUI's status bar.

``CpuBudget`` is the controller: each second it measures this process's CPU (user + system,
every thread: ``os.times``) and, over budget while sightings arrive, doubles N (more when far
over); likewise when events were lost that second (the tracer fell behind: on a busy machine
the CPU it would need may not be there even under budget). Well under budget for a few
seconds without loss, it halves N again, never below the ``--sample`` the user asked for.
Under budget and without loss it never changes anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from tracer.model import ObsBatch

#: ICMP echoes with a sequence number below this are always kept (HT_SAMPLE_HEAD in skb_hops.c).
SAMPLE_HEAD = 4
#: The most the budget raises N to.
MAX_RATE = 1 << 16
#: ``--max-cpu``'s default: percent of one core.
DEFAULT_MAX_CPU = 50.0


def threshold(n: int) -> int:
    """The kernel's ``sample_thresh`` for one in ``n``: a packet whose 32-bit hash is below it
    is kept (``n`` <= 1: every packet)."""
    return 0xFFFFFFFF if n <= 1 else (1 << 32) // n


@runtime_checkable
class SamplesItself(Protocol):
    """A source that applies the rule itself (probes.skb_hops.EbpfSource, in the kernel)."""

    def set_sample(self, n: int) -> None: ...

    @property
    def sampled_out(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SamplingState:
    """What the stats and the status bar say: one in ``rate`` now (``by_budget``: raised by the
    CPU budget above what was asked), ``sampled_out`` sightings skipped so far."""

    rate: int
    sampled_out: int
    by_budget: bool

    def label(self) -> str:
        """``sampling 1 in 8 (CPU budget)``, ``sampling 1 in 4``, or ``sampling off``."""
        if self.rate <= 1:
            return "sampling off"
        return f"sampling 1 in {self.rate}" + (" (CPU budget)" if self.by_budget else "")


_K1 = 0x9E3779B97F4A7C15
_SEED = 0x243F6A8885A308D3


def _mix(h: np.ndarray[Any, Any], v: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    import numpy as np

    h = (h ^ v.astype(np.uint64)) * np.uint64(_K1)
    return h ^ (h >> np.uint64(31))


def keep_mask(rows: np.ndarray[Any, Any], n: int) -> np.ndarray[Any, Any]:
    """Per row of ``tracer.model.obs_dtype`` rows, whether sampling one in ``n`` keeps it (the
    module's rule). The same packet seen at several hops, NAT-rewritten or not, gets the same
    answer at each."""
    import numpy as np

    from tracer.model import HAS_ICMP, HAS_TCP

    if n <= 1:
        return np.ones(len(rows), dtype=bool)
    u64 = np.uint64
    proto = rows["proto"]
    has = rows["has"]
    with np.errstate(over="ignore"):
        h = np.full(len(rows), _SEED, dtype=u64) ^ proto.astype(u64)
        h = _mix(h, (rows["length"].astype(u64) << u64(32)) | (rows["ip_id"].astype(u64) << u64(16))
                 | rows["frag"].astype(u64))
        tcp = (proto == 6) & ((has & HAS_TCP) != 0)
        h = _mix(h, np.where(tcp, (rows["tcp_seq"].astype(u64) << u64(32)) | rows["tcp_ack"].astype(u64), u64(0)))
        h = _mix(h, np.where(tcp, rows["tcp_flags"].astype(u64), u64(0)))
        icmp = ((proto == 1) | (proto == 58)) & ((has & HAS_ICMP) != 0)
        h = _mix(h, np.where(icmp, (rows["icmp_type"].astype(u64) << u64(24))
                             | (rows["icmp_code"].astype(u64) << u64(16)) | rows["icmp_seq"].astype(u64), u64(0)))
        h = _mix(h, rows["digest"])
    keep = (h >> u64(32)) < u64(threshold(n))
    keep |= rows["family"] == 0
    keep |= tcp & ((rows["tcp_flags"] & 0x07) != 0)
    itype = rows["icmp_type"]
    echo = np.where(proto == 1, (itype == 0) | (itype == 8), (itype == 128) | (itype == 129))
    keep |= icmp & (~echo | (rows["icmp_seq"] < SAMPLE_HEAD))
    return keep


class Sampler:
    """The sampling knob of one run: the rate asked for (``--sample``), the rate now, and what
    was skipped. ``attach`` hands it a source that samples itself; otherwise ``apply`` filters
    each batch's rows (``keep_mask``) before anything else sees them."""

    def __init__(self, base: int = 1) -> None:
        self.base = max(1, int(base))
        self.rate = self.base
        self._source: SamplesItself | None = None
        self._skipped = 0  # by apply()
        self.engaged = self.base > 1  # sampling was on at some point: the stats say so

    def attach(self, source: object) -> bool:
        """Let ``source`` sample (in the kernel) when it can; True if it does."""
        if source is self._source:
            return True
        if isinstance(source, SamplesItself):
            self._source = source
            source.set_sample(self.rate)
            return True
        return False

    def set_rate(self, n: int) -> None:
        n = max(self.base, min(int(n), MAX_RATE))
        if n == self.rate:
            return
        self.rate = n
        self.engaged = self.engaged or n > 1
        if self._source is not None:
            self._source.set_sample(n)

    @property
    def sampled_out(self) -> int:
        return self._skipped + (self._source.sampled_out if self._source is not None else 0)

    def state(self) -> SamplingState | None:
        """None while sampling never was on (the stats stay as they were)."""
        if not self.engaged:
            return None
        return SamplingState(self.rate, self.sampled_out, self.rate > self.base)

    def apply(self, batch: ObsBatch) -> ObsBatch:
        if self._source is not None or self.rate <= 1 or not len(batch):
            return batch
        from tracer.model import ObsBatch

        keep = keep_mask(batch.rows, self.rate)
        kept = int(keep.sum())
        if kept == len(batch):
            return batch
        self._skipped += len(batch) - kept
        return ObsBatch(rows=batch.rows[keep], hops=batch.hops, frames=batch.frames, now_ns=batch.now_ns,
                        drop_reasons=batch.drop_reasons)


def process_cpu_s() -> float:
    """This process's CPU time so far, user + system, every thread."""
    t = os.times()
    return t.user + t.system


class CpuBudget:
    """Keeps the tracer's CPU under ``max_pct`` percent of one core by sampling.

    Called with each batch (an engine batch hook); once per ``interval_s`` it compares the CPU
    used since the last look with the wall time. Over budget (or with events lost since the
    last look: ``lost`` counts them) for ``raise_after`` looks in a row, while at least
    ``min_rate`` sightings a second arrive (sampling cannot help a process busy with
    something else), it multiplies the sampler's rate by the next power of two of used /
    budget (at least 2). Under ``low`` x budget without loss for ``lower_after`` looks in a
    row, it halves the rate, not below what was asked. Linear cost assumed, halving after doubling
    lands at most at ``2 * low`` x budget: with ``low`` < 0.5 it does not oscillate.
    """

    def __init__(self, sampler: Sampler, max_pct: float, *, interval_s: float = 1.0,
                 cpu_clock: Callable[[], float] = process_cpu_s, wall_clock: Callable[[], float] = time.monotonic,
                 min_rate: float = 2000.0, raise_after: int = 2, low: float = 0.4, lower_after: int = 3,
                 lost: Callable[[], int] | None = None) -> None:
        self.sampler = sampler
        self._lost = lost
        self._lost0 = 0
        self.max_pct = max_pct
        self.interval_s = interval_s
        self._cpu = cpu_clock
        self._wall = wall_clock
        self.min_rate = min_rate
        self.raise_after = raise_after
        self.low = low
        self.lower_after = lower_after
        self._t0: float | None = None
        self._c0 = 0.0
        self._seen = 0
        self._over = 0
        self._under = 0
        self.last_pct = 0.0

    def __call__(self, batch: ObsBatch) -> None:
        self.tick(len(batch))

    def tick(self, sightings: int = 0) -> None:
        now = self._wall()
        self._seen += sightings
        if self._t0 is None:
            self._t0, self._c0, self._seen = now, self._cpu(), 0
            self._lost0 = self._lost() if self._lost is not None else 0
            return
        dt = now - self._t0
        if dt < self.interval_s:
            return
        cpu = self._cpu()
        pct = 100.0 * (cpu - self._c0) / dt
        per_s = self._seen / dt
        lost = 0
        if self._lost is not None:
            total = self._lost()
            lost, self._lost0 = total - self._lost0, total
        self._t0, self._c0, self._seen = now, cpu, 0
        self.last_pct = pct
        self.judge(pct, per_s, lost)

    def judge(self, pct: float, per_s: float, lost: int = 0) -> None:
        """One look's verdict: ``pct`` of a core used while ``per_s`` sightings a second came and
        ``lost`` events were lost."""
        s = self.sampler
        if pct > self.max_pct or lost > 0:
            self._under = 0
            if per_s < self.min_rate:
                self._over = 0
                return
            self._over += 1
            if self._over >= self.raise_after:
                self._over = 0
                factor = 2
                while factor * self.max_pct < pct and factor < MAX_RATE:
                    factor *= 2
                s.set_rate(s.rate * factor)
        elif pct < self.low * self.max_pct and s.rate > s.base:
            self._over = 0
            self._under += 1
            if self._under >= self.lower_after:
                self._under = 0
                s.set_rate(s.rate // 2)
        else:
            self._over = self._under = 0


__all__ = ["DEFAULT_MAX_CPU", "SAMPLE_HEAD", "CpuBudget", "Sampler", "SamplesItself", "SamplingState", "keep_mask",
           "process_cpu_s", "threshold"]
