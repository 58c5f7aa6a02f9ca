"""A lab's footprint on the machine: its state directory, processes, namespaces, mounts.

Everything a lab creates is recorded or derivable from its prefix, so that
``down()`` (and ``up()`` after a crash) can remove exactly that and nothing else:

* ``/run/netns/<prefix>-<node>``: the lab's named network namespaces;
* ``/run/hoptrace/lab-<prefix>/``: ``state.json`` (engine, pids we started),
  ``nodes.json`` (netns inode -> node label, read by ``tracer.sources.names``), logs,
  dockerd's data/exec roots and the bind mounts of container namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.errors import LabError, UsageError

STATE_ROOT = Path("/run/hoptrace")
RUN_NETNS = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Short enough that "<prefix>-client" stays a sane name; no "/" or spaces (paths, argv).
PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def check_prefix(prefix: str) -> str:
    if not PREFIX_RE.match(prefix):
        raise UsageError(
            f"bad lab prefix {prefix!r}", "lower-case letters, digits and '-', starting with a letter"
        )
    return prefix


def progress(message: str) -> None:
    """Progress for a person goes to stderr, so stdout stays parseable."""
    print(f"lab: {message}", file=sys.stderr, flush=True)


def lab_prefixes() -> list[str]:
    """Prefixes of every lab with a state directory (up, or left by a crash): for `lab status`
    and `hoptrace cleanup`, which removes one with ``Lab(prefix=p).down()``."""
    if not STATE_ROOT.is_dir():
        return []
    return sorted(d.name[len("lab-"):] for d in STATE_ROOT.glob("lab-*") if d.is_dir())


@dataclass(frozen=True, slots=True)
class Proc:
    """A process the lab started; ``start`` (clock ticks since boot) guards against pid reuse."""

    pid: int
    start: int
    what: str


def proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def alive(proc: Proc) -> bool:
    # A child that exited stays a zombie until reaped: it is not alive.
    return proc_start_time(proc.pid) == proc.start and not _zombie(proc.pid)


def proc_record(pid: int, what: str) -> Proc:
    start = proc_start_time(pid)
    if start is None:
        raise LabError(f"{what} (pid {pid}) exited right after it started")
    return Proc(pid, start, what)


def stop_procs(procs: list[Proc], timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left: only the given pids, checked against their start time."""
    live = [p for p in procs if alive(p)]
    for p in live:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while live and time.monotonic() < deadline:
        live = [p for p in live if alive(p)]
        if live:
            time.sleep(0.02)
    for p in live:
        _signal(p, signal.SIGKILL)
    for p in procs:
        _reap(p.pid)


def _signal(p: Proc, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, sig)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _reap(pid: int) -> None:
    # Our own children (spawned in this process) must be waited for, or they stay zombies.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


