"""``hoptrace replay --json`` on the core's engine (tracer._core.replay_ndjson) against the
reference engine (tests/reference: its reader, correlator and NDJSON), byte for byte.

The new output is the real command's (a subprocess: ``python -m tracer.cli replay --json``
from this checkout; for the corpus, ``tracer.cli.main`` in this process, its stdout a file:
the same code without 830 interpreter start-ups); the reference is
``tests.reference.replay.replay_files``, then the held error as ``cli.main`` reports it.
They must print the same lines (the stats line's ``elapsed_s`` aside), the same error line
and exit with the same status: on every fixture, every corpus file the reader takes
(damaged ones too: the paths before the damage, then the error), several files merged,
``--hop`` labels, a FIFO, standard input, and generated multi-hop NAT'd pcapng streams.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CORPUS
from tests.reference.readers import FileSource
from tests.reference.replay import replay_files
from tests.unit.test_core_finish import Recorder
from tracer.errors import HoptraceError
from tracer.safe_text import term_safe

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
# The real command, from this checkout (a console script would import the installed tree).
HOPTRACE = [sys.executable, "-m", "tracer.cli"]
_ELAPSED = re.compile(r', "elapsed_s": [0-9.e+-]+\}$')


@dataclass
class Outcome:
    lines: list[str]
    stderr: str
    status: int

    def comparable(self) -> tuple[list[str], str, int]:
        return [_ELAPSED.sub("}", x) for x in self.lines], self.stderr, self.status


def reference(files: Sequence[str] = (), hops: Sequence[tuple[str, str]] = (), expr: str | None = None,
              ) -> Outcome:
    """What replay --json must print: the reference engine (``expr``: --filter)."""
    got = replay_files(files, hops, expr=expr)
    err, status = "", 0
    exc: HoptraceError | None = got.error
    if exc is not None:  # as cli.main reports it
        err = f"hoptrace: {term_safe(exc.message)}\n" + (f"hoptrace: hint: {term_safe(exc.hint)}\n" if exc.hint else "")
        status = exc.exit_code
    return Outcome(got.lines, err, status)


def reference_bytes(tmp_path: Path, data: bytes) -> Outcome:
    f = tmp_path / "data.pcapng"
    f.write_bytes(data)
    return reference([str(f)])


def command(*args: str, stdin: bytes | None = None, cwd: Path = ROOT) -> Outcome:
    r = subprocess.run([*HOPTRACE, "replay", "--json", *args], input=stdin, capture_output=True, timeout=300,
                       cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return Outcome(r.stdout.decode("utf-8").splitlines(), r.stderr.decode("utf-8", "replace"), r.returncode)


def in_process(*args: str) -> Outcome:
    """``replay --json ARGS`` by ``tracer.cli.main`` in this process, stdout a file."""
    from tracer.cli import main

    err = io.StringIO()
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".ndjson") as out:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["replay", "--json", *args])
            out.flush()
        text = Path(out.name).read_text(encoding="utf-8")
    return Outcome(text.splitlines(), err.getvalue(), status)


def assert_same(got: Outcome, want: Outcome) -> None:
    assert want.lines and _ELAPSED.search(want.lines[-1]), want
    assert _ELAPSED.search(got.lines[-1] if got.lines else ""), got
    g, w = got.comparable(), want.comparable()
    if g != w:
        for k, (a, b) in enumerate(zip(g[0], w[0], strict=False)):
            assert a == b, f"line {k + 1} differs"
    assert g == w


# ------------------------------------------------------------------ the path taken


def test_replay_json_runs_the_core_engine_and_imports_no_numpy() -> None:
    """The command under test is the core's engine (never the Python engine against itself),
    and its start-up stays lean: no numpy, no correlator, no scapy."""
    code = ("import sys; from tracer.cli import main; rc = main(['replay', '--json', sys.argv[1]]); "
            "sys.stdout.flush(); heavy = sorted(m for m in ('numpy', 'tests.reference.correlate', 'tracer.engine', "
            "'scapy', 'pandas') if m in sys.modules); sys.stderr.write(repr((rc, heavy)))")
    r = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "udp.pcapng")], capture_output=True,
                       timeout=120, cwd=ROOT, text=True)
    assert r.stderr == "(0, [])"
    assert r.stdout.count('"type": "path"') == 2


def test_count_goes_through_the_engine_and_a_filter_does_not() -> None:
    """--count runs tracer.engine (the core's Stream, fed batch by batch); --filter alone the
    one-call replay."""
    f = str(FIXTURES / "internet-ping.pcapng")
    code = ("import sys; from tracer.cli import main; rc = main(sys.argv[1:]); sys.stdout.flush(); "
            "sys.stderr.write(repr((rc, 'tracer.engine' in sys.modules)))")
    for args, python in ((["replay", "--json", f, "--", "icmp"], False), (["replay", "--json", "-c", "1", f], True)):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120, cwd=ROOT,
                           text=True)
        assert r.stderr == repr((0, python)), args
        assert '"type": "stats"' in r.stdout


# ------------------------------------------------------------------ fixtures and corpus


def fixtures() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.pcapng"))


def test_there_are_fixtures() -> None:
    assert len(fixtures()) >= 10


@pytest.mark.parametrize("fixture", fixtures())
def test_fixture(fixture: str) -> None:
    f = str(FIXTURES / fixture)
    assert_same(command(f), reference([f]))


def corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []  # tests/test_corpus.py fails then: it requires the corpus
    return sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


@pytest.mark.timeout(600)
def test_every_corpus_file() -> None:
    """Every file the reader takes, good or damaged: same lines, same error line, same status
    (the command in this process; the fixtures above run it as a subprocess)."""
    names = corpus_files()
    assert len(names) > 800, CORPUS
    failed, damaged = [], 0
    for name in names:
        f = str(CORPUS / name)
        want = reference([f])
        damaged += want.status != 0
        got = in_process(f)
        if got.comparable() != want.comparable():
            failed.append(name)
    assert damaged > 50  # the damaged files are compared too
    assert failed == []


def test_files_merged() -> None:
    files = [str(FIXTURES / n) for n in ("internet-ping.pcapng", "published-port.pcapng", "udp.pcapng")]
    assert_same(command(*files), reference(files))


def test_corpus_files_merged_with_a_damaged_one() -> None:
    names = corpus_files()
    assert names, CORPUS
    files = [str(CORPUS / n) for n in names[:: max(1, len(names) // 12)]]
    want = reference(files)
    assert want.status == 2  # one of them is damaged: its error comes after every file's paths
    assert_same(command(*files), want)


def split_per_hop(fixture: Path, into: Path) -> list[tuple[str, str]]:
    """One nanosecond pcap per hop of ``fixture`` (its frames, no labels): (NODE/IFACE, file)."""
    src = FileSource([str(fixture)])
    out: dict[int, list[bytes]] = {}
    for batch in src.batches():
        frames = bytes(batch.frames)
        for row in batch.rows:
            fr = frames[int(row["frame_off"]) : int(row["frame_off"]) + int(row["frame_len"])]
            ts = int(row["ts_ns"])
            out.setdefault(int(row["hop"]), []).append(
                struct.pack("<IIII", ts // 10**9, ts % 10**9, len(fr), int(row["wire_len"])) + fr)
    hops = []
    for h, recs in sorted(out.items()):
        label = src.hops[h]
        path = into / f"{label.node}-{label.iface}.pcap"
        path.write_bytes(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, label.linktype) + b"".join(recs))
        hops.append((f"{label.node}/{label.iface}", str(path)))
    return hops


def test_hop_labels(tmp_path: Path) -> None:
    """Single-interface files, one per hop, labelled with --hop: merged by time into paths."""
    hops = split_per_hop(FIXTURES / "published-port.pcapng", tmp_path)
    assert len(hops) >= 4
    args = [a for label, path in hops for a in ("--hop", f"{label}={path}")]
    want = reference([], [(label, path) for label, path in hops])
    assert_same(command(*args), want)
    assert sum('"type": "path"' in x for x in want.lines) >= 2


def test_fifo(tmp_path: Path) -> None:
    """A FIFO streams: the writer is fed while the command reads."""
    fixture = FIXTURES / "internet-ping.pcapng"
    fifo = tmp_path / fixture.name
    os.mkfifo(fifo)
    data = fixture.read_bytes()

    def feed() -> None:
        with fifo.open("wb") as w:
            for k in range(0, len(data), 4096):
                w.write(data[k : k + 4096])

    t = threading.Thread(target=feed)
    t.start()
    got = command(str(fifo))
    t.join(timeout=60)
    assert_same(got, reference([str(fixture)]))


def test_stdin(tmp_path: Path) -> None:
    """``-`` reads standard input; its hops are named after "stdin" as a file named so would be."""
    hops = split_per_hop(FIXTURES / "udp.pcapng", tmp_path)
    data = Path(hops[0][1]).read_bytes()
    named = tmp_path / "stdin.pcap"
    named.write_bytes(data)
    assert_same(command("-", stdin=data), reference([str(named)]))


def test_errors_before_anything_is_read(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pcap")
    notcap = tmp_path / "text.pcap"
    notcap.write_bytes(b"hello, this is not a capture file\n")
    for files in ([missing], [str(notcap)], [str(FIXTURES / "udp.pcapng"), missing]):
        want = reference(files)
        assert want.status == 2
        assert_same(command(*files), want)


def test_a_reader_that_leaves_is_no_error(tmp_path: Path) -> None:
    """``replay --json big | head -1``: the first line, exit 0, nothing on stderr."""
    files = [str(FIXTURES / n) for n in ("internet-ping.pcapng", "published-port.pcapng")]
    p = subprocess.Popen([*HOPTRACE, "replay", "--json", *files], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT)
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()
    assert p.wait(timeout=60) == 0
    assert json.loads(first)["type"] == "path"
    assert p.stderr.read() == b""


def test_ctrl_c_stops_after_the_stats_line(tmp_path: Path) -> None:
    """SIGINT while the core's engine runs (detached from the interpreter): it stops between
    batches, writes the stats line, and the command exits 130 without a word."""
    data = nat_stream(3, 20_000)
    (tmp_path / "data.pcapng").write_bytes(data)
    total = sum(len(b) for b in FileSource([str(tmp_path / "data.pcapng")]).batches())
    fifo = tmp_path / "slow.pcapng"
    os.mkfifo(fifo)
    p = subprocess.Popen([*HOPTRACE, "replay", "--json", str(fifo)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT)
    stop = threading.Event()

    def feed() -> None:  # slowly: the run lasts until it is interrupted
        try:
            with fifo.open("wb") as w:
                for k in range(0, len(data), 1 << 14):
                    if stop.is_set():
                        return
                    w.write(data[k : k + (1 << 14)])
                    w.flush()
                    stop.wait(0.02)
        except BrokenPipeError:
            pass

    t = threading.Thread(target=feed)
    t.start()
    try:
        assert p.stdout is not None and p.stderr is not None
        first = p.stdout.readline()  # paths are coming out: the engine runs
        assert json.loads(first)["type"] == "path"
        p.send_signal(2)
        rest = p.stdout.read().decode().splitlines()
        assert p.wait(timeout=60) == 130
        assert p.stderr.read() == b""
    finally:
        stop.set()
        p.kill()
        t.join(timeout=60)
    stats = json.loads(rest[-1])
    assert stats["type"] == "stats" and 0 < stats["observations"] < total
    assert all(json.loads(x)["type"] in ("path", "flow") for x in rest[:-1])


class _TtyFile:
    """A terminal to the engine: stdout is a real file (the core writes to its descriptor)."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f

    def fileno(self) -> int:
        return self.f.fileno()

    def isatty(self) -> bool:
        return True

    def flush(self) -> None:
        self.f.flush()


@pytest.mark.parametrize("same_terminal", [False, True])
def test_progress_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_terminal: bool) -> None:
    """The core's engine tells the progress line how far it read, between batches; output
    to the same terminal takes the line back before each write."""
    import tracer.sinks.progress as progress_mod
    from tests.unit.test_progress import Tty
    from tracer.cli import parse_args
    from tracer.commands.replay import run_core

    err = Tty()
    lines: list[progress_mod.Progress] = []

    def eager(position: progress_mod.Position, label: str, stream: object = None) -> progress_mod.Progress:
        lines.append(progress_mod.Progress(position, err, label=label, interval=0, delay=0))
        return lines[-1]

    cleared = []
    monkeypatch.setattr(progress_mod, "for_terminal", eager)
    monkeypatch.setattr(progress_mod.Progress, "clear", lambda self: cleared.append(self.shown) or setattr(
        self, "shown", False))
    files = [str(FIXTURES / n) for n in ("internet-ping.pcapng", "published-port.pcapng")]
    out = tmp_path / "out.ndjson"
    with out.open("wb") as f:
        stdout = _TtyFile(f) if same_terminal else f
        monkeypatch.setattr(sys, "stdout", stdout)
        assert run_core(parse_args(["replay", "--json", *files])) == 0
    assert len(lines) == 1 and lines[0].draws >= 2  # a draw per batch (no delay here)
    total = sum(Path(x).stat().st_size for x in files)
    want = reference(files)
    observations = json.loads(want.lines[-1])["observations"]
    assert lines[0].position() == (total, total, observations)
    assert "records/s" in err.getvalue()
    # Taken back at the end; with output on the same terminal, before every write too.
    assert not lines[0].shown and cleared.count(True) >= 1
    assert (len(cleared) > 2) == same_terminal
    assert [_ELAPSED.sub("}", x) for x in out.read_text().splitlines()] == want.comparable()[0]


