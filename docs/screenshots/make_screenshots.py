"""Regenerate the README's TUI screenshots.

    .venv/bin/python docs/screenshots/make_screenshots.py          # replay of the lab fixtures
    .venv/bin/python docs/screenshots/make_screenshots.py --live   # root: eBPF over a private netns lab

Replay: the lab's recorded fixtures through the real engine (tui-paths, tui-path-view,
tui-topology). Live: a lab of its own (prefix hoptest-<random>, removed afterwards),
`hoptrace live --backend ebpf` wiring (source, attribution, topology) and the lab's
experiments as traffic (tui-live.svg, tui-live-path.svg).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracer.engine import Engine  # noqa: E402
from tracer.sources.files import FileSource  # noqa: E402
from tui.app import make_app  # noqa: E402

FIXTURES = ["internet-ping", "published-port", "hairpin", "container-ping", "udp"]
OUT = Path(__file__).resolve().parent


async def main() -> None:
    files = [str(ROOT / "fixtures" / f"{name}.pcapng") for name in FIXTURES]
    app = make_app(Engine(FileSource(files)))
    async with app.run_test(size=(130, 42)) as pilot:
        while not app.status.finished:
            await pilot.pause(0.1)
        await pilot.pause(0.3)
        print(app.save_screenshot("tui-paths.svg", str(OUT)))
        # The first MASQUERADEd ping request, oldest first: the path view shows the SNAT hop.
        await pilot.press("end")
        for _ in range(len(app.store.view)):
            sel = app.table.selected
            if sel is not None and any(ev.kind == "snat" for ev in sel.path.nat) and sel.path.proto == "icmp":
                break
            await pilot.press("up")
        await pilot.pause(0.3)
        print(app.save_screenshot("tui-path-view.svg", str(OUT)))
        await pilot.press("t")
        await pilot.pause(0.3)
        print(app.save_screenshot("tui-topology.svg", str(OUT)))


async def live() -> None:
    import uuid

    from tracer.commands import live as live_cmd
    from tracer.cli import build_parser
    from tracer.lab import Lab

    lab = Lab("netns", prefix=f"hoptest-{uuid.uuid4().hex[:8]}")
    lab.up()
    try:
        # Only this lab's namespaces (in-kernel netns filter): other labs on the box stay out.
        from tracer.sources.names import netns_inode

        ifaces = [f"--iface=netns:{netns_inode(lab.netns_path(n))}/eth0" for n in ("host", "inet", "client", "web")]
        args = build_parser().parse_args(["live", "--backend", "ebpf", "--filter", "not arp and not icmp6", *ifaces])
        source = live_cmd.choose_source(args)
        annotators, topo = live_cmd._annotators(source)
        engine = Engine(live_cmd._Started(source), annotators=tuple(annotators))  # attached already
        app = make_app(engine, backend_name=source.kind, filter_expr="not arp and not icmp6", topology=topo)
        async with app.run_test(size=(130, 42)) as pilot:
            await pilot.pause(1.0)
            for scenario in ("internet-ping", "published-port", "container-ping", "hairpin", "blocked"):
                result = await asyncio.to_thread(lab.run, scenario)
                print(scenario, "ok" if result.ok else f"failed: {result.detail}")
            await pilot.pause(2.5)  # the stats tick shows events/s
            print(app.save_screenshot("tui-live.svg", str(OUT)))
            await pilot.press("n")
            for _ in range(len(app.store.view)):
                sel = app.table.selected
                if sel is not None and sel.path.proto == "icmp" and any(e.kind == "snat" for e in sel.path.nat):
                    break
                await pilot.press("n")
            await pilot.press("t")
            await pilot.pause(0.3)
            print(app.save_screenshot("tui-live-path.svg", str(OUT)))
    finally:
        lab.down()


if __name__ == "__main__":
    asyncio.run(live() if "--live" in sys.argv else main())
