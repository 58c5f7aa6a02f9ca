"""tracer/sampling.py: the sampling rule (one packet in N, the same decision at every hop of a
packet, NAT or not), the sampler's counting, and the CPU budget controller on fake clocks."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.unit.conftest import internet_ping, internet_pong, make_obs
from tracer.model import ObsBatch, Observation, Stats
from tracer.sampling import MAX_RATE, CpuBudget, Sampler, SamplingState, keep_mask, threshold
from tracer.sinks.output import stats_json, stats_text

NAT_HOPS = [  # (at, what NAT and routing rewrote there)
    ("web/eth0", {}),
    ("host/veth1", {}),
    ("host/docker0", {}),
    ("host/eth0", {"src": "203.0.113.2", "ttl": 63}),
    ("inet/eth0", {"src": "203.0.113.2", "ttl": 63}),
]


def _udp(i: int, **kw: Any) -> Observation:
    fields: dict[str, Any] = dict(proto=17, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None,
                                  sport=40000 + i % 1000, dport=53, ip_id=i & 0xFFFF, length=60 + i % 7,
                                  digest=random.Random(i).getrandbits(64))
    fields.update(kw)
    return make_obs(**fields)


def _tcp(i: int, flags: int = 0x10, **kw: Any) -> Observation:
    fields: dict[str, Any] = dict(proto=6, icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None,
                                  sport=40000, dport=80, ip_id=i & 0xFFFF, tcp_flags=flags, tcp_seq=1000 + 1448 * i,
                                  tcp_ack=77, length=1500, digest=random.Random(-i).getrandbits(64))
    fields.update(kw)
    return make_obs(**fields)


def _at_every_hop(make: Any, i: int) -> list[Observation]:
    """One packet at each hop of NAT_HOPS: SNAT rewrites the source (and port), TTL drops,
    the ICMP echo id is rewritten."""
    out = []
    for at, rewrite in NAT_HOPS:
        kw = dict(rewrite)
        if rewrite:
            kw.update(sport=61000 + i % 100) if make is not _echo else kw.update(icmp_id=5000 + i)
        out.append(make(i, at=at, **kw))
    return out


def _echo(i: int, **kw: Any) -> Observation:
    return make_obs(icmp_seq=i & 0xFFFF, ip_id=(7 * i) & 0xFFFF, digest=random.Random(i).getrandbits(64), **kw)


def _keep(obs: list[Observation], n: int) -> list[bool]:
    return keep_mask(ObsBatch.from_observations(obs).rows, n).tolist()


@pytest.mark.parametrize("make", [_udp, _tcp, _echo], ids=["udp", "tcp", "icmp-echo"])
@pytest.mark.parametrize("n", [2, 4, 100])
def test_every_hop_of_a_packet_gets_the_same_decision_nat_or_not(make: Any, n: int) -> None:
    decisions = []
    for i in range(400):
        hops = _at_every_hop(make, i)
        got = _keep(hops, n)
        assert len(set(got)) == 1, (i, got)  # whole or not at all
        decisions.append(got[0])
    assert 0 < sum(decisions) < len(decisions)  # the rule does sample


@pytest.mark.parametrize("n", [2, 4, 8, 64])
def test_about_one_packet_in_n_is_kept(n: int) -> None:
    packets = [_udp(i) for i in range(20_000)]
    kept = sum(_keep(packets, n))
    want = len(packets) / n
    assert abs(kept - want) <= 5 * (want ** 0.5) + 5, (kept, want)


def test_one_in_one_keeps_everything() -> None:
    assert _keep([_udp(i) for i in range(100)], 1) == [True] * 100


def test_raising_n_keeps_a_subset_of_what_was_kept() -> None:
    packets = [_udp(i) for i in range(5000)]
    at4, at8, at16 = (_keep(packets, n) for n in (4, 8, 16))
    assert all(a or not b for a, b in zip(at4, at8, strict=True))
    assert all(a or not b for a, b in zip(at8, at16, strict=True))
    assert sum(at16) < sum(at8) < sum(at4)


def test_the_packets_that_mark_a_flow_are_always_kept() -> None:
    n = MAX_RATE
    # TCP SYN, SYN-ACK, FIN, RST: a connection's start and end, whatever N
    assert _keep([_tcp(i, flags=f) for i in range(50) for f in (0x02, 0x12, 0x11, 0x04, 0x14)], n) == [True] * 250
    # a ping's first echoes (sequence 0..3) and their replies
    assert _keep([_echo(i, icmp_type=t) for i in range(4) for t in (8, 0)], n) == [True] * 8
    # ICMP errors (port unreachable, time exceeded), ICMPv6 errors
    errors = [make_obs(icmp_type=3, icmp_code=3, ip_id=i) for i in range(20)]
    errors += [make_obs(icmp_type=11, icmp_code=0, ip_id=i) for i in range(20)]
    errors += [make_obs(family=6, proto=58, src="fd00::1", dst="fd00::2", icmp_type=1, icmp_code=4, ip_id=None)
               for _ in range(5)]
    assert _keep(errors, n) == [True] * 45
    # not IP (ARP): no fields to hash, nothing to skip
    assert _keep([make_obs(family=0, proto=0, ethertype=0x0806, src="", dst="", icmp_type=None, icmp_code=None,
                           icmp_id=None, icmp_seq=None, ip_id=None) for _ in range(10)], n) == [True] * 10
    # the rest of a flood does get skipped at that rate
    assert sum(_keep([_tcp(i) for i in range(2000)] + [_echo(i) for i in range(4, 2000)], n)) <= 2


def test_internet_ping_and_pong_fixtures_are_decided_whole() -> None:
    for n in (2, 3, 5):
        for t in range(200):
            ping = internet_ping(icmp_seq=4 + t, ip_id=t, digest=t * 7919)
            pong = internet_pong(icmp_seq=4 + t)
            for hops in (ping, pong):
                assert len(set(_keep(hops, n))) == 1


def test_threshold() -> None:
    assert threshold(1) == 0xFFFFFFFF
    assert threshold(2) == 1 << 31
    assert threshold(4) == 1 << 30
    assert threshold(3) == (1 << 32) // 3


# --- the sampler ------------------------------------------------------------


class KernelSide:
    """A source that samples itself (as probes.skb_hops.EbpfSource does, in the kernel)."""

    def __init__(self) -> None:
        self.rates: list[int] = []
        self.sampled_out = 0

    def set_sample(self, n: int) -> None:
        self.rates.append(n)


def test_a_source_that_samples_itself_gets_the_rate_and_reports_what_it_skipped() -> None:
    src = KernelSide()
    s = Sampler(4)
    assert s.attach(src) is True
    assert src.rates == [4]
    batch = ObsBatch.from_observations([_udp(i) for i in range(100)])
    assert s.apply(batch) is batch  # the kernel sampled already
    src.sampled_out = 123
    assert s.state() == SamplingState(rate=4, sampled_out=123, by_budget=False)
    s.set_rate(16)
    assert src.rates == [4, 16]
    assert s.state() == SamplingState(rate=16, sampled_out=123, by_budget=True)


def test_a_source_that_cannot_sample_is_sampled_per_batch_and_counted() -> None:
    s = Sampler(4)
    assert s.attach(object()) is False
    packets = [_udp(i) for i in range(1000)]
    batch = ObsBatch.from_observations(packets)
    out = s.apply(batch)
    assert out.rows.tolist() == batch.rows[keep_mask(batch.rows, 4)].tolist()
    assert out.hops is batch.hops and out.frames is batch.frames
    st = s.state()
    assert st is not None and st.sampled_out == 1000 - len(out) and st.rate == 4 and not st.by_budget


def test_sampling_never_on_says_nothing() -> None:
    s = Sampler(1)
    assert s.attach(object()) is False
    batch = ObsBatch.from_observations([_udp(i) for i in range(50)])
    assert s.apply(batch) is batch
    assert s.state() is None


def test_labels() -> None:
    assert SamplingState(8, 5, True).label() == "sampling 1 in 8 (CPU budget)"
    assert SamplingState(4, 5, False).label() == "sampling 1 in 4"
    assert SamplingState(1, 5, False).label() == "sampling off"


def test_stats_line_and_text_say_what_was_sampled_out() -> None:
    plain = Stats(observations=10, paths=2, lost_events=0, elapsed_s=1.0)
    assert stats_json(plain) == {"type": "stats", "observations": 10, "paths": 2, "lost_events": 0,
                                 "elapsed_s": 1.0}
    assert stats_text(plain) == "stats: 10 observations, 2 paths, 0 lost events, 1.000 s"
    sampled = Stats(observations=10, paths=2, lost_events=0, elapsed_s=1.0,
                    sampling=SamplingState(rate=8, sampled_out=70, by_budget=True))
    assert list(stats_json(sampled).items()) == [
        ("type", "stats"), ("observations", 10), ("paths", 2), ("lost_events", 0), ("sampled_out", 70),
        ("sample_rate", 8), ("elapsed_s", 1.0)]
    assert stats_text(sampled) == ("stats: 10 observations, 2 paths, 0 lost events, "
                                   "70 sampled out (sampling 1 in 8 (CPU budget)), 1.000 s")


# --- the CPU budget, on fake clocks ------------------------------------------


class Clocks:
    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0

    def second(self, cpu_pct: float) -> None:
        self.wall += 1.0
        self.cpu += cpu_pct / 100


def _budget(base: int = 1, pct: float = 50.0) -> tuple[CpuBudget, Sampler, Clocks, KernelSide]:
    clocks = Clocks()
    sampler = Sampler(base)
    src = KernelSide()
    sampler.attach(src)
    budget = CpuBudget(sampler, pct, cpu_clock=lambda: clocks.cpu, wall_clock=lambda: clocks.wall)
    budget.tick(0)  # the first look sets the baseline
    return budget, sampler, clocks, src


def _run(budget: CpuBudget, clocks: Clocks, seconds: int, cpu_pct: float, per_s: int = 100_000) -> None:
    for _ in range(seconds):
        clocks.second(cpu_pct)
        budget.tick(per_s)


def test_under_budget_nothing_changes() -> None:
    budget, sampler, clocks, src = _budget()
    _run(budget, clocks, 30, 45.0)
    assert sampler.rate == 1 and src.rates == [1] and sampler.state() is None


def test_over_budget_samples_and_says_why_then_lowers_again() -> None:
    budget, sampler, clocks, src = _budget()
    _run(budget, clocks, 1, 90.0)
    assert sampler.rate == 1  # one second over is not yet a trend
    _run(budget, clocks, 1, 90.0)
    assert sampler.rate == 2 and src.rates == [1, 2]
    st = sampler.state()
    assert st is not None and st.by_budget and st.label() == "sampling 1 in 2 (CPU budget)"
    _run(budget, clocks, 2, 45.0)  # within budget: stays
    assert sampler.rate == 2
    _run(budget, clocks, 3, 10.0)  # well under for 3 s: back down
    assert sampler.rate == 1 and src.rates == [1, 2, 1]
    st = sampler.state()
    assert st is not None and not st.by_budget and st.label() == "sampling off"  # still said: it was on


def test_far_over_budget_raises_by_more_than_double() -> None:
    budget, sampler, clocks, _src = _budget(pct=10.0)
    _run(budget, clocks, 2, 95.0)  # 9.5x the budget: the next power of two, 16
    assert sampler.rate == 16


def test_over_budget_without_a_flood_is_left_alone() -> None:
    """CPU spent on something else (the TUI, a topology refresh): sampling would not help."""
    budget, sampler, clocks, _src = _budget()
    _run(budget, clocks, 10, 90.0, per_s=50)
    assert sampler.rate == 1


def test_never_below_what_was_asked_nor_above_the_cap() -> None:
    budget, sampler, clocks, src = _budget(base=4)
    _run(budget, clocks, 10, 20.0)
    assert sampler.rate == 4 and src.rates == [4]
    _run(budget, clocks, 200, 100_000.0)
    assert sampler.rate == MAX_RATE
    _run(budget, clocks, 200, 0.0)
    assert sampler.rate == 4


def test_looks_once_per_interval_however_many_batches() -> None:
    budget, _sampler, clocks, _src = _budget()
    for _ in range(1000):  # a thousand batches inside one second cost one look
        clocks.wall += 0.0009
        clocks.cpu += 0.0009
        budget.tick(500)
    assert budget.last_pct == 0.0
    clocks.wall += 0.2
    budget.tick(0)
    assert 80 <= budget.last_pct <= 100


def test_losing_events_under_budget_samples_too() -> None:
    """Falling behind (a ring overflowing) while the CPU looks fine: the machine's CPUs are busy
    with something else, and sampling is what keeps the tracer's paths whole."""
    clocks = Clocks()
    sampler = Sampler()
    lost = [0]
    budget = CpuBudget(sampler, 50.0, cpu_clock=lambda: clocks.cpu, wall_clock=lambda: clocks.wall,
                       lost=lambda: lost[0])
    lost[0] = 500  # lost before the first look: not this run's business
    budget.tick(0)
    _run(budget, clocks, 5, 20.0)
    assert sampler.rate == 1
    for _ in range(2):
        lost[0] += 1000
        _run(budget, clocks, 1, 20.0)
    assert sampler.rate == 2
    _run(budget, clocks, 2, 10.0)  # no more loss, but not long enough to lower
    assert sampler.rate == 2
    _run(budget, clocks, 1, 10.0)
    assert sampler.rate == 1
