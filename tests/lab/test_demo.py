"""`lab demo`: every scenario traced (live with eBPF, or captured and replayed); lab removed after."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import assert_lab_gone, need_tool
from tracer.lab import SCENARIOS
from tracer.lab.demo import demo, live_available

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]


def test_demo_capture_mode(fresh_lab_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need_tool("tcpdump")
    assert demo("netns", fresh_lab_prefix, out_dir=tmp_path, mode="capture") == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert f"=== {name}: ok:" in out
        assert (tmp_path / f"{name}.pcapng").stat().st_size > 0
    assert "SNAT @ host POSTROUTING" in out and "DNAT @ host PREROUTING" in out
    assert_lab_gone(fresh_lab_prefix)


def test_demo_live_mode_shows_nat_and_the_drop(fresh_lab_prefix: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ok, why = live_available()
    if not ok:
        pytest.skip(f"needs the eBPF backend: {why}")
    assert demo("netns", fresh_lab_prefix, out_dir=tmp_path, mode="live") == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert f"=== {name}: ok:" in out
        assert (tmp_path / f"{name}.pcapng").stat().st_size > 0
    blocked = out[out.index("=== blocked: tracing live"):]
    assert "DROPPED: NETFILTER_DROP" in blocked
    internet = out[out.index("=== internet-ping: tracing live"):out.index("=== host-ping: tracing live")]
    assert "SNAT @ host POSTROUTING" in internet and "dropped" not in internet
    traced = out[: out.index("=== report")] if "=== report" in out else out
    assert "icmp6" not in traced  # link-local chatter of new interfaces is filtered out
    assert_lab_gone(fresh_lab_prefix)


def test_demo_keep_leaves_the_lab_up(fresh_lab_prefix: str, tmp_path: Path) -> None:
    need_tool("tcpdump")
    from tracer.lab import Lab

    assert demo("netns", fresh_lab_prefix, keep=True, out_dir=tmp_path, mode="capture") == 0
    lab = Lab("netns", fresh_lab_prefix)
    assert lab.status().exists and lab.run("gateway-ping").ok
    # fresh_lab_prefix takes it down and checks nothing is left.


def test_docker_demo_shows_the_published_port_both_ways(fresh_lab_prefix: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The docker engine's demo: Docker's default (userland proxy on), then the port-publishing
    scenarios again with it off. One scenario keeps the test short."""
    need_tool("dockerd")
    need_tool("tcpdump")
    from tracer.lab import demo as demo_module

    monkeypatch.setattr(demo_module, "SCENARIOS", {"hairpin": SCENARIOS["hairpin"]})
    monkeypatch.setattr(demo_module, "PUBLISHED_PORT_SCENARIOS", ("hairpin",))
    assert demo("docker", fresh_lab_prefix, out_dir=tmp_path, mode="capture") == 0
    out = capsys.readouterr().out
    on, off = out.index("=== userland proxy on"), out.index("=== userland proxy off")
    assert on < out.index("=== hairpin: ok:") < off < out.index("=== hairpin.proxy-off: ok:")
    # Relayed: the client's connection ends in the host, docker-proxy's own goes 172.17.0.1 -> web:80;
    # NATed: the client's connection is DNATed to web.
    assert "172.17.0.1:" in out[on:off] and "DNAT" not in out[on:off]
    assert "DNAT @ host PREROUTING" in out[off:]
    assert (tmp_path / "hairpin.pcapng").exists() and (tmp_path / "hairpin.proxy-off.pcapng").exists()
    assert_lab_gone(fresh_lab_prefix)
