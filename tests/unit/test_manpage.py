"""hoptrace(1) and the bash / zsh completions: generated from the parser, so every flag is in them.

The bash completion is exercised the way bash calls it (COMP_LINE / COMP_POINT, then the
function); node names come from a stand-in `hoptrace topology --json` whose names include
shell syntax, which must never be run and never be offered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need_tool
from tracer.lab.scenarios import SCENARIOS
from tracer.manpage import bash_completion, install, iter_flags, manpage, walk, zsh_completion

FLAGS = sorted({s for _cmd, f in iter_flags() for s in f.strings})


def test_the_walk_sees_every_command_and_flag() -> None:
    _top, commands = walk()
    assert [c.name for c in commands] == ["lab", "live", "probe", "replay", "report", "topology",
                                          "doctor", "cleanup"]
    assert {"-i", "--iface", "-w", "-c", "-s", "-n", "-r", "-q", "-v", "--color", "--hop",
            "--format", "--from", "--engine"} <= set(FLAGS)


def test_man_page_has_every_flag_and_example_and_renders_cleanly(tmp_path: Path) -> None:
    text = manpage(date="2030-01-01")
    assert text.startswith('.TH HOPTRACE 1 "2030-01-01"')
    for flag in FLAGS:
        assert f"\\fB{flag.replace('-', chr(92) + '-')}\\fR" in text, flag
    for line in text.splitlines():
        assert not line.startswith("'"), line  # a roff control line by accident
    need_tool("groff")
    page = tmp_path / "hoptrace.1"
    page.write_text(text)
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-P-cbou", str(page)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    rendered = r.stdout
    for c in walk()[1]:
        assert c.description.split()[0] in rendered
    assert "hoptrace replay --json fixtures/blocked.pcapng -- icmp and host 198.51.100.8" in \
        " ".join(rendered.replace("\u2010", "-").split())
    assert "NO_COLOR" in rendered and "EXIT STATUS" in rendered


def test_completions_have_every_flag_command_and_scenario() -> None:
    for script in (bash_completion(), zsh_completion()):
        for flag in FLAGS:
            assert flag in script, flag
        for name in ("lab", "live", "probe", "replay", "report", "topology", "doctor", "cleanup"):
            assert name in script
        for name in SCENARIOS:
            assert name in script
        assert "auto ebpf pcap" in script  # --backend's choices


def test_bash_completion_is_valid_bash() -> None:
    r = subprocess.run(["bash", "-n"], input=bash_completion(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_zsh_completion_is_valid_zsh() -> None:
    need_tool("zsh")  # make install provides it
    r = subprocess.run(["zsh", "-n"], input=zsh_completion(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert zsh_completion().startswith("#compdef hoptrace\n")


HOSTILE = "$(touch PWNED)"


@pytest.fixture
def fake_hoptrace(tmp_path: Path) -> Path:
    """A `hoptrace` whose `topology --json` names two nodes, one of them hostile."""
    topo = {"namespaces": [
        {"node": "web", "interfaces": [{"name": "eth0"}, {"name": "lo"}]},
        {"node": "netns:4026532466", "interfaces": [{"name": "veth50f2c31"}]},
        {"node": HOSTILE, "interfaces": [{"name": "eth0"}]},
        {"node": "client", "interfaces": [{"name": "`touch PWNED`"}, {"name": "eth0"}]},
    ]}
    exe = tmp_path / "hoptrace"
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = topology ] && cat <<'EOF'\n{json.dumps(topo)}\nEOF\n")
    exe.chmod(0o755)
    return exe


def complete(line: str, script: str, cwd: Path) -> list[str]:
    prog = (f"{script}\n"
            f"COMP_LINE={_sh(line)}; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=(); _hoptrace\n"
            "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert r.returncode == 0, r.stderr
    return [w for w in r.stdout.splitlines() if w]


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_bash_completion_offers_what_each_place_takes(tmp_path: Path, fake_hoptrace: Path) -> None:
    need_tool("python3")
    script = bash_completion()
    (tmp_path / "cap.pcapng").write_bytes(b"")
    exe = str(fake_hoptrace)
    assert complete(f"{exe} ", script, tmp_path)[:3] == ["-h", "--help", "--version"]
    assert "live" in complete(f"{exe} l", script, tmp_path)
    assert complete(f"{exe} live --backend ", script, tmp_path) == ["auto", "ebpf", "pcap"]
    assert complete(f"{exe} live --col", script, tmp_path) == ["--color"]
    assert complete(f"{exe} replay --color ", script, tmp_path) == ["auto", "always", "never"]
    assert complete(f"{exe} lab ", script, tmp_path) == ["up", "down", "status", "demo", "run"]
    assert complete(f"{exe} lab run ", script, tmp_path) == list(SCENARIOS)
    assert complete(f"{exe} lab --engine netns run internet", script, tmp_path) == ["internet-ping"]
    assert complete(f"{exe} replay ca", script, tmp_path) == ["cap.pcapng"]
    assert complete(f"{exe} replay cap.pcapng -- ho", script, tmp_path) == []  # filter words
    assert complete(f"{exe} probe --from ", script, tmp_path) == ["client", "netns:4026532466", "web"]
    assert complete(f"{exe} live -i ", script, tmp_path) == [
        "client/eth0", "netns:4026532466/veth50f2c31", "web/eth0"]
    # bash replaces only what follows the last ':' or '=' of the word
    assert complete(f"{exe} live -i netns:40", script, tmp_path) == ["4026532466/veth50f2c31"]
    assert complete(f"{exe} replay --hop web/eth0=ca", script, tmp_path) == ["cap.pcapng"]
    assert not (tmp_path / "PWNED").exists()


def test_install_writes_three_files_and_a_second_run_writes_nothing(tmp_path: Path) -> None:
    written = install(tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert names == ["share/bash-completion/completions/hoptrace", "share/man/man1/hoptrace.1",
                     "share/zsh/site-functions/_hoptrace"]
    assert install(tmp_path) == []
    if shutil.which("man"):
        r = subprocess.run(["man", "-l", str(tmp_path / "share/man/man1/hoptrace.1")], capture_output=True,
                           text=True, timeout=60, env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"})
        assert "hoptrace live" in r.stdout
