"""Who took it (tracer/annotate/local.py, crates/hoptrace-core/src/local.rs): the core's table
rendered on path and flow lines as the Python renderers write them, the lookup's answers
from fake /proc trees, and real sockets in a namespace of the test's own."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import need_root
from tests.unit.test_core_stream import FIXTURES, Batches, read
from tracer.annotate.local import (
    MISS_FIELDS,
    MISS_SIZE,
    Found,
    Local,
    LocalLookup,
    LocalWorker,
    ProcTable,
    Query,
    local_phrase,
    local_text,
)
from tracer.engine import Engine, Lines, run
from tracer.model import Flow, ObsBatch, PacketPath
from tracer.sinks.output import (
    NdjsonSink,
    TextOptions,
    TextSink,
    flow_line,
    flow_text,
    path_line,
    path_text,
)

MISS = np.dtype(list(MISS_FIELDS))


class Answers:
    """A LocalAnswers that answers every miss at once with ``fields``/``text`` (no thread)."""

    def __init__(self, fields: str = '"pid": 12, "comm": "srv\\u001b[2J", "container": null, '
                                      '"proto": "tcp", "state": "ESTABLISHED"',
                 text: str = "delivered to srv\\x1b[2J (pid 12)") -> None:
        self.fields, self.text = fields.encode(), text.encode()
        self.pending: list[tuple[int, int, bytes, bytes, bytes]] = []
        self.keys: list[tuple[int, int, int, int, int]] = []
        self.settled = 0

    def submit(self, misses: bytes) -> None:
        assert len(misses) % MISS_SIZE == 0
        for r in np.frombuffer(misses, MISS):
            self.keys.append((int(r["netns"]), int(r["proto"]), int(r["sport"]), int(r["dport"]),
                              int(r["icmp_type"])))
            self.pending.append((int(r["slot"]), int(r["epoch"]), self.fields, self.text, b""))

    def take(self) -> list[tuple[int, int, bytes, bytes, bytes]]:
        got, self.pending = self.pending, []
        return got

    def settle(self, timeout_s: float) -> None:
        self.settled += 1


def lines_of(fixture: str, local: Any, **kw: Any) -> list[str]:
    batches, _ = read([str(FIXTURES / fixture)])
    out: list[str] = []
    for lines in Engine(Batches(batches), local=local, **kw).chunks():
        out += lines.data.decode().splitlines()
    return out


def test_a_key_is_asked_once_and_the_flow_line_carries_the_answer() -> None:
    ans = Answers()
    got = lines_of("published-port.pcapng", ans)
    # Two keys ended locally: web (the server, 42270 -> 80 after DNAT) and inet (the client).
    assert sorted(k[1:4] for k in ans.keys) == [(6, 8080, 42270), (6, 42270, 80)]
    flows = [json.loads(x) for x in got if '"type": "flow"' in x]
    assert [f["local"] for f in flows] == [{"node": "web", "pid": 12, "comm": "srv\x1b[2J", "container": None,
                                            "proto": "tcp", "state": "ESTABLISHED"}]
    assert ans.settled >= 1, "the end of input waits (bounded) for pending answers"


def test_paths_after_the_answer_carry_it_and_python_renders_them_byte_for_byte() -> None:
    """Answers that come a step later: the first path of a key has no "local", later ones do;
    every line is what the row view's Python renderer writes (NDJSON and text)."""
    ans = Answers()
    events, data = split_run("published-port.pcapng", ans)
    with_local = [e for e in events if e.local is not None]
    assert with_local, "some path or flow came after its answer"
    assert any(isinstance(e, PacketPath) for e in with_local)
    assert any(isinstance(e, PacketPath) and e.local is None and e.verdict == "delivered"
               and e.last.direction == "rx" for e in events), "the first path was not held back"
    core = data.decode().splitlines()
    py = [path_line(e) if isinstance(e, PacketPath) else flow_line(e) for e in events]
    assert core == py


