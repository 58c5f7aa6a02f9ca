"""Not root: every command that needs the kernel says so in one line and exits 3; with the
capabilities but not root, what works works (replay, report) and doctor agrees with live."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, HOPTRACE, need_root, need_tool

pytestmark = [pytest.mark.root]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
CAPS = "+bpf,+perfmon,+net_admin,+sys_admin,+net_raw"
NOBODY_WITH_CAPS = [*NOBODY, f"--inh-caps={CAPS}", f"--ambient-caps={CAPS}"]


def as_user(prefix: list[str], *args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    need_root()
    need_tool("setpriv")
    # cwd and HOME the user can read; the venv and the source tree are world-readable
    return subprocess.run([*prefix, *HOPTRACE, *args], capture_output=True, text=True, timeout=120,
                          cwd="/", env={**os.environ, "HOME": str(tmp)})


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("hoptrace: hint:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("hoptrace: "), err
    return lines[0]


@pytest.mark.parametrize("args, missing", [
    (("live", "--backend", "ebpf", "--json", "--duration", "2"), "root"),
    (("live", "--backend", "pcap", "--json", "--duration", "2"), "root"),
    (("live", "--json", "--duration", "2"), "root"),
    (("lab", "up", "--engine", "netns"), "root"),
    (("probe", "--from", "client", "--to", "198.51.100.8"), "root"),
    (("cleanup",), "root"),
    (("topology",), "root"),
], ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_nobody_gets_exit_3_and_what_is_missing(args: tuple[str, ...], missing: str, tmp_path: Path) -> None:
    r = as_user(NOBODY, *args, tmp=tmp_path)
    assert r.returncode == 3, (r.returncode, r.stderr)
    # `live` (auto) first says it falls back to taps, then why taps cannot run either
    err = "\n".join(line for line in r.stderr.splitlines() if "using AF_PACKET taps" not in line)
    assert missing in _one_error_line(err)
    assert r.stdout == ""


def test_nobody_doctor_names_the_missing_capabilities(tmp_path: Path) -> None:
    r = as_user(NOBODY, "doctor", tmp=tmp_path)
    assert r.returncode == 3, r.stderr
    line = _one_error_line(r.stderr)
    assert "no live backend" in line and "CAP_BPF" in line
    assert "FAIL privileges" in r.stdout


def test_capabilities_without_root(tmp_path: Path) -> None:
    """Observed: the live backends need uid 0 (topology discovery reads every namespace through
    /proc and /run/netns; the eBPF loader insists on root), so with the capabilities alone live is
    exit 3 -- and doctor says the same instead of claiming the taps work. Replay and report need no
    privilege and work."""
    for args in (("live", "--backend", "ebpf", "--json", "--duration", "2"),
                 ("live", "--backend", "pcap", "--json", "--duration", "2")):
        r = as_user(NOBODY_WITH_CAPS, *args, tmp=tmp_path)
        assert r.returncode == 3, (args, r.stderr)
        assert "root" in _one_error_line(r.stderr)
    doc = as_user(NOBODY_WITH_CAPS, "doctor", "--json", tmp=tmp_path)
    assert doc.returncode == 3, doc.stderr
    import json

    backends = json.loads(doc.stdout)["backends"]
    assert (backends["ebpf"]["ok"], backends["pcap"]["ok"], backends["file"]["ok"]) == (False, False, True)

    fixture = FIXTURES / "internet-ping.pcapng"
    r = as_user(NOBODY_WITH_CAPS, "replay", "--json", str(fixture), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"type": "path"' in r.stdout and r.stdout.splitlines()[-1].startswith('{"type": "stats"')
    r = as_user(NOBODY, "report", str(fixture), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
