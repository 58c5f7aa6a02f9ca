"""Re-record the golden fixtures from the lab: ``python -m tracer.lab.fixtures`` (= ``make fixtures``).

For every scenario, ``fixtures/<scenario>.pcapng`` is captured on every hop of a
docker-engine lab (tracer.lab.capture), and ``fixtures/<scenario>.json`` is the
expected output: ``hoptrace replay --json`` of that file, as a JSON list of
objects (one per NDJSON line: paths, flows, stats without its wall-clock
``elapsed_s``), to be reviewed by eye before committing — each must show the
right hops and NAT. Where eBPF works, ``<scenario>-ebpf.pcapng`` (+ JSON) are
also recorded live by the kernel probes for EBPF_SCENARIOS. ``--json-only`` regenerates just the JSON from the committed
captures (after a deliberate change of the engine's output).

The plain fixtures are recorded with ``--userland-proxy=false`` (hairpin DNAT: the NAT the
golden tests check); the scenarios docker-proxy relays under Docker's default
(``RELAYED_WITH_PROXY``) are recorded again in a second lab with it on, as
``<scenario>-proxy.pcapng`` (and ``<scenario>-proxy-ebpf.pcapng`` where eBPF works: the
kernel probes also see the host's lo both ways).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tracer.errors import HoptraceError, LabError
from tracer.lab.capture import capture_scenario
from tracer.lab.lab import ENGINES, Lab
from tracer.lab.scenarios import RELAYED_WITH_PROXY, SCENARIOS
from tracer.lab.state import progress

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures"
# Also recorded by the kernel probes (``<scenario>-ebpf.pcapng``): only they see a drop and its
# reason, and they carry skb ids, so the correlator's skb join has golden data too.
EBPF_SCENARIOS = ("internet-ping", "blocked")
PROXY_SUFFIX = "-proxy"


def stems(scenarios: list[str]) -> list[str]:
    """Every fixture stem ``scenarios`` have: plain, ``-proxy`` (relayed ones), ``-ebpf`` of each."""
    out = []
    for name in scenarios:
        for stem in (name, name + PROXY_SUFFIX) if name in RELAYED_WITH_PROXY else (name,):
            out += [stem, f"{stem}-ebpf"]
    return out


def expected_json(pcap: Path) -> list[object] | None:
    """``hoptrace replay --json`` of ``pcap`` as a list, or None when replay is not available."""
    r = subprocess.run([sys.executable, "-m", "tracer.cli", "replay", "--json", str(pcap)],
                       capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0:
        progress(f"no expected JSON for {pcap.name}: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
        return None
    return [stable(json.loads(line)) for line in r.stdout.splitlines() if line.strip()]


# Fields that differ from run to run of the same file (wall-clock time of the replay).
VOLATILE = ("elapsed_s",)


def stable(obj: dict[str, object]) -> dict[str, object]:
    """An output object without its volatile fields: what a golden test compares."""
    return {k: v for k, v in obj.items() if k not in VOLATILE}


def record(engine: str, out: Path, scenarios: list[str], prefix: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    modes = [(False, list(scenarios), "")]
    if engine == "docker":
        modes.append((True, [s for s in scenarios if s in RELAYED_WITH_PROXY], PROXY_SUFFIX))
    for proxy, names, suffix in modes:
        if names:
            _record_lab(Lab(engine, prefix, proxy), out, names, suffix)
    regenerate_json(out, scenarios)


def _record_lab(lab: Lab, out: Path, scenarios: list[str], suffix: str) -> None:
    lab.up()
    try:
        for name in scenarios:
            pcap = out / f"{name}{suffix}.pcapng"
            result, packets = capture_scenario(lab, name, pcap)
            if not result.ok:
                raise LabError(f"scenario {name} did not do what it should: {result.detail}")
            progress(f"{name}: {result.detail}; {packets} sightings -> {pcap}")
        from tracer.lab.demo import live_available, trace_live

        ok, why = live_available()
        live = [s for s in scenarios if s in EBPF_SCENARIOS or (suffix and s in RELAYED_WITH_PROXY)]
        for name in live:
            if not ok:
                progress(f"no {name}{suffix}-ebpf fixture: eBPF is unavailable here ({why})")
                continue
            pcap = out / f"{name}{suffix}-ebpf.pcapng"
            pcap.unlink(missing_ok=True)
            result = trace_live(lab, name, pcap)
            if not result.ok:
                raise LabError(f"scenario {name} did not do what it should: {result.detail}")
            os.chmod(pcap, 0o644)
            progress(f"{name}: recorded by the eBPF source -> {pcap}")
    finally:
        lab.down()


def regenerate_json(out: Path, scenarios: list[str]) -> None:
    for stem in stems(scenarios):
        pcap = out / f"{stem}.pcapng"
        if not pcap.exists():
            continue
        paths = expected_json(pcap)
        if paths is not None:
            (out / f"{stem}.json").write_text(json.dumps(paths, indent=1) + "\n")
            progress(f"{stem}: {len(paths)} expected objects -> {out / (stem + '.json')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tracer.lab.fixtures", description=__doc__.split("\n")[0])
    p.add_argument("--engine", choices=ENGINES, default="docker")
    p.add_argument("--out", type=Path, default=FIXTURES)
    p.add_argument("--json-only", action="store_true", help="only regenerate the expected JSON")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: all of {', '.join(SCENARIOS)}")
    args = p.parse_args(argv)
    scenarios = args.scenarios or list(SCENARIOS)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; valid: {', '.join(SCENARIOS)}")
    try:
        if args.json_only:
            regenerate_json(args.out, scenarios)
        else:
            record(args.engine, args.out, scenarios, os.environ.get("HOPTRACE_LAB_PREFIX") or "hopfix")
    except HoptraceError as exc:
        print(f"fixtures: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
