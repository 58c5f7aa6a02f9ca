"""``Lab``: Docker's default bridge network plus a TEST-NET "internet", inside namespaces.

Two engines build the same network (DESIGN.md, "The lab"): ``docker`` runs a
real dockerd in the lab's host namespace, ``netns`` builds it by hand. Both
share the "internet" namespace and the uplink built here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracer.errors import HoptraceError, KernelFeatureMissing, LabError, PrivilegeError, UsageError
from tracer.lab import addresses as A
from tracer.lab.state import RUN_NETNS, LabState, Proc, proc_record, progress
from tracer.netns import run_in_netns

ENGINES = ("docker", "netns")
NODES = ("host", "inet", "client", "web")
DEFAULT_PREFIX = "hop"
# dockerd's --userland-proxy: "on" (Docker's default) relays a connection to a published port
# from the host itself or from a container through docker-proxy; "off" NATs it (hairpin DNAT).
PROXY_MODES = ("on", "off")
NO_PROXY_IN_NETNS = "the netns engine has no docker-proxy (it builds what --userland-proxy=off writes)"


def default_prefix() -> str:
    return os.environ.get("HOPTRACE_LAB_PREFIX") or DEFAULT_PREFIX


def default_engine(notice: bool = True) -> str:
    if shutil.which("dockerd"):
        return "docker"
    if notice:
        progress("dockerd is not installed (Debian package docker.io): using the netns engine")
    return "netns"


def userland_proxy_of(engine: str, mode: str | bool | None) -> bool:
    """``--userland-proxy on|off`` for ``engine``: the docker engine's default is on, like
    Docker's; the netns engine can only be off."""
    if mode is None:
        return engine == "docker"
    if isinstance(mode, str):
        if mode not in PROXY_MODES:
            raise UsageError(f"bad --userland-proxy {mode!r}", "on or off")
        mode = mode == "on"
    if mode and engine != "docker":
        raise UsageError(NO_PROXY_IN_NETNS, "use --engine docker, or --userland-proxy off")
    return mode


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError("the lab needs root (network namespaces, iptables, dockerd)",
                             "run it with sudo")


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class LabStatus:
    prefix: str
    exists: bool
    engine: str | None
    namespaces: dict[str, str] = field(default_factory=dict)  # node -> netns path
    processes: list[str] = field(default_factory=list)  # "pid what", alive ones only
    containers: dict[str, str] = field(default_factory=dict)  # name -> status (docker engine)
    docker_host: str | None = None
    state_dir: str = ""
    userland_proxy: bool = False  # dockerd runs docker-proxy for published ports


