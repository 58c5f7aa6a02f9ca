"""Time `lab up` and `lab down` per engine (targets: docker <= 20 s, netns <= 3 s).

Run as root: ``.venv/bin/python bench/lab_bench.py [--runs N] [--engine docker|netns]``.
The peer measured in the same run is the floor every lab pays: creating and
deleting its named namespaces with ``ip netns`` alone; the script prints
medians, the ratio to that floor and to the target.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid

from tracer.lab import Lab

TARGET_S = {"docker": 20.0, "netns": 3.0}


def floor_s(nodes: int) -> float:
    names = [f"hoptest-bf{uuid.uuid4().hex[:6]}-{i}" for i in range(nodes)]
    t0 = time.perf_counter()
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    for n in names:
        subprocess.run(["ip", "netns", "del", n], check=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--engine", choices=("docker", "netns"), action="append")
    args = p.parse_args()
    for engine in args.engine or ["netns", "docker"]:
        ups, downs, floors = [], [], []
        for _ in range(args.runs):
            lab = Lab(engine, f"hoptest-bench{uuid.uuid4().hex[:6]}")
            t0 = time.perf_counter()
            try:
                lab.up()
                ups.append(time.perf_counter() - t0)
            finally:
                t1 = time.perf_counter()
                lab.down()
                downs.append(time.perf_counter() - t1)
            floors.append(floor_s(4 if engine == "netns" else 2))
        up, down, floor = (statistics.median(x) for x in (ups, downs, floors))
        print(f"{engine:6} up   median {up:6.2f} s  (runs {', '.join(f'{x:.2f}' for x in ups)})  "
              f"target {TARGET_S[engine]:.0f} s: {up / TARGET_S[engine]:.2f}x of target")
        print(f"{engine:6} down median {down:6.2f} s  (runs {', '.join(f'{x:.2f}' for x in downs)})")
        print(f"{engine:6} peer: ip netns add+del of its namespaces {floor:.3f} s; "
              f"up+down = {(up + down) / floor:.0f}x that floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
