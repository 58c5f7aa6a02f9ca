"""``--rules``: a netfilter trace names the exact NAT rule of each rewrite.

Debian 12's ``iptables`` is iptables-nft, where ``-j TRACE`` in the raw table
becomes ``meta nftrace set 1``; trace events (one per rule a packet
traverses) are read from ``xtables-monitor --trace`` run in each traced
namespace as a child process (verified here: TRACE works inside a network
namespace, and the event names table, chain, rule handle and the rule text).

What hoptrace inserts is tagged with a comment ``hoptrace:<pid>``, restricted by
the ``--filter`` where it can be expressed as iptables matches, rate-limited,
and removed on exit, on SIGTERM/SIGINT/SIGHUP (turned into an exception in the
main thread so every ``with`` unwinds), and by ``hoptrace cleanup`` if the run
was killed. A state file ``/run/hoptrace/rules-<pid>.json`` records where rules
went and whether hoptrace created the raw table (it is then deleted again,
through nf_tables netlink, once empty), so the ruleset is left as it was found.
Only hoptrace's own tagged rules are ever deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from tracer.errors import HoptraceError, KernelFeatureMissing, PrivilegeError
from tracer.model import NatEvent, PacketPath

TAG_PREFIX = "hoptrace:"
STATE_DIR = Path("/run/hoptrace")
CHAINS = ("PREROUTING", "OUTPUT")
NAT_TARGET_RE = re.compile(r"-j (MASQUERADE|SNAT|DNAT|REDIRECT|NETMAP)\b")
KEEP_TRACES = 20_000
TOOL_TIMEOUT_S = 10.0


def tag_for(pid: int) -> str:
    return f"{TAG_PREFIX}{pid}"


def _iptables(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def run_in(path: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["nsenter", f"--net={path}", "--", *argv], capture_output=True, text=True,
                       timeout=TOOL_TIMEOUT_S, check=False)
    if check and r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise HoptraceError(f"{' '.join(argv[:4])} in {path} failed: {msg}")
    return r


# --------------------------------------------------------------------------
# Which packets to trace: a pcap filter, where iptables can say it
# --------------------------------------------------------------------------


def filter_matches(expr: str | None) -> tuple[list[list[str]], str | None]:
    """iptables match sets (one rule each) for a simple pcap filter; a notice when it is not simple.

    Understood: ``and``-joined ``tcp``/``udp``/``icmp``/``icmp6``, ``[src|dst] host A``,
    ``[tcp|udp] [src|dst] port N``. ``host A`` becomes two rules (-s A, -d A): iptables has no "or".
    Anything else traces every packet (still rate-limited).
    """
    if not expr or not expr.strip():
        return [[]], None
    tokens = expr.replace("(", " ").replace(")", " ").split()
    proto: str | None = None
    alternatives: list[list[str]] = [[]]
    i = 0
    try:
        while i < len(tokens):
            t = tokens[i].lower()
            if t in ("and", "&&"):
                i += 1
                continue
            if t in ("tcp", "udp", "icmp", "icmp6"):
                proto = t
                i += 1
                continue
            direction = None
            if t in ("src", "dst"):
                direction = t
                i += 1
                t = tokens[i].lower()
            if t == "host":
                addr = tokens[i + 1]
                if direction == "src":
                    alternatives = [[*a, "-s", addr] for a in alternatives]
                elif direction == "dst":
                    alternatives = [[*a, "-d", addr] for a in alternatives]
                else:
                    alternatives = [[*a, flag, addr] for a in alternatives for flag in ("-s", "-d")]
                i += 2
                continue
            if t == "port":
                port = str(int(tokens[i + 1]))
                if proto not in ("tcp", "udp"):
                    raise ValueError("port without tcp/udp")
                flags = {"src": ("--sport",), "dst": ("--dport",)}.get(direction or "", ("--sport", "--dport"))
                alternatives = [[*a, "-m", proto, f, port] for a in alternatives for f in flags]
                i += 2
                continue
            raise ValueError(t)
    except (ValueError, IndexError):
        return [[]], f"--rules traces every packet: the filter {expr!r} is not expressible as iptables matches"
    if proto is not None:
        p = "ipv6-icmp" if proto == "icmp6" else proto
        alternatives = [["-p", p, *a] for a in alternatives]
    return alternatives, None


# --------------------------------------------------------------------------
# xtables-monitor --trace
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NatTrace:
    """A packet that hit a NAT rule, as netfilter traced it."""

    netns: int
    family: int
    src: str
    dst: str
    kind: str  # "snat" or "dnat", from the rule's target
    sport: int | None
    dport: int | None
    ip_id: int | None
    table: str
    chain: str
    handle: int
    rule: str  # "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"

    @property
    def label(self) -> str:
        return f"{self.table}:{self.chain} handle {self.handle}: {self.rule}"


_PACKET_RE = re.compile(r"^PACKET: (\d+) ([0-9a-f]+) (.*)$")
_TRACE_RE = re.compile(r"^\s*TRACE: (\d+) ([0-9a-f]+) (\w+):([^:]+):rule:(0x[0-9a-f]+):(\S+)\s+(.*)$")


class TraceLog:
    """Parses xtables-monitor --trace lines of one namespace into NatTraces."""

    def __init__(self, netns: int, keep: int = KEEP_TRACES) -> None:
        self.netns = netns
        self.keep = keep
        self._packets: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.traces: OrderedDict[tuple[Any, ...], NatTrace] = OrderedDict()
        self.lock = threading.Lock()
        self.lines = 0

    def feed(self, line: str) -> NatTrace | None:
        self.lines += 1
        m = _PACKET_RE.match(line)
        if m:
            fields: dict[str, str] = {}
            for part in m.group(3).split():
                k, eq, v = part.partition("=")
                fields[k] = v if eq else "1"
            self._packets[m.group(2)] = fields
            self._packets.move_to_end(m.group(2))
            while len(self._packets) > 1024:
                self._packets.popitem(last=False)
            return None
        m = _TRACE_RE.match(line)
        if not m or m.group(3) != "nat":
            return None
        text = m.group(7).strip()
        target = NAT_TARGET_RE.search(text)
        if target is None:
            return None
        kind = "snat" if target.group(1) in ("MASQUERADE", "SNAT") else "dnat"
        pkt = self._packets.get(m.group(2))
        if pkt is None:
            return None
        # "-4 -t nat -A POSTROUTING ..." -> "-A POSTROUTING ..."
        rule = re.sub(r"^-[46]\s+-t\s+\w+\s+", "", text)
        family = 6 if text.startswith("-6") or ":" in pkt.get("SRC", "") else 4
        t = NatTrace(
            netns=self.netns,
            family=family,
            src=pkt.get("SRC", ""),
            dst=pkt.get("DST", ""),
            kind=kind,
            sport=int(pkt["SPORT"]) if "SPORT" in pkt else None,
            dport=int(pkt["DPORT"]) if "DPORT" in pkt else None,
            ip_id=int(pkt["ID"]) if pkt.get("ID", "").isdigit() else None,
            table=m.group(3),
            chain=m.group(4),
            handle=int(m.group(5), 16),
            rule=rule,
        )
        with self.lock:
            for key in self._keys(kind, t.src, t.dst, t.sport, t.dport, t.ip_id):
                self.traces[key] = t
                self.traces.move_to_end(key)
            while len(self.traces) > self.keep:
                self.traces.popitem(last=False)
        return t

    @staticmethod
    def _keys(kind: str, src: str, dst: str, sport: int | None, dport: int | None,
              ip_id: int | None) -> list[tuple[Any, ...]]:
        keys: list[tuple[Any, ...]] = []
        if ip_id:
            keys.append((kind, "id", src, dst, ip_id))
        if sport is not None and dport is not None:
            keys.append((kind, "ports", src, dst, sport, dport))
        return keys

    def find(self, kind: str, src: str, dst: str, sport: int | None, dport: int | None,
             ip_id: int | None) -> NatTrace | None:
        with self.lock:
            for key in self._keys(kind, src, dst, sport, dport, ip_id):
                t = self.traces.get(key)
                if t is not None:
                    return t
        return None


# --------------------------------------------------------------------------
# Inserting and removing
# --------------------------------------------------------------------------


def lab_scope(namespaces: Mapping[int, str]) -> dict[int, str]:
    """With ``HOPTRACE_LAB_PREFIX`` set (working with one lab), only that lab's namespaces:
    a trace must not touch the rulesets of other labs (or other users' tests) on the machine."""
    prefix = os.environ.get("HOPTRACE_LAB_PREFIX")
    if not prefix:
        return dict(namespaces)
    marks = (f"/run/netns/{prefix}-", f"/run/hoptrace/lab-{prefix}/")
    return {ino: path for ino, path in namespaces.items() if path.startswith(marks)}


def _state_file(pid: int) -> Path:
    return STATE_DIR / f"rules-{pid}.json"


def _families() -> list[int]:
    return [f for f in (4, 6) if shutil.which(_iptables(f))]


def nf_tables(path: str, family: int) -> set[str]:
    """Names of the nf_tables tables of one family, from netlink: `iptables-save -t raw` prints
    an empty raw table even where none exists, so it cannot tell."""
    from tracer.netns import run_in_netns

    def tables() -> set[str]:
        from pyroute2.nftables.main import NFTables

        with NFTables(nfgen_family=2 if family == 4 else 10) as nft:
            return {str(t.get("NFTA_TABLE_NAME")) for t in nft.get_tables()}

    return run_in_netns(path, tables, timeout=TOOL_TIMEOUT_S)


def raw_table_exists(path: str, family: int) -> bool:
    return "raw" in nf_tables(path, family)


def tagged_rules(path: str, family: int, tag: str | None = None) -> list[str]:
    """``-A`` lines of the raw table carrying a hoptrace tag (``tag``: only that one)."""
    r = run_in(path, [f"{_iptables(family)}-save", "-t", "raw"], check=False)
    out = []
    for line in r.stdout.splitlines():
        if not line.startswith("-A ") or TAG_PREFIX not in line:
            continue
        got = _tag_of(line)
        if got is not None and (tag is None or got == tag):
            out.append(line)
    return out


def _tag_of(line: str) -> str | None:
    try:
        tok = shlex.split(line)
    except ValueError:
        return None
    for i, t in enumerate(tok):
        if t == "--comment" and i + 1 < len(tok) and tok[i + 1].startswith(TAG_PREFIX):
            return tok[i + 1]
    return None


def _scan_tagged(namespaces: Mapping[int, str]) -> dict[tuple[int, str, int], list[str]]:
    """Tagged raw-table lines of every namespace, read in parallel (one nsenter per namespace
    and family: sequentially, 60 namespaces would cost seconds at every --rules start)."""
    procs = []
    for inode, path in namespaces.items():
        for family in _families():
            try:
                p = subprocess.Popen(["nsenter", f"--net={path}", "--", f"{_iptables(family)}-save", "-t", "raw"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                continue
            procs.append((inode, path, family, p))
    found: dict[tuple[int, str, int], list[str]] = {}
    for inode, path, family, p in procs:
        try:
            out, _ = p.communicate(timeout=TOOL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            continue
        lines = [line for line in out.splitlines()
                 if line.startswith("-A ") and TAG_PREFIX in line and _tag_of(line) is not None]
        if lines:
            found[(inode, path, family)] = lines
    return found


def delete_rule_line(path: str, family: int, line: str) -> None:
    """Delete the rule that ``iptables-save`` printed as ``line`` (by its spec, not its position)."""
    tok = shlex.split(line)
    run_in(path, [_iptables(family), "-w", "-t", "raw", "-D", *tok[1:]])


def delete_raw_table_if_empty(path: str, family: int) -> bool:
    """Drop the raw table hoptrace created, once no rule of anyone is left in it."""
    if not raw_table_exists(path, family):
        return False
    r = run_in(path, [f"{_iptables(family)}-save", "-t", "raw"], check=False)
    if r.returncode != 0 or any(line.startswith("-A ") for line in r.stdout.splitlines()):
        return False
    from tracer.netns import run_in_netns

    def drop() -> None:
        from pyroute2.nftables.main import NFTables

        with NFTables(nfgen_family=2 if family == 4 else 10) as nft:
            nft.table("del", name="raw")

    run_in_netns(path, drop, timeout=TOOL_TIMEOUT_S)
    return True


def _pid_alive(pid: int) -> bool:
    """A process that may still own its tag: alive, and a hoptrace or Python process (pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(word in cmdline for word in (b"hoptrace", b"python", b"pytest"))


class RuleTrace:
    """Context manager: trace rules in, xtables-monitor running, ``annotator`` joins NAT events.

    ``namespaces``: inode -> path of the namespaces to trace (default: those that NAT).
    """

    def __init__(self, namespaces: Mapping[int, str] | None = None, filter_expr: str | None = None,
                 rate_per_s: int = 200, handle_signals: bool = True) -> None:
        self.pid = os.getpid()
        self.tag = tag_for(self.pid)
        self._namespaces = dict(namespaces) if namespaces is not None else None
        self.filter_expr = filter_expr
        self.rate_per_s = rate_per_s
        self.handle_signals = handle_signals
        self.notices: list[str] = []
        self.logs: dict[int, TraceLog] = {}
        self._monitors: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []
        self._inserted: list[tuple[str, int, list[str]]] = []  # (path, family, args after -I CHAIN 1)
        self._created_raw: list[tuple[str, int]] = []
        self._old_handlers: dict[int, Any] = {}
        self._started = False

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> RuleTrace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RuleTrace:
        if os.geteuid() != 0:
            raise PrivilegeError("--rules inserts netfilter trace rules: it needs root")
        for tool in ("iptables", "iptables-save", "xtables-monitor", "nsenter"):
            if shutil.which(tool) is None:
                raise KernelFeatureMissing(f"--rules needs {tool}, which is not installed",
                                           "apt-get install iptables util-linux")
        removed = cleanup_leftovers()
        if removed:
            self.notices.append(f"removed {len(removed)} trace rule(s) left by an earlier run")
        if self._namespaces is None:
            from tracer.annotate.attribution import nat_namespaces
            from tracer.topology import Topology

            self._namespaces = lab_scope(nat_namespaces(Topology.discover(docker=False))) or {
                os.stat("/proc/self/ns/net").st_ino: "/proc/self/ns/net"}
        matches, notice = filter_matches(self.filter_expr)
        if notice:
            self.notices.append(notice)
        self._started = True
        self._install_signals()
        atexit.register(self.stop)
        try:
            for inode, path in self._namespaces.items():
                self._trace_namespace(inode, path, matches)
        except BaseException:
            self.stop()
            raise
        return self

    def _trace_namespace(self, inode: int, path: str, matches: list[list[str]]) -> None:
        # The monitor first, so that the first traced packet is not missed.
        log = TraceLog(inode)
        self.logs[inode] = log
        mon = subprocess.Popen(["nsenter", f"--net={path}", "--", "xtables-monitor", "--trace"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               stdin=subprocess.DEVNULL)
        self._monitors.append(mon)
        t = threading.Thread(target=self._read, args=(mon, log), name=f"nftrace:{inode}", daemon=True)
        t.start()
        self._threads.append(t)
        for family in _families():
            created = not raw_table_exists(path, family)
            if created:
                self._created_raw.append((path, family))
            self._save_state()
            for chain in CHAINS:
                for m in matches:
                    if family == 6 and any(x in ("-s", "-d") and ":" not in m[i + 1]
                                           for i, x in enumerate(m[:-1])):
                        continue  # an IPv4 address in a `host` filter: nothing to trace in IPv6
                    if family == 4 and "ipv6-icmp" in m:
                        continue
                    args = [*m, "-m", "comment", "--comment", self.tag, "-m", "limit", "--limit",
                            f"{self.rate_per_s}/second", "--limit-burst", str(self.rate_per_s), "-j", "TRACE"]
                    self._inserted.append((path, family, [chain, *args]))
                    self._save_state()
                    run_in(path, [_iptables(family), "-w", "-t", "raw", "-I", chain, "1", *args])
        time.sleep(0.05)  # xtables-monitor subscribes right after exec; give it that moment
        if mon.poll() is not None:
            raise KernelFeatureMissing(f"xtables-monitor --trace exited at start in {path}",
                                       "netfilter trace events cannot be read here")

    @staticmethod
    def _read(mon: subprocess.Popen[str], log: TraceLog) -> None:
        assert mon.stdout is not None
        for line in mon.stdout:
            log.feed(line.rstrip("\n"))

    def stop(self) -> None:
        """Remove what was inserted; safe to call twice and from a signal-driven unwind."""
        if not self._started:
            return
        self._started = False
        errors = []
        for path, family, spec in reversed(self._inserted):
            try:
                run_in(path, [_iptables(family), "-w", "-t", "raw", "-D", *spec])
            except (HoptraceError, OSError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        self._inserted.clear()
        for path, family in self._created_raw:
            try:
                delete_raw_table_if_empty(path, family)
            except (HoptraceError, OSError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        self._created_raw.clear()
        for mon in self._monitors:
            if mon.poll() is None:
                mon.terminate()
                try:
                    mon.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    mon.kill()
                    mon.wait()
        self._monitors.clear()
        # What the monitors printed before they ended is still in the pipes: read it all, so
        # paths annotated after the trace stopped still find their rules.
        for t in self._threads:
            t.join(timeout=3)
        self._threads.clear()
        if not errors:
            with contextlib.suppress(FileNotFoundError):
                _state_file(self.pid).unlink()
        self._restore_signals()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if errors:
            raise HoptraceError(f"could not remove every trace rule: {errors[0]}",
                                "run: hoptrace cleanup")

    def _save_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        data = {
            "pid": self.pid,
            "tag": self.tag,
            "namespaces": sorted({p for p, _, _ in self._inserted} | {p for p, _ in self._created_raw}),
            "created_raw": [[p, f] for p, f in self._created_raw],
        }
        tmp = _state_file(self.pid).with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(_state_file(self.pid))

    # -- signals -------------------------------------------------------------

    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers.clear()

    @staticmethod
    def _on_signal(signum: int, frame: FrameType | None) -> None:
        # An exception in the main thread unwinds every `with`: this one removes its rules.
        raise SystemExit(128 + signum)

    # -- joining ---------------------------------------------------------------

    def find(self, netns: int, kind: str, src: str, dst: str, sport: int | None, dport: int | None,
             ip_id: int | None) -> NatTrace | None:
        log = self.logs.get(netns)
        return log.find(kind, src, dst, sport, dport, ip_id) if log else None

    @property
    def annotator(self) -> Callable[[PacketPath], PacketPath]:
        return self.annotate

    # The engine's TableAnnotator (tracer/engine.py): a trace is one packet's, found by its
    # IP ID, so each packet is a shape of its own; nothing is remembered across packets.
    without_conntrack = 0  # never looks conntrack up
    generation = 0
    per_packet = True

    def __call__(self, path: PacketPath) -> PacketPath:
        return self.annotate(path)

    def provisional(self, path: PacketPath) -> bool:
        return False

    def annotate(self, path: PacketPath) -> PacketPath:
        changed = False
        out: list[NatEvent] = []
        for ev in path.nat:
            hop = path.hops[ev.from_hop] if ev.from_hop < len(path.hops) else None
            t = None
            if hop is not None:
                b = ev.before
                t = self.find(hop.netns, ev.kind, b.src, b.dst, b.sport, b.dport, hop.ip_id)
            if t is not None:
                out.append(replace(ev, rule=t.label, rule_source="trace"))
                changed = True
            else:
                out.append(ev)
        return replace(path, nat=tuple(out)) if changed else path


# --------------------------------------------------------------------------
# Leftovers of killed runs (hoptrace cleanup, and every RuleTrace start)
# --------------------------------------------------------------------------


def find_leftovers(namespaces: Mapping[int, str] | None = None) -> list[str]:
    """Read only (for ``doctor``): trace rules tagged by a hoptrace that is gone, and state files
    of such runs; what ``hoptrace cleanup`` would remove."""
    if namespaces is None:
        from tracer.topology import find_namespaces

        namespaces = find_namespaces()
    found: list[str] = []
    if shutil.which("iptables-save") is not None and shutil.which("nsenter") is not None:
        for (_inode, path, family), lines in _scan_tagged(namespaces).items():
            for line in lines:
                pid = (_tag_of(line) or "")[len(TAG_PREFIX):]
                if not (pid.isdigit() and _pid_alive(int(pid))):
                    found.append(f"{path}: {_iptables(family)} -t raw {line}")
    for state in sorted(STATE_DIR.glob("rules-*.json")) if STATE_DIR.is_dir() else []:
        owner = state.stem[len("rules-"):]
        if not (owner.isdigit() and _pid_alive(int(owner))):
            found.append(f"state file {state} of a run that is gone")
    return found


def cleanup_leftovers(namespaces: Mapping[int, str] | None = None) -> list[str]:
    """Remove trace rules whose hoptrace process is gone, in every namespace; what was removed."""
    if namespaces is None:
        from tracer.topology import find_namespaces

        namespaces = find_namespaces()
    removed: list[str] = []
    if shutil.which("iptables-save") is None or shutil.which("nsenter") is None:
        return removed
    from tracer.sources.names import NodeNamer

    namer = NodeNamer()
    for (inode, path, family), lines in _scan_tagged(namespaces).items():
        for line in lines:
            tag = _tag_of(line) or ""
            pid = tag[len(TAG_PREFIX):]
            if pid.isdigit() and _pid_alive(int(pid)):
                continue  # a running hoptrace's rule: not ours to touch
            try:
                delete_rule_line(path, family, line)
            except (HoptraceError, OSError, subprocess.TimeoutExpired):
                continue
            removed.append(f"{namer.name(inode)}: {_iptables(family)} -t raw {line}")
    for state in sorted(STATE_DIR.glob("rules-*.json")) if STATE_DIR.is_dir() else []:
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        owner = int(data.get("pid", 0))
        if owner and _pid_alive(owner):
            continue
        for path, family in data.get("created_raw", []):
            try:
                if os.path.exists(path) and delete_raw_table_if_empty(path, int(family)):
                    removed.append(f"{path}: the raw table hoptrace created ({_iptables(int(family))})")
            except (HoptraceError, OSError, subprocess.TimeoutExpired):
                continue
        state.unlink(missing_ok=True)
    return removed
