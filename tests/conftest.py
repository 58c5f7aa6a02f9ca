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
CORPUS = ROOT.parent / "shared" / "corpus" / "tcpdump-tests"
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