# ------------------------------------------------------------------ --filter

# What people filter paths by, and what only a frame can tell (lengths, flags, payload bytes,
# MAC addresses, VLANs), and expressions that mean nothing on some link types.
FILTERS = [
    "icmp", "host 198.51.100.8", "udp and port 7", "tcp[13] & 2 != 0", "ip6", "arp", "not icmp",
    "ether host 02:42:ac:11:00:02", "len > 100", "icmp[0] = 8", "ip[8] = 63", "net 172.17.0.0/16",
    "vlan", "src host 203.0.113.2 or dst port 80",
]  # fmt: skip


@pytest.mark.parametrize("expr", FILTERS)
def test_filter_on_every_fixture(expr: str) -> None:
    for k, fixture in enumerate(fixtures()):
        f = str(FIXTURES / fixture)
        # the real command for one fixture per expression, the same code in this process for the rest
        run = command if k == FILTERS.index(expr) % len(fixtures()) else in_process
        assert_same(run(f, "--", *expr.split()), reference([f], expr=expr))


def test_the_filters_keep_some_and_hide_some() -> None:
    """What the filter test compares is worth comparing: hidden paths keep their numbers, a
    flow lists only shown paths, and a flow with none shown has no line."""
    f = str(FIXTURES / "internet-ping.pcapng")

    def shown(expr: str | None) -> tuple[list[str], list[str]]:
        lines = reference([f], expr=expr).lines
        return ([json.loads(x)["id"] for x in lines if '"type": "path"' in x],
                [x.split('"paths": ')[1] for x in lines if '"type": "flow"' in x])

    assert shown(None) == (["p1", "p2", "p3", "p4"], ['["p1", "p4"]}'])
    assert shown("icmp[0] = 8") == (["p1"], ['["p1"]}'])  # the ping, not its pong
    assert shown("arp") == (["p2", "p3"], [])