def split_run(fixture: str, local: Any, recorder: Any = None) -> tuple[list[Any], bytes]:
    """The fixture in two halves 2 s apart (cut at the widest gap in its middle), a clock
    between them: the first half's paths finish, and their answers come, before the second's.
    ``recorder``: records the run as live does (its batches and the answers)."""
    batches, _ = read([str(FIXTURES / fixture)])
    assert len(batches) == 1
    b = batches[0]
    rows = b.rows.copy()
    ts = rows["ts_ns"].astype(np.int64)
    lo, hi = len(rows) // 4, 3 * len(rows) // 4
    cut = lo + 1 + int(np.argmax(np.diff(ts[lo:hi + 1])))
    first, second = rows[:cut], rows[cut:].copy()
    second["ts_ns"] += 2_000_000_000
    clock = int(ts[:cut].max()) + 1_000_000_000
    parts = [ObsBatch(first, b.hops, b.frames, drop_reasons=b.drop_reasons),
             ObsBatch(first[:0], b.hops, b.frames, now_ns=clock, drop_reasons=b.drop_reasons),
             ObsBatch(second, b.hops, b.frames, drop_reasons=b.drop_reasons)]
    data = b""
    merged: Lines | None = None
    engine = Engine(Batches(parts), local=local)
    if recorder is not None:
        engine.batch_hooks.append(recorder.on_batch)
        engine.local_hooks.append(recorder)
    for lines in engine.chunks():
        merged = lines if merged is None else merged.then(lines)
        data += lines.data
    assert merged is not None
    return merged.events(), data


@pytest.mark.parametrize("detail", [-1, 0, 1])
def test_text_names_the_receiver_as_the_python_text_does(detail: int) -> None:
    ans = Answers()
    batches, _ = read([str(FIXTURES / "host-ping.pcapng")])
    opts = TextOptions(detail=detail)
    buf = io.StringIO()
    run(Engine(Batches(batches), local=Answers()), [TextSink(buf, opts)])
    text = buf.getvalue()
    assert "delivered to srv\\x1b[2J (pid 12) on client" in text
    assert "\x1b" not in text
    # The same from row views (the TUI's and a mixed sink's path).
    nd = io.StringIO()
    run(Engine(Batches(batches), local=ans), [NdjsonSink(nd)])
    flows = [Flow.from_json(json.loads(x)) for x in nd.getvalue().splitlines() if '"type": "flow"' in x]
    assert [flow_text(f) for f in flows] == [x for x in text.splitlines() if x.startswith("f")]


def test_python_text_of_a_path_with_local() -> None:
    batches, _ = read([str(FIXTURES / "host-ping.pcapng")])
    nd = io.StringIO()
    run(Engine(Batches(batches)), [NdjsonSink(nd)])
    d = json.loads(nd.getvalue().splitlines()[0])
    d["local"] = {"node": "client", "kernel": "icmp echo"}
    p = PacketPath.from_json(d)
    assert path_text(p).endswith("\n     answered by the kernel (icmp echo) on client")
    assert path_text(p, TextOptions(detail=-1)).endswith("  answered by the kernel (icmp echo) on client")
    assert json.loads(path_line(p))["local"] == d["local"]


def test_without_a_local_table_nothing_changes() -> None:
    assert all('"local"' not in x for x in lines_of("published-port.pcapng", None))


def test_phrases() -> None:
    assert local_phrase({"kernel": "icmp echo"}) == "answered by the kernel (icmp echo)"
    assert local_phrase({"kernel": "tcp rst"}) == "answered by the kernel (RST sent: nothing listens)"
    assert local_phrase({"pid": 7, "comm": "a\u202eb"}) == "delivered to a\\u202eb (pid 7)"
    assert local_phrase({"pid": None, "comm": None, "proto": "tcp", "state": "TIME_WAIT"}) == (
        "delivered to a socket (tcp, TIME_WAIT), owner unknown")
    assert local_text({"node": "web\n", "pid": 1, "comm": "x"}) == "delivered to x (pid 1) on web\\n"
    assert Local(proto="tcp", state="LISTEN", pid=3, comm="nc", container="web").fields() == (
        '"pid": 3, "comm": "nc", "container": "web", "proto": "tcp", "state": "LISTEN"')
    assert Local(kernel="icmp echo").fields() == '"kernel": "icmp echo"'


# --------------------------------------------------------------------------
# Fake /proc trees
# --------------------------------------------------------------------------


