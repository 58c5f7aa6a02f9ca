"""probes/bpf_stats.py: per-program run time and count (BPF_ENABLE_STATS, bpf_prog_info by fd),
read from the tracer's programs while lab traffic crosses them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from probes.bpf_stats import ProgStats, enable_stats, per_run, programs_of

pytestmark = [pytest.mark.root, pytest.mark.lab]

TRACEPOINTS = {"netif_receive_skb", "net_dev_start_xmit", "kfree_skb"}


def _fdinfo_run_cnt(prog_id: int) -> int:
    for fd in Path("/proc/self/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        if fields.get("prog_id") == str(prog_id) and "run_cnt" in fields:
            return int(fields["run_cnt"])
    raise AssertionError(f"prog {prog_id} not held here")


def test_each_program_reports_its_runs_and_time_per_run(lab_netns: Any) -> None:
    from probes.skb_hops import EbpfSource

    stats_fd = enable_stats()
    src = EbpfSource(netns=[lab_netns.netns_inode("host")])
    try:
        src.start()
        assert set(programs_of(os.getpid()).values()) >= TRACEPOINTS
        with ProgStats(os.getpid()) as progs:
            before = progs.read()
            assert set(before) == TRACEPOINTS | {"flush_stage"}, set(before)
            for _ in range(3):
                result = lab_netns.run("internet-ping")
                assert result.ok, result.detail
            after = progs.read()
            # the offsets read in bpf_prog_info agree with the kernel's fdinfo of the same program
            rx = after["netif_receive_skb"]
            lo = _fdinfo_run_cnt(rx.prog_id)
            again = progs.read()["netif_receive_skb"].run_cnt
            assert rx.run_cnt <= lo <= again, (rx.run_cnt, lo, again)
    finally:
        src.stop()
        os.close(stats_fd)
    runs = per_run(before, after)
    # 3 pings through the host: each echo and reply is received twice there (veth, docker0 /
    # eth0) and sent twice; other traffic on the machine only adds runs
    assert runs["netif_receive_skb"][0] >= 12 and runs["net_dev_start_xmit"][0] >= 12, runs
    for name in ("netif_receive_skb", "net_dev_start_xmit"):
        n, ns = runs[name]
        assert ns is not None and 0 < ns < 1_000_000, (name, n, ns)  # ns per run: some, never ms


def _online_cpus() -> int:
    n = 0
    for part in Path("/sys/devices/system/cpu/online").read_text().strip().split(","):
        a, _, b = part.partition("-")
        n += int(b or a) - int(a) + 1
    return n


def test_run_counts_are_exact_for_a_program_only_the_tracer_runs() -> None:
    """flush_stage runs only when the source flushes the stages, once per online CPU (at stop):
    its count says exactly that, read through the program's own fd after it was unloaded."""
    from probes.skb_hops import EbpfSource

    stats_fd = enable_stats()
    src = EbpfSource(netns=[1])
    try:
        src.start()
        progs = ProgStats(os.getpid())
        before = progs.read()["flush_stage"]
    finally:
        src.stop()
    try:
        after = progs.read()["flush_stage"]
    finally:
        progs.close()
        os.close(stats_fd)
    assert after.run_cnt - before.run_cnt == _online_cpus()
    assert after.run_time_ns > before.run_time_ns
