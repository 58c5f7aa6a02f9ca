"""Issue 19: hostile names (capture files, the system) through every human-facing writer.

Each writer's output has no raw control, bidi override or markup-breaking ``|`` where it
would act; the names show escaped (``\\x1b``); NDJSON keeps them exact. The terminal
itself (tmux) is in tests/tui/test_hostile_terminal.py.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile import (
    FIXTURE,
    FIXTURE_NAMES,
    HOSTILE_DROP_REASON,
    HOSTILE_NAMES,
    capture,
    raw_controls,
    replay_events,
)
from tests.unit.conftest import make_obs
from tracer.model import Endpoints, Flow, NatEvent, PacketPath, Stats
from tracer.safe_text import term_safe

ESCAPED_WEB = "\\x1b[31mweb\\x1b[0m/eth0\\x1b]0;PWNED\\x07"
ESCAPED_VETH = "host/veth\\x1b[2J"


def _replay(*argv: str) -> tuple[int, str, str]:
    from tracer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def hostile_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("hostile") / "generated.pcapng"
    f.write_bytes(capture(HOSTILE_NAMES, drop_reason=HOSTILE_DROP_REASON))
    return f


def test_fixture_is_the_generated_capture() -> None:
    """The committed file is what tests.hostile writes (a missing file fails, it does not skip)."""
    assert FIXTURE.read_bytes() == capture(FIXTURE_NAMES)


def test_fixture_names_reach_the_paths_exactly() -> None:
    paths = [ev for ev in replay_events(FIXTURE.read_bytes()) if isinstance(ev, PacketPath)]
    assert [(h.node, h.ifname, h.direction) for p in paths for h in p.hops] == [
        ("\x1b[31mweb\x1b[0m", "eth0\x1b]0;PWNED\x07", "tx"), ("host", "veth\x1b[2J", "rx")]


def test_replay_text_escapes_the_fixture() -> None:
    rc, out, err = _replay("replay", "--no-tui", str(FIXTURE))
    assert (rc, err, raw_controls(out)) == (0, "", [])
    lines = out.splitlines()
    assert lines[1].strip() == f"{ESCAPED_WEB} tx", out
    assert lines[2].startswith(f"   → {ESCAPED_VETH} rx "), out
    assert lines[-1].startswith("stats: 2 observations, 1 paths"), out


def test_replay_ndjson_keeps_names_exact() -> None:
    rc, out, _ = _replay("replay", "--json", str(FIXTURE))
    objs = [json.loads(line) for line in out.splitlines()]
    hops = [(h["node"], h["iface"]) for o in objs if o["type"] == "path" for h in o["hops"]]
    assert (rc, hops) == (0, [("\x1b[31mweb\x1b[0m", "eth0\x1b]0;PWNED\x07"), ("host", "veth\x1b[2J")])
    # JSON's own escapes, as before issue 19: \u001b, never a raw byte and never our \x1b.
    assert raw_controls(out) == [] and "\\u001b[31mweb" in out and "\\x1b" not in out
    from tracer.sinks.output import path_json, path_line

    for p in (ev for ev in replay_events(FIXTURE.read_bytes()) if isinstance(ev, PacketPath)):
        assert path_line(p) == json.dumps(path_json(p))


@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_report_escapes(fmt: str, hostile_file: Path) -> None:
    rc, out, err = _replay("report", "--format", fmt, str(FIXTURE), str(hostile_file))
    assert (rc, err, raw_controls(out)) == (0, "", [])
    assert ESCAPED_WEB in out and "NETFILTER_DROP\\x1b[2J\\x1b]0;PWNED\\x07" in out, out
    if fmt == "markdown":
        # Every table row has exactly as many cell borders as its header: no | got through.
        for block in out.split("\n\n"):
            rows = [r for r in block.splitlines() if r.startswith("|")]
            if rows:
                widths = {r.replace("\\|", "").count("|") for r in rows}
                assert len(widths) == 1, block
        assert "x\\`y\\`" in out and "\\|x" in out, out


def test_report_json_keeps_names_exact(hostile_file: Path) -> None:
    rc, out, _ = _replay("report", "--format", "json", str(hostile_file))
    drops = json.loads(out)["drops"]
    assert (rc, [d["reason"] for d in drops]) == (0, [HOSTILE_DROP_REASON])


def test_error_line_escapes_the_file_name(tmp_path: Path) -> None:
    empty = tmp_path / "x\x1b[31mred"
    empty.write_bytes(b"")
    rc, _, err = _replay("replay", "--no-tui", str(empty))
    assert (rc, raw_controls(err)) == (2, [])
    assert err.splitlines()[0] == f"hoptrace: {term_safe(str(empty))}: empty file", err


def test_text_of_generated_hostile_capture(hostile_file: Path) -> None:
    rc, out, err = _replay("replay", "--no-tui", str(hostile_file))
    assert (rc, err, raw_controls(out)) == (0, "", [])
    # The CR LF in a name did not start a line of its own.
    assert not any(line.startswith("INJECTED") for line in out.splitlines()), out
    assert "eth0\\r\\nINJECTED: forged line\\x00\\x7f\ufffd" in out, out  # \xff was replaced on read
    assert "host/\\x9b2J\\u202egol\\u2066[bold]red[/]" in out, out


# ------------------------------------------------------- every writer, any name


names = st.text(min_size=1, max_size=20)


def _hostile_path(node: str, iface: str, reason: str, rule: str) -> tuple[PacketPath, Flow]:
    hops = (make_obs(node=node, ifname=iface, direction="tx"),
            make_obs(node="host", ifname=iface, direction="drop", ts_ns=make_obs().ts_ns + 5000,
                     drop_reason=reason))
    ends = Endpoints("172.17.0.2", None, "198.51.100.8", None)
    nat = NatEvent(kind="snat", node=node, hook="POSTROUTING", before=ends,
                   after=replace(ends, src="203.0.113.2"), from_hop=0, to_hop=1, rule=rule,
                   rule_source="inferred")
    path = PacketPath(id="p1", flow="f1", verdict="dropped", hops=hops, nat=(nat,))
    flow = Flow(id="f1", proto="icmp", original=ends, reply=ends, paths=("p1",))
    return path, flow


@settings(max_examples=60, deadline=None)
@given(node=names, iface=names, reason=names, rule=names)
def test_every_writer_with_any_name(node: str, iface: str, reason: str, rule: str) -> None:
    from rich.console import Console

    from tracer.commands.report import Summary, render
    from tracer.sinks.output import TextSink, nat_text
    from tui.format import path_view, summary
    from tui.topo_text import seen_text
    from tui.widgets.status_bar import Status, status_text

    path, flow = _hostile_path(node, iface, reason, rule)
    out = io.StringIO()
    sink = TextSink(out)
    sink.on_path(path)
    sink.on_flow(flow)
    sink.on_stats(Stats(observations=2, paths=1, lost_events=0, elapsed_s=0.1))
    s = Summary()
    s.add_path(path)
    s.add_flow(flow)
    texts = [out.getvalue(), nat_text(path.nat[0], path.hops), render(s, "text", [node]),
             render(s, "markdown", [node]), summary(path)]
    # The TUI's Rich texts, as a terminal would get them.
    console = Console(file=io.StringIO(), width=300, color_system=None, legacy_windows=False)
    for t in (path_view(path, "f1", "request"), seen_text([path]),
              status_text(Status(recording=node, filter_expr=iface, error=reason))):
        console.print(t)
    texts.append(console.file.getvalue())  # type: ignore[attr-defined]
    for text in texts:
        assert raw_controls(text) == [], text
    # The name is there, escaped (the path view cuts node and iface to 12 cells).
    assert term_safe(reason) in texts[0] and term_safe(rule) in texts[1]


def test_tui_texts_are_not_markup() -> None:
    """A Textual markup name stays text: Rich ``Text`` objects, toasts with markup=False."""
    from tui.format import path_view

    path, _ = _hostile_path("[bold]x[/]", "[link=http://x]e[/link]", "[/]", "r")
    assert "[bold]x[/]" in path_view(path).plain and "[link=http://x]e[/link]" in path_view(path).plain


def test_topology_render_escapes_every_name() -> None:
    from tracer.commands.topology import render
    from tracer.topology import (
        Container,
        ContainerNet,
        Interface,
        Namespace,
        NatRule,
        Route,
        Topology,
    )
    from tui.topo_text import topology_text

    bad = "x\x1b]0;PWNED\x07\n\u202e"
    iface = Interface(netns=1, ifindex=2, name=f"eth{bad}", kind=f"veth{bad}", mac=None,
                      state=f"UP{bad}", mtu=1500, addresses=(f"10.0.0.1/8{bad}",))
    br = Interface(netns=1, ifindex=3, name=f"br{bad}", kind="bridge", mac=None, state="UP", mtu=1500,
                   addresses=())
    ns = Namespace(inode=1, name=f"web{bad}", path=f"/run/netns/web{bad}", interfaces=(iface, br),
                   routes=(Route(4, f"default{bad}", f"10.0.0.254{bad}", f"eth{bad}"),),
                   nat_rules=(NatRule(4, "POSTROUTING", 1, f"-A POSTROUTING -j MASQUERADE{bad}",
                                      "MASQUERADE"),),
                   error=None)
    broken = Namespace(inode=2, name=f"gone{bad}", path="/proc/2/ns/net", error=f"vanished{bad}")
    c = Container(id="c" * 64, name=f"web{bad}", netns=1, pid=None,
                  networks=(ContainerNet(f"net{bad}", "172.17.0.2", "172.17.0.1", "", f"docker0{bad}"),))
    topo = Topology(namespaces=(ns, broken), containers=(c,), notices=())
    out = io.StringIO()
    render(topo, out)
    pane = io.StringIO()
    from rich.console import Console

    Console(file=pane, width=200, color_system=None).print(topology_text(topo))
    for text in (out.getvalue(), pane.getvalue()):
        assert raw_controls(text) == [], text
        assert "x\\x1b]0;PWNED\\x07\\n\\u202e" in text, text
    # One line per record: an escaped newline did not add lines.
    assert [line for line in out.getvalue().splitlines() if line.startswith("\\u202e")] == []


def test_doctor_escapes_details(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from tracer.commands import doctor

    bad = "tcpdump 4.99\x1b[2J\x1b]0;PWNED\x07"
    monkeypatch.setattr(doctor, "collect", lambda: {
        "checks": [{"name": "tcpdump", "ok": False, "detail": bad, "fix": f"install {bad}"}],
        "backends": {"ebpf": {"ok": False, "detail": bad}, "pcap": {"ok": False, "detail": bad},
                     "file": {"ok": True, "detail": "x"}}})
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = doctor.run(argparse.Namespace(json=False))
    assert (rc, raw_controls(out.getvalue() + err.getvalue())) == (3, [])
    assert "tcpdump 4.99\\x1b[2J" in out.getvalue() and "tcpdump 4.99\\x1b[2J" in err.getvalue()
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        doctor.run(argparse.Namespace(json=True))
    assert json.loads(out.getvalue())["checks"][0]["detail"] == bad  # --json: exact


def test_run_netns_names_are_checked_where_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/run/netns/<name> with undecodable bytes: U+FFFD (encodable), controls kept for the writers."""
    import os

    from tracer.sources import names

    run = tmp_path / "netns"
    run.mkdir()
    raw = os.fsencode(str(run)) + b"/lab\xff\x1b[2J"
    with open(raw, "wb"):
        pass
    monkeypatch.setattr(names, "RUN_NETNS", run)
    monkeypatch.setattr(names, "LAB_STATE", tmp_path / "no-labs")
    monkeypatch.setattr(names, "netns_inode", lambda p: 7 if os.fsencode(p) == raw else 1)
    assert names.NodeNamer().name(7) == "lab\ufffd\x1b[2J"