def fake_proc(root: Path, procs: dict[int, dict[str, Any]]) -> str:
    """``root`` as a /proc: per pid its ``comm``, ``fds`` (socket inodes), ``nspid``, or
    ``broken`` (what cannot be read: "fd" is a file, "comm" is missing)."""
    for pid, p in procs.items():
        d = root / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "ns" / "net").write_text("")
        broken = p.get("broken", ())
        if "comm" not in broken:
            (d / "comm").write_bytes(p.get("comm", "proc").encode("utf-8", "surrogateescape") + b"\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in p.get("cmdline", ("proc",))) + b"\0")
        (d / "status").write_text(f"Name:\tx\nNSpid:\t{pid}" + (f"\t{p['nspid']}" if "nspid" in p else "") + "\n")
        if "fd" in broken:
            (d / "fd").write_text("not a directory")
            continue
        (d / "fd").mkdir()
        for k, ino in enumerate(p.get("fds", ())):
            os.symlink(f"socket:[{ino}]", d / "fd" / str(k + 3))
        os.symlink("/dev/null", d / "fd" / "0")
        os.symlink("pipe:[99]", d / "fd" / "1")
    (root / "self").mkdir(exist_ok=True)
    return str(root)


def test_inodes_are_found_through_fd_links_hints_first(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {100: {"fds": (5001,)}, 200: {"fds": (5002, 5003), "comm": "nginx"}})
    table = ProcTable(proc, min_scan_s=0)
    assert table.owners([5001, 5003, 7777]) == {5001: 100, 5003: 200}
    os.symlink("socket:[5004]", tmp_path / "200" / "fd" / "9")
    assert table.owners([5004], hints=[200]) == {5004: 200}
    got = table.process(200)
    assert got is not None and (got.pid, got.comm, got.cmdline) == (200, "nginx", ("proc",))


def test_unreadable_entries_and_exited_processes_give_what_could_be_found(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {
        100: {"broken": ("fd",)},                              # fd cannot be listed
        200: {"fds": (6002,), "broken": ("comm",)},            # exited between the scan and the read
        300: {"fds": (6003,), "comm": "bad\udcff\x1bname", "nspid": 7},  # undecodable bytes, a child PID ns
    })
    table = ProcTable(proc, min_scan_s=0)
    assert table.owners([6002, 6003, 6009]) == {6002: 200, 6003: 300}
    assert table.process(200) is None
    p = table.process(300)
    assert p is not None and p.comm == "bad\ufffd\x1bname" and p.ns_pid == 7
    assert table.process(4242) is None  # never existed
    assert ProcTable(str(tmp_path / "nowhere")).owners([1]) == {}


def lookup_with(proc: str, found: list[tuple[Found | None, Found | None, list[int]]],
                monkeypatch: pytest.MonkeyPatch, **kw: Any) -> LocalLookup:
    """A LocalLookup over a fake /proc whose sock_diag answers are ``found`` (in the tracer's
    own namespace: no namespace is entered)."""
    import tracer.annotate.local as mod

    monkeypatch.setattr(mod, "diag_in_netns", lambda qs, proc=proc: found[:len(qs)])
    lk = LocalLookup(proc=proc, **kw)
    lk._own = 1
    return lk


TCP_Q = Query(4, 6, "172.17.0.3", 40000, "172.17.0.2", 80)


def test_the_owner_and_its_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = fake_proc(tmp_path, {4242: {"fds": (7001,), "comm": "docker-proxy",
                                       "cmdline": ("/usr/bin/docker-proxy", "-proto", "tcp")}})
    ns = os.stat(tmp_path / "4242" / "ns" / "net").st_ino
    lk = lookup_with(proc, [(Found(1, 7001, 0), None, [])], monkeypatch, containers=lambda: {ns: "api"})
    got = lk.lookup_many(1, [(TCP_Q, 0x10, None)])[0]
    assert (got.pid, got.comm, got.container, got.proto, got.state) == (4242, "docker-proxy", "api", "tcp",
                                                                        "ESTABLISHED")
    assert got.cmdline == ("/usr/bin/docker-proxy", "-proto", "tcp")
    assert got.phrase() == "delivered to docker-proxy (pid 4242)"


def test_a_socket_whose_owner_is_not_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another PID namespace's process (or an exited one): the socket is said, its owner not."""
    proc = fake_proc(tmp_path, {100: {"fds": (1,)}})
    lk = lookup_with(proc, [(Found(10, 9999, 0), None, [])], monkeypatch)
    got = lk.lookup_many(1, [(TCP_Q, 0x02, None)])[0]
    assert (got.pid, got.proto, got.state, got.note) == (None, "tcp", "LISTEN",
                                                         "owner not visible: another PID namespace?")
    assert got.phrase() == "delivered to a socket (tcp, LISTEN), owner unknown"


def test_an_owner_that_exited_after_the_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = fake_proc(tmp_path, {100: {"fds": (8001,), "broken": ("comm",)}})
    lk = lookup_with(proc, [(Found(1, 8001, 0), None, [])], monkeypatch)
    got = lk.lookup_many(1, [(TCP_Q, 0x10, None)])[0]
    assert (got.pid, got.state, got.note) == (None, "ESTABLISHED", "the owner exited")


def test_a_time_wait_socket_is_named_with_its_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = fake_proc(tmp_path, {300: {"fds": (9001,), "comm": "httpd"}})
    lk = lookup_with(proc, [(Found(6, 0, 0), Found(10, 9001, 0), [])], monkeypatch)
    got = lk.lookup_many(1, [(TCP_Q, 0x10, None)])[0]
    assert (got.pid, got.comm, got.state) == (300, "httpd", "TIME_WAIT")


def test_what_the_kernel_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = fake_proc(tmp_path, {})
    udp = Query(4, 17, "172.17.0.3", 5000, "172.17.0.2", 53)
    echo = Query(4, 1, "172.17.0.3", 7, "172.17.0.2", 7)
    lk = lookup_with(proc, [(None, None, [])] * 5, monkeypatch)
    got = lk.lookup_many(1, [(TCP_Q, 0x02, None), (TCP_Q, 0x14, None), (TCP_Q, 0x12, None), (udp, 0, None),
                             (echo, 0, 8), (echo, 0, 3)])
    assert [g.kernel for g in got] == ["tcp rst", None, None, "icmp port unreachable", "icmp echo", "icmp"]
    # A segment other than a SYN with no socket: its connection ended since; no RST is claimed.
    assert [g.note for g in got[1:3]] == ["no socket: the connection is gone"] * 2


def test_a_namespace_that_is_gone(tmp_path: Path) -> None:
    lk = LocalLookup(proc=fake_proc(tmp_path, {}), run_netns=str(tmp_path / "none"))
    got = lk.owner(4026599999, "tcp", ("10.0.0.1", 1), ("10.0.0.2", 2), tcp_flags=0x02)
    assert (got.proto, got.note, got.pid) == ("tcp", "namespace gone", None)
    assert lk.owner(4026599999, "icmp", ("10.0.0.1", 7), ("10.0.0.2", 7), icmp_type=8).kernel == "icmp echo"


def test_misses_are_answered_with_their_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = fake_proc(tmp_path, {55: {"fds": (4001,), "comm": "nc"}})
    lk = lookup_with(proc, [(Found(1, 4001, 0), None, [])], monkeypatch)
    rec = np.zeros(2, MISS)
    rec["slot"] = [3, 4]
    rec["epoch"] = 0
    rec["netns"] = 1
    rec["family"] = 4
    rec["proto"] = [6, 1]
    rec["icmp_type"] = [0, 8]
    rec["sport"], rec["dport"] = [40000, 9], [80, 9]
    rec["src"] = [socket.inet_aton("172.17.0.3") + bytes(12)] * 2
    rec["dst"] = [socket.inet_aton("172.17.0.2") + bytes(12)] * 2
    got = lk.answer_misses(rec.tobytes())
    assert [(a[0], a[2], a[3]) for a in got] == [
        (3, b'"pid": 55, "comm": "nc", "container": null, "proto": "tcp", "state": "ESTABLISHED"',
         b"delivered to nc (pid 55)"),
        (4, b'"kernel": "icmp echo"', b"answered by the kernel (icmp echo)")]
    assert [a[4] for a in got] == [rec[:1].tobytes(), rec[1:].tobytes()]


def test_the_worker_keeps_to_its_lookup_budget() -> None:
    """A flood of misses: at most ``max_per_s`` a second are looked up, a second's worth waits,
    the rest is skipped (counted)."""
    asked: list[int] = []

    class Counting(LocalLookup):
        def answer_misses(self, misses: bytes) -> Any:
            asked.append(len(misses) // MISS_SIZE)
            return []

    w = LocalWorker(Counting(), max_per_s=20)
    w.submit(bytes(MISS_SIZE * 100))
    time.sleep(0.3)
    w.close()
    assert sum(asked) <= 20 + 0.3 * 20 + 1, asked
    assert w.skipped == 100 - 20 - 20, w.skipped


def test_the_worker_survives_a_failing_lookup() -> None:
    class Broken(LocalLookup):
        def answer_misses(self, misses: bytes) -> Any:
            raise OSError(24, "Too many open files")

    w = LocalWorker(Broken())
    w.submit(bytes(MISS_SIZE))
    w.settle(5)
    assert (w.take(), w.errors, w.last_error) == ([], 1, "OSError: [Errno 24] Too many open files")
    w.close()


# --------------------------------------------------------------------------
# Real sockets in a namespace of the test's own
# --------------------------------------------------------------------------


def in_netns(name: str, func: Any) -> Any:
    from tracer.netns import run_in_netns

    return run_in_netns(f"/run/netns/{name}", func, timeout=10)


@pytest.fixture
def server(nsname: str) -> Iterator[tuple[str, int, socket.socket, socket.socket, socket.socket]]:
    """A listening TCP socket, a client connected to it and the accepted socket, all inside
    ``nsname`` (lo up), owned by this process."""
    subprocess.run(["ip", "-n", nsname, "link", "set", "lo", "up"], check=True)

    def make() -> tuple[socket.socket, socket.socket, socket.socket]:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        cli = socket.create_connection(srv.getsockname())
        acc, _ = srv.accept()
        return srv, cli, acc

    srv, cli, acc = in_netns(nsname, make)
    try:
        yield nsname, os.stat(f"/run/netns/{nsname}").st_ino, srv, cli, acc
    finally:
        for s in (srv, cli, acc):
            s.close()


def comm() -> str:
    return Path("/proc/self/comm").read_text().strip()


def test_a_real_connection_in_a_namespace(server: Any) -> None:
    _, ns, srv, cli, _acc = server
    lk = LocalLookup()
    port, cport = srv.getsockname()[1], cli.getsockname()[1]
    got = lk.owner(ns, "tcp", ("127.0.0.1", cport), ("127.0.0.1", port), tcp_flags=0x10)
    assert (got.pid, got.comm, got.proto, got.state) == (os.getpid(), comm(), "tcp", "ESTABLISHED")
    # A new client's SYN to the listener, before any connection: the listener's owner.
    got = lk.owner(ns, "tcp", ("127.0.0.1", 1), ("127.0.0.1", port), tcp_flags=0x02)
    assert (got.pid, got.state) == (os.getpid(), "LISTEN")
    # A closed port: the kernel answers with a RST.
    closed = lk.owner(ns, "tcp", ("127.0.0.1", 1), ("127.0.0.1", port ^ 1 or 1), tcp_flags=0x02)
    assert closed.kernel == "tcp rst"


def test_a_process_that_exits_before_the_lookup(nsname: str) -> None:
    """The server exits between the packet and the lookup: its socket is gone, and what
    remains is said (nothing listens: the kernel answers a RST), never a traceback."""
    need_root()
    subprocess.run(["ip", "-n", nsname, "link", "set", "lo", "up"], check=True)
    code = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); "
            "print(s.getsockname()[1], flush=True); sys.stdin.read()")
    p = subprocess.Popen(["ip", "netns", "exec", nsname, sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline())
        ns = os.stat(f"/run/netns/{nsname}").st_ino
        lk = LocalLookup()
        alive = lk.owner(ns, "tcp", ("127.0.0.1", 1), ("127.0.0.1", port), tcp_flags=0x02)
        assert (alive.comm, alive.state) == (os.path.basename(sys.executable)[:15], "LISTEN")
        assert alive.pid is not None and alive.pid != os.getpid()
    finally:
        p.kill()
        p.wait()
    gone = lk.owner(ns, "tcp", ("127.0.0.1", 1), ("127.0.0.1", port), tcp_flags=0x02)
    assert (gone.kernel, gone.pid) == ("tcp rst", None)


def test_a_namespace_that_disappears_between_lookups(nsname: str) -> None:
    need_root()
    subprocess.run(["ip", "-n", nsname, "link", "set", "lo", "up"], check=True)
    ns = os.stat(f"/run/netns/{nsname}").st_ino
    lk = LocalLookup()
    first = lk.owner(ns, "tcp", ("127.0.0.1", 1), ("127.0.0.1", 9), tcp_flags=0x02)
    assert first.kernel == "tcp rst"  # seen: its path is cached
    subprocess.run(["ip", "netns", "del", nsname], check=True)
    subprocess.run(["ip", "netns", "add", nsname], check=True)  # the fixture removes it again
    got = lk.owner(ns, "tcp", ("127.0.0.1", 1), ("127.0.0.1", 9), tcp_flags=0x02)
    assert (got.note, got.proto) == ("namespace gone", "tcp")


def test_a_raw_icmp_socket_takes_echo_replies(nsname: str) -> None:
    need_root()
    subprocess.run(["ip", "-n", nsname, "link", "set", "lo", "up"], check=True)
    raw = in_netns(nsname, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    try:
        ns = os.stat(f"/run/netns/{nsname}").st_ino
        got = LocalLookup().owner(ns, "icmp", ("127.0.0.1", 77), ("127.0.0.1", 77), icmp_type=0)
        assert (got.pid, got.comm, got.proto) == (os.getpid(), comm(), "icmp")
    finally:
        raw.close()


def test_the_worker_answers_off_the_calling_thread(server: Any) -> None:
    _, ns, srv, cli, _acc = server
    rec = np.zeros(1, MISS)
    rec["netns"], rec["family"], rec["proto"], rec["tcp_flags"] = ns, 4, 6, 0x10
    rec["sport"], rec["dport"] = cli.getsockname()[1], srv.getsockname()[1]
    rec["src"] = rec["dst"] = socket.inet_aton("127.0.0.1") + bytes(12)
    w = LocalWorker(LocalLookup())
    names: list[str] = []
    orig = w.lookup.answer_misses

    def spy(m: bytes) -> Any:
        names.append(threading.current_thread().name)
        return orig(m)

    w.lookup.answer_misses = spy  # type: ignore[method-assign]
    t0 = time.monotonic()
    w.submit(rec.tobytes())
    assert time.monotonic() - t0 < 0.05, "submit does not wait for the lookup"
    w.settle(10)
    got = w.take()
    w.close()
    assert names == ["hoptrace-local"]
    assert [json.loads("{" + a[2].decode() + "}")["pid"] for a in got] == [os.getpid()]


def test_many_lookups_at_once(nsname: str) -> None:
    """More lookups than one batch holds, found, not accepted yet (the listener's) and absent."""
    subprocess.run(["ip", "-n", nsname, "link", "set", "lo", "up"], check=True)
    from tracer.annotate.local import DIAG_BATCH, diag_in_netns

    def run() -> list[Any]:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1024)
        port = srv.getsockname()[1]
        cs = [socket.create_connection(("127.0.0.1", port)) for _ in range(2 * DIAG_BATCH)]
        acc = [srv.accept()[0] for _ in range(DIAG_BATCH)]
        qs = [Query(4, 6, "127.0.0.1", c.getsockname()[1], "127.0.0.1", port) for c in cs]
        qs += [Query(4, 6, "127.0.0.1", p, "127.0.0.1", 1) for p in range(1, DIAG_BATCH + 2)]
        try:
            return [(f is not None, bool(f and f.inode), bool(li and li.inode)) for f, li, _ in diag_in_netns(qs)]
        finally:
            for s in [srv, *cs, *acc]:
                s.close()

    got = in_netns(nsname, run)
    n = DIAG_BATCH
    assert got == [(True, True, False)] * n + [(True, False, True)] * n + [(False, False, False)] * (n + 1)


def test_the_tui_says_who_took_it() -> None:
    """The path view: the path's own "local", else its flow's when the path is the request."""
    from tui.format import path_view
    from tui.store import PathStore

    batches, _ = read([str(FIXTURES / "host-ping.pcapng")])
    nd = io.StringIO()
    run(Engine(Batches(batches), local=Answers(
        '"pid": 7, "comm": "evil\\u001b]0;x\\u0007", "container": "client", "proto": "icmp", "state": null',
        "delivered to evil\\x1b]0;x\\x07 (pid 7)")), [NdjsonSink(nd)])
    events = [PacketPath.from_json(d) if d["type"] == "path" else Flow.from_json(d)
              for d in map(json.loads, nd.getvalue().splitlines()) if d["type"] in ("path", "flow")]
    store = PathStore()
    store.add([(e, True) for e in events if isinstance(e, PacketPath)])
    store.add_flows([e for e in events if isinstance(e, Flow)])
    request = next(e for e in events if isinstance(e, PacketPath) and e.first.icmp_type == 8)
    assert request.local is None  # written before the answer came: its flow has it
    local = store.local_of(request)
    assert local is not None
    text = path_view(request, *store.flow_of(request), local=local).plain
    assert "→ delivered to evil\\x1b]0;x\\x07 (pid 7) on client" in text
    assert "\x1b" not in text
