"""`hoptrace lab ...` as a user types it: the happy path, bad input, and cleanup after failures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_lab_gone, need_root, run_hoptrace
from tracer.lab import SCENARIOS

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _env(prefix: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "HOPTRACE_LAB_PREFIX": prefix, **extra}


def test_unknown_scenario_exit_2_with_names(fresh_lab_prefix: str) -> None:
    r = run_hoptrace("lab", "run", "teleport", env=_env(fresh_lab_prefix))
    assert r.returncode == 2
    assert "unknown scenario 'teleport'" in r.stderr
    assert all(name in r.stderr for name in SCENARIOS)
    assert "Traceback" not in r.stderr


def test_unknown_engine_exit_2_with_names(fresh_lab_prefix: str) -> None:
    r = run_hoptrace("lab", "up", "--engine", "vmware", env=_env(fresh_lab_prefix))
    assert r.returncode == 2
    assert "docker" in r.stderr and "netns" in r.stderr


def test_userland_proxy_is_for_the_docker_engine_at_up(fresh_lab_prefix: str) -> None:
    r = run_hoptrace("lab", "up", "--engine", "netns", "--userland-proxy", "on", env=_env(fresh_lab_prefix))
    assert r.returncode == 2, r.stderr
    assert "the netns engine has no docker-proxy" in r.stderr and "Traceback" not in r.stderr
    r = run_hoptrace("lab", "run", "hairpin", "--userland-proxy", "off", env=_env(fresh_lab_prefix))
    assert r.returncode == 2, r.stderr
    assert "keeps the mode it was built with" in r.stderr
    assert_lab_gone(fresh_lab_prefix)


def test_run_needs_a_scenario(fresh_lab_prefix: str) -> None:
    r = run_hoptrace("lab", "run", env=_env(fresh_lab_prefix))
    assert (r.returncode, r.stderr.count("\n") <= 2) == (2, True), r.stderr


def test_dockerd_missing_exit_3_names_package(fresh_lab_prefix: str) -> None:
    # /usr/sbin holds dockerd: without it on PATH, dockerd "is not installed".
    r = run_hoptrace("lab", "up", "--engine", "docker", env=_env(fresh_lab_prefix, PATH="/usr/bin:/bin"))
    assert r.returncode == 3, r.stderr
    assert "dockerd is not installed" in r.stderr and "docker.io" in r.stderr
    assert_lab_gone(fresh_lab_prefix)


def test_not_root_exit_3(fresh_lab_prefix: str) -> None:
    r = subprocess.run([str(ROOT / ".venv/bin/hoptrace"), "lab", "up", "--engine", "netns"],
                       capture_output=True, text=True, env=_env(fresh_lab_prefix), user=65534,
                       group=65534, extra_groups=[], cwd="/", timeout=60)
    assert r.returncode == 3, r.stderr
    assert "needs root" in r.stderr


def test_up_run_status_down(fresh_lab_prefix: str) -> None:
    env = _env(fresh_lab_prefix)
    r = run_hoptrace("lab", "up", "--engine", "netns", env=env)
    assert r.returncode == 0, r.stderr
    assert f"/run/netns/{fresh_lab_prefix}-client" in r.stdout
    r = run_hoptrace("lab", "run", "published-port", env=env)
    assert (r.returncode, r.stdout.strip()) == (0, "published-port: ok: inet -> 203.0.113.2:8080: HTTP/1.1 200 OK")
    r = run_hoptrace("lab", "up", "--engine", "netns", env=env)  # twice in a row works
    assert r.returncode == 0, r.stderr
    assert "removing what an earlier lab" in r.stderr
    r = run_hoptrace("lab", "run", "blocked", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert '"ok": true' in r.stdout
    r = run_hoptrace("lab", "down", env=env)
    assert r.returncode == 0, r.stderr
    assert_lab_gone(fresh_lab_prefix)
    r = run_hoptrace("lab", "status", env=env)
    assert (r.returncode, r.stdout.splitlines()[0]) == (0, f"lab '{fresh_lab_prefix}': not up")
    r = run_hoptrace("lab", "run", "udp", env=env)
    assert r.returncode == 1 and "not up" in r.stderr


@pytest.mark.parametrize("engine", ["netns", "docker"])
def test_lab_fixture_cleans_up_after_a_failing_test(tmp_path: Path, engine: str) -> None:
    """The lab fixtures tear everything down even when the test using them fails."""
    need_root()
    prefix = f"hoptest-fail{os.getpid() % 10000}{engine[0]}"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(f"""
        from tests.conftest import lab_{engine}  # noqa: F401

        def test_fails(lab_{engine}):
            assert lab_{engine}.run("gateway-ping").ok
            assert False, "this test fails on purpose"
    """))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, cwd=ROOT, timeout=240,
        env={**os.environ, "HOPTRACE_TEST_LAB_PREFIX": prefix, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert "1 failed" in r.stdout and "error" not in r.stdout.splitlines()[-1], r.stdout[-2000:]
        assert "this test fails on purpose" in r.stdout
    finally:
        from tracer.lab import Lab

        left = Lab("netns", prefix).state.leftovers()
        Lab("netns", prefix).down()
    assert left == []


def test_default_engine_without_dockerd_is_netns_with_a_notice(fresh_lab_prefix: str, tmp_path: Path) -> None:
    """A machine with iproute2 and iptables but no dockerd: netns engine, one line saying why."""
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "iptables", "iptables-restore", "nsenter", "busybox"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    env = _env(fresh_lab_prefix, PATH=f"{bin_dir}:/usr/bin:/bin")
    r = run_hoptrace("lab", "up", env=env)
    assert r.returncode == 0, r.stderr
    notice = [ln for ln in r.stderr.splitlines() if "dockerd" in ln]
    assert notice == ["lab: dockerd is not installed (Debian package docker.io): using the netns engine"]
    assert f"lab '{fresh_lab_prefix}' (netns engine)" in r.stdout
