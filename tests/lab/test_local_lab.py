"""Who took it, live in the lab (both engines): a TCP connection to the web server names the
server's process, pid and container; a ping is answered by the kernel; a closed port gets the
kernel's RST. Flows carry ``"local"`` (the lookup runs off the hot path: the flow line, written
when the flow closes, has it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tracer.lab import Lab
from tracer.lab import addresses as A

pytestmark = [pytest.mark.root, pytest.mark.lab]

# This checkout's hoptrace under this interpreter (a worktree has no .venv/bin/hoptrace of its own).
HOPTRACE = [sys.executable, "-c",
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tracer.cli import main; sys.exit(main())"]


def traced(lab: Lab, tmp: Path, backend: str, traffic: Any) -> list[dict[str, Any]]:
    """``live --json`` while ``traffic()`` runs; the records with a hop in the lab's namespaces."""
    ready = tmp / f"ready-{uuid.uuid4().hex[:6]}"
    argv = [*HOPTRACE, "live", "--backend", backend, "--json", "--ready-file", str(ready), f"host {A.WEB}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - t0 < 60, "no ready file"
            time.sleep(0.05)
        traffic()
        time.sleep(1.5)  # the last paths finish (0.5 s) and their lookups answer
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    mine = {lab.netns_inode(n) for n in ("host", "client", "web")}
    recs = [json.loads(x) for x in out.splitlines() if x.strip()]
    paths = {r["id"] for r in recs if r["type"] == "path" and any(h["netns"] in mine for h in r["hops"])}
    return [r for r in recs if (r["type"] == "path" and r["id"] in paths)
            or (r["type"] == "flow" and set(r["paths"]) & paths)]


def flow_to(recs: list[dict[str, Any]], proto: str, dport: int | None) -> dict[str, Any]:
    flows = [r for r in recs if r["type"] == "flow" and r["proto"] == proto
             and r["original"]["dst"] == A.WEB and r["original"]["dport"] == dport]
    assert len(flows) == 1, flows
    return flows[0]


def check(lab: Lab, tmp: Path, backend: str) -> None:
    def traffic() -> None:
        got = lab.exec("client", ["busybox", "wget", "-q", "-O", "-", f"http://{A.WEB}:{A.WEB_PORT}/"])
        assert A.WEB_BODY in got.stdout or got.returncode == 0, got.stderr
        assert lab.exec("client", ["busybox", "ping", "-c", "1", "-W", "2", A.WEB]).returncode == 0
        closed = lab.exec("client", ["busybox", "nc", "-w", "1", A.WEB, "81"], input="")
        assert closed.returncode != 0

    recs = traced(lab, tmp, backend, traffic)
    web = lab.netns_inode("web")

    http = flow_to(recs, "tcp", A.WEB_PORT)["local"]
    assert (http["node"], http["container"], http["proto"]) == ("web", "web", "tcp"), http
    assert http["state"] in ("ESTABLISHED", "TIME_WAIT", "LISTEN", "CLOSE_WAIT", "LAST_ACK"), http
    pid = http["pid"]
    assert isinstance(pid, int), http
    # The server's process: in web's namespace, by the name it runs under.
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == web
    assert http["comm"] == Path(f"/proc/{pid}/comm").read_text().strip()
    assert http["comm"] in ("busybox", "httpd"), http

    assert flow_to(recs, "icmp", None)["local"] == {"node": "web", "kernel": "icmp echo"}
    assert flow_to(recs, "tcp", 81)["local"] == {"node": "web", "kernel": "tcp rst"}
    # A path written after the answer came carries it too (the HTTP exchange's later segments).
    later = [r for r in recs if r["type"] == "path" and "local" in r]
    assert all(r["local"]["node"] in ("web", "client") for r in later)


@pytest.mark.parametrize("backend", ["ebpf", "pcap"])
def test_who_took_it_netns(lab_netns: Lab, tmp_path: Path, backend: str) -> None:
    check(lab_netns, tmp_path, backend)


def test_who_took_it_docker(lab_docker: Lab, tmp_path: Path) -> None:
    check(lab_docker, tmp_path, "ebpf")