@pytest.mark.timeout(600)
def test_filter_on_corpus_files() -> None:
    names = corpus_files()
    assert names, CORPUS
    failed = []
    for k, name in enumerate(names[::7]):
        f = str(CORPUS / name)
        expr = FILTERS[k % len(FILTERS)]
        if in_process(f, "--", *expr.split()).comparable() != reference([f], expr=expr).comparable():
            failed.append((name, expr))
    assert failed == []


def test_filter_with_hop_labels_and_merged_link_types(tmp_path: Path) -> None:
    hops = split_per_hop(FIXTURES / "published-port.pcapng", tmp_path)
    args = [a for label, path in hops for a in ("--hop", f"{label}={path}")]
    for expr in ("tcp", "ether src 02:42:ac:11:00:02", "dst port 80"):
        want = reference([], list(hops), expr=expr)
        assert_same(command(*args, "--", *expr.split()), want)
    # Linux cooked, raw IP and raw IPv6 beside Ethernet: one program per link type.
    others = [corpus_with_linktype(lt) for lt in (113, 101, 229)]
    files = [str(FIXTURES / "udp.pcapng"), *others]
    for expr in ("udp", "ip", "ether host 02:42:ac:11:00:02"):
        assert_same(command(*files, "--", *expr.split()), reference(files, expr=expr))


