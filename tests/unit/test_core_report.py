"""``hoptrace report`` and ``report --parquet`` on the core (tracer._core.report) against the
Python report, byte for byte.

The reference is tests/reference/report.py: the report as it was before the core took the
aggregations over (the Python engine's ``PacketPath`` objects into ``Summary``, then
``tracer.sinks.analysis.write_parquet`` of those paths). Both run in-process on the same
arguments; they must print the same text, markdown and JSON (``elapsed_s`` aside), the same
error line with the same status, and write Parquet files that read back as equal tables
(schema, values, nulls, dictionaries in the same order: ``pa.Table.equals``) and are the
same bytes. On every fixture, every 16th corpus file (damaged ones too), merged files,
``--hop`` labels, with and without ``--filter``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import CORPUS
from tests.reference import report as reference
from tracer.cli import parse_args
from tracer.commands import report as product
from tracer.errors import HoptraceError
from tracer.safe_text import term_safe

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.pcapng"))
CORPUS_SAMPLE = sorted(p for p in CORPUS.glob("*") if p.is_file())[::16]
_ELAPSED = re.compile(r'"elapsed_s": [0-9.e+-]+')
TABLES = ("observations", "paths", "nat")


def run(fn: Callable[..., int], argv: list[str]) -> tuple[str, str, int]:
    """``fn(args)`` as cli.main runs it: (stdout, the error lines, exit status)."""
    out = io.StringIO()
    err, status = "", 0
    with contextlib.redirect_stdout(out):
        try:
            status = fn(parse_args(["report", *argv]))
        except HoptraceError as exc:
            err = f"hoptrace: {term_safe(exc.message)}\n" + (
                f"hoptrace: hint: {term_safe(exc.hint)}\n" if exc.hint else "")
            status = exc.exit_code
    return _ELAPSED.sub('"elapsed_s": 0', out.getvalue()), err, status


def same_report(argv: list[str]) -> None:
    want = run(reference.run, argv)
    got = run(product.run, argv)
    assert got == want


def same_parquet(tmp_path: Path, argv: list[str]) -> None:
    """Both write their tables (to two directories, named alike in the output)."""
    a, b = tmp_path / "ref" / "out", tmp_path / "core" / "out"
    want = run(reference.run, [*argv, "--parquet", str(a)])
    got = run(product.run, [*argv, "--parquet", str(b)])
    assert (got[0].replace(str(b), str(a)), got[1], got[2]) == want
    if want[2] != 0 and not a.exists():
        assert not b.exists()
        return
    for name in TABLES:
        t_want = pq.read_table(a / f"{name}.parquet")
        t_got = pq.read_table(b / f"{name}.parquet")
        assert t_got.schema == t_want.schema, name
        assert t_got.equals(t_want), name
        assert (b / f"{name}.parquet").read_bytes() == (a / f"{name}.parquet").read_bytes(), name


def tables_equal(argv_files: list[str]) -> None:
    """The in-memory tables too (the Parquet round trip could hide a difference in types)."""
    from tracer import _core  # type: ignore[attr-defined]
    from tracer.sinks.analysis import tables_from_core, to_tables
    from tracer.sources.files import open_files

    ref_paths = []
    from tracer.engine import Engine
    from tracer.model import PacketPath

    engine = Engine(open_files(argv_files, []))
    with contextlib.suppress(HoptraceError):
        for events in engine.events():
            ref_paths += [e for e in events if isinstance(e, PacketPath)]
    want = to_tables(ref_paths)
    source = open_files(argv_files, [])
    source.start()
    got = tables_from_core(_core.report(source.core_inputs(), columns=True)["columns"])
    for name in TABLES:
        assert got[name].schema == want[name].schema, name
        assert got[name].equals(want[name]), name
        for col in got[name].column_names:  # dictionaries in the same order, value for value
            assert got[name][col].combine_chunks().equals(want[name][col].combine_chunks()), (name, col)


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_reports(fixture: Path, fmt: str) -> None:
    same_report(["--format", fmt, str(fixture)])


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.stem)
def test_fixture_parquet(fixture: Path, tmp_path: Path) -> None:
    same_parquet(tmp_path, [str(fixture)])
    tables_equal([str(fixture)])


def test_fixtures_exist() -> None:
    assert len(FIXTURE_FILES) >= 10, "the committed fixtures are missing"


@pytest.mark.parametrize("expr", ["icmp", "udp", "tcp", "host 203.0.113.2", "icmp6", "ip[8] = 63", "arp"])
@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.stem)
def test_filtered_fixture_reports(fixture: Path, expr: str, tmp_path: Path) -> None:
    same_report(["--format", "json", str(fixture), "--", *expr.split()])
    if expr in ("icmp", "udp"):
        same_parquet(tmp_path, ["--filter", expr, str(fixture)])


def test_merged_files_and_hop_labels(tmp_path: Path) -> None:
    files = [str(FIXTURES / "udp.pcapng"), str(FIXTURES / "hairpin.pcapng"), str(FIXTURES / "blocked.pcapng")]
    same_report(["--format", "markdown", *files])
    same_parquet(tmp_path, files)
    hop = ["--hop", f"web/eth0={FIXTURES / 'internet-ping.pcapng'}", str(FIXTURES / "udp.pcapng")]
    same_report(["--format", "json", *hop])
    same_parquet(tmp_path / "hop", hop)


def test_damaged_files(tmp_path: Path) -> None:
    data = (FIXTURES / "published-port.pcapng").read_bytes()
    for k, cut in enumerate((len(data) * 2 // 3, len(data) // 3, 40)):
        bad = tmp_path / f"cut{k}.pcapng"
        bad.write_bytes(data[:cut])
        for fmt in ("text", "json"):
            same_report(["--format", fmt, str(bad)])
        same_parquet(tmp_path / f"p{k}", [str(bad)])
        # A damaged file among good ones.
        same_report([str(FIXTURES / "udp.pcapng"), str(bad)])
    want = run(reference.run, [str(tmp_path / "missing.pcap")])
    assert want[2] == 2 and want[0] == ""
    assert run(product.run, [str(tmp_path / "missing.pcap")]) == want
    assert run(product.run, [str(tmp_path)]) == run(reference.run, [str(tmp_path)])
    bad_expr = ["--filter", "no such thing (", str(FIXTURES / "udp.pcapng")]
    assert run(product.run, bad_expr) == run(reference.run, bad_expr)


def test_corpus_sample(tmp_path: Path) -> None:
    assert len(CORPUS_SAMPLE) > 40
    for k, f in enumerate(CORPUS_SAMPLE):
        same_report(["--format", "json", str(f)])
        if k % 4 == 0:
            same_report(["--format", "text", str(f)])
        if k % 8 == 0:
            same_parquet(tmp_path / str(k), [str(f)])


def test_corpus_sample_filtered() -> None:
    for f in CORPUS_SAMPLE[::3]:
        same_report(["--format", "json", str(f), "--", "tcp"])


def test_parquet_of_columns_in_several_chunks(tmp_path: Path) -> None:
    """More rows than one chunk of the core's columns (columns.rs CHUNK_ROWS, 16384) in every
    table: the chunked tables write the same Parquet bytes as the reference's single arrays."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_pcapng", ROOT / "bench" / "gen_pcapng.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    capture = tmp_path / "mix.pcapng"
    gen.generate(str(capture), 85_000)  # 85k sightings, 17k paths, 17k NAT events

    from tracer import _core  # type: ignore[attr-defined]
    from tracer.sources.files import open_files

    source = open_files([str(capture)], [])
    source.start()
    cols = _core.report(source.core_inputs(), columns=True)["columns"]
    chunks = {name: len(cols[name]["ts_ns" if name != "paths" else "hops"]) for name in TABLES}
    assert chunks == {"observations": 6, "paths": 2, "nat": 2}
    same_parquet(tmp_path, [str(capture)])


