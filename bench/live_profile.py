"""CPU cost of the live annotator (tracer.annotate.attribution) per path, against the engine without it.

The live pipeline is source -> correlator -> annotators -> NDJSON. The eBPF
source is not deterministic, so this replays a generated pcapng of NATed Docker
traffic (bench/gen_pcapng.py: MASQUERADE on host/eth0 and conntrack's reverse
rewrite on the way back) through the same Engine twice in one run: once bare,
once with ``attribution.annotator`` over a Docker-shaped host topology
(iptables-save of a Docker host with ``--containers`` published ports). It
prints CPU seconds of both, the annotator's CPU per path and the ratio, so the
number holds on a busy machine. ``--profile`` adds a cProfile of the annotated
run (top 25 by own time).

    .venv/bin/python bench/live_profile.py                      # 200,000 records
    .venv/bin/python bench/live_profile.py --records 50000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gen_pcapng import generate  # noqa: E402

from tracer.annotate.attribution import annotator  # noqa: E402
from tracer.engine import Engine, run  # noqa: E402
from tracer.sinks.output import NdjsonSink  # noqa: E402
from tracer.sources.files import FileSource  # noqa: E402
from tracer.topology import Interface, Namespace, Topology, parse_iptables_save  # noqa: E402

HOST = 4026532001


def docker_host(containers: int) -> Topology:
    """A host namespace as Docker sets it up, with one published port per container."""
    lines = [
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]", ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
    ]
    for c in range(containers):
        ip = f"172.17.0.{c + 2}"
        lines.append(f"-A POSTROUTING -s {ip}/32 -d {ip}/32 -p tcp -m tcp --dport {80 + c} -j MASQUERADE")
    lines.append("-A DOCKER -i docker0 -j RETURN")
    for c in range(containers):
        lines.append(f"-A DOCKER ! -i docker0 -p tcp -m tcp --dport {8080 + c} -j DNAT "
                     f"--to-destination 172.17.0.{c + 2}:{80 + c}")
    lines.append("COMMIT")
    ifaces = [
        Interface(HOST, 1, "lo", None, None, "UNKNOWN", 65536, ("127.0.0.1/8",)),
        Interface(HOST, 2, "eth0", "veth", None, "UP", 1500, ("203.0.113.2/24",)),
        Interface(HOST, 3, "docker0", "bridge", None, "UP", 1500, ("172.17.0.1/16",)),
    ]
    for c in range(min(containers, 6)):
        ifaces.append(Interface(HOST, 10 + c, f"veth{c}", "veth", None, "UP", 1500, (), master=3))
    host = Namespace(HOST, "host", "/run/netns/bench-host", tuple(ifaces), (),
                     tuple(parse_iptables_save("\n".join(lines) + "\n")), True)
    return Topology((host,))


def one(path: Path, annotate: bool, containers: int, prof: cProfile.Profile | None) -> tuple[float, int]:
    """(CPU seconds, paths) of one replay of ``path`` into NDJSON on /dev/null."""
    annotators = []
    att = None
    if annotate:
        att = annotator(docker_host(containers), conntrack=False, refresh_s=None)
        annotators.append(att)
    engine = Engine(FileSource([str(path)]), annotators=annotators)
    with open(os.devnull, "w") as null:
        sink = NdjsonSink(null)
        t0 = time.process_time()
        if prof is not None:
            prof.enable()
        stats = run(engine, [sink])
        if prof is not None:
            prof.disable()
        cpu = time.process_time() - t0
    if att is not None:
        att.close()
    return cpu, stats.paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="annotator CPU per path vs the bare engine")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--containers", type=int, default=20, help="published ports in the ruleset")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args(argv)
    path = Path(f"/tmp/hoptrace-bench-{a.records}.pcapng")
    if not path.exists():
        generate(str(path), a.records)
    bare, n = one(path, False, a.containers, None)
    prof = cProfile.Profile() if a.profile else None
    ann, n2 = one(path, True, a.containers, prof)
    print(f"{a.records} records, {n} paths ({n2} annotated)")
    print(f"engine + NDJSON          : {bare:6.2f} s CPU  {bare / max(n, 1) * 1e6:6.1f} us/path")
    print(f"engine + annotator + NDJ : {ann:6.2f} s CPU  {ann / max(n2, 1) * 1e6:6.1f} us/path")
    print(f"annotator alone          : {(ann - bare) / max(n2, 1) * 1e6:6.1f} us/path;"
          f" annotated/bare CPU ratio {ann / max(bare, 1e-9):.2f}")
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