def corpus_with_linktype(lt: int) -> str:
    """The first corpus pcap of link type ``lt`` (its global header says so)."""
    for name in corpus_files():
        head = (CORPUS / name).read_bytes()[:24]
        ours = len(head) == 24 and head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
        if ours and struct.unpack("<I", head[20:24])[0] & 0xFFFF == lt:
            return str(CORPUS / name)
    raise AssertionError(f"no corpus file of link type {lt}")


def test_a_bad_filter_is_the_same_error() -> None:
    f = str(FIXTURES / "udp.pcapng")
    r = command(f, "--", "hosty", "1.2.3.4")
    assert r.status == 2 and r.lines == []
    code = ("import sys; from tracer.cli import main; sys.exit(main(sys.argv[1:]))")
    old = subprocess.run([sys.executable, "-c", code, "replay", "--no-tui", f, "--", "hosty", "1.2.3.4"],
                         capture_output=True, timeout=60, cwd=ROOT, text=True)
    assert (r.stderr, r.status) == (old.stderr, old.returncode)


# ------------------------------------------------------------------ generated streams


NODES = {  # node -> netns
    "web": 4026532466, "app": 4026532501, "host": 4026531840, "inet": 4026532300,
}  # fmt: skip
HOPS = [  # (node, iface)
    ("web", "eth0"), ("host", "veth0"), ("host", "docker0"), ("host", "eth0"), ("inet", "eth0"),
    ("app", "eth0"), ("host", "veth1"),
]  # fmt: skip
ADDRS = {
    4: [bytes([172, 17, 0, 2]), bytes([172, 17, 0, 3]), bytes([203, 0, 113, 2]), bytes([198, 51, 100, 8])],
    6: [bytes.fromhex("fd00000000000000000000000000000" + c) for c in "2389"],
}
REASONS = ["NETFILTER_DROP", "NO_SOCKET", "TCP_INVALID_SEQUENCE"]


