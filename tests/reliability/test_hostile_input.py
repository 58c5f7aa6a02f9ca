"""Hostile CLI values: every argument that reaches the kernel, a shell, iptables, libpcap or bcc's
compiler is validated. Each gives exit 2, a `hoptrace:` error line (no traceback, no line the
value injected), and no side effect (the marker file a shell injection would create is absent)."""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from tests.conftest import HOPTRACE, need_root
from tracer.cli import main
from tracer.errors import FilterError, HoptraceError, UsageError

pytestmark = [pytest.mark.root]


def payloads(marker: Path) -> list[str]:
    return [
        f"$(touch {marker})",
        f"`touch {marker}`",
        f'"; touch {marker}; #',
        f"x;touch {marker}",
        "eth0\nINJECTED: a forged line",
        "A" * 4096,
        "../../../etc/passwd",
    ]


# Every argument that reaches something outside Python; {v} is the hostile value.
TEMPLATES = [
    ["live", "--backend", "pcap", "--duration", "2", "--json", "--iface={v}"],
    ["live", "--backend", "ebpf", "--duration", "2", "--json", "--iface={v}"],
    ["live", "--backend", "ebpf", "--duration", "2", "--json", "--iface=host/{v}"],
    ["live", "--backend", "pcap", "--duration", "2", "--json", "--filter={v}"],
    ["live", "--backend", "ebpf", "--duration", "2", "--json", "--filter={v}"],
    ["live", "--backend", "pcap", "--duration", "2", "--json", "--record={tmp}/no-such-dir/{v}"],
    ["probe", "--from={v}", "--to", "198.51.100.8"],
    ["probe", "--from", "client", "--to={v}"],
    ["probe", "--from", "client", "--to=198.51.100.8:{v}", "--proto", "udp"],
    ["lab", "run", "--", "{v}"],
    ["replay", "--json", "--filter={v}", "{tmp}/no-such.pcap"],
]


def _argv(template: list[str], value: str, tmp: Path) -> list[str]:
    return [a.replace("{v}", value).replace("{tmp}", str(tmp)) for a in template]


def _check_error(rc: int, err: str, value: str, argv: list[str]) -> None:
    assert rc == 2, (argv[:4], rc, err[-500:])
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    lines = err.splitlines()
    # the error itself is one `hoptrace` line (a hint may follow on its own `hoptrace: hint:` line);
    # argparse's own errors end with its usage error line
    assert lines and all(line.startswith(("hoptrace", "usage:", " ")) for line in lines), err[-500:]
    assert not any(line.startswith("INJECTED") for line in lines), err
    assert len(lines[-1]) < 6000, "the whole 4 KB value echoed more than once"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: "-".join(a.split("=")[0].strip("-") for a in t[:6]))
def test_cli_rejects_hostile_values(template: list[str], tmp_path: Path) -> None:
    """In-process through cli.main (the code path of the real command), every payload."""
    need_root()
    marker = tmp_path / "pwned"
    for value in payloads(marker):
        argv = _argv(template, value, tmp_path)
        err = io.StringIO()
        with redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse
                rc = int(exc.code or 0)
        _check_error(rc, err.getvalue(), value, argv)
        assert not marker.exists(), f"{argv}: the injected command ran"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: "-".join(a.split("=")[0].strip("-") for a in t[:6]))
def test_cli_subprocess_shell_payload(template: list[str], tmp_path: Path) -> None:
    """The real executable, once per argument: a shell payload runs nothing and is exit 2."""
    need_root()
    marker = tmp_path / "pwned"
    for value in (f"$(touch {marker})", "x\nINJECTED: forged"):
        argv = _argv(template, value, tmp_path)
        r = subprocess.run([*HOPTRACE, *argv], capture_output=True, text=True, timeout=60)
        _check_error(r.returncode, r.stderr, value, argv)
        assert r.stdout == "" or r.stdout.startswith('{"type": "stats"'), r.stdout[:300]
        assert not marker.exists(), f"{argv}: the injected command ran"


# --- NUL bytes: argv cannot carry them, the Python APIs can ----------------------------


def test_nul_in_filter_is_refused_not_truncated() -> None:
    from tracer.filter import PathFilter

    # libpcap reads a C string: "udp\0<garbage>" would otherwise compile as plain "udp".
    with pytest.raises(FilterError, match="NUL"):
        PathFilter("udp\0 and ((((")


def test_nul_in_probe_target_and_node() -> None:
    from tracer.commands.reach import parse_target, resolve_node
    from tracer.topology import Namespace, Topology

    # a node really named "client" exists: only the NUL can make these fail
    topo = Topology(namespaces=(Namespace(inode=1, name="client", path="/proc/self/ns/net"),))

    for text in ("198.51.100.8\0", "198.51.100.8:80\0", "\0"):
        with pytest.raises(UsageError):
            parse_target(text, "udp")
    for name in ("client\0", "\0", "client\0; id"):
        with pytest.raises(UsageError):
            resolve_node(name, topo)


