"""-n in the TUI: the path view names namespaces by number; the table and the store keep names."""

from __future__ import annotations

from tests.tui.scripted import ScriptedEngine, sync
from tests.tui.test_app import SIZE, view_text, wait_for
from tui.app import make_app
from tui.widgets.path_table import PathTable


@sync
async def test_numeric_path_view(demo_engine: ScriptedEngine) -> None:
    app = make_app(demo_engine, numeric=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and len(app.store.view) == 4)
        await pilot.click(PathTable, offset=(3, 3))
        await pilot.pause()
        table = app.query_one(PathTable)
        assert table.selected is not None and table.selected.path.id == "p1"
        path = table.selected.path
        web, host = path.hops[0].netns, next(h.netns for h in path.hops if h.node == "host")
        text = view_text(app)
        assert f"left netns:{web}/eth0" in text and f"on netns:{host}/eth0" in text, text
        assert "web/eth0" not in text and "host/eth0" not in text
        assert f"on netns:{host} at POSTROUTING" in text, text
        assert f"   0 netns:{web} eth0" in text, text  # the hop table's node column holds it whole
        assert path.hops[0].node == "web"  # the store keeps the names (the filter matches them)
