"""`hoptrace live` as a tcpdump user types it, against the kernel, in the lab: short flags, the
filter as trailing words, and what it says on stderr while it starts. Also the help's live
example with -i, -w and a filter of words, run as written (with the lab's interfaces)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HOPTRACE
from tests.probes.test_live_cli import SERVER, Traced, only_lab

pytestmark = [pytest.mark.root, pytest.mark.lab]


def short_ifaces(lab: Any) -> list[str]:
    """only_lab()'s --iface NODE/IFACE, as -i."""
    return [("-i" if a == "--iface" else a) for a in only_lab(lab)]


@pytest.fixture(scope="module")
def words_run(lab_netns: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("words")
    record = tmp / "out.pcapng"
    # -i, -w, -s and -c short; the filter as trailing words, after an option among them
    t = Traced(tmp, *short_ifaces(lab_netns), "-w", str(record), "-s", "0",
               "icmp", "-n", "and", "host", SERVER)
    results = {sc: lab_netns.run(sc) for sc in ("container-ping", "internet-ping", "published-port")}
    rc, records, err = t.stop()
    return {"rc": rc, "records": records, "stderr": err, "results": results, "record": record, "lab": lab_netns}


def test_words_filter_like_filter_flag(words_run: dict[str, Any]) -> None:
    assert all(r.ok for r in words_run["results"].values()), words_run["results"]
    assert words_run["rc"] == 0, words_run["stderr"]
    paths = [r for r in words_run["records"] if r["type"] == "path"]
    assert paths, words_run["stderr"]
    for p in paths:
        assert p["proto"] == "icmp"
        assert any(SERVER in (h["src"], h["dst"]) for h in p["hops"]), p
    assert words_run["records"][-1]["type"] == "stats"


def test_json_is_unchanged_by_n(words_run: dict[str, Any]) -> None:
    hops = [h for r in words_run["records"] if r["type"] == "path" for h in r["hops"]]
    assert {h["node"] for h in hops} >= {"client", "host", "inet"}  # names, not netns:<inode>


def test_piped_stderr_has_no_start_up_status(words_run: dict[str, Any]) -> None:
    # compiling/ready are for a person at a terminal (tests/probes/test_live_cli.py has that)
    lines = words_run["stderr"].splitlines()
    assert not any("compiling probes" in line or "ready:" in line for line in lines), lines


def test_w_recorded_what_it_traced_at_the_maximum_snaplen(words_run: dict[str, Any]) -> None:
    rec: Path = words_run["record"]
    assert rec.stat().st_size > 0
    r = subprocess.run([*HOPTRACE, "replay", "--json", str(rec)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    replayed = [x for x in map(json.loads, r.stdout.splitlines()) if x["type"] == "path"]
    assert replayed and all(p["proto"] == "icmp" for p in replayed)


def test_c_stops_after_n_paths_and_text_n_shows_numbers(lab_netns: Any, tmp_path: Path) -> None:
    """-c 1, text with -n (a pipe, so no TUI): the process ends by itself after one path."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen([*HOPTRACE, "live", "--backend", "ebpf", "--no-tui", "-n", "-c", "1",
                             "--ready-file", str(ready), *short_ifaces(lab_netns), "icmp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert lab_netns.run("internet-ping").ok
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    blocks = [b for b in out.split("\n\n") if b.startswith("p")]
    assert len(blocks) == 1, out
    client = lab_netns.netns_inode("client")
    assert f"netns:{client}/eth0" in out, out
    assert "client/eth0" not in out
    assert out.rstrip().splitlines()[-1].startswith("stats:")
