"""What the machine's networking looks like: namespaces, interfaces, veth peers, bridges,
routes, NAT rules and Docker containers — one frozen snapshot per ``Topology.discover()``.

Netlink belongs to pyroute2: every namespace is read through an ``IPRoute`` socket
opened by a worker thread that entered it with ``setns`` (per thread on Linux), so
no ``ip`` output is parsed and no process is forked per namespace. The only
subprocess output read is ``iptables-save -t nat`` (and ``ip6tables-save``), run
with ``nsenter`` in the namespaces that forward or bridge — the ones that NAT.

``LiveTopology`` keeps a snapshot current while tracing (a timer), so containers
started or stopped after hoptrace started get their names without a restart.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracer.errors import HoptraceError, PrivilegeError
from tracer.netns import setns_fd
from tracer.safe_text import source_text
from tracer.sources.names import LAB_STATE, RUN_NETNS, NodeNamer, own_netns

DOCKER_NETNS_DIRS = ("/run/docker/netns", "/var/run/docker/netns")
# A lab's dockerd keeps its exec-root (and so its netns dir) under its state dir.
LAB_NETNS_GLOBS = ("lab-*/netns/*", "lab-*/*/netns/*", "lab-*/*/*/netns/*")
DOCKER_TIMEOUT_S = 2.0
IPTABLES_TIMEOUT_S = 5.0



# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interface:
    netns: int
    ifindex: int
    name: str
    kind: str | None  # "veth", "bridge", "dummy", ... (None: a plain device such as lo)
    mac: str | None
    state: str  # IFLA_OPERSTATE: "UP", "DOWN", "UNKNOWN", ...
    mtu: int
    addresses: tuple[str, ...]  # "172.17.0.1/16", "fe80::1/64"
    master: int | None = None  # ifindex of the bridge (same namespace) this is a port of
    peer_netns: int | None = None  # veth: the namespace of the other end (inode)
    peer_ifindex: int | None = None  # veth: the other end's ifindex there

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(a.split("/")[0] for a in self.addresses)


@dataclass(frozen=True, slots=True)
class Route:
    family: int  # 4 or 6
    dst: str  # "default" or "10.0.0.0/8"
    gateway: str | None
    dev: str | None
    table: int = 254


@dataclass(frozen=True, slots=True)
class NatRule:
    """One ``-A`` line of ``iptables-save -t nat``, with the fields hoptrace matches on."""

    family: int
    chain: str
    number: int  # 1-based position in its chain (as in `iptables -t nat -L --line-numbers`)
    text: str  # the line as iptables-save printed it
    target: str | None
    src: str | None = None
    src_neg: bool = False
    dst: str | None = None
    dst_neg: bool = False
    in_iface: str | None = None
    in_neg: bool = False
    out_iface: str | None = None
    out_neg: bool = False
    proto: str | None = None
    proto_neg: bool = False
    sport: str | None = None  # "80" or "1000:2000"
    dport: str | None = None
    dport_neg: bool = False
    dst_type: str | None = None  # -m addrtype --dst-type LOCAL
    dst_type_neg: bool = False
    src_type: str | None = None
    to_destination: str | None = None
    to_source: str | None = None
    to_ports: str | None = None
    comment: str | None = None
    random: bool = False  # --random / --random-fully: ports may change
    unknown: bool = False  # matches hoptrace cannot evaluate (conntrack state, marks, ...)

    @property
    def label(self) -> str:
        """The rule with its table and chain, as attribution reports it."""
        return f"nat:{self.chain} rule {self.number}: {self.text}"


@dataclass(frozen=True, slots=True)
class PublishedPort:
    container_port: int
    proto: str
    host_ip: str
    host_port: int


@dataclass(frozen=True, slots=True)
class ContainerNet:
    network: str
    ip: str
    gateway: str
    mac: str
    bridge: str | None = None


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str
    netns: int | None
    pid: int | None
    networks: tuple[ContainerNet, ...] = ()
    ports: tuple[PublishedPort, ...] = ()


@dataclass(frozen=True, slots=True)
class Namespace:
    inode: int
    name: str  # node name: container name, lab label, /run/netns name, host, netns:<inode>
    path: str  # usable with nsenter --net= / setns
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()
    nat_rules: tuple[NatRule, ...] = ()
    forwarding: bool = False
    container: str | None = None  # Docker container id
    error: str | None = None  # when it could not be read (it vanished, ...)

    @property
    def uplink(self) -> str | None:
        """The device of the IPv4 (else IPv6) default route."""
        for fam in (4, 6):
            for r in self.routes:
                if r.family == fam and r.dst == "default" and r.dev:
                    return r.dev
        return None

    def iface(self, name_or_index: str | int) -> Interface | None:
        for i in self.interfaces:
            if i.name == name_or_index or i.ifindex == name_or_index:
                return i
        return None

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(ip for i in self.interfaces for ip in i.ips)


@dataclass(frozen=True, slots=True)
class Topology:
    namespaces: tuple[Namespace, ...]
    containers: tuple[Container, ...] = ()
    networks: tuple[dict[str, Any], ...] = ()
    own_netns: int = 0
    notices: tuple[str, ...] = ()
    _by_inode: dict[int, Namespace] = field(default_factory=dict, compare=False, repr=False)
    _by_name: dict[str, Namespace] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_inode.update({ns.inode: ns for ns in self.namespaces})
        # The first namespace of a name wins, as a scan would find it (the annotator asks per path).
        for ns in self.namespaces:
            self._by_name.setdefault(ns.name, ns)

    @classmethod
    def discover(cls, *, docker: bool = True, nat: bool = True) -> Topology:
        return discover(docker=docker, nat=nat)

    def namespace(self, inode: int) -> Namespace | None:
        return self._by_inode.get(inode)

    def name(self, inode: int) -> str:
        ns = self._by_inode.get(inode)
        return ns.name if ns else f"netns:{inode}"

    def by_name(self, name: str) -> Namespace | None:
        return self._by_name.get(name)

    def peer(self, iface: Interface) -> Interface | None:
        if iface.peer_netns is None or iface.peer_ifindex is None:
            return None
        ns = self._by_inode.get(iface.peer_netns)
        return ns.iface(iface.peer_ifindex) if ns else None

    def bridge_of(self, iface: Interface) -> Interface | None:
        if iface.master is None:
            return None
        ns = self._by_inode.get(iface.netns)
        return ns.iface(iface.master) if ns else None

    @property
    def container_names(self) -> dict[int, str]:
        """netns inode -> Docker container name (for a NodeNamer's ``containers``)."""
        return {c.netns: c.name for c in self.containers if c.netns is not None}

    def container(self, name: str) -> Container | None:
        for c in self.containers:
            if c.name == name or c.id.startswith(name):
                return c
        return None

    def to_json(self) -> dict[str, Any]:
        def iface_json(i: Interface) -> dict[str, Any]:
            peer = self.peer(i)
            bridge = self.bridge_of(i)
            return {
                "ifindex": i.ifindex,
                "name": i.name,
                "kind": i.kind,
                "mac": i.mac,
                "state": i.state,
                "mtu": i.mtu,
                "addresses": list(i.addresses),
                "bridge": bridge.name if bridge else None,
                "peer": None
                if i.peer_ifindex is None
                else {
                    "node": self.name(i.peer_netns) if i.peer_netns is not None else None,
                    "netns": i.peer_netns,
                    "ifindex": i.peer_ifindex,
                    "iface": peer.name if peer else None,
                },
            }

        return {
            "own_netns": self.own_netns,
            "namespaces": [
                {
                    "node": ns.name,
                    "netns": ns.inode,
                    "path": ns.path,
                    "container": ns.container,
                    "forwarding": ns.forwarding,
                    "uplink": ns.uplink,
                    "error": ns.error,
                    "interfaces": [iface_json(i) for i in ns.interfaces],
                    "bridges": {
                        i.name: [p.name for p in ns.interfaces if p.master == i.ifindex]
                        for i in ns.interfaces
                        if i.kind == "bridge"
                    },
                    "routes": [
                        {"family": r.family, "dst": r.dst, "gateway": r.gateway, "dev": r.dev}
                        for r in ns.routes
                    ],
                    "nat_rules": [
                        {"family": r.family, "chain": r.chain, "number": r.number, "rule": r.text}
                        for r in ns.nat_rules
                    ],
                }
                for ns in self.namespaces
            ],
            "containers": [
                {
                    "id": c.id,
                    "name": c.name,
                    "netns": c.netns,
                    "pid": c.pid,
                    "networks": [
                        {"network": n.network, "ip": n.ip, "gateway": n.gateway, "mac": n.mac,
                         "bridge": n.bridge}
                        for n in c.networks
                    ],
                    "ports": [
                        {"container_port": p.container_port, "proto": p.proto,
                         "host_ip": p.host_ip, "host_port": p.host_port}
                        for p in c.ports
                    ],
                }
                for c in self.containers
            ],
            "notices": list(self.notices),
        }


# --------------------------------------------------------------------------
# Finding namespaces
# --------------------------------------------------------------------------


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def _inode(path: str) -> int | None:
    """The namespace inode behind ``path``; None unless it really is a namespace (nsfs) file:
    a netns file whose bind mount is gone is a plain empty file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino if st.st_dev == _nsfs_dev() else None


def find_namespaces() -> dict[int, str]:
    """inode -> the best path to enter it: /run/netns, Docker netns dirs, then /proc/<pid>/ns/net."""
    found: dict[int, str] = {}
    candidates: list[str] = []
    if RUN_NETNS.is_dir():
        candidates += sorted(str(p) for p in RUN_NETNS.iterdir())
    for d in DOCKER_NETNS_DIRS:
        candidates += sorted(glob.glob(f"{d}/*"))
    for pattern in LAB_NETNS_GLOBS:
        candidates += sorted(glob.glob(str(LAB_STATE / pattern)))
    for path in candidates:
        ino = _inode(path)
        if ino is not None:
            found.setdefault(ino, path)
    # readlink is cheaper than stat here: "net:[4026531840]".
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        path = f"/proc/{pid}/ns/net"
        try:
            link = os.readlink(path)
        except OSError:
            continue
        ino = int(link[5:-1])
        found.setdefault(ino, path)
    own = own_netns()
    found.setdefault(own, "/proc/self/ns/net")
    return found


# --------------------------------------------------------------------------
# Netlink, per namespace
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _RawNs:
    interfaces: list[Interface]
    routes: list[Route]
    forwarding: bool
    veths: dict[int, tuple[int, int | None]]  # ifindex -> (peer ifindex, IFLA_LINK_NETNSID)
    error: str | None = None


def _read_sysctl(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _read_one(ipr: Any, inode: int) -> _RawNs:
    addrs: dict[int, list[str]] = {}
    for a in ipr.get_addr():
        ip = a.get("IFA_ADDRESS")
        if ip is None:
            continue
        addrs.setdefault(a["index"], []).append(f"{ip}/{a['prefixlen']}")
    links = ipr.get_links()
    names = {link["index"]: link.get("IFLA_IFNAME") for link in links}
    raw: list[tuple[Any, int | None, int | None]] = []
    veths: dict[int, tuple[int, int | None]] = {}
    for link in links:
        peer_idx = link.get("IFLA_LINK")
        nsid = link.get("IFLA_LINK_NETNSID")
        raw.append((link, peer_idx, nsid))
    ifaces = []
    for link, peer_idx, nsid in raw:
        kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
        peer_netns: int | None = None
        peer_ifindex: int | None = None
        if kind == "veth" and peer_idx:
            peer_ifindex = int(peer_idx)
            # Another namespace: resolved across all namespaces later (resolve_peers).
            peer_netns = inode if nsid is None else None
            veths[int(link["index"])] = (peer_ifindex, None if nsid is None else int(nsid))
        master = link.get("IFLA_MASTER")
        ifaces.append(
            Interface(
                netns=inode,
                ifindex=int(link["index"]),
                name=source_text(str(link.get("IFLA_IFNAME"))),
                kind=kind,
                mac=link.get("IFLA_ADDRESS"),
                state=str(link.get("IFLA_OPERSTATE") or "UNKNOWN"),
                mtu=int(link.get("IFLA_MTU") or 0),
                addresses=tuple(addrs.get(int(link["index"]), ())),
                master=int(master) if master else None,
                peer_netns=peer_netns,
                peer_ifindex=peer_ifindex,
            )
        )
    routes = []
    for fam, family in ((2, 4), (10, 6)):
        for r in ipr.get_routes(family=fam, table=254):
            dst = r.get("RTA_DST")
            gw = r.get("RTA_GATEWAY")
            oif = r.get("RTA_OIF")
            if fam == 10 and dst is not None and str(dst).startswith("fe80"):
                continue  # link-local routes on every device: noise in a tree
            routes.append(
                Route(
                    family=family,
                    dst="default" if dst is None and r["dst_len"] == 0 else f"{dst}/{r['dst_len']}",
                    gateway=gw,
                    dev=names.get(oif) if oif else None,
                )
            )
    # net sysctls resolve against the opening thread's namespace, which is this one.
    forwarding = _read_sysctl("/proc/sys/net/ipv4/ip_forward") == "1"
    return _RawNs(ifaces, routes, forwarding, veths)


def read_netlink(namespaces: dict[int, str]) -> dict[int, _RawNs]:
    """Read every namespace with one worker thread that setns()es into each in turn."""
    from pyroute2 import IPRoute

    fds: dict[int, int] = {}
    out: dict[int, _RawNs] = {}
    for inode, path in namespaces.items():
        try:
            fds[inode] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            out[inode] = _RawNs([], [], False, {}, error=f"cannot open {path}: {exc.strerror}")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for inode, fd in fds.items():
                try:
                    setns_fd(fd)
                    with IPRoute() as ipr:
                        out[inode] = _read_one(ipr, inode)
                except PrivilegeError:
                    raise
                except Exception as exc:  # one namespace going away must not hide the others
                    out[inode] = _RawNs([], [], False, {}, error=f"{type(exc).__name__}: {exc}")
        except BaseException as exc:
            errors.append(exc)

    try:
        t = threading.Thread(target=worker, name="topology-netlink", daemon=True)
        t.start()
        t.join()
        if not errors:
            _resolve_peers(out, fds)
    finally:
        for fd in fds.values():
            os.close(fd)
    if errors:
        raise errors[0]
    return out


def _resolve_peers(raws: dict[int, _RawNs], fds: dict[int, int]) -> None:
    """Which namespace each veth's peer lives in.

    IFLA_LINK_NETNSID is an id local to the asking namespace; mapping it to a
    namespace takes an RTM_GETNSID per (namespace, candidate), ~1 ms each in
    pyroute2 — 50 containers asking about every namespace cost seconds. So the
    candidates are narrowed first: the peer is a veth whose ifindex is our
    IFLA_LINK and whose IFLA_LINK is our ifindex, in another namespace. Only
    when that leaves more than one candidate is the kernel asked, about those.
    """
    index: dict[tuple[int, int], tuple[int, int | None]] = {}
    for ino, r in raws.items():
        for ifindex, v in r.veths.items():
            index[(ino, ifindex)] = v
    by_ifindex: dict[int, list[int]] = {}
    for ino, ifindex in index:
        by_ifindex.setdefault(ifindex, []).append(ino)
    resolved: dict[tuple[int, int], int] = {}
    ask: dict[int, dict[int, list[int]]] = {}  # ns -> nsid -> candidate namespaces
    for (ino, ifindex), (peer_idx, nsid) in index.items():
        if nsid is None:
            continue
        cands = [
            other for other in by_ifindex.get(peer_idx, ())
            if other != ino and index[(other, peer_idx)][0] == ifindex
            and index[(other, peer_idx)][1] is not None
        ]
        if len(cands) == 1:
            resolved[(ino, ifindex)] = cands[0]
        elif cands:
            ask.setdefault(ino, {}).setdefault(nsid, []).extend(cands)
    if ask:
        resolved.update(_ask_nsids(raws, fds, ask))
    for ino, r in raws.items():
        r.interfaces = [
            replace(i, peer_netns=resolved[(ino, i.ifindex)])
            if i.peer_netns is None and (ino, i.ifindex) in resolved else i
            for i in r.interfaces
        ]


def _ask_nsids(raws: dict[int, _RawNs], fds: dict[int, int],
               ask: dict[int, dict[int, list[int]]]) -> dict[tuple[int, int], int]:
    from pyroute2 import IPRoute

    nsid_to_ns: dict[tuple[int, int], int] = {}

    def worker() -> None:
        for ino, wanted in ask.items():
            try:
                setns_fd(fds[ino])
                with IPRoute() as ipr:
                    for nsid, cands in wanted.items():
                        for other in cands:
                            # RTM_GETNSID does not allocate an id: asking has no side effect.
                            got = ipr.get_netnsid(fd=fds[other]).get("nsid")
                            if got is not None and int(got) == nsid:
                                nsid_to_ns[(ino, nsid)] = other
                                break
            except Exception:  # a namespace that vanished: its peers stay unknown
                continue

    t = threading.Thread(target=worker, name="topology-nsid", daemon=True)
    t.start()
    t.join()
    out: dict[tuple[int, int], int] = {}
    for ino in ask:
        for ifindex, (_, nsid) in raws[ino].veths.items():
            if nsid is not None and (ino, nsid) in nsid_to_ns:
                out[(ino, ifindex)] = nsid_to_ns[(ino, nsid)]
    return out


# --------------------------------------------------------------------------
# NAT rules
# --------------------------------------------------------------------------


def parse_iptables_save(text: str, family: int = 4) -> list[NatRule]:
    """The ``*nat`` table of ``iptables-save`` output as NatRules, numbered per chain."""
    rules: list[NatRule] = []
    counts: dict[str, int] = {}
    in_nat = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            in_nat = line == "*nat"
            continue
        if not in_nat or not line.startswith("-A "):
            continue
        try:
            tok = shlex.split(line)
        except ValueError:
            tok = line.split()
        chain = tok[1]
        counts[chain] = counts.get(chain, 0) + 1
        f: dict[str, Any] = {}
        neg = False
        unknown = False
        i = 2
        while i < len(tok):
            t = tok[i]
            val = tok[i + 1] if i + 1 < len(tok) else None
            if t == "!":
                neg = True
                i += 1
                continue
            step = 2
            if t in ("-s", "--source"):
                f["src"], f["src_neg"] = val, neg
            elif t in ("-d", "--destination"):
                f["dst"], f["dst_neg"] = val, neg
            elif t in ("-i", "--in-interface"):
                f["in_iface"], f["in_neg"] = val, neg
            elif t in ("-o", "--out-interface"):
                f["out_iface"], f["out_neg"] = val, neg
            elif t in ("-p", "--protocol"):
                f["proto"], f["proto_neg"] = val, neg
            elif t in ("--dport", "--destination-port"):
                f["dport"], f["dport_neg"] = val, neg
            elif t in ("--sport", "--source-port"):
                f["sport"] = val
            elif t == "--dst-type":
                f["dst_type"], f["dst_type_neg"] = val, neg
            elif t == "--src-type":
                f["src_type"] = val
            elif t in ("-j", "--jump", "-g", "--goto"):
                f["target"] = val
            elif t == "--to-destination":
                f["to_destination"] = val
            elif t == "--to-source":
                f["to_source"] = val
            elif t == "--to-ports":
                f["to_ports"] = val
            elif t == "--comment":
                f["comment"] = val
            elif t == "-m":
                pass  # the module's own options follow and are handled above
            elif t in ("--random", "--random-fully"):
                f["random"] = True
                step = 1
            elif t in ("--persistent", "--limit-iface-out"):
                step = 1
            elif t.startswith("-"):
                # A match hoptrace does not model (ctstate, mark, ...): keep the rule but say so.
                unknown = True
                step = 1
                while i + step < len(tok) and not tok[i + step].startswith("-") and tok[i + step] != "!":
                    step += 1
            else:
                step = 1
            neg = False
            i += step
        rules.append(
            NatRule(family=family, chain=chain, number=counts[chain], text=line, target=f.pop("target", None),
                    unknown=unknown, **f)
        )
    return rules


def _nat_commands() -> list[tuple[int, list[str]]]:
    cmds = []
    for family, tool in ((4, "iptables-save"), (6, "ip6tables-save")):
        if shutil.which(tool):
            cmds.append((family, [tool, "-t", "nat"]))
    return cmds


def read_nat(paths: dict[int, str]) -> tuple[dict[int, list[NatRule]], list[str]]:
    """NAT rules of the given namespaces, read in parallel (one nsenter per namespace and family)."""
    notices: list[str] = []
    rules: dict[int, list[NatRule]] = {ino: [] for ino in paths}
    cmds = _nat_commands()
    if not cmds:
        return rules, ["iptables-save is not installed: NAT rules are not shown"]
    if not shutil.which("nsenter"):
        return rules, ["nsenter is not installed: NAT rules are not shown"]
    procs = []
    for ino, path in paths.items():
        for family, argv in cmds:
            p = subprocess.Popen(
                ["nsenter", f"--net={path}", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append((ino, family, p))
    for ino, family, p in procs:
        try:
            out, err = p.communicate(timeout=IPTABLES_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            notices.append(f"iptables-save in netns {ino} did not answer")
            continue
        if p.returncode != 0:
            # A namespace that went away meanwhile (a container stopped) is not worth a notice.
            if family == 4 and os.path.exists(paths[ino]):
                last = (err.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
                notices.append(f"iptables-save in netns {ino} failed: {last}")
            continue
        rules[ino] += parse_iptables_save(out, family)
    return rules, notices


# --------------------------------------------------------------------------
# Docker
# --------------------------------------------------------------------------


def docker_url() -> str | None:
    """DOCKER_HOST, else the socket of the one hoptrace lab running the docker engine."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    socks: list[str] = []
    for state in sorted(LAB_STATE.glob("lab-*/state.json")):
        try:
            data = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if data.get("engine") != "docker":
            continue
        sock = data.get("docker_host") or data.get("socket")
        if isinstance(sock, str) and sock:
            socks.append(sock if "://" in sock else f"unix://{sock}")
            continue
        found = sorted(glob.glob(str(state.parent / "*.sock")) + glob.glob(str(state.parent / "*/*.sock")))
        found = [s for s in found if "docker" in os.path.basename(s)] or found
        if found:
            socks.append(f"unix://{found[0]}")
    if len(socks) == 1:
        return socks[0]
    if Path("/var/run/docker.sock").exists():
        return "unix:///var/run/docker.sock"
    return None


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, sock_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.sock_path = sock_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.sock_path)
        self.sock = sock


