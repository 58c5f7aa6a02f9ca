"""``live --backend ebpf --sample 4`` on a flood in the lab: about a quarter of the packets are
traced, each over its whole path (the kernel decides per packet from NAT-invariant fields, the
same at every hop), and what was skipped is counted in the stats line."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.taps.helpers import Live, lab_ifaces
from tracer.lab import addresses as A

pytestmark = [pytest.mark.root, pytest.mark.lab]

FLOOD = 4000
PORT = 9


def _lab_ifaces(lab: Any) -> list[str]:
    # only the lab's namespaces: other people's traffic elsewhere on the machine stays out
    return [f"netns:{lab.netns_inode(n)}/eth0" for n in ("host", "inet", "client", "web")]


def _flood(lab: Any) -> None:
    # distinct payloads, as any real flood has (the payload is part of what is hashed)
    code = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for i in range({FLOOD}): s.sendto(i.to_bytes(4, 'big') * 8, ('{A.WEB}', {PORT}))\n")
    r = lab.exec("client", ["python3", "-c", code])
    assert r.returncode == 0, r.stderr


def _udp_paths(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in records if d["type"] == "path" and d["proto"] == "udp"
            and any(h["dport"] == PORT and h["dst"] == A.WEB for h in d["hops"])]


def _shape(path: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    return tuple((h["node"], h["iface"], h["dir"]) for h in path["hops"])


@pytest.mark.parametrize("backend", ["ebpf", "pcap"])
def test_sample_4_keeps_a_quarter_of_the_paths_whole_and_counts_the_rest(lab_netns: Any, backend: str) -> None:
    """eBPF: decided in the kernel (skb_hops.c sample_keep); pcap: by tracer.sampling.keep_mask
    before correlation."""
    ifaces = _lab_ifaces(lab_netns) if backend == "ebpf" else lab_ifaces(lab_netns)
    tracing = Live(backend, ifaces, "--sample", "4", "--max-cpu", "0")
    try:
        _flood(lab_netns)
        records, _err = tracing.stop(settle_s=1.0)
    finally:
        tracing.kill()
    stats = records[-1]
    assert stats["type"] == "stats"
    paths = _udp_paths(records)
    kept = len(paths)
    # binomial(4000, 1/4): mean 1000, sd 27
    assert 0.19 * FLOOD <= kept <= 0.31 * FLOOD, kept
    # no half paths: every kept datagram has the same hops, client/eth0 out to web/eth0 in
    shapes = Counter(_shape(p) for p in paths)
    assert len(shapes) == 1, shapes.most_common(5)
    (shape, _n), = shapes.items()
    assert shape[0] == ("client", "eth0", "tx") and ("web", "eth0", "rx") in shape, shape
    assert len({p["hops"][0]["ip_id"] for p in paths}) == kept  # one path per datagram
    assert stats["sample_rate"] == 4
    # the rest was counted, not lost: each skipped datagram's hops
    skipped = FLOOD - kept
    assert stats["lost_events"] == 0, stats
    assert len(shape) * skipped * 0.98 <= stats["sampled_out"] <= len(shape) * skipped + 200, (stats, shape)


def test_without_sample_nothing_is_sampled_and_the_stats_line_is_as_before(lab_netns: Any) -> None:
    """No --sample, a budget never reached: every datagram of a small burst, no sampling keys."""
    tracing = Live("ebpf", _lab_ifaces(lab_netns))
    try:
        code = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"for i in range(50): s.sendto(i.to_bytes(4, 'big'), ('{A.WEB}', {PORT}))\n")
        assert lab_netns.exec("client", ["python3", "-c", code]).returncode == 0
        records, _err = tracing.stop(settle_s=1.0)
    finally:
        tracing.kill()
    assert len(_udp_paths(records)) == 50
    assert list(records[-1]) == ["type", "observations", "paths", "lost_events", "elapsed_s"]
