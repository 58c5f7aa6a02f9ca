"""Robustness over all 830 files of the tcpdump test corpus (many deliberately malformed).

Each file is replayed in-process through the real CLI entry point
(``tracer.cli.main(["replay", "--json", F])``: the whole FileSource ->
decode -> Engine -> NDJSON path). It either replays (exit 0, NDJSON whose
last line is a stats object) or fails with exit 2 and exactly one stderr
line naming the file: never a traceback, an internal error or a hang.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import CORPUS
from tracer.cli import main


def corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def check_replay(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["replay", "--json", str(path)])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    err_lines = err.splitlines()
    if code == 0:
        assert err_lines == []
        assert lines, "no output at all"
        objs = [json.loads(line) for line in lines]
        assert objs[-1]["type"] == "stats"
        assert {o["type"] for o in objs} <= {"path", "flow", "stats"}
    else:
        assert code == 2, (code, err)
        assert len(err_lines) == 1, err
        assert err_lines[0].startswith(f"hoptrace: {path}: "), err
        assert "Traceback" not in err and "internal error" not in err
        # whatever was read before the damage was still printed, ending with stats
        if lines:
            assert json.loads(lines[-1])["type"] == "stats"
    return code, lines


def test_corpus_is_there() -> None:
    assert len(corpus_files()) == 830, f"expected 830 corpus files in {CORPUS}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", corpus_files())
def test_corpus_file_replays_or_fails_cleanly(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    check_replay(CORPUS / name, capsys)


def test_damaged_copy_prints_paths_before_the_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = CORPUS / "afs.pcap"
    if not src.exists():
        pytest.skip(f"needs the corpus at {CORPUS}")
    full = tmp_path / "afs.pcap"
    shutil.copyfile(src, full)
    code, lines = check_replay(full, capsys)
    n_full = sum(1 for line in lines if json.loads(line)["type"] == "path")
    cut = tmp_path / "afs-cut.pcap"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code_cut, lines_cut = check_replay(cut, capsys)
    n_cut = sum(1 for line in lines_cut if json.loads(line)["type"] == "path")
    assert (code, code_cut) == (0, 2)
    assert 0 < n_cut < n_full


def test_no_file_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hoptrace: replay needs at least one capture file")


def test_bad_filter_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--json", "--filter", "hots 1", str(CORPUS / "afs.pcap")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "bad --filter 'hots 1'" in err[0]


def test_filter_keeps_matching_paths(capsys: pytest.CaptureFixture[str]) -> None:
    f = CORPUS / "afs.pcap"
    if not f.exists():
        pytest.skip(f"needs the corpus at {CORPUS}")
    assert main(["replay", "--json", "--filter", "udp port 7000", str(f)]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    paths = [o for o in objs if o["type"] == "path"]
    assert paths
    assert all(7000 in (h["sport"], h["dport"]) for p in paths for h in p["hops"])
    assert main(["replay", "--json", "--filter", "host 192.0.2.99", str(f)]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["type"] for o in objs] == ["stats"]


def test_vector_decode_equals_scalar_over_the_corpus() -> None:
    """decode's numpy fast path against its per-frame reference on every corpus frame it reads."""
    from tests.reference.decode import _vector, decode_scalar
    from tests.reference.readers import _FileReader
    from tracer.errors import CaptureFileError

    frames = 0
    for name in corpus_files():
        reader = _FileReader(str(CORPUS / name))
        try:
            for ch in reader.chunks():
                lts = [reader.ifaces[i].linktype for i in ch.iface]
                got = _vector(ch.buf, ch.offs, ch.lens, lts)
                assert got.tobytes() == decode_scalar(ch.buf, ch.offs, ch.lens, lts).tobytes(), name
                frames += len(got)
        except CaptureFileError:
            continue
    assert frames > 9000