class _UnixEngine:
    """The three Engine API calls topology needs, over a unix socket with the stdlib.

    The Docker SDK (and requests under it) costs ~0.4 s of imports here, almost
    half of the 1 s budget for 50 containers; for a unix:// DOCKER_HOST plain
    HTTP/1.1 is enough. Other schemes (tcp://, TLS, ssh://) go through the SDK.
    """

    def __init__(self, sock_path: str, timeout: float) -> None:
        self.conn = _UnixHTTPConnection(sock_path, timeout)

    def get(self, path: str) -> Any:
        self.conn.request("GET", path, headers={"Host": "docker"})
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"{path}: HTTP {resp.status}")
        return json.loads(body)

    def networks(self) -> Any:
        return self.get("/networks")

    def containers(self) -> Any:
        return self.get("/containers/json")

    def inspect_container(self, cid: str) -> Any:
        return self.get(f"/containers/{cid}/json")

    def close(self) -> None:
        self.conn.close()


def read_docker(url: str | None) -> tuple[list[Container], list[dict[str, Any]], str | None]:
    """Containers and networks from the Engine API; the third value is a notice when it did not answer."""
    if url is None:
        return [], [], "no Docker API (DOCKER_HOST unset, no lab dockerd): containers are named by namespace"
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, http.client.HTTPException)
    api: Any
    if url.startswith("unix://"):
        api = _UnixEngine(url[len("unix://"):], DOCKER_TIMEOUT_S)
        close = api.close
    else:
        try:
            import docker
            from docker.errors import DockerException
            from requests.exceptions import RequestException
        except ImportError:
            return [], [], "the docker Python SDK is not installed: containers are named by namespace"
        errors = (*errors, DockerException, RequestException)
        try:
            client = docker.DockerClient(base_url=url, timeout=DOCKER_TIMEOUT_S)
        except errors as exc:
            return [], [], _docker_notice(url, exc)
        api, close = client.api, client.close
    try:
        try:
            nets = api.networks()
            bridge_of = {
                n["Name"]: (n.get("Options") or {}).get("com.docker.network.bridge.name")
                or (f"br-{n['Id'][:12]}" if n.get("Driver") == "bridge" else None)
                for n in nets
            }
            containers = [_container(api.inspect_container(c["Id"]), bridge_of) for c in api.containers()]
        finally:
            close()
    except errors as exc:
        return [], [], _docker_notice(url, exc)
    return containers, nets, None