def _opt(code: int, val: bytes) -> bytes:
    return struct.pack("<HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _frame(family: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int, ip_id: int, ttl: int,
           seq: int, payload: bytes) -> bytes:  # fmt: skip
    if proto == 1:
        l4 = struct.pack("!BBHHH", 8 if family == 4 else 128, 0, 0, sport, seq) + payload
        proto = 1 if family == 4 else 58
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, seq ^ 0x5A5A, 0x50, 0x18, 502, 0, 0) + payload
    if family == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ip_id, 0x4000, ttl, proto, 0, src, dst)
        return b"\x02\x42\xac\x11\x00\x01\x02\x42\xac\x11\x00\x02\x08\x00" + ip + l4
    ip = struct.pack("!IHBB16s16s", 0x60000000 | ip_id, len(l4), proto, ttl, src, dst)
    return b"\x02\x42\xac\x11\x00\x01\x02\x42\xac\x11\x00\x02\x86\xdd" + ip + l4


def pcapng_header() -> bytes:
    """A section and one interface per hop of HOPS, as hoptrace records them."""
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for i, (node, iface) in enumerate(HOPS):
        opts = (_opt(2, f"{node}/{iface}".encode()) + _opt(3, f"netns={NODES[node]} ifindex={i + 2}".encode())
                + _opt(9, bytes([9])) + _opt(0, b""))  # fmt: skip
        out.append(_block(1, struct.pack("<HHI", 1, 0, 256) + opts))
    return b"".join(out)


