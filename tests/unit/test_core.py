"""The Rust core is built and importable as ``tracer._core``, and it is this checkout's build."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_core_is_this_checkouts_build() -> None:
    from tracer import _core

    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    assert _core.core_version() == crate
    assert Path(_core.__file__).resolve().parent == ROOT / "tracer"


def test_importing_tracer_does_not_load_the_core() -> None:
    # Start-up paths (--help, --version, doctor) stay small: the core loads when a command needs it.
    code = "import sys, tracer.cli; print('tracer._core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_core_reads_rows_as_obs_dtype_lays_them_out() -> None:
    from tracer import _core
    from tracer.model import obs_dtype

    dt = obs_dtype()
    layout, size = _core.obs_layout()
    assert size == dt.itemsize
    assert [(name, t, off) for name, t, off in layout] == [
        (name, dt.fields[name][0].str, dt.fields[name][1]) for name in dt.names
    ]


def test_a_panic_in_the_core_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tracer import _core, cli
    from tracer.commands import replay

    def boom(_args: object) -> int:
        _core._panic_for_tests("index out of range\x1b[2J")
        return 0

    monkeypatch.setattr(replay, "run", boom)
    assert cli.main(["replay", "--json", "x.pcap"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("hoptrace: internal error in the core: index out of range\\x1b[2J "
                   "(run with --debug for details)\n")


def test_a_panic_in_the_core_prints_nothing_else_on_stderr() -> None:
    # The default panic hook's "thread ... panicked at" lines are off; the exception carries it.
    code = ("from tracer import _core\ntry:\n    _core._panic_for_tests('x')\n"
            "except BaseException as e:\n    print(type(e).__name__, e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert (r.stdout, r.stderr) == ("PanicException x\n", "")
