"""Capturing the lab's own traffic and replaying it through the real engine parts."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.conftest import need_tool
from tracer.model import PacketPath
from tracer.netns import run_in_netns

NODES = ("client", "host", "inet")


def capture(lab: Any, scenarios: Iterable[str], out: Path) -> dict[str, Path]:
    """Run ``scenarios`` while tcpdump (-i any: SLL2 keeps ifindex and direction) records
    client, host and inet; returns node -> file."""
    need_tool("tcpdump")
    files = {node: out / f"{node}.pcap" for node in NODES}
    procs = []
    try:
        for node, f in files.items():
            p = subprocess.Popen(
                ["nsenter", f"--net={lab.netns_path(node)}", "--",
                 "tcpdump", "-i", "any", "-s", "128", "-B", "32768", "-U", "--immediate-mode", "-n",
                 "-w", str(f), "icmp or tcp port 8080 or tcp port 80"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stderr is not None
            seen: list[str] = []
            while not seen or "listening on" not in seen[-1]:  # "data link type ...", then this
                line = p.stderr.readline()
                assert line, seen  # tcpdump exited
                seen.append(line)
        for scenario in scenarios:
            res = lab.run(scenario)
            assert res.ok, res.detail
        time.sleep(0.3)  # the last replies reach tcpdump's ring before it is stopped
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    return files


def replay_paths(lab: Any, files: dict[str, Path]) -> list[PacketPath]:
    """Replay the captures (FileSource + the reference correlator); hops get the real netns
    inodes and neutral node labels ("n-<node>"), so naming is left to the annotator."""
    from tests.reference.correlate import Correlator
    from tracer.sources.files import FileSource

    files = {node: f for node, f in files.items() if f.stat().st_size > 24}  # not just a header
    inode = {f"n-{node}": lab.netns_inode(node) for node in files}
    src = FileSource([], hops=[(f"n-{node}/any", str(f)) for node, f in files.items()])
    src.start()
    corr = Correlator()
    paths: list[PacketPath] = []
    synthetic: dict[int, int] = {}
    for batch in src.batches():
        for i, h in enumerate(batch.hops):
            if h.node in inode and h.netns != inode[h.node]:
                synthetic[h.netns] = inode[h.node]
                batch.hops[i] = dataclasses.replace(h, netns=inode[h.node])
        col = batch.rows["netns"]
        for old, new in synthetic.items():
            col[col == old] = new
        paths += corr.feed_batch(batch)
    paths += corr.flush()
    return paths


LAB_NODES = ("host", "inet", "client", "web")


def _nft_tables(path: str) -> list[tuple[int, str]]:
    def tables() -> list[tuple[int, str]]:
        from pyroute2.nftables.main import NFTables

        out = []
        for fam in (2, 10):
            with NFTables(nfgen_family=fam) as nft:
                out += [(fam, str(t.get("NFTA_TABLE_NAME"))) for t in nft.get_tables()]
        return sorted(out)

    return run_in_netns(path, tables, timeout=10)


def ruleset(lab: Any, ours: tuple[int, ...] = ()) -> dict[str, Any]:
    """Every lab namespace's iptables-save/ip6tables-save (all tables) and nf_tables table list.

    iptables-save's "# Generated ... on <time>" lines and packet counters change with time and
    traffic, not with the ruleset: they are normalised. Rules tagged by *another* running
    hoptrace (a concurrent `live --rules` elsewhere on this shared machine) are not this
    test's business: those lines, and then the raw table they live in, are left out.
    (`nft` itself is not installed here; the nf_tables list comes from netlink.)"""
    snap: dict[str, Any] = {}
    mine = tuple(f"hoptrace:{pid}" for pid in (os.getpid(), *ours))
    for node in LAB_NODES:
        path = lab.netns_path(node)
        foreign = False
        for tool in ("iptables-save", "ip6tables-save"):
            out = subprocess.run(["nsenter", f"--net={path}", "--", tool], capture_output=True,
                                 text=True, check=True).stdout
            lines = []
            for line in out.splitlines():
                if line.startswith("#"):
                    continue
                if "hoptrace:" in line and not any(tag in line for tag in mine):
                    foreign = True
                    continue
                lines.append(re.sub(r"\[\d+:\d+\]$", "[0:0]", line))
            snap[f"{node}:{tool}"] = lines
        tables = _nft_tables(path)
        if foreign:
            tables = [t for t in tables if t[1] != "raw"]
            for tool in ("iptables-save", "ip6tables-save"):
                snap[f"{node}:{tool}"] = _without_raw(snap[f"{node}:{tool}"])
        snap[f"{node}:nft"] = tables
    return snap


def _without_raw(lines: list[str]) -> list[str]:
    out, skip = [], False
    for line in lines:
        if line.startswith("*"):
            skip = line == "*raw"
        if not skip:
            out.append(line)
        if line == "COMMIT":
            skip = False
    return out