class Lab:
    """One lab; several can exist at once when their prefixes differ."""

    def __init__(self, engine: str | None = "docker", prefix: str | None = None,
                 userland_proxy: str | bool | None = None) -> None:
        """``userland_proxy``: True/"on" (the docker engine's default, like Docker's) or
        False/"off"; the netns engine has no docker-proxy and is always off."""
        if engine is None:
            engine = default_engine()
        if engine not in ENGINES:
            raise UsageError(f"unknown lab engine {engine!r}", f"valid engines: {', '.join(ENGINES)}")
        self.engine = engine
        self.userland_proxy = userland_proxy_of(engine, userland_proxy)
        self.prefix = prefix or default_prefix()
        self.state = LabState(self.prefix)

    @classmethod
    def existing(cls, prefix: str, engine: str | None = None) -> Lab:
        """The lab ``prefix`` as it was built (engine and proxy mode from its state), else
        ``engine``'s (netns when none is given: ``down`` of a lab that left only namespaces)."""
        data = LabState(prefix).load()
        built = data.get("engine")
        if built in ENGINES:
            return cls(built, prefix, bool(data.get("userland_proxy", False)))
        return cls(engine or "netns", prefix, False)

    def __repr__(self) -> str:
        proxy = ", userland_proxy=True" if self.userland_proxy else ""
        return f"Lab(engine={self.engine!r}, prefix={self.prefix!r}{proxy})"

    # ------------------------------------------------------------------
    # life cycle
    # ------------------------------------------------------------------

    def up(self) -> None:
        require_root()
        if self.engine == "docker":
            from tracer.lab import docker_builder

            docker_builder.check_installed()
        for tool in ("ip", "iptables-restore", "nsenter", "busybox"):
            if shutil.which(tool) is None:
                package = {"ip": "iproute2", "iptables-restore": "iptables", "nsenter": "util-linux",
                           "busybox": "busybox-static"}[tool]
                raise KernelFeatureMissing(f"{tool} is not installed", f"apt-get install {package}")
        if self.state.exists() or self.state.named_netns() or self.state.dir.exists():
            progress(f"removing what an earlier lab '{self.prefix}' left")
            self.down()
        t0 = time.monotonic()
        try:
            self.state.save({"engine": self.engine, "prefix": self.prefix, "procs": [],
                             "userland_proxy": self.userland_proxy, "created": time.time()})
            self._build()
        except BaseException:
            # Half a lab is worse than none: take down what was built, then report the cause.
            # The logs say why; they would go with the state directory, so keep a copy.
            kept = self.keep_logs()
            if kept is not None:
                progress(f"the lab's logs are kept in {kept}")
            try:
                self.down()
            except HoptraceError as cleanup:
                progress(f"removing the half-built lab failed too: {cleanup}")
            raise
        mode = f", userland proxy {'on' if self.userland_proxy else 'off'}" if self.engine == "docker" else ""
        progress(f"'{self.prefix}' is up ({self.engine} engine{mode}, {time.monotonic() - t0:.1f} s)")

    def failed_logs_dir(self) -> Path:
        return Path(tempfile.gettempdir()) / f"hoptrace-lab-{self.prefix}-failed"

    def keep_logs(self) -> Path | None:
        logs = sorted(self.state.dir.glob("*.log")) if self.state.dir.is_dir() else []
        if not logs:
            return None
        dest = self.failed_logs_dir()
        dest.mkdir(parents=True, exist_ok=True)
        for log in logs:
            shutil.copyfile(log, dest / log.name)
        return dest

    def down(self) -> list[str]:
        require_root()
        data = self.state.load()
        if data.get("engine") == "docker" or (self.state.dir / "docker.sock").exists():
            from tracer.lab import docker_builder

            docker_builder.teardown(self)
        return self.state.remove_everything()

    def status(self) -> LabStatus:
        data = self.state.load()
        exists = bool(data) or bool(self.state.named_netns())
        namespaces = {}
        for node in NODES:
            path = self._netns_path_or_none(node)
            if path is not None:
                namespaces[node] = path
        from tracer.lab.state import alive

        procs = [f"{p.pid} {p.what}" for p in self.state.procs() if alive(p)]
        engine = data.get("engine")
        containers: dict[str, str] = {}
        docker_host = None
        if engine == "docker":
            from tracer.lab import docker_builder

            docker_host = docker_builder.docker_host(self)
            containers = docker_builder.container_status(self)
        return LabStatus(self.prefix, exists, engine, namespaces, procs, containers, docker_host,
                         str(self.state.dir), bool(data.get("userland_proxy", False)))

    def run(self, scenario: str) -> ScenarioResult:
        from tracer.lab.scenarios import SCENARIOS

        func = SCENARIOS.get(scenario)
        if func is None:
            raise UsageError(f"unknown scenario {scenario!r}", f"valid scenarios: {', '.join(SCENARIOS)}")
        if not self.state.exists():
            raise LabError(f"lab '{self.prefix}' is not up", "run: hoptrace lab up")
        return func(self)

    # ------------------------------------------------------------------
    # nodes
    # ------------------------------------------------------------------

    def netns_path(self, node: str) -> str:
        if node not in NODES:
            raise UsageError(f"unknown lab node {node!r}", f"valid nodes: {', '.join(NODES)}")
        path = self._netns_path_or_none(node)
        if path is None:
            raise LabError(f"lab '{self.prefix}' has no namespace for {node}", "run: hoptrace lab up")
        return path

    def _netns_path_or_none(self, node: str) -> str | None:
        for path in (RUN_NETNS / self.state.ns_name(node), self.state.netns_dir / node):
            if path.exists():
                return str(path)
        return None

    def netns_inode(self, node: str) -> int:
        return os.stat(self.netns_path(node)).st_ino

    def exec(self, node: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``node``'s network namespace (host filesystem and tools)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 30)
        kw.setdefault("check", False)
        return subprocess.run(["nsenter", f"--net={self.netns_path(node)}", "--", *argv], **kw)

    def spawn(self, node: str, argv: list[str], what: str) -> Proc:
        """Start a long-lived process in ``node``; ``down()`` stops it by its pid."""
        log = open(self.state.dir / f"{what.replace(' ', '-')}.log", "ab")  # noqa: SIM115
        with log:
            p = subprocess.Popen(
                ["nsenter", f"--net={self.netns_path(node)}", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,  # survives the CLI that ran `lab up`
            )
        time.sleep(0.01)
        if p.poll() is not None:
            raise LabError(f"{what} exited at start (status {p.returncode})",
                           f"its log is kept in {self.failed_logs_dir()}")
        rec = proc_record(p.pid, what)
        self.state.add_proc(rec)
        return rec

    # ------------------------------------------------------------------
    # helpers for the engines and scenarios
    # ------------------------------------------------------------------

    def ip_batch(self, netns_name: str, commands: list[str]) -> None:
        r = subprocess.run(["ip", "-n", netns_name, "-batch", "-"], input="\n".join(commands) + "\n",
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise LabError(f"ip in {netns_name} failed: {r.stderr.strip()}")

    def sysctls(self, node: str, values: dict[str, str]) -> None:
        # /proc/sys/net shows the namespace of the task that opens it: a thread in that netns.
        def write() -> None:
            for key, value in values.items():
                Path("/proc/sys", key).write_text(value)

        try:
            run_in_netns(self.netns_path(node), write, timeout=10)
        except OSError as exc:
            raise LabError(f"cannot set sysctl in {node}: {exc}") from exc

    def iptables_restore(self, node: str, rules: str) -> None:
        r = self.exec(node, ["iptables-restore", "-w", "5"], input=rules)
        if r.returncode != 0:
            raise LabError(f"iptables-restore in {node} failed: {r.stderr.strip()}")

    def iptables(self, node: str, *args: str) -> str:
        r = self.exec(node, ["iptables", "-w", "5", *args])
        if r.returncode != 0:
            raise LabError(f"iptables {' '.join(args)} in {node} failed: {r.stderr.strip()}")
        return str(r.stdout)

    def www(self, node: str, body: str) -> Path:
        d = self.state.dir / f"www-{node}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "index.html").write_text(body)
        return d

    def wait_tcp(self, node: str, addr: str, port: int, what: str, timeout_s: float = 10.0) -> None:
        def probe() -> bool:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    with socket.create_connection((addr, port), timeout=0.5):
                        return True
                except OSError:
                    time.sleep(0.02)
            return False

        if not run_in_netns(self.netns_path(node), probe, timeout=timeout_s + 5):
            raise LabError(f"{what} does not answer on {addr}:{port} after {timeout_s:.0f} s")

    def wait_udp_echo(self, node: str, addr: str, port: int, timeout_s: float = 10.0) -> None:
        def probe() -> bool:
            deadline = time.monotonic() + timeout_s
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                while time.monotonic() < deadline:
                    s.sendto(b"ready?", (addr, port))
                    try:
                        if s.recv(64) == b"ready?":
                            return True
                    except OSError:
                        continue
            return False

        if not run_in_netns(self.netns_path(node), probe, timeout=timeout_s + 5):
            raise LabError(f"the UDP echo does not answer on {addr}:{port} after {timeout_s:.0f} s")

    def write_nodes(self) -> None:
        """nodes.json for tracer.sources.names: netns inode -> node label."""
        self.state.write_nodes({self.netns_inode(n): n for n in NODES})

    # ------------------------------------------------------------------

    def _build(self) -> None:
        host, inet = self.state.ns_name("host"), self.state.ns_name("inet")
        names = [host, inet] + ([self.state.ns_name(n) for n in ("client", "web")]
                                if self.engine == "netns" else [])
        for name in names:
            r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise LabError(f"cannot create network namespace {name}: {r.stderr.strip()}")
        self._build_uplink()
        if self.engine == "netns":
            from tracer.lab import netns_builder

            netns_builder.build(self)
        else:
            from tracer.lab import docker_builder

            docker_builder.build(self)
        for node in NODES:
            # Ping sockets for root (scenarios.ping): the per-namespace default allows no group.
            self.sysctls(node, {"net/ipv4/ping_group_range": "0 0"})
        self.write_nodes()

    def _build_uplink(self) -> None:
        host, inet = self.state.ns_name("host"), self.state.ns_name("inet")
        self.ip_batch(host, [
            "link set lo up",
            f"link add eth0 type veth peer name eth0 netns {inet}",
            f"addr add {A.HOST_UPLINK}/{A.UPLINK_PREFIXLEN} dev eth0",
            "link set eth0 up",
            f"route add default via {A.INET_UPLINK}",
        ])
        # The "internet" has no route back to 172.17.0.0/16, like the real one: only
        # MASQUERADEd traffic (source 203.0.113.2) can be answered.
        self.ip_batch(inet, [
            "link set lo up",
            f"addr add {A.SERVER}/32 dev lo",
            f"addr add {A.INET_UPLINK}/{A.UPLINK_PREFIXLEN} dev eth0",
            "link set eth0 up",
        ])
        www = self.www("inet", A.INET_BODY)
        self.spawn("inet", ["busybox", "httpd", "-f", "-p", str(A.WEB_PORT), "-h", str(www)], "httpd inet")
        self.spawn("inet", [sys.executable, "-m", "tracer.lab.udp_echo", A.SERVER,
                                str(A.UDP_ECHO_PORT)], "udp-echo inet")
        self.wait_tcp("inet", A.SERVER, A.WEB_PORT, "httpd in inet")
        self.wait_udp_echo("inet", A.SERVER, A.UDP_ECHO_PORT)
