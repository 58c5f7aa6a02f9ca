"""``hoptrace doctor [--json]``: what works on this machine, and which backends are usable.

Also ``check_ebpf()``, which ``live --backend auto`` asks before choosing the
kernel probes. It test-loads and attaches a two-instruction raw tracepoint
program through the bpf(2) syscall directly (milliseconds, no compile), so
the answer reflects what the kernel allows, not just what is installed.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tracer.errors import EXIT_PRIVILEGE
from tracer.safe_text import term_safe

CAPS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}
EBPF_CAPS = ("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def effective_caps() -> set[str]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                bits = int(line.split()[1], 16)
                return {name for name, bit in CAPS.items() if bits >> bit & 1}
    except (OSError, ValueError):
        pass
    return set()


def check_privileges() -> Check:
    have = effective_caps()
    missing = [c for c in EBPF_CAPS if c not in have]
    if os.geteuid() == 0 and not missing:
        return Check("privileges", True, "root with " + ", ".join(EBPF_CAPS))
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return Check("privileges", False, f"{who}, missing {', '.join(missing) or 'root'}", "run as root")


def check_btf() -> Check:
    from probes.btf import VMLINUX_BTF, load_layout
    from tracer.errors import HoptraceError

    if not VMLINUX_BTF.exists():
        return Check("btf", False, f"{VMLINUX_BTF} missing", "a kernel with CONFIG_DEBUG_INFO_BTF=y")
    try:
        lay = load_layout()
    except HoptraceError as exc:
        return Check("btf", False, exc.message, exc.hint)
    how = "cached" if lay.cached else f"parsed in {lay.parse_s * 1000:.0f} ms"
    o = lay.offsets
    return Check(
        "btf", True,
        f"{VMLINUX_BTF} ({how}; sk_buff.head={o['SKB_HEAD']} network_header={o['SKB_NETWORK_HEADER']}"
        f" dev={o['SKB_DEV']}; {len(lay.drop_reasons)} drop reasons)",
    )


def _mounted() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                out.setdefault(parts[2], parts[1])
    except OSError:
        pass
    return out


def check_tracefs() -> Check:
    m = _mounted()
    found = [f"{fs} at {m[fs]}" for fs in ("tracefs", "debugfs") if fs in m]
    # Raw tracepoints need neither; classic tracepoints would.
    return Check("tracefs", True, ", ".join(found) if found else "not mounted (not needed: raw tracepoints)")


def check_bcc() -> Check:
    spec = importlib.util.find_spec("bcc")
    if spec is None:
        return Check("bcc", False, "python module bcc not importable",
                     "apt-get install python3-bpfcc; venv with --system-site-packages")
    try:
        import bcc  # noqa: F401  (libbcc.so must load, not just the .py files exist)
    except (ImportError, OSError) as exc:
        return Check("bcc", False, f"import bcc failed: {exc}", "apt-get install python3-bpfcc")
    version = "?"
    try:
        from importlib.metadata import version as pkg_version

        version = pkg_version("bcc")
    except Exception:  # metadata is optional for Debian's module; the import is what matters
        version = "?"
    return Check("bcc", True, f"{spec.origin} (version {version})")


def check_headers() -> Check:
    from probes.headers import find_tree
    from tracer.errors import HoptraceError

    try:
        tree = find_tree()
    except HoptraceError as exc:
        return Check("headers", False, exc.message, exc.hint)
    origin = {"env": "BCC_KERNEL_SOURCE", "modules": "/lib/modules build link",
              "merged": "merged from Debian linux-headers-*-common + -amd64"}[tree.origin]
    return Check("headers", True, f"{tree.path} ({origin})")


# --- a raw tracepoint test load through bpf(2) ---------------------------------

_BPF_PROG_TYPE_RAW_TRACEPOINT = 17


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("pad", ctypes.c_uint8 * 64),
    ]


class _RawTpAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("cookie", ctypes.c_uint64)]


def test_load_raw_tracepoint(tp: str = "netif_receive_skb") -> tuple[bool, str]:
    """Load `r0 = 0; exit` as a raw tracepoint program and attach it to ``tp`` for a moment."""
    # probes.bpf_syscall imports no bcc: this check also answers where bcc is missing
    from probes.bpf_syscall import PROG_LOAD, RAW_TRACEPOINT_OPEN, sys_bpf

    # BPF_MOV64_IMM(r0, 0); BPF_EXIT_INSN()
    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr()
    attr.prog_type = _BPF_PROG_TYPE_RAW_TRACEPOINT
    attr.insn_cnt = 2
    attr.insns = ctypes.addressof(insns)
    attr.license = ctypes.addressof(lic)
    attr.prog_name = b"ht_doctor"
    try:
        fd = sys_bpf(PROG_LOAD, attr)
    except OSError as exc:
        return False, f"loading a raw tracepoint program: {exc.strerror}"
    try:
        name = ctypes.create_string_buffer(tp.encode())
        link = sys_bpf(RAW_TRACEPOINT_OPEN, _RawTpAttr(name=ctypes.addressof(name), prog_fd=fd))
    except OSError as exc:
        return False, f"attaching to raw tracepoint {tp}: {exc.strerror}"
    else:
        os.close(link)
        return True, f"loaded and attached a raw tracepoint program to {tp}"
    finally:
        os.close(fd)


def check_raw_tracepoint() -> Check:
    ok, detail = test_load_raw_tracepoint()
    return Check("raw_tracepoint", ok, detail, None if ok else "run as root; kernel needs CONFIG_BPF_EVENTS")


def check_tp_btf() -> Check:
    """Load `r0 = 0; exit` as a BTF-typed raw tracepoint (tp_btf) on netif_receive_skb and
    attach it for a moment: how the probes run here (probes/tp_btf.py)."""
    from probes import tp_btf
    from probes.btf import load_layout
    from tracer.errors import HoptraceError

    fallback = "none needed: the probes use raw tracepoints instead (each field a helper call, slower)"
    try:
        tid = load_layout().tp_btf_ids.get("netif_receive_skb")
    except HoptraceError as exc:
        return Check("tp_btf", False, exc.message, fallback)
    if not tid:
        return Check("tp_btf", False, "the kernel's BTF has no btf_trace_netif_receive_skb", fallback)
    try:
        tp_btf.load_and_attach(bytes.fromhex("b700000000000000" "9500000000000000"), tid, "ht_doctor",
                               "netif_receive_skb").close()
    except tp_btf.TpBtfError as exc:
        return Check("tp_btf", False, exc.why, fallback)
    return Check("tp_btf", True, "loaded and attached a tp_btf program to netif_receive_skb: the probes read"
                 " kernel fields as plain loads")


def _tool(name: str, *version_args: str, package: str | None = None) -> Check:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        return Check(name, False, "not installed", f"apt-get install {package or name}")
    detail = path
    if version_args:
        try:
            out = subprocess.run([path, *version_args], capture_output=True, text=True, timeout=5)
            first = (out.stdout or out.stderr).strip().splitlines()
            if first:
                detail = f"{path} ({first[0][:60]})"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return Check(name, True, detail)


def check_dockerd() -> Check:
    path = shutil.which("dockerd")
    if path is None:
        return Check("dockerd", False, "not installed (the lab's netns engine still works)",
                     "apt-get install docker.io")
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    running = sock.startswith("unix://") and Path(sock[len("unix://"):]).exists()
    state = "a daemon socket at " + sock if running else "no daemon at " + sock
    return Check("dockerd", True, f"{path}; {state}")


def check_leftovers() -> Check:
    """Trace rules (--rules) that a killed hoptrace left behind; only root can read every ruleset."""
    if os.geteuid() != 0:
        return Check("leftovers", True, "not checked (needs root to read every namespace's rules)")
    from tracer.annotate.nftrace import find_leftovers

    left = find_leftovers()
    if not left:
        return Check("leftovers", True, "no trace rules left by an earlier run")
    return Check("leftovers", False, f"{len(left)} left by a killed run, e.g. {left[0]}", "hoptrace cleanup")


# --- backends ---------------------------------------------------------------------


@functools.cache
def check_ebpf() -> tuple[bool, str]:
    """Can the eBPF backend run here? (ok, reason); computed once per process."""
    for check in (check_privileges, check_btf, check_bcc, check_headers, check_raw_tracepoint):
        c = check()
        if not c.ok:
            return False, f"{c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "")
    return True, "raw tracepoints load; BTF, bcc and a header tree are present"


def check_pcap() -> tuple[bool, str]:
    if importlib.util.find_spec("tracer.sources.taps") is None:
        return False, "tracer.sources.taps is not in this build"
    if "CAP_NET_RAW" not in effective_caps():
        return False, "needs CAP_NET_RAW (root)"
    if "CAP_SYS_ADMIN" not in effective_caps():
        return False, "needs CAP_SYS_ADMIN to enter other network namespaces (root)"
    if os.geteuid() != 0:
        # capabilities alone are not enough: live discovers the topology first, which needs root
        return False, "needs root (the taps are chosen from every namespace's topology)"
    return True, "AF_PACKET taps in every namespace"


def collect() -> dict[str, object]:
    checks = [
        check_privileges(),
        check_btf(),
        check_tracefs(),
        check_bcc(),
        check_headers(),
        check_raw_tracepoint(),
        check_tp_btf(),
        _tool("iptables", "--version"),
        _tool("nft", "--version", package="nftables"),
        _tool("conntrack", "--version"),
        check_dockerd(),
        _tool("tcpdump", "--version"),
        _tool("tshark", "--version"),
        _tool("bpftool", "version"),
        check_leftovers(),
    ]
    ebpf_ok, ebpf_why = check_ebpf()
    pcap_ok, pcap_why = check_pcap()
    backends = {
        "ebpf": {"ok": ebpf_ok, "detail": ebpf_why},
        "pcap": {"ok": pcap_ok, "detail": pcap_why},
        "file": {"ok": True, "detail": "pcap/pcapng replay needs nothing special"},
    }
    return {"checks": [c.to_json() for c in checks], "backends": backends}


def run(args: argparse.Namespace) -> int:
    report = collect()
    backends: dict[str, dict[str, object]] = report["backends"]  # type: ignore[assignment]
    if getattr(args, "json", False):
        print(json.dumps(report))
    else:
        # Details quote tools' output, paths and names found on the system: escaped, line by line.
        for c in report["checks"]:  # type: ignore[attr-defined]
            mark = "ok  " if c["ok"] else "FAIL"
            line = f"{mark} {c['name']:<15} {c['detail']}"
            if c["fix"] and not c["ok"]:
                line += f"  -> {c['fix']}"
            print(term_safe(line))
        print()
        for name, b in backends.items():
            print(term_safe(f"backend {name:<5} {'usable' if b['ok'] else 'NOT usable'}: {b['detail']}"))
    sys.stdout.flush()
    live_ok = bool(backends["ebpf"]["ok"] or backends["pcap"]["ok"])
    if live_ok:
        return 0
    # No live backend: that is a missing privilege or kernel feature (CONTRACT exit 3).
    missing = next((c for c in report["checks"] if not c["ok"]), None)  # type: ignore[attr-defined]
    what = f"{missing['name']}: {missing['detail']}" if missing else "see above"
    print(f"hoptrace: no live backend is usable ({term_safe(what)})", file=sys.stderr)
    return EXIT_PRIVILEGE
