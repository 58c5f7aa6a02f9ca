"""Drops that are not drops, live in the lab (both engines): `hoptrace live --backend ebpf --json`
while a TCP server closes with data unread, busybox ping (a raw socket) gets its echo replies,
and a UDP datagram hits a closed port (docs/drop-reasons.md).

- the TCP exchange is `delivered` (what the server never read reached its socket);
- busybox ping's echo replies are `delivered`: their originals are freed with NO_SOCKET after
  the raw socket got a copy (the raw socket table, tracer/annotate/raw_sockets.py);
- the datagram to the closed port stays `dropped` at web/eth0 with NO_SOCKET (no raw socket);
- no hop anywhere is named `?`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.root, pytest.mark.lab]

WEB, CLIENT = "172.17.0.2", "172.17.0.3"
TCP_PORT, UDP_PORT, BLOCKED_PORT = 47123, 47124, 47125
CLI = [sys.executable, "-c", "import sys; from tracer.cli import main; sys.exit(main())"]

SERVER = f"""
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {TCP_PORT}))
s.listen()
c, _ = s.accept()
time.sleep(0.5)  # the client's data waits in the socket, unread
c.close()
s.close()
"""
CLIENT_TCP = f"""
import socket, time
s = socket.create_connection(("{WEB}", {TCP_PORT}), timeout=5)
for _ in range(3):
    s.send(b"x" * 100)
    time.sleep(0.05)
time.sleep(0.8)
s.close()
"""
CLIENT_UDP = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"hi", ("{WEB}", {UDP_PORT}))
try:
    s.sendto(b"no", ("{WEB}", {BLOCKED_PORT}))  # dropped in client's OUTPUT chain
except PermissionError:
    pass
"""


def traced(lab: Any, tmp: Path) -> list[dict[str, Any]]:
    ready = tmp / f"ready-{uuid.uuid4().hex[:6]}"
    # No --iface: a free with no device has no namespace in the probe (a namespace filter drops
    # it); the filter keeps this test's traffic and the paths are picked by namespace below.
    proc = subprocess.Popen([*CLI, "live", "--backend", "ebpf", "--json", "--ready-file", str(ready),
                             "--filter", f"icmp or port {TCP_PORT} or port {UDP_PORT} or port {BLOCKED_PORT}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - t0 < 30, "no ready file after 30 s"
            time.sleep(0.02)
        server = subprocess.Popen(["nsenter", f"--net={lab.netns_path('web')}", "--", sys.executable, "-c", SERVER])
        # Listening before the client connects (a SYN to a closed port is a real drop), seen from
        # web's namespace without connecting (the server accepts once).
        while f":{TCP_PORT}" not in lab.exec("web", ["ss", "-ltnH"]).stdout:
            assert server.poll() is None and time.monotonic() - t0 < 30, "the test server does not listen"
            time.sleep(0.02)
        r = lab.exec("client", [sys.executable, "-c", CLIENT_TCP])
        assert r.returncode == 0, r.stderr
        server.wait(timeout=10)
        r = lab.exec("client", ["busybox", "ping", "-c", "3", "-i", "0.3", WEB])
        assert r.returncode == 0, r.stdout + r.stderr
        block = ["OUTPUT", "-p", "udp", "--dport", str(BLOCKED_PORT), "-j", "DROP"]
        lab.iptables("client", "-I", *block)
        try:
            r = lab.exec("client", [sys.executable, "-c", CLIENT_UDP])
        finally:
            lab.iptables("client", "-D", *block)
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)  # past the correlator's window, the raw socket table's next poll
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module", params=["netns", "docker"])
def records(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lab = request.getfixturevalue(f"lab_{request.param}")
    recs = traced(lab, tmp_path_factory.mktemp("drops"))
    ours = {lab.netns_inode(n) for n in ("host", "inet", "client", "web")}
    paths = [r for r in recs if r["type"] == "path" and all(h["netns"] in ours for h in r["hops"])]
    return {"all": recs, "paths": paths, "client": lab.netns_inode("client")}


def test_the_server_closing_with_data_unread_leaves_the_exchange_delivered(records: dict[str, Any]) -> None:
    data = [p for p in records["paths"] if p["proto"] == "tcp" and p["hops"][0]["dport"] == TCP_PORT
            and p["hops"][0]["src"] == CLIENT and any(h["node"] == "web" for h in p["hops"])]
    assert len(data) >= 4, [(p["verdict"], [(h["node"], h["dir"]) for h in p["hops"]]) for p in data]
    assert {p["verdict"] for p in data} == {"delivered"}, [
        (p["verdict"], [(h["node"], h["iface"], h["dir"], h["drop_reason"]) for h in p["hops"]])
        for p in data if p["verdict"] != "delivered"]


def test_busybox_ping_echo_replies_are_delivered(records: dict[str, Any]) -> None:
    replies = [p for p in records["paths"] if p["proto"] == "icmp" and p["hops"][0]["src"] == WEB
               and p["hops"][-1]["dst"] == CLIENT and p["hops"][-1]["node"] == "client"]
    assert len(replies) >= 3, replies
    freed = [p for p in replies if p["hops"][-1]["dir"] == "drop"]
    # The raw socket got a copy of each; the original is freed with NO_SOCKET, and that lost nothing.
    assert freed and {p["hops"][-1]["drop_reason"] for p in freed} == {"NO_SOCKET"}
    # On failure, every hop of the replies not delivered, with times: a split path, or a free
    # that no poll of the raw socket table (every 200 ms) covered before its path finished
    # (500 ms idle). Seen once in a clean-clone run (2026-12-08), not in 28 runs since.
    assert {p["verdict"] for p in replies} == {"delivered"}, [
        (p["verdict"], p["id"], [(h["node"], h["iface"], h["dir"], h["drop_reason"], h["ts_ns"]) for h in p["hops"]])
        for p in replies if p["verdict"] != "delivered"]


def test_a_datagram_to_a_closed_port_stays_dropped(records: dict[str, Any]) -> None:
    (p,) = [p for p in records["paths"] if p["proto"] == "udp" and p["hops"][0]["dport"] == UDP_PORT]
    assert p["verdict"] == "dropped"
    last = p["hops"][-1]
    assert (last["node"], last["iface"], last["dir"], last["drop_reason"]) == ("web", "eth0", "drop", "NO_SOCKET")


def test_a_drop_before_any_device_is_named_by_its_sockets_namespace(records: dict[str, Any]) -> None:
    """A datagram dropped in the sender's OUTPUT chain has no device yet: the probe takes the
    namespace of its socket, and the hop says "(no device)"."""
    (p,) = [p for p in records["paths"] if p["hops"][0]["dport"] == BLOCKED_PORT]
    assert p["verdict"] == "dropped"
    assert [(h["node"], h["netns"], h["iface"], h["dir"], h["drop_reason"]) for h in p["hops"]] == [
        ("client", records["client"], "(no device)", "drop", "NETFILTER_DROP")]


def test_no_hop_is_named_question_mark(records: dict[str, Any]) -> None:
    hops = [h for r in records["all"] if r["type"] == "path" for h in r["hops"]]
    assert hops
    assert [h for h in hops if h["node"] == "?" or h["iface"] == "?"] == []