def epb(hop: int, ts: int, fr: bytes, d: str | None, skb: int = 0, reason: str | None = None) -> bytes:
    """One sighting at HOPS[hop], with hoptrace's comment."""
    meta: dict[str, object] = {"v": 1, "dir": d, "skb": f"0x{skb:x}" if skb else None, "hook": None,
                               "netns": NODES[HOPS[hop][0]], "ts_ns": ts, "drop_reason": reason}
    flags = {"rx": 1, "tx": 2}.get(d or "", 0)
    opts = _opt(2, struct.pack("<I", flags)) + _opt(1, json.dumps(meta).encode()) + _opt(0, b"")
    pad = b"\0" * (-len(fr) % 4)
    return _block(6, struct.pack("<IIIII", hop, ts >> 32, ts & 0xFFFFFFFF, len(fr), len(fr)) + fr + pad + opts)


def nat_stream(seed: int, packets: int, dense: bool = False) -> bytes:
    """A multi-interface pcapng as hoptrace records it: packets crossing a few of the hops
    above, source or destination rewritten on the way (SNAT/DNAT, ports too), TTL counted
    down, replies, identical packets in flight (few IP IDs and payloads), known, missing and
    reused skbs, hops without a direction, drops with a reason, late sightings (another
    CPU's ring: written after later ones), gaps past the join's window and the flows' idle
    time. ``dense``: packets microseconds apart, many senders, sightings written up to
    150 ms late: late across reader batches (4096 records), where a path's true first
    sighting takes back what a forwarded copy taught."""
    rng = random.Random(seed)
    out = [pcapng_header()]
    recs: list[tuple[int, int, bytes]] = []  # (ts, order, block)
    t = 1_795_805_084_000_000_000
    for k in range(packets):
        t += rng.choice([2_000, 30_000] if dense else [2_000, 30_000, 400_000, 90_000_000, 600_000_000,
                                                       5_500_000_000])  # fmt: skip
        family = rng.choice([4, 4, 4, 6])
        proto = rng.choice([1, 6, 17])
        a = ADDRS[family]
        src, dst = rng.sample(a, 2)
        if dense and family == 4 and rng.random() < 0.5:
            src = bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(256)])
        sport, dport = rng.choice([1, 40000, 40001]), rng.choice([53, 80, 7])
        ip_id, seq = rng.randrange(3), rng.randrange(3)
        payload = rng.choice([b"", b"hop", bytes(range(20))])
        ttl = 64
        skb = rng.choice([0, 0, 0xFFFF888100001000, 0xFFFF888100002000 + k * 0x100])
        route = rng.sample(range(len(HOPS)), rng.randint(1, 5))
        nat_at = rng.randrange(len(route) + 1)
        nat = rng.choice(["snat", "dnat"])
        ts = t
        for pos, h in enumerate(route):
            if pos == nat_at:
                if nat == "snat":
                    src, sport = rng.choice(a), rng.choice([61000, 61001, sport])
                else:
                    dst, dport = rng.choice(a), rng.choice([8080, dport])
            if pos and rng.random() < 0.5:
                ttl -= 1
            d = rng.choice(["tx", "rx", "rx", None, "drop"] if pos == len(route) - 1 else ["tx", "rx", None])
            ts += rng.choice([0, 7_000, 9_000, 20_000])
            fr = _frame(family, proto, src, dst, sport, dport, ip_id, ttl, seq, payload)
            block = epb(h, ts, fr, d, skb, rng.choice(REASONS) if d == "drop" else None)
            late = [0, 0, 0, 0, 30_000, 2_000_000] + ([150_000_000] if dense else [])
            order = ts + rng.choice(late)  # written late (another CPU's ring)
            recs.append((order, len(recs), block))
    recs.sort()
    out += [b for _o, _n, b in recs]
    return b"".join(out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), packets=st.integers(1, 120))
