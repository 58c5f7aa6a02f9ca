"""netns inode -> node name, per CONTRACT.md.

Order of precedence: a container name from the Docker API (added by
tracer.topology), a lab's node labels (``/run/hoptrace/lab-*/nodes.json``), a
``/run/netns/NAME``, the tracer's own namespace as ``host``; anything else is
``netns:<inode>``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tracer.safe_text import source_text

RUN_NETNS = Path("/run/netns")
LAB_STATE = Path("/run/hoptrace")


def netns_inode(path: str | os.PathLike[str]) -> int:
    return os.stat(path).st_ino


def own_netns() -> int:
    return netns_inode("/proc/self/ns/net")


class NodeNamer:
    """Names namespaces; ``refresh()`` re-reads the sources (cheap: a few stats)."""

    def __init__(self) -> None:
        self.containers: dict[int, str] = {}  # filled by tracer.topology from the Docker API
        self._names: dict[int, str] = {}
        self.refresh()

    def refresh(self) -> None:
        names: dict[int, str] = {}
        lab_claims_host = False
        if LAB_STATE.is_dir():
            for f in sorted(LAB_STATE.glob("lab-*/nodes.json")):
                try:
                    labels = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                for inode, node in labels.items():
                    names[int(inode)] = source_text(str(node))
                    lab_claims_host |= node == "host"
        if RUN_NETNS.is_dir():
            for entry in RUN_NETNS.iterdir():
                try:
                    # Any bytes but "/" and NUL: undecodable ones arrive as surrogates, which no
                    # recording or terminal can encode; controls stay (the writers escape them).
                    names.setdefault(netns_inode(entry), source_text(entry.name))
                except OSError:
                    continue
        # In a lab, "host" is the lab's Docker host; the tracer's own namespace is then "root".
        names.setdefault(own_netns(), "root" if lab_claims_host else "host")
        self._names = names

    def name(self, netns: int) -> str:
        return self.containers.get(netns) or self._names.get(netns) or f"netns:{netns}"

    def known(self) -> dict[int, str]:
        """Every namespace with a name (inode -> name), a container's over its namespace's."""
        return {**self._names, **self.containers}

    def load_docker(self, url: str | None = None) -> str | None:
        """Fill ``containers`` from the Docker Engine API (``DOCKER_HOST``, else a lab's dockerd).

        Returns a one-line notice when no API answered: names then fall back to
        namespace names. Kept out of ``__init__``: the SDK import and an API
        round trip are not free and most callers get names from tracer.topology.
        """
        from tracer.topology import docker_url, read_docker

        containers, _, notice = read_docker(url if url is not None else docker_url())
        self.containers = {c.netns: c.name for c in containers if c.netns is not None}
        return notice
