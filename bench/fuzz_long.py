"""The long fuzz run: tests/unit/test_fuzz.py's properties, for minutes instead of seconds.

    .venv/bin/python bench/fuzz_long.py [--minutes 10] [--examples 500]

Runs every property of tests/unit/test_fuzz.py (the frame decoder and the
pcap/pcapng readers) round after round, ``--examples`` fresh examples per
property per round, until the time is up; then the absurd-length cases once.
Prints per property the examples run, the rate, and every failure (hypothesis
prints the falsifying example, which is the reproducer), plus peak RSS after
each round (it must stay flat: memory bounded whatever the input). Exit 1 if
anything failed.

Peer (printed in the same run): the same number of random-bytes files read by
scapy's ``RawPcapNgReader``/``RawPcapReader``, to put the readers' rate in context.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _TmpFactory:
    """What the properties need of pytest's tmp_path_factory."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.n = 0

    def mktemp(self, name: str) -> Path:
        self.n += 1
        p = Path(self.base, f"{name}{self.n}")
        p.mkdir()
        return p


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peer(n: int, tmp: str) -> tuple[float, float]:
    """Files/s over the same random files: our readers vs scapy's raw readers (the peer)."""
    import logging
    import random

    from scapy.utils import RawPcapNgReader, RawPcapReader

    from tracer.errors import CaptureFileError
    from tracer.sources.files import FileSource

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    rng = random.Random(1)
    paths = []
    for i in range(n):
        magic = [b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a"][i % 2]
        p = Path(tmp, f"peer{i}.pcap")
        p.write_bytes(magic + rng.randbytes(rng.randrange(0, 400)))
        paths.append(p)
    t = time.process_time()
    for p in paths:
        src = FileSource([str(p)])
        try:
            for _ in src.batches():
                pass
        except CaptureFileError:
            continue
    ours = n / max(time.process_time() - t, 1e-9)
    t = time.process_time()
    for i, p in enumerate(paths):
        try:
            reader = (RawPcapReader if i % 2 == 0 else RawPcapNgReader)(str(p))
            for _ in reader:
                pass
            reader.close()
        except Exception:
            continue  # the peer's own failures are not what is measured
    return ours, n / max(time.process_time() - t, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--examples", type=int, default=500, help="per property per round")
    a = ap.parse_args()
    # The CI settings read this when the module is imported.
    os.environ["HOPTRACE_FUZZ_EXAMPLES"] = str(a.examples)
    from tests.unit import test_fuzz as fz

    props: dict[str, Any] = {
        "decode random bytes": (fz.test_decode_random_bytes_never_raises, False),
        "decode structured, batch == one by one": (fz.test_decode_structured_frames_never_raise_and_batching_does_not_matter, False),
        "decode no read past a frame": (fz.test_decode_memoryview_slices_read_only_their_own_bytes, False),
        "readers mutated seeds": (fz.test_readers_survive_mutated_captures, True),
        "readers random bytes": (fz.test_readers_survive_random_bytes, True),
    }  # fmt: skip
    done = dict.fromkeys(props, 0)
    cpu = dict.fromkeys(props, 0.0)
    failures: list[str] = []
    deadline = time.monotonic() + a.minutes * 60
    rounds = 0
    with tempfile.TemporaryDirectory(prefix="hoptrace-fuzz-") as tmp:
        while time.monotonic() < deadline:
            rounds += 1
            for name, (fn, wants_tmp) in props.items():
                if time.monotonic() >= deadline:
                    break
                t = time.process_time()
                try:
                    fn(tmp_path_factory=_TmpFactory(tempfile.mkdtemp(dir=tmp))) if wants_tmp else fn()
                except Exception:
                    failures.append(f"{name}: {traceback.format_exc(limit=3)}")
                cpu[name] += time.process_time() - t
                done[name] += a.examples
            print(f"round {rounds}: peak RSS {_rss_mb():.0f} MB, failures so far {len(failures)}", flush=True)
        absurd_t = time.process_time()
        for case in sorted(fz.ABSURD):
            try:
                fz.test_readers_bounded_on_absurd_lengths_and_counts(case, Path(tempfile.mkdtemp(dir=tmp)))
            except Exception:
                failures.append(f"absurd {case!r}: {traceback.format_exc(limit=3)}")
        absurd_s = time.process_time() - absurd_t
        ours, peer = _peer(2000, tmp)
    print(f"\n{rounds} rounds in {a.minutes:g} min, {a.examples} examples per property per round")
    for name in props:
        rate = done[name] / cpu[name] if cpu[name] else 0.0
        print(f"  {name:42s} {done[name]:8d} examples  {rate:8.0f}/s CPU")
    print(f"  absurd lengths/counts: {len(fz.ABSURD)} cases in {absurd_s:.1f} s CPU")
    print(f"2000 random files: our readers {ours:.0f} files/s, peer scapy raw readers {peer:.0f} files/s;"
          f" ours/peer = {ours / peer:.2f}")
    print(f"peak RSS {_rss_mb():.0f} MB")
    for f in failures:
        print("FAILURE", f)
    print("no failures" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
