"""Helpers for the reliability tests: a traced `hoptrace live` subprocess, ruleset snapshots,
listening sockets by owner, and pcapng inspection with tshark."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import HOPTRACE

LAB_NODES = ("host", "client", "web", "inet")
# iptables-save prints chain counters ("[12:3456]") and a timestamped header: both change with
# traffic or time, not with what hoptrace changed.
_COUNTERS = re.compile(r"\[\d+:\d+\]")


class Live:
    """``hoptrace live --json --ready-file F`` as a subprocess, waited for until ready.

    ``stop(sig)`` sends one signal and returns (exit code, NDJSON records, stderr); ``kill()``
    (SIGKILL) is the teardown, also when the test failed.
    """

    def __init__(self, tmp: Path, backend: str, *extra: str, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 60.0) -> None:
        self.ready = tmp / f"ready-{uuid.uuid4().hex[:6]}"
        self.argv = [*HOPTRACE, "live", "--backend", backend, "--json", "--ready-file", str(self.ready), *extra]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        t0 = time.monotonic()
        while not self.ready.exists():
            if self.proc.poll() is not None:
                _out, err = self.proc.communicate()
                raise AssertionError(f"{' '.join(self.argv)} exited {self.proc.returncode}: {err}")
            if time.monotonic() - t0 > ready_timeout_s:
                self.kill()
                raise AssertionError(f"no ready file after {ready_timeout_s} s")
            time.sleep(0.05)
        self.pid = self.proc.pid

    def stop(self, sig: int = signal.SIGINT, settle_s: float = 0.6,
             timeout_s: float = 60.0) -> tuple[int, list[dict[str, Any]], str]:
        time.sleep(settle_s)  # let the last sightings leave the kernel and the correlator window
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, parse_ndjson(out), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def __enter__(self) -> Live:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def parse_ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def paths_in(records: Iterable[dict[str, Any]], inodes: Iterable[int]) -> list[dict[str, Any]]:
    """Paths with at least one hop in the given namespaces (eBPF sees the whole machine)."""
    mine = set(inodes)
    return [r for r in records if r.get("type") == "path" and any(h["netns"] in mine for h in r["hops"])]


def lab_inodes(lab: Any) -> dict[int, str]:
    return {lab.netns_inode(n): n for n in LAB_NODES}


def lab_tap_ifaces(lab: Any) -> list[str]:
    """The lab's default tap set as --iface values: other labs on the machine stay out."""
    from tests.taps.helpers import lab_ifaces

    return [a for i in lab_ifaces(lab) for a in ("--iface", i)]


def ruleset(lab: Any) -> dict[str, str]:
    """Every lab namespace's netfilter state as text, counters aside (traffic changes those)."""
    out = {}
    for node in LAB_NODES:
        for argv in (["iptables-save"], ["ip6tables-save"], ["nft", "-s", "list", "ruleset"]):
            r = lab.exec(node, argv)
            assert r.returncode == 0, f"{node}: {argv}: {r.stderr}"
            text = "\n".join(_COUNTERS.sub("[]", line) for line in r.stdout.splitlines()
                             if not line.startswith("#"))
            out[f"{node}: {' '.join(argv)}"] = text
    return out


def descendants(pid: int) -> set[int]:
    """pid and every process below it (xtables-monitor, nsenter, ...)."""
    found = {pid}
    changed = True
    while changed:
        changed = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in found:
                found.add(int(entry.name))
                changed = True
    return found


def listening(netns_path: str | None = None) -> list[str]:
    """``ss -lntupwp`` lines (read only); in the root namespace when netns_path is None."""
    argv = ["ss", "-H", "-lntupwp"]
    if netns_path is not None:
        argv = ["nsenter", f"--net={netns_path}", "--", *argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True)
    return r.stdout.splitlines()


def owned_by(lines: Sequence[str], pids: set[int]) -> list[str]:
    return [line for line in lines if any(f"pid={p}," in line for p in pids)]


def tshark_fields(pcapng: Path, *fields: str) -> list[list[str]]:
    """tshark -T fields over a recording's packets; asserts tshark read it without an error.

    Only records with an interface: tshark also lists hoptrace's Custom Blocks (who took a
    packet, relays: tracer/sinks/record.py) as records of their own, with no interface."""
    argv = ["tshark", "-n", "-r", str(pcapng), "-Y", "frame.interface_id", "-T", "fields"]
    for f in fields:
        argv += ["-e", f]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "appears to have been cut short" not in r.stderr, r.stderr
    return [line.split("\t") for line in r.stdout.splitlines()]
