"""``hoptrace lab up|down|status|demo|run SCENARIO [--engine docker|netns]``.

The lab's prefix is ``hop`` unless ``HOPTRACE_LAB_PREFIX`` says otherwise (tests
use ``hoptest-<random>``), so several labs can exist side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from tracer.errors import EXIT_OK, EXIT_PROBLEM, UsageError
from tracer.lab.lab import (
    ENGINES,
    Lab,
    LabStatus,
    default_engine,
    default_prefix,
    require_root,
    userland_proxy_of,
)
from tracer.lab.scenarios import SCENARIOS
from tracer.lab.state import lab_prefixes


def run(args: argparse.Namespace) -> int:
    action: str = args.action
    engine: str | None = getattr(args, "engine", None)
    scenario: str | None = getattr(args, "scenario", None)
    proxy: str | None = getattr(args, "userland_proxy", None)
    if engine is not None and engine not in ENGINES:
        raise UsageError(f"unknown lab engine {engine!r}", f"valid engines: {', '.join(ENGINES)}")
    if proxy is not None:
        if action not in ("up", "demo"):
            raise UsageError(f"lab {action} takes no --userland-proxy (the lab keeps the mode it was built with)")
        if engine is not None:
            userland_proxy_of(engine, proxy)  # the netns engine has none: a usage error before root
    if action == "run":
        if scenario is None:
            raise UsageError("lab run needs a scenario", f"valid scenarios: {', '.join(SCENARIOS)}")
        if scenario not in SCENARIOS:
            raise UsageError(f"unknown scenario {scenario!r}", f"valid scenarios: {', '.join(SCENARIOS)}")
    elif scenario is not None:
        raise UsageError(f"lab {action} takes no scenario (got {scenario!r})")
    require_root()
    prefix = default_prefix()

    if action == "up":
        lab = Lab(engine or default_engine(), prefix, proxy)
        lab.up()
        _print_status(lab.status(), as_json=bool(getattr(args, "json", False)))
        return EXIT_OK
    if action == "demo":
        from tracer.lab.demo import demo

        return demo(engine or default_engine(), prefix, keep=bool(getattr(args, "keep", False)),
                    tui=not getattr(args, "no_tui", False) and sys.stdout.isatty(),
                    proxy_modes=None if proxy is None else (proxy == "on",))

    # down, status, run act on the lab that exists, whatever engine built it.
    lab = Lab.existing(prefix, engine)
    if action == "down":
        removed = lab.down()
        print(f"lab '{prefix}': " + ("removed " + ", ".join(removed) if removed else "nothing to remove"))
        return EXIT_OK
    if action == "status":
        _print_status(lab.status(), as_json=bool(getattr(args, "json", False)))
        return EXIT_OK
    assert scenario is not None
    result = lab.run(scenario)
    if getattr(args, "json", False):
        print(json.dumps({"scenario": scenario, "ok": result.ok, "detail": result.detail}))
    else:
        print(f"{scenario}: {'ok' if result.ok else 'FAILED'}: {result.detail}")
    return EXIT_OK if result.ok else EXIT_PROBLEM


def _print_status(st: LabStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(st), indent=1))
        return
    if not st.exists:
        print(f"lab '{st.prefix}': not up")
        others = [p for p in lab_prefixes() if p != st.prefix]
        if others:
            print(f"other labs here: {', '.join(others)} (HOPTRACE_LAB_PREFIX=<prefix> hoptrace lab status)")
        return
    mode = f", userland proxy {'on' if st.userland_proxy else 'off'}" if st.engine == "docker" else ""
    print(f"lab '{st.prefix}' ({st.engine} engine{mode})")
    print(f"  state      {st.state_dir}")
    for node, path in st.namespaces.items():
        print(f"  {node:<10} {path}")
    for name, status in st.containers.items():
        print(f"  container  {name}: {status}")
    for proc in st.processes:
        print(f"  process    {proc}")
    if st.docker_host:
        print(f"export DOCKER_HOST={st.docker_host}")
