"""doctor, check_ebpf, the header tree and the start-up errors of the eBPF backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from probes import btf, headers
from tests.conftest import need_root, run_hoptrace
from tracer.errors import EXIT_PRIVILEGE


def test_merged_header_tree_is_built_in_the_cache_not_in_lib_modules(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if not headers._debian_pairs():
        pytest.skip("no Debian linux-headers-*-common/-amd64 pair in /usr/src (make install provides it)")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "")  # so that monkeypatch restores what ensure_bcc_env sets
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    monkeypatch.setattr(headers, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(headers.platform, "release", lambda: "0.0.0-hoptrace-test")
    before = sorted(os.listdir("/lib/modules")) if os.path.isdir("/lib/modules") else []
    tree = headers.ensure_bcc_env()
    assert tree.origin == "merged" and tree.path.parent == tmp_path / "headers"
    assert os.environ["BCC_KERNEL_SOURCE"] == str(tree.path)
    for rel in ("include/linux/kconfig.h", "include/generated/autoconf.h", "include/config",
                "arch/x86/include/asm", "arch/x86/include/generated/uapi", "arch/x86/include/uapi", "Makefile"):
        assert (tree.path / rel).exists(), rel
    assert headers.find_tree() == tree  # idempotent: the second call reuses the tree
    after = sorted(os.listdir("/lib/modules")) if os.path.isdir("/lib/modules") else []
    assert after == before


def test_no_header_tree_is_a_clear_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    monkeypatch.setattr(headers, "USR_SRC", tmp_path)
    monkeypatch.setattr(headers.platform, "release", lambda: "0.0.0-hoptrace-test")
    with pytest.raises(headers.KernelFeatureMissing) as exc:
        headers.find_tree()
    assert exc.value.exit_code == EXIT_PRIVILEGE and "linux-headers" in str(exc.value)


def test_missing_btf_is_a_clear_exit_3(tmp_path: Path) -> None:
    with pytest.raises(btf.BtfError) as exc:
        btf.load_layout(tmp_path / "vmlinux")
    assert exc.value.exit_code == EXIT_PRIVILEGE and "CONFIG_DEBUG_INFO_BTF" in exc.value.message


def test_raw_tracepoint_test_load() -> None:
    need_root()
    from tracer.commands.doctor import test_load_raw_tracepoint

    assert test_load_raw_tracepoint() == (True, "loaded and attached a raw tracepoint program to netif_receive_skb")
    ok, why = test_load_raw_tracepoint("no_such_tracepoint_hoptrace")
    assert (ok, why.split(":")[0]) == (False, "attaching to raw tracepoint no_such_tracepoint_hoptrace")


def test_tp_btf_test_load_and_a_refusal() -> None:
    need_root()
    from probes import tp_btf
    from tracer.commands.doctor import check_tp_btf

    assert check_tp_btf().ok, check_tp_btf().detail
    nop = bytes.fromhex("b700000000000000" "9500000000000000")
    sk_buff = btf.Btf(btf.VMLINUX_BTF.read_bytes()).by_name[(btf.STRUCT, "sk_buff")]
    with pytest.raises(tp_btf.TpBtfError) as exc:
        tp_btf.load(nop, sk_buff, "ht_test", "sk_buff")  # a struct, no tracepoint's type: refused
    assert str(exc.value).startswith("[Errno") and "sk_buff: tp_btf load refused" in str(exc.value)
    # the verifier's log of the second load, which says why
    assert f"attach_btf_id {sk_buff} is not a typedef" in exc.value.log, exc.value.log


def test_doctor_json_reports_every_check_and_backend() -> None:
    need_root()
    r = run_hoptrace("doctor", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    names = [c["name"] for c in report["checks"]]
    assert names[:7] == ["privileges", "btf", "tracefs", "bcc", "headers", "raw_tracepoint", "tp_btf"]
    assert {"iptables", "conntrack", "dockerd", "tcpdump", "tshark"} <= set(names)
    assert all(c["ok"] for c in report["checks"][:7]), report["checks"][:7]
    assert report["backends"]["ebpf"]["ok"] and report["backends"]["pcap"]["ok"]


def test_doctor_as_nobody_says_what_is_missing(tmp_path: Path) -> None:
    need_root()
    import subprocess

    from tests.conftest import HOPTRACE

    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        *HOPTRACE, "doctor", "--json"], capture_output=True, text=True, timeout=60, cwd="/",
                       env={**os.environ, "HOME": str(tmp_path)})
    assert r.stdout, r.stderr
    report = json.loads(r.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert not checks["privileges"]["ok"] and "CAP_BPF" in checks["privileges"]["detail"]
    assert not report["backends"]["ebpf"]["ok"]
    assert r.returncode == 3  # no live backend: missing privilege (CONTRACT exit 3)