def test_parquet_directory_that_cannot_be_made(tmp_path: Path) -> None:
    """The report is printed, then the one error line (the files are written on threads
    while the report renders: the order must not change)."""
    (tmp_path / "file").write_bytes(b"")
    argv = [str(FIXTURES / "published-port.pcapng"), "--parquet", str(tmp_path / "file" / "out")]
    want = run(reference.run, argv)
    assert want[2] == 2 and "cannot create" in want[1] and want[0]
    assert run(product.run, argv) == want


def test_pyarrow_writes_chunked_columns_as_one_array() -> None:
    """What the chunked columns rely on, at a size where the writer cuts several data pages
    per column (>1 MB): the same bytes for one array and for chunks of any length."""
    import numpy as np

    rng = np.random.default_rng(15)
    n = 300_000
    ts = rng.integers(0, 2**62, n)
    small = rng.integers(0, 50, n).astype(np.uint16)
    codes = rng.integers(-1, 40, n).astype(np.int32)
    names = pa.array([f"name{i}" for i in range(40)])
    typ = pa.dictionary(pa.int32(), pa.string())

    def written(chunk: int) -> bytes:
        cut = range(0, n, chunk)
        table = pa.table({
            "ts": pa.chunked_array([pa.array(ts[i:i + chunk]) for i in cut], pa.int64()),
            "small": pa.chunked_array([pa.array(small[i:i + chunk]) for i in cut], pa.uint16()),
            "name": pa.chunked_array([pa.DictionaryArray.from_arrays(
                pa.array(codes[i:i + chunk], mask=codes[i:i + chunk] < 0), names) for i in cut], typ),
        })  # fmt: skip
        out = pa.BufferOutputStream()
        pq.write_table(table, out, use_dictionary=["small", "name"])
        return bytes(out.getvalue())

    one = written(n)
    assert pq.ParquetFile(pa.BufferReader(one)).metadata.row_group(0).column(0).total_compressed_size > 2 << 20
    for chunk in (16384, 1000, 99_999):
        assert written(chunk) == one, chunk


