"""Path filter throughput: the core's classic BPF interpreter against libpcap's, per frame.

``--filter`` runs in the core: libpcap compiles the expression, and
``_core.BpfProgram.match_frames`` runs the program over a whole batch of frames
(crates/hoptrace-core/src/bpf.rs). The peer is what Python did before, and what the
tests compare the core with: libpcap's own interpreter (``pcap_offline_filter``)
called through ctypes once per frame (tracer/libpcap.py ``LibpcapProgram``). Both
run over the same frames (every record of a generated capture, bench/gen_pcapng.py,
read by the core's reader first, untimed) in this same invocation; the verdicts
must be equal, frame for frame. Prints frames/s (wall and CPU) per expression.

    .venv/bin/python bench/bpf_bench.py                     # 200,000 frames
    .venv/bin/python bench/bpf_bench.py --records 1000000 --file /tmp/x.pcapng
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))  # this checkout's tracer

from gen_pcapng import generate  # noqa: E402

EXPRESSIONS = ["udp port 53", "icmp or tcp[tcpflags] & tcp-syn != 0", "src host 203.0.113.2 and (udp or tcp)"]
ETHERNET = 1


def frames_of(path: Path) -> list[tuple[bytes, np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch: (frame bytes, offsets, captured lengths, wire lengths)."""
    from tracer import _core
    from tracer.model import obs_dtype

    out = []
    for rows, _hops, frames, _reasons in _core.FileReader([(str(path), path.stem.encode(), None)], 1 << 20, 4096):
        r = np.frombuffer(rows, dtype=obs_dtype())
        out.append((bytes(frames), r["frame_off"].astype(np.uint64), r["frame_len"].astype(np.uint32),
                    r["wire_len"].astype(np.uint32)))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--file", default=None, help="pcapng to use (generated if missing)")
    p.add_argument("--runs", type=int, default=3, help="timed runs of the core's, the best counts")
    a = p.parse_args(argv)
    from tracer import _core
    from tracer.libpcap import LibpcapProgram, compile_insns

    path = Path(a.file or f"/tmp/hoptrace-bench-bpf-{a.records}.pcapng")
    made = not path.exists()
    if made:
        generate(str(path), a.records)
    try:
        batches = frames_of(path)
    finally:
        if made:
            path.unlink()
    n = sum(len(off) for _, off, _, _ in batches)
    per_frame = [[(fr[o : o + ln], int(w)) for o, ln, w in zip(off, lens, wire, strict=True)]
                 for fr, off, lens, wire in batches]  # fmt: skip
    print(f"{n:,} frames in {len(batches)} batches")
    total_core = total_peer = 0.0
    cpu_core = cpu_peer = 0.0
    for expr in EXPRESSIONS:
        prog = _core.BpfProgram(compile_insns(expr, ETHERNET))
        best = best_cpu = float("inf")
        ours: list[bool] = []
        for _ in range(a.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            got = [prog.match_frames(fr, off, lens, wire) for fr, off, lens, wire in batches]
            best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
            ours = [bool(x) for g in got for x in g]
        peer = LibpcapProgram(expr, ETHERNET)
        t0, c0 = time.perf_counter(), time.process_time()
        theirs = [m for pf in per_frame for m in peer.match_each([f for f, _ in pf], [w for _, w in pf])]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if ours != theirs:
            diff = sum(x != y for x, y in zip(ours, theirs, strict=True))
            print(f"verdicts differ on {diff} of {n} frames for {expr!r}", file=sys.stderr)
            return 1
        print(f"{expr!r}: {sum(ours):,} of {n:,} match | core {n / best:13,.0f} frames/s wall "
              f"{n / best_cpu:13,.0f} CPU | libpcap per frame {n / wall:11,.0f} frames/s wall {n / cpu:11,.0f} CPU")
        total_core, total_peer = total_core + best, total_peer + wall
        cpu_core, cpu_peer = cpu_core + best_cpu, cpu_peer + cpu
    k = len(EXPRESSIONS)
    print(f"core BpfProgram.match_frames: {k * n / total_core:,.0f} frames/s wall, {k * n / cpu_core:,.0f} CPU")
    print(f"peer libpcap pcap_offline_filter per frame (ctypes): {k * n / total_peer:,.0f} frames/s wall, "
          f"{k * n / cpu_peer:,.0f} CPU")
    print("verdicts equal on every frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
