"""`make wheel`: a wheel that runs on a host with Python and bcc but no Rust toolchain.

Built by maturin from this checkout (release; the release build `make install` made is
reused), installed into a fresh virtualenv outside the repository, and used from there:
the extension, the probe's C source and the TUI's stylesheet are inside it.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_make_wheel_installs_and_runs_without_the_checkout(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    r = subprocess.run([str(ROOT / ".venv/bin/maturin"), "build", "--release", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("hoptrace-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"probes/skb_hops.c", "tui/app.tcss"} <= names
    assert any(n.startswith("tracer/_core.") and n.endswith(".so") for n in names), sorted(names)

    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # --no-deps: the dependencies (textual, scapy, ...) come from the checkout's virtualenv
    # through PYTHONPATH below; what is under test is the wheel's own content.
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", str(wheel)], check=True,
                   timeout=300)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(next((ROOT / ".venv/lib").glob("python3*/site-packages")))}
    v = subprocess.run([str(venv / "bin/hoptrace"), "--version"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=60)
    assert v.returncode == 0 and v.stdout.startswith("hoptrace "), v.stderr
    rp = subprocess.run([str(venv / "bin/hoptrace"), "replay", "--json", str(ROOT / "fixtures/udp.pcapng")],
                        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert rp.returncode == 0, rp.stderr
    lines = [json.loads(x) for x in rp.stdout.splitlines()]
    assert lines[-1]["type"] == "stats" and lines[-1]["paths"] == 2
    where = subprocess.run([str(venv / "bin/python"), "-c", "import tracer._core as c; print(c.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