def test_json_report_parses_and_names_the_files() -> None:
    out, err, status = run(product.run, ["--format", "json", str(FIXTURES / "published-port.pcapng")])
    j = json.loads(out)
    assert (j["type"], status, err) == ("report", 0, "")
    assert j["paths"] == j["stats"]["paths"] > 0 and j["nat"]


def test_empty_tables_from_the_core_equal_the_python_ones() -> None:
    """No path: three empty tables of the schema (a filter that matches nothing)."""
    from tracer import _core  # type: ignore[attr-defined]
    from tracer.sinks.analysis import tables_from_core, to_tables
    from tracer.sources.files import open_files

    source = open_files([str(FIXTURES / "udp.pcapng")], [])
    source.start()
    r = _core.report(source.core_inputs(), columns=True, program=lambda _lt: None)
    assert r["paths"] == 0 and r["observations"] > 0
    got, want = tables_from_core(r["columns"]), to_tables([])
    for name in TABLES:
        assert got[name].num_rows == 0
        assert got[name].schema == want[name].schema and got[name].equals(want[name]), name


def test_no_python_object_per_row() -> None:
    """The columns cross as numpy arrays, not lists."""
    import numpy as np

    from tracer import _core  # type: ignore[attr-defined]
    from tracer.sources.files import open_files

    source = open_files([str(FIXTURES / "published-port.pcapng")], [])
    source.start()
    cols = _core.report(source.core_inputs(), columns=True)["columns"]

    def arrays(v: object) -> list[object]:  # a column: an array, or tuples and lists of them
        return [x for part in v for x in arrays(part)] if isinstance(v, tuple | list) else [v]

    for table in cols.values():
        for v in table.values():
            assert all(isinstance(x, np.ndarray) for x in arrays(v))
    assert isinstance(pa.array(cols["observations"]["ts_ns"][0]), pa.Array)


def test_frees_that_lost_nothing_are_no_drops_in_the_report(tmp_path: Path) -> None:
    """A recording with a TCP segment freed unread after delivery (QUEUE_PURGE, no device, no
    namespace: a `?` hop from the eBPF source), a UDP datagram to a closed port (NO_SOCKET) and
    a NETFILTER_DROP: the core's report equals the reference's, and only the two losses are drops."""
    from typing import Any

    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    from tests.unit.conftest import make_obs
    from tracer.model import ObsBatch
    from tracer.sinks.record import PcapngRecorder

    def l4(pkt: Any, **kw: Any) -> dict[str, Any]:
        return dict(frame=bytes(Ether() / pkt), wire_len=len(Ether() / pkt), length=len(pkt),
                    icmp_type=None, icmp_code=None, icmp_id=None, icmp_seq=None, **kw)

    seg = l4(IP(src="172.17.0.3", dst="172.17.0.2", id=7) / TCP(sport=41000, dport=80, flags="PA") / (b"x" * 100),
             proto=6, src="172.17.0.3", dst="172.17.0.2", sport=41000, dport=80, ip_id=7, tcp_flags=0x18)
    dgram = l4(IP(src="172.17.0.3", dst="172.17.0.2", id=8) / UDP(sport=5000, dport=47124) / b"hi",
               proto=17, src="172.17.0.3", dst="172.17.0.2", sport=5000, dport=47124, ip_id=8)
    t = 1_000_000_000
    obs = [
        make_obs(at="host/veth1", direction="tx", ts_ns=t, skb=0xA0, **seg),
        make_obs(at="web/eth0", direction="rx", ts_ns=t + 1000, skb=0xA0, **seg),
        make_obs(node="?", ifname="(no device)", netns=0, ifindex=0, direction="drop", ts_ns=t + 9000, skb=0xA0,
                 drop_reason="QUEUE_PURGE", **seg),
        make_obs(at="host/veth1", direction="tx", ts_ns=t + 10**9, skb=0xB0, **dgram),
        make_obs(at="web/eth0", direction="rx", ts_ns=t + 10**9 + 1000, skb=0xB0, **dgram),
        make_obs(at="web/eth0", direction="drop", ts_ns=t + 10**9 + 2000, skb=0xB0, drop_reason="NO_SOCKET",
                 **dgram),
        make_obs(at="host/veth1", direction="tx", ts_ns=t + 2 * 10**9, skb=0xC0, **{**dgram, "ip_id": 9}),
        make_obs(at="web/eth0", direction="drop", ts_ns=t + 2 * 10**9 + 500, skb=0xC0,
                 drop_reason="NETFILTER_DROP", **{**dgram, "ip_id": 9}),
    ]
    path = tmp_path / "frees.pcapng"
    rec = PcapngRecorder(path)
    rec.on_batch(ObsBatch.from_observations(obs))
    rec.close()
    for fmt in ("text", "json", "markdown"):
        same_report(["--format", fmt, str(path)])
    report = json.loads(run(product.run, ["--format", "json", str(path)])[0])
    assert report["by_verdict"]["delivered"] >= 1 and report["by_verdict"]["dropped"] == 2, report["by_verdict"]
    assert sorted((d["hop"], d["reason"]) for d in report["drops"]) == [
        ("web/eth0", "NETFILTER_DROP"), ("web/eth0", "NO_SOCKET")]