def test_generated_nat_streams(tmp_path: Path, seed: int, packets: int) -> None:
    f = tmp_path / f"gen-{seed}-{packets}.pcapng"
    f.write_bytes(nat_stream(seed, packets))
    want = reference([str(f)])
    assert want.status == 0, want.stderr
    assert_same(command(str(f)), want)
    expr = FILTERS[seed % len(FILTERS)]
    assert_same(command(str(f), "--", *expr.split()), reference([str(f)], expr=expr))


def test_a_first_sighting_a_batch_late_takes_back_what_the_forwarded_copy_taught(tmp_path: Path) -> None:
    """A ping's MASQUERADEd copy (host/eth0 tx, from 203.0.113.2) is read first and teaches
    that 203.0.113.2 sends from the host; the host's rx before the rewrite (host/docker0,
    from 172.17.0.2) comes a reader batch later, and takes that back; its true first
    sighting (web/eth0 tx) a batch later still: the pong that ends at host/eth0 rx (to
    203.0.113.2) is then not known delivered. The claims and the retraction happen in the
    join, the verdict in the finisher: both engines agree. (The rx comes before web's tx:
    a rewrite joins only between the hops where it happened.)"""
    web, public, server = ADDRS[4][0], ADDRS[4][2], ADDRS[4][3]
    t = 1_795_805_084_000_000_000
    ping = [_frame(4, 1, src, server, 7, 0, 99, ttl, 1, b"ping") for src, ttl in ((web, 64), (public, 63))]
    pong = _frame(4, 1, server, public, 7, 0, 98, 64, 1, b"pong")
    # Filler that claims nothing: pings seen arriving at inet, one packet each.
    filler = [epb(4, t + 20_000 + k * 1_000, _frame(4, 1, web, server, 7, 0, 1000 + k, 60, k, b"f"), "rx")
              for k in range(8400)]
    blocks = [epb(3, t + 10_000, ping[1], "tx"), *filler[:4200], epb(2, t + 5_000, ping[0], "rx"), *filler[4200:],
              epb(0, t, ping[0], "tx"), epb(3, t + 40_000_000, pong, "rx")]
    f = tmp_path / "late.pcapng"
    f.write_bytes(pcapng_header() + b"".join(blocks))
    want = reference([str(f)])
    paths = [json.loads(x) for x in want.lines if x.startswith('{"type": "path"')]
    assert [(len(p["hops"]), p["verdict"]) for p in paths if len(p["hops"]) > 1] == [(3, "left")]
    assert paths[-1]["hops"][0]["src"] == "198.51.100.8" and paths[-1]["verdict"] == "incomplete"
    assert_same(command(str(f)), want)