def test_nul_in_record_path(tmp_path: Path) -> None:
    from tracer.sinks.record import PcapngRecorder

    with pytest.raises(HoptraceError, match="cannot create recording"):
        PcapngRecorder(str(tmp_path / "a\0b.pcapng"))
    assert list(tmp_path.iterdir()) == []


def test_record_refuses_a_planted_symlink(tmp_path: Path) -> None:
    """Root writing --record /tmp/x must not truncate the file a symlink there points to."""
    from tracer.sinks.record import PcapngRecorder

    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "rec.pcapng").symlink_to(victim)
    with pytest.raises(HoptraceError, match="symbolic link"):
        PcapngRecorder(str(tmp_path / "rec.pcapng"))
    assert victim.read_text() == "precious"


def test_nul_in_iface_names() -> None:
    need_root()
    from tracer.commands.live import _iface_netns, valid_ifname
    from tracer.sources.taps import TapSource

    assert [valid_ifname(n) for n in ("eth0", "veth1a2b3c4", "x" * 15)] == [True, True, True]
    assert [valid_ifname(n) for n in ("", "x" * 16, "a/b", "a b", "a\nb", "a\0b", "..", "a:b")] == [False] * 8
    for spec in ("host/eth0\0", "\0", "host/\0; id"):
        with pytest.raises(UsageError):
            _iface_netns([spec])
        with pytest.raises(UsageError):
            TapSource([spec]).start()


def test_nul_in_lab_names() -> None:
    from tracer.lab import Lab

    for prefix in ("hop\0x", "hop;id", "$(id)", "a" * 4096):
        with pytest.raises(UsageError):
            Lab("netns", prefix)
    lab = Lab("netns", "hoptest-nosuchlab")
    for scenario in ("udp\0", "$(id)", "udp; id"):
        with pytest.raises(UsageError):
            lab.run(scenario)
    for node in ("client\0", "../client"):
        with pytest.raises(UsageError):
            lab.netns_path(node)


@pytest.mark.parametrize("args", [
    ("live", "--backend", "ebpf", "--snaplen", "99999"),
    ("live", "--backend", "ebpf", "--snaplen", "1501"),
    ("live", "--backend", "pcap", "--snaplen", "13"),
    ("live", "--backend", "pcap", "--snaplen", "-1"),
    ("live", "--backend", "pcap", "--duration", "nan"),
    ("live", "--backend", "pcap", "--duration", "-5"),
    ("live", "--backend", "pcap", "--count", "0"),
    ("live", "--backend", "pcap", "--record-max-mb", "0x10"),
    ("probe", "--from", "client", "--to", "198.51.100.8", "--timeout", "nan"),
    ("probe", "--from", "client", "--to", "198.51.100.8:0", "--proto", "udp"),
    ("probe", "--from", "client", "--to", "198.51.100.8:65536", "--proto", "tcp"),
    ("probe", "--from", "client", "--to", "[::1", "--proto", "tcp"),
], ids=lambda a: "-".join(a[-2:]))
def test_cli_rejects_numbers_out_of_range(args: tuple[str, ...]) -> None:
    """Numbers that reach the kernel (a snaplen sizes the eBPF event; a port goes into a socket)."""
    need_root()
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            rc = main([*args, "--json"] if args[0] == "live" else list(args))
        except SystemExit as exc:
            rc = int(exc.code or 0)
    _check_error(rc, err.getvalue(), args[-1], list(args))


# --- Names from a capture file (issue 19) ------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["replay", "--no-tui"], ["report"], ["report", "--format", "markdown"], ["replay", "--json"],
], ids=lambda a: "-".join(x.strip("-") for x in a))
def test_capture_names_reach_no_terminal_raw(argv: list[str]) -> None:
    """The real executable over fixtures/hostile-names.pcapng (interface names holding SGR,
    OSC 0 and a clear-screen): no ESC, BEL or CSI in what it prints; NDJSON keeps the names."""
    import json

    from tests.hostile import FIXTURE, raw_controls

    r = subprocess.run([*HOPTRACE, *argv, str(FIXTURE)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr, raw_controls(r.stdout)) == (0, "", []), r.stdout
    if "--json" in argv:
        hops = [(h["node"], h["iface"]) for line in r.stdout.splitlines()
                if (o := json.loads(line))["type"] == "path" for h in o["hops"]]
        assert hops == [("\x1b[31mweb\x1b[0m", "eth0\x1b]0;PWNED\x07"), ("host", "veth\x1b[2J")]
    else:
        assert "\\x1b[31mweb\\x1b[0m/eth0\\x1b]0;PWNED\\x07" in r.stdout, r.stdout


def test_hostile_file_name_in_the_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "x\x1b[31mred\x1b]0;PWNED\x07"
    bad.write_bytes(b"")
    r = subprocess.run([*HOPTRACE, "replay", "--no-tui", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert (r.returncode, [c for c in r.stderr if c in "\x1b\x07"]) == (2, []), r.stderr
    assert "x\\x1b[31mred\\x1b]0;PWNED\\x07: empty file" in r.stderr, r.stderr
