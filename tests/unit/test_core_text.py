"""The text output (``hoptrace replay --no-tui``, and replay to a pipe without ``--json``)
from the core's renderer (crates/hoptrace-core/src/text_render.rs) against tracer/sinks/output.py's
text (``path_text``, ``flow_text``, ``stats_text`` as ``TextSink`` writes them), the
reference, byte for byte; and the core's ``term_safe`` (crates/hoptrace-core/src/safe_text.rs)
against tracer/safe_text.py's.

The reference run is tests/reference's (its reader and engine, as ``replay_files`` drives
them for the NDJSON) with its paths, flows and stats rendered by tracer/sinks/output.py's
``TextSink`` in every ``TextOptions`` combination at once (-n on/off, -q/default/-v/-vv, colour on/off); the
core runs once per combination (``_core.replay_ndjson(..., text=...)``, in-process into a
file, or the real command in a subprocess). Only the stats line's elapsed seconds may
differ. Every fixture (fixtures/hostile-names.pcapng's names come out escaped the same way),
every 16th corpus file, generated NAT'd streams with drops, filters, damaged files.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import CORPUS
from tests.reference.engine import run
from tests.reference.readers import FileSource
from tests.reference.replay import replay_engine
from tests.unit.test_core_engine import FILTERS, nat_stream
from tracer import _core  # type: ignore[attr-defined]
from tracer.errors import CaptureFileError
from tracer.safe_text import term_safe
from tracer.sinks.output import TextOptions, TextSink
from tracer.sources.files import open_files

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
HOPTRACE = [sys.executable, "-m", "tracer.cli"]
OPTIONS = [TextOptions(numeric=n, detail=d, color=c)
           for n, d, c in itertools.product((False, True), (-1, 0, 1, 2), (False, True))]
_ELAPSED = re.compile(r"(lost events, )[0-9.]+( s\n)$")


def _comparable(text: str) -> str:
    return _ELAPSED.sub(r"\1\2", text)


def python_text(files: Sequence[str], opts: Sequence[TextOptions], expr: str | None = None,
                ) -> tuple[list[str], str | None]:
    """What replay must print as text, in each look; and the capture error's message, if any."""
    source = FileSource(files, [])
    source.start()
    outs = [io.StringIO() for _ in opts]
    err = None
    try:
        run(replay_engine(source.batches(), expr=expr), [TextSink(o, opt) for o, opt in zip(outs, opts, strict=True)])
    except CaptureFileError as exc:
        err = exc.message
    return [o.getvalue() for o in outs], err


def core_text(files: Sequence[str], opts: TextOptions, expr: str | None = None) -> tuple[str, str | None]:
    """The core's engine and text renderer, in-process, into a file."""
    program = None
    if expr:
        from tracer.errors import FilterError
        from tracer.filter import compile_insns

        def program(linktype: int) -> bytes | None:
            try:
                return compile_insns(expr, linktype)
            except FilterError:
                return None

    source = open_files(list(files), [])
    with tempfile.TemporaryFile() as f:
        _obs, _paths, error = _core.replay_ndjson(source.core_inputs(), f.fileno(), program=program,
                                                  text=(opts.numeric, opts.detail, opts.color))
        f.seek(0)
        out = f.read().decode("utf-8")
    return out, None if error is None else f"{source.input_path(error[0])}: {error[1]}"


def assert_same_text(files: Sequence[str], opts: Sequence[TextOptions] = OPTIONS, expr: str | None = None,
                     ) -> tuple[str, str | None]:
    """Core and reference agree for every option set; returns the first one's text, and the
    capture error both reported (None when the files were whole)."""
    want, want_err = python_text(files, opts, expr)
    for o, w in zip(opts, want, strict=True):
        got, err = core_text(files, o, expr)
        if _comparable(got) != _comparable(w):
            for k, (a, b) in enumerate(zip(got.splitlines(), w.splitlines(), strict=False)):
                assert a == b, f"{files} {o}: line {k + 1} differs"
        assert _comparable(got) == _comparable(w), (files, o)
        assert err == want_err
    return want[0], want_err


