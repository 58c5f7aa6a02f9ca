"""Shared fixtures. Kernel and lab tests build uniquely named namespaces and
remove them in teardown, also on failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
# HOPTRACE_CORPUS: where a checkout that is not beside shared/ (a git worktree) finds the corpus.
CORPUS = Path(os.environ.get("HOPTRACE_CORPUS") or ROOT.parent / "shared" / "corpus" / "tcpdump-tests")
HOPTRACE = [str(ROOT / ".venv" / "bin" / "hoptrace")]


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def need_tool(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"needs {name} (make install provides it)")


@pytest.fixture
def nsname() -> Iterator[str]:
    """A uniquely named network namespace, removed afterwards, also on failure."""
    need_root()
    name = f"hoptest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run_hoptrace(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HOPTRACE, *args], capture_output=True, text=True, timeout=timeout, **kw  # type: ignore[call-overload]
    )


# --------------------------------------------------------------------------
# The lab (tracer.lab): module scoped, a unique prefix each, removed also on failure.
# --------------------------------------------------------------------------


def lab_prefix() -> str:
    """``hoptest-<random>``; HOPTRACE_TEST_LAB_PREFIX pins it (tests that inspect a lab from outside)."""
    return os.environ.get("HOPTRACE_TEST_LAB_PREFIX") or f"hoptest-{uuid.uuid4().hex[:8]}"


def assert_lab_gone(prefix: str) -> None:
    from tracer.lab.state import LabState

    left = LabState(prefix).leftovers()
    assert left == [], f"lab {prefix} left: {left}"


def _lab(engine: str, userland_proxy: bool | None = None) -> Iterator[object]:
    need_root()
    need_tool("busybox")
    if engine == "docker":
        need_tool("dockerd")
    from tracer.lab import Lab

    lab = Lab(engine, lab_prefix(), userland_proxy)
    try:
        lab.up()
        yield lab
    finally:
        try:
            lab.down()
        finally:
            assert_lab_gone(lab.prefix)


@pytest.fixture(scope="module")
def lab_netns() -> Iterator[object]:
    """An up ``tracer.lab.Lab`` (netns engine) for the test module; torn down also on failure."""
    yield from _lab("netns")


@pytest.fixture(scope="module")
def lab_docker() -> Iterator[object]:
    """An up ``tracer.lab.Lab`` (docker engine: a real dockerd, with Docker's default
    ``--userland-proxy=true``) for the test module."""
    yield from _lab("docker")


@pytest.fixture(scope="module")
def lab_docker_noproxy() -> Iterator[object]:
    """The docker engine with ``--userland-proxy=false`` (hairpin DNAT), for the test module."""
    yield from _lab("docker", userland_proxy=False)


@pytest.fixture
def fresh_lab_prefix() -> Iterator[str]:
    """A prefix for a test that builds (and breaks) labs itself; everything is removed afterwards
    and the test fails if anything was left."""
    need_root()
    from tracer.lab import Lab

    prefix = lab_prefix()
    try:
        yield prefix
    finally:
        try:
            lab = Lab("netns", prefix)
            lab.down()  # down() stops a dockerd too, whatever engine built it
            shutil.rmtree(lab.failed_logs_dir(), ignore_errors=True)  # logs kept by a failed up()
        finally:
            assert_lab_gone(prefix)
