"""The eBPF source's consumer in Python, as probes/skb_hops.py had it before the core took it
over (crates/hoptrace-core/src/ebpf.rs, crates/hoptrace-py/src/ebpf_ring.rs = ``_core.EbpfRing``):
``RingReader`` (the ring buffer map read from its mmap) and ``decode_events`` (hop events ->
``OBS_DTYPE`` rows with numpy; the packet fields by the reference decoder). The oracle
tests/probes/test_ebpf_ring.py holds the core to, row for row.
"""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from tests.reference.decode import decode_into
from tracer.linktypes import LINKTYPE_ETHERNET, LINKTYPE_RAW
from tracer.model import Src, obs_dtype

HEADER_LEN = 16  # struct hop_batch: count, busy, first_ts
_RINGBUF_BUSY = 1 << 31
_RINGBUF_DISCARD = 1 << 30
_RINGBUF_HDR = 8  # struct bpf_ringbuf_hdr: u32 len, u32 pg_off


class RingReader:
    """The consumer side of a BPF ring buffer map, read straight from its mmap.

    What libbpf's ``ring_buffer__consume`` does (kernel/bpf/ringbuf.c's layout:
    a consumer page, a producer page, then the data pages mapped twice so no
    record wraps): ``read()`` joins the hop events of every finished record into one
    ``bytes`` and then hands the space back to the kernel.
    """

    def __init__(self, map_fd: int, data_size: int, ev_size: int) -> None:
        import mmap

        if data_size <= 0 or data_size & (data_size - 1):
            raise ValueError(f"ring buffer size {data_size} is not a power of two")
        page = mmap.PAGESIZE
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._data_map = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._cons: Any = ctypes.c_uint64.from_buffer(self._cons_map)
        self._mv: Any = memoryview(self._data_map)
        self._prod: Any = self._mv[:8].cast("Q")
        self._words: Any = self._mv[page:].cast("I")
        self._mask = data_size - 1
        self._page = page
        self._ev_size = ev_size

    def read(self) -> bytes:
        """The events of every record finished so far, back to back (b"" if none)."""
        cons = self._cons.value
        prod = self._prod[0]
        words, mask, base, ev_size, mv = self._words, self._mask, self._page + _RINGBUF_HDR + HEADER_LEN, \
            self._ev_size, self._mv
        parts = []
        while cons < prod:
            off = cons & mask
            ln = words[off >> 2]
            if ln & _RINGBUF_BUSY:
                break  # reserved, not yet submitted: records after it wait for it
            size = ln & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            cons += (size + _RINGBUF_HDR + 7) & ~7
            if not ln & _RINGBUF_DISCARD:
                n = min(words[(off + _RINGBUF_HDR) >> 2], (size - HEADER_LEN) // ev_size)
                if n > 0:
                    start = base + off
                    parts.append(mv[start : start + n * ev_size])
        if not parts:
            self._cons.value = cons
            return b""
        data = b"".join(parts)
        for part in parts:
            part.release()
        self._cons.value = cons
        return data

    @property
    def consumer(self) -> int:
        return self._cons.value

    def close(self) -> None:
        if self._mv is None:
            return
        self._prod.release()
        self._words.release()
        self._mv.release()
        self._cons = self._prod = self._words = self._mv = None
        self._cons_map.close()
        self._data_map.close()


def _dir_lut() -> Any:
    lut = np.zeros(256, dtype=np.uint8)
    for k in (1, 2, 3):  # HopKind RX, TX, DROP = Dir values
        lut[k] = k
    return lut


def decode_events(buf: bytes, ev_dtype: Any, frame_off: int, clock: Any,
                  labels: dict[tuple[int, int, bytes, int], int]) -> np.ndarray:
    """Hop events back to back -> ``OBS_DTYPE`` rows. ``clock``: a MonoToUtc; ``labels``:
    (netns, ifindex, ifname, linktype) -> hop index, grown by the keys first seen here."""
    ev_size = ev_dtype.itemsize
    ev = np.frombuffer(buf, dtype=ev_dtype)
    n = len(ev)
    rows = np.zeros(n, dtype=obs_dtype())
    rows["ts_ns"] = clock.to_utc(ev["ts_ns"])
    rows["skb"] = ev["skb"]
    rows["netns"] = ev["netns"]
    rows["ifindex"] = ev["ifindex"]
    rows["dir"] = _dir_lut()[ev["kind"]]
    rows["source"] = int(Src.EBPF)
    rows["drop_reason"] = ev["drop_reason"]
    rows["wire_len"] = ev["wire_len"]
    cap = ev["cap_len"].astype(np.uint32)
    offs = np.arange(n, dtype=np.uint64) * np.uint64(ev_size) + np.uint64(frame_off)
    rows["frame_off"] = offs
    rows["frame_len"] = cap
    rows["hop"] = _hop_indexes(ev, labels)
    eth = ev["mac_len"] >= 14
    lts = np.where(eth, np.uint32(LINKTYPE_ETHERNET), np.uint32(LINKTYPE_RAW))
    decode_into(rows, buf, offs.tolist(), cap.tolist(), lts.tolist())
    return rows


def _hop_indexes(ev: Any, labels: dict[tuple[int, int, bytes, int], int]) -> Any:
    raw = (ev["mac_len"] < 14).astype(np.uint64)
    key = ((ev["netns"].astype(np.uint64) << np.uint64(32))
           | ((ev["ifindex"].astype(np.uint64) & np.uint64(0x7FFFFFFF)) << np.uint64(1)) | raw)
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    hops = []
    names = np.ascontiguousarray(ev["ifname"][first]).view("S16").ravel().tolist()
    for k, name in zip(uniq.tolist(), names, strict=True):
        netns, ifindex = k >> 32, (k >> 1) & 0x7FFFFFFF
        linktype = LINKTYPE_RAW if k & 1 else LINKTYPE_ETHERNET
        ifname = name.split(b"\0", 1)[0]
        lk = (netns, ifindex, ifname, linktype)
        hop = labels.get(lk)
        if hop is None:
            hop = labels[lk] = len(labels)
        hops.append(hop)
    return np.array(hops, dtype=np.uint32)[np.asarray(inverse).reshape(-1)]