# ------------------------------------------------------------------ term_safe


def core_term_safe(text: str) -> str:
    return bytes(_core.term_safe(text.encode("utf-8", "surrogatepass"))).decode("utf-8")


# Every boundary of the escaped ranges, and what sits just outside them.
_EDGES = [chr(c) for c in (0x00, 0x09, 0x0A, 0x0D, 0x1B, 0x1F, 0x20, 0x7E, 0x7F, 0x80, 0x85, 0x9B, 0x9F, 0xA0,
                           0x61B, 0x61C, 0x61D, 0x200D, 0x200E, 0x200F, 0x2010, 0x2027, 0x2028, 0x202E, 0x202F,
                           0x2065, 0x2066, 0x2069, 0x206A, 0xD800, 0xDBFF, 0xDC00, 0xDCFF, 0xDFFF, 0xE000,
                           0xFFFD, 0x1F600, 0x10FFFF)]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.text(st.one_of(st.sampled_from(_EDGES), st.characters(exclude_categories=()))))
@example("\x1b]0;PWNED\x07\u202eeth0\ud800\r\n")
def test_term_safe_as_python_on_any_string(text: str) -> None:
    """Any ``str`` Python can hold, lone surrogates included (as surrogatepass UTF-8)."""
    assert core_term_safe(text) == term_safe(text)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40))
@example(b"eth\xff\x1b[2J\xc2\x85\xe2\x80\xae")
def test_term_safe_as_python_on_any_bytes_as_a_name(raw: bytes) -> None:
    """Bytes of a name as the system gives them: Python holds the undecodable ones as
    surrogates (surrogateescape); they reach the core as surrogatepass UTF-8, as labels.rs
    stores them."""
    name = raw.decode("utf-8", "surrogateescape")
    assert core_term_safe(name) == term_safe(name)


def test_term_safe_escapes_what_a_terminal_would_obey() -> None:
    assert core_term_safe("\x1b[2J\u202e\ud800\t") == "\\x1b[2J\\u202e\\ud800\\t"
    assert core_term_safe("web/eth0 →") == "web/eth0 →"


# ------------------------------------------------------------------ fixtures and corpus


def fixtures() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.pcapng"))


def test_there_are_fixtures_and_hostile_names_among_them() -> None:
    assert len(fixtures()) >= 10 and "hostile-names.pcapng" in fixtures()


@pytest.mark.parametrize("fixture", fixtures())
def test_fixture_in_every_look(fixture: str) -> None:
    text, err = assert_same_text([str(FIXTURES / fixture)])
    assert err is None
    assert text.startswith("p1  ")  # paths to compare


def test_hostile_names_come_out_escaped() -> None:
    """The same bytes as Python, and no control character but the colours' own."""
    f = str(FIXTURES / "hostile-names.pcapng")
    assert_same_text([f])
    for o in OPTIONS:
        got, _err = core_text([f], o)
        assert "\\x1b" in got
        stray = re.sub(r"\x1b\[[0-9;]*m", "", got).replace("\n", "")
        assert not [c for c in stray if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u202e\u2028\u2029"]


def corpus_sample() -> list[str]:
    names = sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))
    return [str(CORPUS / n) for n in names[::16]]


def test_every_16th_corpus_file_in_every_look() -> None:
    """Good and damaged files: the paths before the damage, then the same error."""
    files = corpus_sample()
    assert len(files) > 40, CORPUS
    damaged = sum(assert_same_text([f])[1] is not None for f in files)
    assert damaged > 2  # damaged files are compared too


def test_files_merged() -> None:
    assert_same_text([str(FIXTURES / n) for n in ("internet-ping.pcapng", "published-port.pcapng", "udp.pcapng")])