class LabState:
    """The state directory of one lab (``/run/hoptrace/lab-<prefix>``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        self.dir = STATE_ROOT / f"lab-{prefix}"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def nodes_file(self) -> Path:
        return self.dir / "nodes.json"

    @property
    def netns_dir(self) -> Path:
        """Bind mounts of namespaces that have no /run/netns name (docker containers)."""
        return self.dir / "netns"

    @property
    def cgroup_name(self) -> str:
        """dockerd's --cgroup-parent for this lab's containers."""
        return f"hoptrace-{self.prefix}"

    def cgroups(self) -> list[Path]:
        """The lab's container cgroups in every v1 hierarchy (and the unified one), deepest first."""
        found: list[Path] = []
        for top in CGROUP_ROOT.glob(f"*/{self.cgroup_name}"):
            found += [p for p in top.rglob("*") if p.is_dir()]
            found.append(top)
        return sorted(found, key=lambda p: (-len(p.parts), str(p)))

    def ns_name(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            progress(f"ignoring unreadable {self.state_file}: {exc}")
            return {}
        return data

    def save(self, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.state_file)

    def procs(self) -> list[Proc]:
        return [Proc(**p) for p in self.load().get("procs", [])]

    def add_proc(self, proc: Proc) -> None:
        data = self.load()
        data.setdefault("procs", []).append({"pid": proc.pid, "start": proc.start, "what": proc.what})
        self.save(data)

    def write_nodes(self, nodes: dict[int, str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.nodes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(nodes.items())}, indent=1))
        tmp.replace(self.nodes_file)

    # ------------------------------------------------------------------
    # what exists on the machine
    # ------------------------------------------------------------------

    def named_netns(self) -> list[str]:
        """The lab's entries in /run/netns (exactly ``<prefix>-<node>``, never another lab's)."""
        if not RUN_NETNS.is_dir():
            return []
        nodes = ("host", "inet", "client", "web")
        return sorted(e.name for e in RUN_NETNS.iterdir() if e.name in {self.ns_name(n) for n in nodes})

    def mounts(self) -> list[str]:
        """Mount points at or below the state directory, deepest first."""
        found = []
        root = str(self.dir)
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            point = _unescape(line.split()[4])
            if point == root or point.startswith(root + "/"):
                found.append(point)
        return sorted(set(found), key=lambda p: (-p.count("/"), p))

    def netns_inodes(self) -> set[int]:
        inodes = set()
        paths = [RUN_NETNS / n for n in self.named_netns()]
        if self.netns_dir.is_dir():
            paths += list(self.netns_dir.iterdir())
        for p in paths:
            try:
                inodes.add(os.stat(p).st_ino)
            except OSError:
                continue
        return inodes

    def procs_in_netns(self) -> list[Proc]:
        """Processes whose network namespace is one of this lab's (all of them started by the lab:
        servers, dockerd, containerd, shims and container processes)."""
        inodes = self.netns_inodes()
        found: list[Proc] = []
        if not inodes:
            return found
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid == os.getpid():
                continue
            try:
                ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if ino in inodes:
                start = proc_start_time(pid)
                if start is not None:
                    found.append(Proc(pid, start, "in lab netns"))
        return found

    def procs_using_dir(self) -> list[int]:
        """Processes with the state directory on their command line (dockerd, containerd, servers)."""
        needle = str(self.dir).encode() + b"/"
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline.replace(b"\0", b" ") + b" ":
                found.append(int(entry))
        return found

    def leftovers(self) -> list[str]:
        """What of this lab still exists: empty after a clean ``down()``."""
        left = [f"netns {n}" for n in self.named_netns()]
        left += [f"mount {m}" for m in self.mounts()]
        left += [f"process {pid}" for pid in self.procs_using_dir() if not _zombie(pid)]
        left += [f"cgroup {c}" for c in self.cgroups()]
        if self.dir.exists():
            left.append(f"state {self.dir}")
        return left

    # ------------------------------------------------------------------
    # removal
    # ------------------------------------------------------------------

    def remove_everything(self) -> list[str]:
        """Stop the lab's processes, unmount, delete namespaces and state. Returns what was removed."""
        removed: list[str] = []
        procs = [p for p in self.procs() if alive(p)]
        if procs:
            stop_procs(procs)
            removed.append(f"{len(procs)} process(es)")
        # Whatever still lives in the lab's namespaces (container processes, shims of a crashed
        # dockerd) was started by this lab: nothing else runs in namespaces named by its prefix.
        stray = self.procs_in_netns()
        if stray:
            stop_procs(stray, timeout_s=2.0)
            removed.append(f"{len(stray)} process(es) left in the lab's namespaces")
        for cg in self.cgroups():
            # rmdir is how a cgroup is removed; it is busy until the killed processes have left it.
            deadline = time.monotonic() + 3.0
            while True:
                try:
                    cg.rmdir()
                    removed.append(f"cgroup {cg}")
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise LabError(f"cannot remove cgroup {cg}: {exc.strerror}") from exc
                    time.sleep(0.05)
        for point in self.mounts():
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            removed.append(f"mount {point}")
        for name in self.named_netns():
            r = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, check=False)
            if r.returncode != 0 and (RUN_NETNS / name).exists():
                raise LabError(f"cannot delete network namespace {name}: {r.stderr.strip()}")
            removed.append(f"netns {name}")
        if self.dir.exists():
            leftover = self.mounts()
            if leftover:
                raise LabError(f"still mounted under {self.dir}: {', '.join(leftover)}")
            shutil.rmtree(self.dir, ignore_errors=False)
            removed.append(f"state {self.dir}")
        return removed


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