def _docker_notice(url: str, exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"Docker API at {url} did not answer ({first[:120]}): containers are named by namespace"


def _container(info: dict[str, Any], bridge_of: dict[str, str | None]) -> Container:
    ns_settings = info.get("NetworkSettings") or {}
    pid = (info.get("State") or {}).get("Pid") or None
    netns: int | None = None
    key = ns_settings.get("SandboxKey")
    if key:
        netns = _inode(key)
    if netns is None and pid:
        netns = _inode(f"/proc/{pid}/ns/net")
    nets = tuple(
        ContainerNet(network=source_text(name), ip=n.get("IPAddress") or "", gateway=n.get("Gateway") or "",
                     mac=n.get("MacAddress") or "", bridge=bridge_of.get(name))
        for name, n in sorted((ns_settings.get("Networks") or {}).items())
    )
    ports = []
    for spec, binds in sorted((ns_settings.get("Ports") or {}).items()):
        port, _, proto = spec.partition("/")
        for b in binds or ():
            try:
                ports.append(PublishedPort(int(port), proto or "tcp", b.get("HostIp") or "",
                                           int(b.get("HostPort") or 0)))
            except ValueError:
                continue
    return Container(
        id=info["Id"],
        # Names from the API are JSON strings: a "\ud800" escape in one decodes to a lone surrogate.
        name=source_text(str(info.get("Name") or "").lstrip("/")) or info["Id"][:12],
        netns=netns,
        pid=pid,
        networks=nets,
        ports=tuple(ports),
    )


# --------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------


def _nats(raw: _RawNs) -> bool:
    """A namespace worth asking for NAT rules: it forwards, or it has a bridge (a Docker host)."""
    return raw.forwarding or any(i.kind == "bridge" for i in raw.interfaces)


def discover(*, docker: bool = True, nat: bool = True) -> Topology:
    if os.geteuid() != 0:
        raise PrivilegeError("reading every network namespace needs root", "run hoptrace as root")
    namespaces = find_namespaces()
    containers: list[Container] = []
    networks: list[dict[str, Any]] = []
    notices: list[str] = []
    namer = NodeNamer()
    answer: list[tuple[list[Container], list[dict[str, Any]], str | None]] = []
    asking: threading.Thread | None = None
    if docker:
        # The Engine API answers while netlink is read: its round trips overlap.
        url = docker_url()
        asking = threading.Thread(target=lambda: answer.append(read_docker(url)),
                                  name="topology-docker", daemon=True)
        asking.start()
    raw = read_netlink(namespaces)
    if asking is not None:
        asking.join(DOCKER_TIMEOUT_S * 4)
        containers, networks, notice = answer[0] if answer else (
            [], [], "the Docker API did not answer in time: containers are named by namespace")
        if notice:
            notices.append(notice)
        namer.containers = {c.netns: c.name for c in containers if c.netns is not None}
        # A container's namespace may be reachable only through its pid (no bind mount seen).
        extra = {}
        for c in containers:
            if c.netns is not None and c.netns not in namespaces and c.pid:
                path = f"/proc/{c.pid}/ns/net"
                if _inode(path) == c.netns:
                    extra[c.netns] = path
        if extra:
            namespaces.update(extra)
            raw = read_netlink(namespaces)
    nat_rules: dict[int, list[NatRule]] = {}
    if nat:
        nat_paths = {ino: namespaces[ino] for ino, r in raw.items() if r.error is None and _nats(r)}
        nat_rules, nat_notices = read_nat(nat_paths)
        notices += nat_notices
    by_netns = {c.netns: c for c in containers if c.netns is not None}
    own = own_netns()
    result = []
    for ino in sorted(namespaces, key=lambda i: (i != own, namer.name(i), i)):
        r = raw.get(ino) or _RawNs([], [], False, {}, error="not read")
        owner = by_netns.get(ino)
        result.append(
            Namespace(
                inode=ino,
                name=namer.name(ino),
                path=namespaces[ino],
                interfaces=tuple(r.interfaces),
                routes=tuple(r.routes),
                nat_rules=tuple(nat_rules.get(ino, ())),
                forwarding=r.forwarding,
                container=owner.id if owner else None,
                error=r.error,
            )
        )
    return Topology(
        namespaces=tuple(result),
        containers=tuple(containers),
        networks=tuple(networks),
        own_netns=own,
        notices=tuple(notices),
    )


def default_ifaces(topo: Topology) -> list[tuple[str, str]]:
    """(netns path, ifname) pairs TAPS should open: Docker bridges, their veth ports,
    each container's eth0 (every interface of a container but lo), and each such host's uplink."""
    out: list[tuple[str, str]] = []
    seen: set[tuple[int, str]] = set()

    def add(ns: Namespace, name: str) -> None:
        if (ns.inode, name) not in seen:
            seen.add((ns.inode, name))
            out.append((ns.path, name))

    container_ns = {c.netns for c in topo.containers if c.netns is not None}
    for ns in topo.namespaces:
        bridges = [i for i in ns.interfaces if i.kind == "bridge" and _docker_bridge(i.name)]
        for br in bridges:
            add(ns, br.name)
            for port in ns.interfaces:
                if port.master == br.ifindex:
                    add(ns, port.name)
        if bridges and ns.uplink:
            add(ns, ns.uplink)
    for ns in topo.namespaces:
        is_container = ns.inode in container_ns or any(
            (p := topo.peer(i)) is not None and p.master is not None and _docker_bridge(
                (topo.bridge_of(p) or p).name)
            for i in ns.interfaces
            if i.kind == "veth" and i.peer_netns != ns.inode
        )
        if is_container:
            for i in ns.interfaces:
                if i.name != "lo":
                    add(ns, i.name)
    return out


def _docker_bridge(name: str) -> bool:
    return name == "docker0" or name.startswith("br-")


class LiveTopology:
    """A snapshot kept current while tracing; ``current`` is always a whole snapshot.

    Every ``interval_s`` the set of namespaces is listed (a few ms: readlink of
    /proc/*/ns/net and stat of the netns dirs); a full ``discover()`` runs only
    when that set changed — a container started or stopped, which is also when
    Docker adds or removes its veth, addresses and NAT rules — or at least every
    ``full_every_s``, so a steady host costs next to nothing.
    """

    def __init__(self, interval_s: float = 2.0, *, initial: Topology | None = None,
                 discover_fn: Callable[[], Topology] | None = None, full_every_s: float = 60.0) -> None:
        self._discover = discover_fn or (lambda: discover())
        self.current: Topology = initial if initial is not None else self._discover()
        self.interval_s = interval_s
        self.full_every_s = full_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.refreshes = 0

    def __call__(self) -> Topology:
        return self.current

    def start(self) -> LiveTopology:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="topology-refresh", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        last_full = time.monotonic()
        while not self._stop.wait(self.interval_s):
            try:
                known = {ns.inode for ns in self.current.namespaces}
                if set(find_namespaces()) == known and time.monotonic() - last_full < self.full_every_s:
                    continue
                self.current = self._discover()
                last_full = time.monotonic()
                self.refreshes += 1
                self.last_error = None
            except (HoptraceError, OSError) as exc:
                # Keep the last good snapshot: names stay right for what has not changed.
                self.last_error = str(exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def namespaces_that_nat(topo: Topology) -> list[Namespace]:
    return [ns for ns in topo.namespaces if ns.nat_rules]


def iter_rules(ns: Namespace, chain: str, family: int = 4) -> Iterable[NatRule]:
    return (r for r in ns.nat_rules if r.chain == chain and r.family == family)


__all__: Sequence[str] = (
    "Container", "Interface", "LiveTopology", "Namespace", "NatRule", "Route", "Topology",
    "default_ifaces", "discover", "find_namespaces", "parse_iptables_save",
)