@pytest.mark.parametrize("expr", FILTERS)
def test_filtered_fixtures(expr: str) -> None:
    for name in ("internet-ping.pcapng", "published-port.pcapng", "hairpin.pcapng"):
        assert_same_text([str(FIXTURES / name)], OPTIONS[::5], expr=expr)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), packets=st.integers(1, 120), looks=st.sets(st.integers(0, 15), min_size=1,
                                                                                  max_size=4))
def test_generated_nat_streams(tmp_path: Path, seed: int, packets: int, looks: set[int]) -> None:
    """Rewrites (ports, ICMP ids, quoted headers), drops with reasons, hops without a
    direction, IPv6, late sightings: every look of them."""
    f = tmp_path / f"gen-{seed}-{packets}.pcapng"
    f.write_bytes(nat_stream(seed, packets))
    assert_same_text([str(f)], [OPTIONS[k] for k in sorted(looks)])


# ------------------------------------------------------------------ the command


def command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*HOPTRACE, "replay", *args], capture_output=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize(("flags", "look"), [
    ((), TextOptions()), (("-q",), TextOptions(detail=-1)), (("-v",), TextOptions(detail=1)),
    (("-vv", "-n"), TextOptions(numeric=True, detail=2)), (("-vvv",), TextOptions(detail=2)),
    (("--color", "always", "-q"), TextOptions(detail=-1, color=True)),
])  # fmt: skip
def test_replay_no_tui_prints_the_core_text(flags: tuple[str, ...], look: TextOptions) -> None:
    """The real command, --no-tui and to a pipe without it: the Python text, byte for byte."""
    files = [str(FIXTURES / "internet-ping.pcapng"), str(FIXTURES / "hostile-names.pcapng")]
    want = _comparable(python_text(files, [look])[0][0])
    for no_tui in (("--no-tui",), ()) if not flags else (("--no-tui",),):
        r = command(*no_tui, *flags, *files)
        assert (r.returncode, r.stderr) == (0, b"")
        assert _comparable(r.stdout.decode("utf-8")) == want


def test_replay_text_runs_the_core_engine() -> None:
    """Never the Python correlator: text replay runs the core's replay (--count: tracer.engine
    on the core's Stream, without the reference correlator)."""
    code = ("import sys; from tracer.cli import main; rc = main(sys.argv[1:]); sys.stdout.flush(); "
            "sys.stderr.write(repr((rc, 'tracer.engine' in sys.modules, 'tests.reference.correlate' in sys.modules)))")
    f = str(FIXTURES / "udp.pcapng")
    for args, python in ((["replay", "--no-tui", f], False), (["replay", "-q", f, "--", "udp"], False),
                         (["replay", "--no-tui", "-c", "1", f], True)):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120, cwd=ROOT,
                           text=True)
        assert r.stderr == repr((0, python, False)), args
        assert "stats: " in r.stdout


def test_no_color_and_color_flags() -> None:
    """--color auto to a pipe is plain; always paints; NO_COLOR loses to an explicit flag."""
    f = str(FIXTURES / "blocked.pcapng")
    plain = command("--no-tui", f, env={"NO_COLOR": "1"}).stdout
    auto = command("--no-tui", f).stdout
    painted = command("--no-tui", "--color", "always", f, env={"NO_COLOR": "1"}).stdout
    assert b"\x1b[" not in plain and _comparable(auto.decode()) == _comparable(plain.decode())
    assert b"\x1b[33mincomplete\x1b[0m" in painted


def test_a_damaged_file_shows_its_paths_then_one_error_line(tmp_path: Path) -> None:
    data = (FIXTURES / "internet-ping.pcapng").read_bytes()
    f = tmp_path / "cut.pcapng"
    f.write_bytes(data[: len(data) - 37])
    texts, err = python_text([str(f)], [TextOptions()])
    assert err is not None
    r = command("--no-tui", str(f))
    assert r.returncode == 2
    assert _comparable(r.stdout.decode()) == _comparable(texts[0])
    assert r.stderr.decode().startswith(f"hoptrace: {term_safe(err)}")
