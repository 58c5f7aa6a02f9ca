"""Live decoding cost per sighting: the eBPF and taps sources' decode steps, in one run
with the Python decoder (the reference, tests' oracle) as the peer.

The live sources decode each batch of frames into ``OBS_DTYPE`` rows: the eBPF source
(``EbpfSource._decode_events``: ring events -> rows, then the frames decoded) and the
AF_PACKET taps (frames scattered in ring blocks, as the core's TapReader releases them).
This builds realistic batches offline from the NATed Docker traffic of
bench/gen_pcapng.py (ICMP echo, UDP and TCP, Ethernet; ``--raw-every K`` makes every
K-th eBPF event one without a mac header, as tx hooks before L2 see), at the batch
sizes live sees (HOLD_EVENTS = 2048 for eBPF), and prints per batch size the
nanoseconds per sighting (best of ``--repeat`` timings of ``--loops`` calls, wall) of:

* ``ebpf source``:   ``EbpfSource._decode_events`` as the product runs it (core:
                     ``_core.EbpfRing``, events -> rows, labels and frames in one pass), and
                     the source's decode before the core took it (python: numpy over the
                     events, then the Python decoder; tests/reference/ebpf.py);
* ``taps source``:   ``taps_decode`` below (what the taps did per batch before the core read
                     their rings: rows, then the decoder over the scattered frames), likewise;
* ``decoder alone``: ``tracer._core.decode_into`` and the Python reference ``decode_into``
                     on the same frames.

Measured here (2 shared cores, load ~9; best of 9), core vs python ns per sighting at
batches of 64 / 512 / 2048: eBPF source 1434 vs 5388 / 279 vs 1315 / 241 vs 469; taps
source 328 vs 4475 / 93 vs 741 / 48 vs 286; the decoder alone 141 vs 4404 / 55 vs 567 /
45 vs 265.

    .venv/bin/python bench/decode_bench.py
    .venv/bin/python bench/decode_bench.py --sizes 64,2048 --raw-every 4 --repeat 9
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gen_pcapng import generate  # noqa: E402

from probes.skb_hops import EbpfSource, HopEvent, HopKind  # noqa: E402
from tests.reference import ebpf as reference_ebpf  # noqa: E402
from tracer import _core  # noqa: E402
from tracer.model import obs_dtype  # noqa: E402


def python_decode_into() -> Callable[..., None] | None:
    """The Python reference decoder, wherever it lives now."""
    for mod in ("tests.reference.decode",):
        try:
            return __import__(mod, fromlist=["decode_into"]).decode_into  # type: ignore[no-any-return]
        except ImportError:
            continue
    return None


def sample_frames(records: int) -> list[bytes]:
    """Frames of generated NATed Docker traffic, in capture order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nat.pcapng")
        generate(path, records)
        frames: list[bytes] = []
        for rows, _hops, buf, _reasons in _core.FileReader([(Path(path), b"nat", None)]):
            r = rows.view(obs_dtype())
            for off, ln in zip(r["frame_off"].tolist(), r["frame_len"].tolist(), strict=True):
                frames.append(bytes(buf[off : off + ln]))
    return frames


def ebpf_events(frames: list[bytes], src: EbpfSource, raw_every: int) -> bytes:
    """Hop events back to back, as RingReader.read returns them."""
    ev_type = src._ev_type
    out = []
    for k, fr in enumerate(frames):
        raw = raw_every > 0 and k % raw_every == raw_every - 1
        body = fr[14:] if raw else fr
        ev: Any = ev_type()
        ev.ts_ns, ev.skb, ev.netns, ev.ifindex = 1_000_000 + k, 0xFFFF0000 + k // 4, 4026531840 + k % 3, 2 + k % 4
        ev.kind, ev.mac_len = int(HopKind.TX if k % 2 else HopKind.RX), 0 if raw else 14
        ev.len = ev.wire_len = len(body)
        ev.cap_len = min(len(body), src.snaplen)
        ev.ifname = b"eth%d" % (k % 4)
        ctypes.memmove(ctypes.addressof(ev) + HopEvent.frame.offset, body, ev.cap_len)
        out.append(bytes(ev))
    return b"".join(out)


