"""The TUI over the real chain: Source -> tracer.engine.Engine (Correlator, attribution) -> App.

Sources here are the lab's recorded fixtures (FileSource) and synthetic
observations (ObsBatch.from_observations); no scripted engine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from textual.widgets import Static

import tracer.engine as engine_mod
from tests.conftest import FIXTURES
from tests.tui.scripted import MASQ_RULE, masquerade_reply, masquerade_request, sync
from tests.tui.test_app import SIZE, shown_ids, view_text, wait_for
from tracer.model import ObsBatch
from tracer.sources.base import BatchListSource

HOST_NS, WEB_NS = 4026531840, 4026532466
IPTABLES_SAVE = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
{MASQ_RULE}
-A DOCKER -i docker0 -j RETURN
COMMIT
"""


def lab_topology():  # type: ignore[no-untyped-def]
    """The lab's host and web namespaces as tracer.topology would discover them."""
    from tracer.topology import Interface, Namespace, Route, Topology, parse_iptables_save

    host = Namespace(
        inode=HOST_NS, name="host", path="/run/netns/hop-host", forwarding=True,
        interfaces=(
            Interface(HOST_NS, 2, "eth0", None, "02:00:00:00:00:02", "UP", 1500, ("203.0.113.2/24",)),
            Interface(HOST_NS, 3, "docker0", "bridge", "02:42:00:00:00:01", "UP", 1500, ("172.17.0.1/16",)),
            Interface(HOST_NS, 5, "veth1a2b3c", "veth", "02:42:00:00:00:05", "UP", 1500, (), master=3,
                      peer_netns=WEB_NS, peer_ifindex=2),
        ),
        routes=(Route(4, "default", "203.0.113.1", "eth0"), Route(4, "172.17.0.0/16", None, "docker0")),
        nat_rules=tuple(parse_iptables_save(IPTABLES_SAVE)),
    )
    web = Namespace(
        inode=WEB_NS, name="web", path="/proc/1234/ns/net",
        interfaces=(Interface(WEB_NS, 2, "eth0", "veth", "02:42:ac:11:00:02", "UP", 1500, ("172.17.0.2/16",),
                              peer_netns=HOST_NS, peer_ifindex=5),),
        routes=(Route(4, "default", "172.17.0.1", "eth0"),),
    )
    return Topology(namespaces=(host, web), own_netns=HOST_NS)




def masquerade_batch() -> ObsBatch:
    reply = [replace(h, ip_id=4242) for h in masquerade_reply().hops]
    return ObsBatch.from_observations([*masquerade_request().hops, *reply])


@sync
async def test_engine_with_attribution_shows_the_masquerade_rule() -> None:
    from tracer.annotate.attribution import annotator
    from tui.app import make_app

    topo = lab_topology()
    att = annotator(topo, conntrack=False, refresh_s=None)
    engine = engine_mod.Engine(BatchListSource([masquerade_batch()], kind="synthetic"), annotators=[att])
    app = make_app(engine, topology=topo)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished and len(app.store.view) == 2)
        assert app.status.backend == "synthetic"
        await pilot.press("end")  # the oldest row: the request
        text = view_text(app)
        assert "left web/eth0, crossed docker0, was MASQUERADEd to 203.0.113.2 on host/eth0" in text
        assert "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" in text and "(inferred)" in text
        request, reply = app.store.row(1).path, app.store.row(0).path
        assert (app.store.flow_of(request), app.store.flow_of(reply)) == (("f1", "request"), ("f1", "reply"))
        await pilot.press("t")
        topo_text = str(app.query_one("#topology-text", Static).render())
        assert "docker0 [bridge] 172.17.0.1/16" in topo_text
        assert "veth1a2b3c [veth] ⇄ web/eth0 172.17.0.2/16" in topo_text
        assert "MASQUERADE" in topo_text


def _replay_app(*files: Path, **opts):  # type: ignore[no-untyped-def]
    from tracer.sources.files import FileSource
    from tui.app import make_app

    return make_app(engine_mod.Engine(FileSource([str(f) for f in files])), **opts)


@sync
async def test_replay_fixture_published_port_dnat() -> None:
    app = _replay_app(FIXTURES / "published-port.pcapng")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished, timeout=20)
        assert app.status.backend == "file"
        await pilot.press("n")
        text = view_text(app)
        assert "was DNATed to 172.17.0.2:80 on host/" in text
        assert "203.0.113.1:" in text and "⇒" in text and "172.17.0.2:80" in text


@sync
async def test_engine_filter_moves_into_the_ui() -> None:
    from tracer.filter import PathFilter
    from tracer.sources.files import FileSource
    from tui.app import make_app

    fx = FIXTURES / "internet-ping.pcapng"
    engine = engine_mod.Engine(FileSource([str(fx)]), path_filter=PathFilter("icmp"))
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished, timeout=20)
        assert app.status.filter_expr == "icmp"
        assert {app.store.row(r).path.proto for r in range(len(app.store.view))} == {"icmp"}
        assert len(app.store) > len(app.store.view)  # ARP kept, not shown: clearing the filter shows it
        await pilot.press("slash", "ctrl+u", "enter")
        await pilot.pause()
        assert "arp" in {app.store.row(r).path.proto for r in range(len(app.store.view))}


@sync
async def test_damaged_file_shows_error_and_keeps_paths(tmp_path: Path) -> None:
    fx = FIXTURES / "internet-ping.pcapng"
    damaged = tmp_path / "damaged.pcapng"
    data = fx.read_bytes()
    damaged.write_bytes(data[: len(data) - 37])  # cut inside the last block
    app = _replay_app(damaged)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.status.finished, timeout=20)
        assert app.status.error is not None and "damaged.pcapng" in app.status.error
        assert len(app.store.view) > 0
        await pilot.press("n")
        assert "on host/eth0" in view_text(app)
        assert shown_ids(app)
