"""Regenerate the README's TUI screenshots from the lab's recorded fixtures (real engine, real files).

    .venv/bin/python docs/screenshots/make_screenshots.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracer.engine import Engine  # noqa: E402
from tracer.readers import FileSource  # noqa: E402
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


if __name__ == "__main__":
    asyncio.run(main())
