"""``hoptrace topology [--json]``: what ifconfig, ip route, brctl and iptables -t nat
showed by hand, in one tree per namespace (named by container where Docker says so)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import TextIO

from tracer.safe_text import term_safe
from tracer.topology import Interface, Namespace, Topology


def run(args: argparse.Namespace) -> int:
    topo = Topology.discover()
    for notice in topo.notices:
        print(f"hoptrace: {term_safe(notice)}", file=sys.stderr)
    if args.json:
        json.dump(topo.to_json(), sys.stdout, indent=None, separators=(",", ":"))
        sys.stdout.write("\n")
    else:
        render(topo, sys.stdout)
    return 0


class _SafeLines:
    """Writes each line with its content ``term_safe``: interface, namespace, container and
    network names, labels and rule text are anyone's to choose, and one escaped field per
    line cannot be forgotten here. Each ``write`` is at most one line, ending in its newline."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, text: str) -> None:
        body, nl = (text[:-1], "\n") if text.endswith("\n") else (text, "")
        self.out.write(term_safe(body) + nl)


def _iface_line(topo: Topology, ns: Namespace, i: Interface) -> str:
    parts = [f"{i.name}"]
    if i.kind:
        parts.append(f"({i.kind})")
    parts.append(i.state.lower())
    if i.addresses:
        parts.append(" ".join(i.addresses))
    if i.peer_ifindex is not None:
        peer = topo.peer(i)
        if i.peer_netns == ns.inode:
            where = ""
        elif i.peer_netns is None:
            where = "?/"
        else:
            where = f"{topo.name(i.peer_netns)}/"
        pname = peer.name if peer else f"if{i.peer_ifindex}"
        parts.append(f"<-> {where}{pname}")
    bridge = topo.bridge_of(i)
    if bridge:
        parts.append(f"[port of {bridge.name}]")
    return " ".join(parts)


def render(topo: Topology, stream: TextIO) -> None:
    out = _SafeLines(stream)
    containers = {c.netns: c for c in topo.containers if c.netns is not None}
    names = Counter(ns.name for ns in topo.namespaces)
    for n, ns in enumerate(topo.namespaces):
        if n:
            out.write("\n")
        what = []
        if ns.inode == topo.own_netns:
            what.append("this namespace")
        c = containers.get(ns.inode)
        if c:
            what.append(f"container {c.id[:12]}")
        if ns.forwarding:
            what.append("forwarding")
        if names[ns.name] > 1:
            what.append(ns.path)  # several labs up: "host" alone does not say which
        extra = f" ({', '.join(what)})" if what else ""
        out.write(f"{ns.name}  netns:{ns.inode}{extra}\n")
        if ns.error:
            out.write(f"  ! not read: {ns.error}\n")
            continue
        out.write("  interfaces\n")
        for i in ns.interfaces:
            out.write(f"    {_iface_line(topo, ns, i)}\n")
        bridges = [i for i in ns.interfaces if i.kind == "bridge"]
        if bridges:
            out.write("  bridges\n")
            for br in bridges:
                ports = [p.name for p in ns.interfaces if p.master == br.ifindex]
                out.write(f"    {br.name}: {' '.join(ports) or '(no ports)'}\n")
        if ns.routes:
            out.write("  routes\n")
            for r in ns.routes:
                via = f" via {r.gateway}" if r.gateway else ""
                dev = f" dev {r.dev}" if r.dev else ""
                out.write(f"    {r.dst}{via}{dev}\n")
        if ns.uplink:
            out.write(f"  uplink {ns.uplink}\n")
        if c and (c.networks or c.ports):
            out.write("  docker\n")
            for net in c.networks:
                out.write(f"    network {net.network} ip {net.ip} gw {net.gateway}"
                          f"{' bridge ' + net.bridge if net.bridge else ''}\n")
            for p in c.ports:
                out.write(f"    publish {p.host_ip or '*'}:{p.host_port} -> {p.container_port}/{p.proto}\n")
        if ns.nat_rules:
            out.write("  nat\n")
            for rule in ns.nat_rules:
                fam = "" if rule.family == 4 else "(ipv6) "
                out.write(f"    {fam}{rule.text}\n")
