"""``hoptrace lab demo``: lab up, every scenario captured on every hop and replayed through the
engine, a report at the end, lab down (unless ``--keep``). What ``make demo`` runs.

Replay and report go through the same commands a user types (``hoptrace replay``,
``hoptrace report``), so the demo shows exactly what they would see.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

from tracer.errors import EXIT_OK, EXIT_PROBLEM
from tracer.lab.capture import capture_scenario
from tracer.lab.lab import Lab
from tracer.lab.scenarios import SCENARIOS
from tracer.lab.state import progress

DEMO_DIR = Path("/run/hoptrace/demo")


def _hoptrace(*argv: str) -> int:
    from tracer.cli import main

    sys.stdout.flush()
    code = main(list(argv))
    sys.stdout.flush()
    return code


def demo(engine: str, prefix: str, keep: bool = False, tui: bool = False, out_dir: Path | None = None) -> int:
    out = out_dir or DEMO_DIR / prefix
    out.mkdir(parents=True, exist_ok=True)
    # Until the engine and report land, the demo still builds the lab and captures every hop.
    can_replay = find_spec("tracer.engine") is not None
    can_report = find_spec("tracer.report") is not None
    if not can_replay:
        progress("this build has no correlation engine yet: capturing only, no replay")
    lab = Lab(engine, prefix)
    lab.up()
    captures: list[str] = []
    failed: list[str] = []
    try:
        for name in SCENARIOS:
            pcap = out / f"{name}.pcapng"
            result, packets = capture_scenario(lab, name, pcap)
            captures.append(str(pcap))
            print(f"\n=== {name}: {'ok' if result.ok else 'FAILED'}: {result.detail}")
            print(f"    {packets} sightings on every hop -> {pcap}")
            if not result.ok:
                failed.append(name)
            if can_replay and _hoptrace("replay", "--no-tui", str(pcap)) != 0:
                progress(f"replay of {pcap} failed (see above); the capture is kept")
    finally:
        if keep:
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
