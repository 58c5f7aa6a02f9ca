"""``live --sample N`` and ``live --max-cpu PCT``: parsed, checked, explained in --help."""

from __future__ import annotations

import pytest

from tests.conftest import FIXTURES, run_hoptrace
from tracer.cli import parse_args
from tracer.sampling import DEFAULT_MAX_CPU


def test_defaults_sample_nothing_and_keep_a_budget() -> None:
    args = parse_args(["live"])
    assert (args.sample, args.max_cpu) == (1, DEFAULT_MAX_CPU) == (1, 50.0)


def test_values_and_tcpdump_words_together() -> None:
    args = parse_args(["live", "--sample", "4", "--max-cpu", "25", "udp", "port", "53"])
    assert (args.sample, args.max_cpu, args.filter) == (4, 25.0, "udp port 53")
    assert parse_args(["live", "--max-cpu", "0"]).max_cpu == 0.0  # no budget
    assert parse_args(["live", "--max-cpu", "150%"]).max_cpu == 150.0  # cores' worth, % allowed


@pytest.mark.parametrize(("argv", "message"), [
    (["--sample", "0"], "argument --sample: must be > 0: '0'"),
    (["--sample", "x"], "argument --sample: not a whole number: 'x'"),
    (["--max-cpu", "-5"], "argument --max-cpu: must be 0 (no budget) .."),
    (["--max-cpu", "lots"], "argument --max-cpu: not a number: 'lots'"),
    (["--max-cpu", "nan"], "argument --max-cpu: must be 0 (no budget) .."),
])
def test_bad_values_are_usage_errors(argv: list[str], message: str) -> None:
    r = run_hoptrace("live", *argv, timeout=60)
    assert r.returncode == 2, r
    assert message in r.stderr.splitlines()[-1], r.stderr


def test_sample_with_a_replay_is_a_usage_error() -> None:
    r = run_hoptrace("live", "-r", str(FIXTURES / "internet-ping.pcapng"), "--sample", "4", timeout=60)
    assert r.returncode == 2, r
    assert r.stderr.splitlines() == ["hoptrace: -r replays a file: --sample means nothing there",
                                     "hoptrace: hint: drop it, or trace live without -r"]


def test_help_says_what_they_do_and_the_default() -> None:
    r = run_hoptrace("live", "--help", timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--sample N trace one packet in N, every hop of it" in text
    assert "what is skipped is counted in the stats" in text
    assert "--max-cpu PCT CPU budget, in % of one core (default 50; 0: none)" in text
