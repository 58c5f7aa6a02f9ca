"""tracer.commands.live's backend choice, without a kernel: auto falls back to the taps with one line saying why."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from tracer.commands import doctor, live
from tracer.errors import KernelFeatureMissing


class FakeSource:
    def __init__(self, kind: str, fail: Exception | None = None) -> None:
        self.kind = kind
        self.fail = fail
        self.started = False

    def start(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.started = True


def args(backend: str) -> argparse.Namespace:
    return argparse.Namespace(backend=backend, iface=[], filter=None, snaplen=128)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    made: dict[str, Any] = {"ebpf_fail": None}
    monkeypatch.setattr(live, "make_pcap_source", lambda a: made.setdefault("pcap", FakeSource("pcap")))
    monkeypatch.setattr(live, "make_ebpf_source",
                        lambda a: made.setdefault("ebpf", FakeSource("ebpf", made["ebpf_fail"])))
    return made


def test_auto_uses_ebpf_when_it_works(fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(doctor, "check_ebpf", lambda: (True, "fine"))
    src = live.choose_source(args("auto"))
    assert (src.kind, src.started, capsys.readouterr().err) == ("ebpf", True, "")


def test_auto_falls_back_when_the_check_fails(fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(doctor, "check_ebpf", lambda: (False, "btf: /sys/kernel/btf/vmlinux missing"))
    src = live.choose_source(args("auto"))
    assert (src.kind, src.started) == ("pcap", True)
    assert capsys.readouterr().err == ("hoptrace: eBPF backend unavailable (btf: /sys/kernel/btf/vmlinux missing);"
                                       " using AF_PACKET taps\n")


def test_auto_falls_back_when_loading_fails(fakes: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(doctor, "check_ebpf", lambda: (True, "fine"))
    fakes["ebpf_fail"] = KernelFeatureMissing("no kernel header tree")
    src = live.choose_source(args("auto"))
    assert src.kind == "pcap"
    assert "eBPF backend failed (no kernel header tree); using AF_PACKET taps" in capsys.readouterr().err


def test_explicit_ebpf_does_not_fall_back(fakes: dict[str, Any]) -> None:
    fakes["ebpf_fail"] = KernelFeatureMissing("no kernel header tree", "apt-get install linux-headers-amd64")
    with pytest.raises(KernelFeatureMissing) as exc:
        live.choose_source(args("ebpf"))
    assert exc.value.exit_code == 3 and "pcap" not in fakes