def test_two_multicast_reports_on_a_recycled_skb_are_two_paths(tmp_path: Path) -> None:
    """Issue #17's `lab demo` internet-ping recording: two identical ICMPv6 packets to ff02::16
    from two link-local sources, 96 ms apart, the second on the skb address the first was
    freed from (web/eth0 drop). Once one path (the join window was the 500 ms wait); now the
    free ends the skb, and a link-local source never changes between two hops: two paths,
    each ending in its drop, in both engines."""
    a, b, mld = (bytes.fromhex(x) for x in ("fe800000000000000000000000000001", "fe800000000000000000000000000002",
                                            "ff020000000000000000000000000016"))
    t, skb = 1_795_805_084_000_000_000, 0xFFFF88813D713800
    report = [_frame(6, 1, src, mld, 0, 0, 0, 1, 0, b"report") for src in (a, b)]
    blocks = [epb(1, t, report[0], "tx", skb), epb(0, t + 5_000, report[0], "rx", skb),
              epb(0, t + 9_000, report[0], "drop", skb, "NO_SOCKET"),
              epb(6, t + 96_000_000, report[1], "tx", skb), epb(5, t + 96_005_000, report[1], "rx", skb),
              epb(5, t + 96_009_000, report[1], "drop", skb, "NO_SOCKET")]
    f = tmp_path / "mld.pcapng"
    f.write_bytes(pcapng_header() + b"".join(blocks))
    want = reference([str(f)])
    paths = [json.loads(x) for x in want.lines if x.startswith('{"type": "path"')]
    assert [([f"{h['node']}/{h['iface']} {h['dir']}" for h in p["hops"]], p["verdict"]) for p in paths] == [
        (["host/veth0 tx", "web/eth0 rx", "web/eth0 drop"], "dropped"),
        (["host/veth1 tx", "app/eth0 rx", "app/eth0 drop"], "dropped")]
    assert_same(command(str(f)), want)


def test_a_generated_stream_teaches_and_takes_back_owners(tmp_path: Path) -> None:
    """What the generated streams exercise is there: claims of where an address lives, some
    taken back by a late first sighting, every verdict, NAT both ways, flows."""
    f = tmp_path / "big.pcapng"
    f.write_bytes(nat_stream(7, 6000, dense=True))
    rec = Recorder()
    replay_files([str(f)], correlator=rec)
    kinds = [op[0] for op in rec.ops]
    assert kinds.count("claim") > 100 and kinds.count("retract") > 5, (kinds.count("claim"), kinds.count("retract"))
    want = reference([str(f)])
    text = "\n".join(want.lines)
    assert {"delivered", "dropped", "left", "incomplete"} <= set(re.findall(r'"verdict": "(\w+)"', text))
    assert '"kind": "snat"' in text and '"kind": "dnat"' in text
    assert sum(x.startswith('{"type": "flow"') for x in want.lines) > 100
    assert_same(command(str(f)), want)


def test_the_demo_internet_ping_recording_has_no_path_after_a_drop() -> None:
    """fixtures/demo-internet-ping-ebpf.pcapng: `lab demo`'s internet-ping scenario traced live by
    the kernel probes on the netns engine (tracer.lab.demo.trace_live, every sighting recorded,
    IPv6 chatter of fresh interfaces included; its `local` Custom Blocks taken out, so that the
    reference engine, which has no `local`, compares). Before the join's rules (docs/correlation.md)
    its replay held one ICMPv6 path of two packets, `inet/eth0 tx :: → host/eth0 rx → host/eth0
    drop → host/eth0 tx fe80::… → inet/eth0 rx → inet/eth0 drop`; now nothing follows a drop,
    no path has two sources, and both engines agree."""
    f = FIXTURES / "demo-internet-ping-ebpf.pcapng"
    want = reference([str(f)])
    paths = [json.loads(x) for x in want.lines if x.startswith('{"type": "path"')]
    assert [p["id"] for p in paths if p["proto"] == "icmp6"]  # the chatter is there
    assert all(h["dir"] != "drop" for p in paths for h in p["hops"][:-1])
    assert all(len({h["src"] for h in p["hops"]}) == 1 for p in paths if p["proto"] == "icmp6")
    assert [(p["proto"], [e["kind"] for e in p["nat"]]) for p in paths if p["nat"]] == [
        ("icmp", ["snat"]), ("icmp", ["dnat"])]
    assert_same(command(str(f)), want)
