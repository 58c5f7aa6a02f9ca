"""Help that teaches: every flag has a line of help, every command ends with examples that run.

The examples are read back out of the parser's epilogs: an example that stops parsing (a flag
renamed) or stops running (replay/report on the fixtures, topology, doctor, live -r) fails here.
Examples that would make traffic or change the machine (lab, live, probe, cleanup) are parsed
only; tests/probes/test_live_words.py runs live's forms in a lab.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess

import pytest

from tests.conftest import FIXTURES, HOPTRACE, ROOT
from tracer.cli import COMMANDS, EPILOGS, build_parser, parse_args

ORDER = ["lab", "live", "probe", "replay", "report", "topology", "doctor", "cleanup"]
# What an example may do here: read files and the system, never make traffic or change it.
RUNS_HERE = {"replay", "report", "topology", "doctor"}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    raise AssertionError("no commands")


def every_action() -> list[tuple[str, argparse.Action]]:
    parser = build_parser()
    out = [("", a) for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
    for name, sub in subparsers(parser).items():
        out += [(name, a) for a in sub._actions]
    return out


def test_every_flag_and_argument_has_a_line_of_help() -> None:
    missing = [f"{cmd or 'hoptrace'} {'/'.join(a.option_strings) or a.dest}"
               for cmd, a in every_action() if not (a.help and a.help.strip())]
    assert missing == []
    long = [f"{cmd} {a.dest}: {a.help}" for cmd, a in every_action() if a.help and "\n" in a.help]
    assert long == [], "help is one line"


def test_help_lists_the_commands_in_the_order_a_person_meets_them() -> None:
    assert list(COMMANDS) == ORDER
    out = subprocess.run([*HOPTRACE, "--help"], capture_output=True, text=True, timeout=60).stdout
    listed = re.findall(r"^    (\w+) +\S", out, re.M)
    assert listed == ORDER, out


def examples(command: str) -> list[str]:
    text = EPILOGS[command]
    assert "examples:" in text
    block = text.split("examples:", 1)[1]
    return [line.strip() for line in block.splitlines() if line.strip().startswith(("hoptrace ", "DOCKER_HOST="))]


@pytest.mark.parametrize("command", ORDER)
def test_every_command_help_ends_with_examples_and_where_to_read_more(command: str) -> None:
    r = subprocess.run([*HOPTRACE, command, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 3 <= len(examples(command)) <= 5
    tail = r.stdout.rstrip().splitlines()
    assert tail[-1].startswith("More: `man hoptrace`, README.md"), tail[-1]
    for ex in examples(command):
        assert ex.split("#")[0].strip() in r.stdout


def commands_of(example: str) -> list[list[str]]:
    """The hoptrace invocations of an example line: comments, env assignments, pipes and
    redirections taken off (``a && b`` gives two)."""
    words = shlex.split(example, comments=True)
    out: list[list[str]] = []
    current: list[str] = []
    skip = False
    for w in [*words, "&&"]:
        if skip:
            skip = False
            continue
        if w in ("&&", "|", ";"):
            if current:
                out.append(current)
            current = []
            skip = False
            continue
        if w == ">":
            skip = True
            continue
        if not current and re.match(r"^[A-Z_]+=", w):
            continue
        current.append(w)
    return [c for c in out if c and c[0] == "hoptrace"]


ALL_EXAMPLES = [(cmd, ex) for cmd in ["", *ORDER] for ex in examples(cmd)]


@pytest.mark.parametrize(("command", "example"), ALL_EXAMPLES)
def test_every_example_parses_with_flags_that_exist(command: str, example: str) -> None:
    for argv in commands_of(example):
        if argv[1:] == ["COMMAND", "--help"]:
            continue
        args = parse_args(argv[1:])
        assert args.command in COMMANDS


def runs_here(argv: list[str]) -> bool:
    return argv[1] in RUNS_HERE or (argv[1] == "live" and "-r" in argv)


@pytest.mark.parametrize(("command", "example"),
                         [(c, e) for c, e in ALL_EXAMPLES if any(map(runs_here, commands_of(e)))])
def test_examples_that_can_run_here_run(command: str, example: str) -> None:
    if any(argv[1] in ("topology", "doctor") for argv in commands_of(example)) and os.geteuid() != 0:
        pytest.skip("topology and doctor as the examples show them run as root")
    env = dict(os.environ)
    for w in shlex.split(example, comments=True):
        m = re.match(r"^([A-Z_]+)=(.*)$", w)
        if not m:
            break
        env[m.group(1)] = m.group(2)
    for argv in commands_of(example):
        if not runs_here(argv):
            continue
        for word in argv:
            if word.startswith("fixtures/"):
                assert (FIXTURES / word.removeprefix("fixtures/")).exists(), word
        r = subprocess.run([*HOPTRACE, *argv[1:]], capture_output=True, text=True, timeout=120,
                           cwd=ROOT, env=env)
        assert r.returncode == 0, f"{example}: {r.stderr}"
        assert r.stdout.strip(), example
        assert "Traceback" not in r.stderr


def test_lab_examples_name_real_scenarios() -> None:
    from tracer.lab.scenarios import SCENARIOS

    for ex in examples("lab"):
        argv = commands_of(ex)[0]
        if argv[2] == "run":
            assert argv[3] in SCENARIOS