def taps_decode(frames: bytes, offs: Any, lens: Any, lt: int, dtype: Any) -> Any:
    """Rows for frames scattered in ring blocks; ``_core.decode_into`` is swapped for the
    reference when timed as python."""
    rows = np.zeros(len(offs), dtype=dtype)
    _core.decode_into(rows, frames, offs.astype(np.uint64), lens, lt)
    return rows


def taps_buffer(frames: list[bytes]) -> tuple[bytes, Any, Any]:
    """Frames as the taps' copied ring blocks hold them: a tpacket3 header (48 bytes +
    tp_mac padding) before each frame, each frame 16-aligned; (buffer, offs i8, lens u4)."""
    parts, offs, pos = [], [], 0
    for fr in frames:
        head = bytes(66)  # tpacket3_hdr + sockaddr_ll, as tp_mac puts the frame at 66
        offs.append(pos + len(head))
        pad = (-(len(head) + len(fr))) % 16
        parts += [head, fr, bytes(pad)]
        pos += len(head) + len(fr) + pad
    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    return b"".join(parts), np.array(offs, dtype=np.int64), lens


def best_ns(fn: Callable[[], object], loops: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / loops)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,64,512,2048", help="batch sizes (sightings)")
    ap.add_argument("--raw-every", type=int, default=0, help="every K-th eBPF event has no mac header")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--budget", type=int, default=400_000, help="sightings decoded per timing")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    frames = sample_frames(max(sizes) * 4)
    ref = python_decode_into()
    core = getattr(_core, "decode_into", None)
    dtype = obs_dtype()

    src = EbpfSource()
    src._dtype = np.dtype(src._ev_type)
    src._obs_dtype = dtype
    src.layout = None

    def as_before(rows: Any, buf: Any, offs: Any, lens: Any, lts: Any) -> None:
        """What the sources called before they moved onto the core."""
        assert ref is not None
        ref(rows, buf, offs, lens, lts, zeroed=True)

    def timed(fn: Callable[[], object], loops: int, python: bool) -> float:
        """``fn`` with the sources' decoder being the core's, or (python) the reference."""
        if python:
            if ref is None:
                return float("nan")
            _core.decode_into = as_before  # type: ignore[assignment]
        try:
            return best_ns(fn, loops, args.repeat)
        finally:
            if core is not None:
                _core.decode_into = core

    print(f"frames: {len(frames)} from bench/gen_pcapng.py; raw every {args.raw_every or '-'}; "
          f"ns per sighting, best of {args.repeat}; python = the decoder the sources used before")
    print(f"{'batch':>6} | {'ebpf source':^17} | {'taps source':^17} | {'decoder alone':^17}")
    print(f"{'':>6} | {'core':>8} {'python':>8} | {'core':>8} {'python':>8} | {'core':>8} {'python':>8}")
    for n in sizes:
        # a window in the middle: every protocol of the mix, hops of one packet together
        batch = frames[len(frames) // 2 - n // 2 :][:n]
        loops = max(1, args.budget // n)
        evbuf = ebpf_events(batch, src, args.raw_every)
        tbuf, toffs, tlens = taps_buffer(batch)
        offs = np.array(toffs, dtype=np.uint64)
        cells = []
        # the eBPF source before the core read its ring: numpy over the events, then the decoder
        before = partial(reference_ebpf.decode_events, evbuf, src._dtype, src._frame_off, src._utc(), {})
        for fn, old in ((partial(src._decode_events, evbuf), before),
                        (partial(taps_decode, tbuf, toffs, tlens, 1, dtype), None)):
            fn_old = old or fn
            cells += [timed(fn, loops, False) if core is not None else float("nan"), timed(fn_old, loops, True)]
        for dec, kw in ((core, {}), (ref, {"zeroed": True})):  # zeroed=True: as the sources called it
            call = partial(dec, np.zeros(n, dtype=dtype), tbuf, offs, tlens, 1, **kw) if dec else None
            cells.append(best_ns(call, loops, args.repeat) if call else float("nan"))
        c = [x / n for x in cells]
        print(f"{n:>6} | {c[0]:>8.0f} {c[1]:>8.0f} | {c[2]:>8.0f} {c[3]:>8.0f} | {c[4]:>8.0f} {c[5]:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
