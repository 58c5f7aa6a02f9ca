"""``hoptrace lab demo``: lab up, every scenario traced, a report at the end, lab down (unless
``--keep``). What ``make demo`` runs.

Two ways to trace, chosen automatically:

* ``live`` (when ``tracer.commands.doctor.check_ebpf()`` says eBPF works): the kernel probes
  (``probes.skb_hops.EbpfSource``), limited to the lab's namespaces, are attached
  *before* each scenario's traffic; the engine prints each path as it finishes
  (with drops and their kernel reason) and records it to pcapng;
* ``capture``: tcpdump on every hop (tracer.lab.capture), then the capture is
  replayed through ``hoptrace replay`` — no eBPF needed, but drops are invisible.

With the docker engine the demo runs two labs one after the other: Docker's default
``--userland-proxy=true`` (every scenario; hairpin and localhost-port are relayed by
docker-proxy), then ``=false`` (the scenarios of the published port again, recorded as
``<scenario>.proxy-off.pcapng``: hairpin DNAT).

The report goes through ``hoptrace report`` over the recordings, as a user would run it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from tracer.errors import EXIT_OK, EXIT_PROBLEM, KernelFeatureMissing
from tracer.lab.capture import CAPTURE_FILTER, capture_scenario
from tracer.lab.lab import NODES, Lab, ScenarioResult
from tracer.lab.scenarios import PUBLISHED_PORT_SCENARIOS, SCENARIOS
from tracer.lab.state import progress
from tracer.protocols import Annotator

DEMO_DIR = Path("/run/hoptrace/demo")
# The correlator finishes a path after a quiet window; the last replies need that long.
LIVE_SETTLE_S = 0.5


def _hoptrace(*argv: str) -> int:
    from tracer.cli import main

    sys.stdout.flush()
    code = main(list(argv))
    sys.stdout.flush()
    return code


def live_available() -> tuple[bool, str]:
    if find_spec("probes.skb_hops") is None or find_spec("tracer.engine") is None:
        return False, "this build has no eBPF source or engine"
    from tracer.commands.doctor import check_ebpf

    return check_ebpf()


def trace_live(lab: Lab, name: str, recording: Path, annotators: Sequence[Annotator] = ()) -> ScenarioResult:
    """Run ``name`` while the kernel probes trace the lab's namespaces; print and record the paths,
    with who took each packet that ended in a node and, with the userland proxy on, the two legs
    of each connection docker-proxy relayed (tracer.annotate.local, tracer.annotate.relay)."""
    from probes.skb_hops import EbpfSource
    from tracer.annotate.relay import RelayLookup, RelayWorker
    from tracer.lab import addresses as A
    from tracer.pipeline import PipelineConfig, build, compile_filter
    from tracer.protocols import NatScope
    from tracer.sinks.output import TextSink
    from tracer.sinks.record import PcapngRecorder
    from tracer.sources.names import NodeNamer

    # The same noise the captures leave out: IPv6 link-local chatter (DAD, RS, MLD) of freshly
    # created interfaces and the bridge's IGMP reports are no part of any scenario.
    path_filter = compile_filter(CAPTURE_FILTER)
    source = EbpfSource(netns={lab.netns_inode(n) for n in NODES})
    source.start()
    try:
        recorder = PcapngRecorder(str(recording))
        # Live: a rewrite joins only where NAT can happen (the attributor knows the rules).
        scope: NatScope | None = None
        for a in annotators:
            if isinstance(a, NatScope):
                scope = a
        namer = NodeNamer()
        local = RelayWorker(RelayLookup(names=namer.known, addresses={ip: n for n, ip in A.CONTAINER_IP.items()}))
        pipeline = build(PipelineConfig(source, source_started=True, path_filter=path_filter,
                                        annotators=tuple(annotators), recorder=recorder, nat_scope=scope,
                                        local=local))
        failure: list[BaseException] = []

        def drive() -> None:
            try:
                pipeline.run([TextSink(sys.stdout)])
            except BaseException as exc:  # re-raised in the demo's thread below
                failure.append(exc)

        thread = threading.Thread(target=drive, name="demo-engine", daemon=True)
        thread.start()
        try:
            result = lab.run(name)
            time.sleep(LIVE_SETTLE_S)
        finally:
            pipeline.stop()
            thread.join(15)
            recorder.close()
            local.close()
        if failure:
            raise failure[0]
    finally:
        source.stop()
    return result


def demo(engine: str, prefix: str, keep: bool = False, tui: bool = False, out_dir: Path | None = None,
         mode: str = "auto", proxy_modes: Sequence[bool] | None = None) -> int:
    """``mode``: "live", "capture", or "auto" (live when eBPF works here).

    ``proxy_modes``: the docker engine's ``--userland-proxy`` settings to show, one lab each
    (default: on, Docker's default, with every scenario; then off with the scenarios that touch
    the published port, so the port-publishing experiment is seen both ways: relayed by
    docker-proxy, and NATed). The netns engine has no docker-proxy: off only.
    """
    out = out_dir or DEMO_DIR / prefix
    out.mkdir(parents=True, exist_ok=True)
    can_replay = find_spec("tracer.engine") is not None
    can_report = find_spec("tracer.commands.report") is not None
    if mode in ("auto", "live"):
        ok, why = live_available()
        if not ok and mode == "live":
            raise KernelFeatureMissing(f"live tracing is not available: {why}")
        if not ok:
            progress(f"live tracing unavailable ({why}): capturing every hop with tcpdump instead")
        mode = "live" if ok else "capture"
    if mode == "capture" and not can_replay:
        progress("this build has no correlation engine yet: capturing only, no replay")
    if proxy_modes is None:
        proxy_modes = (True, False) if engine == "docker" else (False,)
    captures: list[str] = []
    failed: list[str] = []
    for k, proxy in enumerate(proxy_modes):
        last = k == len(proxy_modes) - 1
        # The first lab shows every scenario; the next ones only what their proxy mode changes.
        names = list(SCENARIOS) if k == 0 else list(PUBLISHED_PORT_SCENARIOS)
        suffix = "" if k == 0 else f".proxy-{'on' if proxy else 'off'}"
        lab = Lab(engine, prefix, proxy)
        if engine == "docker":
            print(f"\n=== userland proxy {'on' if proxy else 'off'}: "
                  + ("docker-proxy relays connections to the published port from the host and from "
                     "containers" if proxy else "connections to the published port are NATed (hairpin "
                     "DNAT)"), flush=True)
        lab.up()
        try:
            _run_scenarios(lab, names, out, suffix, mode, can_replay, captures, failed)
        finally:
            if keep and last:
                progress(f"lab '{prefix}' left up (--keep); remove it with: hoptrace lab down")
            else:
                lab.down()
    if can_report:
        print("\n=== report")
        if _hoptrace("report", *captures) != 0:
            progress("no report (see above); the captures are in " + str(out))
    if tui and can_replay:
        # On a terminal, `hoptrace replay` opens the TUI over every capture at once.
        _hoptrace("replay", *captures)
    if failed:
        progress(f"scenarios that did not do what they should: {', '.join(failed)}")
        return EXIT_PROBLEM
    progress(f"captures in {out}")
    return EXIT_OK


def _run_scenarios(lab: Lab, names: Sequence[str], out: Path, suffix: str, mode: str, can_replay: bool,
                   captures: list[str], failed: list[str]) -> None:
    annotators: list[Annotator] = []
    if mode == "live":
        from tracer.pipeline import attribution

        annotators.append(attribution()[0])
    for name in names:
        label = name + suffix
        pcap = out / f"{label}.pcapng"
        if mode == "live":
            print(f"\n=== {label}: tracing live", flush=True)
            result = trace_live(lab, name, pcap, annotators)
            print(f"=== {label}: {'ok' if result.ok else 'FAILED'}: {result.detail}; recorded to {pcap}")
        else:
            result, packets = capture_scenario(lab, name, pcap)
            print(f"\n=== {label}: {'ok' if result.ok else 'FAILED'}: {result.detail}")
            print(f"    {packets} sightings on every hop -> {pcap}")
            if can_replay and _hoptrace("replay", "--no-tui", str(pcap)) != 0:
                progress(f"replay of {pcap} failed (see above); the capture is kept")
        captures.append(str(pcap))
        if not result.ok:
            failed.append(label)
