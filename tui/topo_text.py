"""The topology pane's text: from tracer.topology's Topology when given, else from the hops seen.

Every name here (namespaces, containers, interfaces, addresses, rules) is ``term_safe``:
any process with the privilege chooses them, and Rich passes controls through.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.text import Text

from tracer.model import PacketPath
from tracer.safe_text import term_safe as _s

if TYPE_CHECKING:
    from tracer.topology import Interface, Topology


def topology_text(topo: Topology, seen_netns: set[int] | None = None) -> Text:
    """``topo`` as the topology pane shows it.

    With ``seen_netns``, only the namespaces packets were seen in (a busy host has many).
    """
    out = Text()
    spaces = [ns for ns in topo.namespaces if not seen_netns or ns.inode in seen_netns]
    if seen_netns and len(spaces) < len(topo.namespaces):
        out.append(f"{len(spaces)} of {len(topo.namespaces)} namespaces: those in the paths shown\n",
                   style="dim italic")
    ports: dict[str, list[str]] = {}
    for c in topo.containers:
        ports[c.name] = [_s(f"{p.host_ip or '*'}:{p.host_port}→{p.container_port}/{p.proto}") for p in c.ports]
    for ns in spaces:
        out.append(_s(ns.name), style="bold")
        extra = [f"netns {ns.inode}"]
        if ns.uplink:
            extra.append(f"uplink {_s(ns.uplink)}")
        if ns.forwarding:
            extra.append("forwarding")
        out.append("  " + ", ".join(extra) + "\n", style="dim")
        if ns.error:
            out.append(f"  unreadable: {_s(ns.error)}\n", style="red")
        if ports.get(ns.name):
            out.append("  published " + ", ".join(ports[ns.name]) + "\n", style="yellow")
        by_index = {i.ifindex: i for i in ns.interfaces}
        for iface in ns.interfaces:
            if iface.name == "lo" or iface.master in by_index:
                continue  # bridge ports are listed under their bridge
            out.append_text(_iface_line(topo, iface, "  "))
            if iface.kind == "bridge":
                for port in (p for p in ns.interfaces if p.master == iface.ifindex):
                    out.append_text(_iface_line(topo, port, "    ├ "))
        for rule in ns.nat_rules:
            if rule.target in ("MASQUERADE", "SNAT", "DNAT"):
                out.append(_s(f"  nat {rule.chain} {rule.number}: {rule.text}") + "\n", style="magenta")
    return out


def _global(addresses: Iterable[str]) -> list[str]:
    """Without link-local IPv6 (every interface has one; it says nothing about the path)."""
    return [a for a in addresses if not a.lower().startswith("fe80:")]


def _iface_line(topo: Topology, iface: Interface, indent: str) -> Text:
    line = Text(indent)
    line.append(_s(iface.name), style="bold cyan" if iface.kind == "bridge" else "cyan")
    if iface.kind:
        line.append(f" [{_s(iface.kind)}]", style="dim")
    if _global(iface.addresses):
        line.append(" " + _s(" ".join(_global(iface.addresses))))
    peer = topo.peer(iface)
    if peer is not None:
        line.append(_s(f" ⇄ {topo.name(peer.netns)}/{peer.name}"), style="green")
        if _global(peer.addresses):
            line.append(" " + _s(" ".join(_global(peer.addresses))), style="green")
    if iface.state not in ("UP", "UNKNOWN"):
        line.append(f" {_s(iface.state)}", style="red")
    line.append("\n")
    return line


def seen_text(paths: Iterable[PacketPath]) -> Text:
    """Nodes, interfaces, the links packets took between them, and end addresses seen.

    Without a topology source only what the hops prove is shown: a sender's
    address (source of a path's first hop) and a receiver's (destination of a
    delivered path's last hop); NAT makes anything in between ambiguous.
    """
    ifaces: dict[str, dict[str, set[str]]] = {}
    links: dict[str, set[str]] = {}
    for path in paths:
        hops = path.hops
        for i, hop in enumerate(hops):
            ifaces.setdefault(hop.node, {}).setdefault(hop.ifname, set())
            if i + 1 < len(hops):
                nxt = hops[i + 1]
                if nxt.hop_name != hop.hop_name:
                    links.setdefault(hop.hop_name, set()).add(nxt.hop_name)
        first, last = hops[0], hops[-1]
        if first.direction == "tx" and first.src:
            ifaces[first.node][first.ifname].add(first.src)
        if path.verdict == "delivered" and last.dst:
            ifaces[last.node][last.ifname].add(last.dst)
    out = Text("from the hops seen (no topology source)\n", style="dim italic")
    if not ifaces:
        out.append("nothing seen yet\n", style="dim")
    for node in sorted(ifaces):
        out.append(_s(node) + "\n", style="bold")
        for iface in sorted(ifaces[node]):
            out.append(f"  {_s(iface)}", style="cyan")
            seen = sorted(ifaces[node][iface])
            if seen:
                out.append("  " + _s(" ".join(seen[:3])) + (" …" if len(seen) > 3 else ""))
            out.append("\n")
            for to in sorted(links.get(f"{node}/{iface}", ())):
                out.append(f"      → {_s(to)}\n", style="green")
    return out
