"""``_core.replay_stages`` (crates/hoptrace-py/src/stages.rs), which bench/replay_bench.py
times: each stage is a whole pass over the same records, and the last one is the replay
itself (the same count of sightings ``replay_ndjson`` reports, every record read)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracer import _core

FIXTURES = sorted((Path(__file__).resolve().parents[2] / "fixtures").glob("*.pcapng"))


def test_the_fixtures_are_there() -> None:
    assert len(FIXTURES) >= 5


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_every_stage_passes_over_every_record(path: Path) -> None:
    inputs = [(str(path), path.stem.encode(), None)]
    with open(os.devnull, "wb") as null:
        observations, _, error = _core.replay_ndjson(inputs, null.fileno())
    assert error is None and observations > 0
    names = _core.replay_stage_names()
    assert names == ["read", "decode", "correlate", "render"]
    for name in names:
        records, wall = _core.replay_stages(inputs, name)
        assert records == observations, name
        assert 0 < wall < 10


def test_an_unknown_stage_or_a_damaged_file_is_a_value_error(tmp_path: Path) -> None:
    path = FIXTURES[0]
    with pytest.raises(ValueError, match='unknown stage "join"'):
        _core.replay_stages([(str(path), b"x", None)], "join")
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(path.read_bytes()[:-7])
    for name in _core.replay_stage_names():
        with pytest.raises(ValueError):
            _core.replay_stages([(str(bad), b"bad", None)], name)
