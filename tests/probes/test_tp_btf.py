"""The two ways skb_hops.c is attached, on the real kernel in the lab: tp_btf (the fields read
as plain loads, probes/tp_btf.py) and bcc's raw tracepoints (bpf_probe_read_kernel, the
fallback). Both attached at once over every lab scenario must see the same sightings."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tracer.model import Observation

pytestmark = [pytest.mark.root, pytest.mark.lab]


def _source(monkeypatch: pytest.MonkeyPatch, kind: str, lab: Any) -> Any:
    from probes.skb_hops import ATTACH_ENV, EbpfSource

    monkeypatch.setenv(ATTACH_ENV, kind)
    lab_ns = {lab.netns_inode(n) for n in ("host", "inet", "client", "web")}
    src = EbpfSource(netns=lab_ns)
    src.start()
    return src


def _fields(o: Observation) -> tuple[Any, ...]:
    # every field but the time: two programs on one tracepoint read the clock apart
    return tuple(getattr(o, f) for f in Observation.__slots__ if f != "ts_ns")


def test_tp_btf_and_raw_tracepoints_see_the_same_sightings(lab_netns: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer.lab import SCENARIOS

    fast = _source(monkeypatch, "tp_btf", lab_netns)
    try:
        raw = _source(monkeypatch, "raw_tp", lab_netns)
    except BaseException:
        fast.stop()
        raise
    # tp_btf is what this kernel (6.18, BTF) runs by default: the kind under test here
    assert (fast.attach_kind, raw.attach_kind) == ("tp_btf", "raw_tp"), fast.notices
    assert fast.attachments().count == raw.attachments().count == 3
    seen: dict[str, list[Observation]] = {"tp_btf": [], "raw_tp": []}

    def consume(src: Any, into: list[Observation]) -> None:
        for batch in src.batches():
            into.extend(batch.observations())

    threads = [threading.Thread(target=consume, args=(s, seen[s.attach_kind])) for s in (fast, raw)]
    for th in threads:
        th.start()
    # the window both saw whole (one started ~0.5 s after the other; stop() is one after the
    # other): sightings stamped in it, UTC as the sources stamp them
    time.sleep(0.2)
    t0 = time.time_ns()
    try:
        for name in SCENARIOS:
            lab_netns.run(name)
        time.sleep(0.3)  # > the stage flush, the poll and the hold
        t1 = time.time_ns()
    finally:
        fast.stop()
        raw.stop()
        for th in threads:
            th.join(timeout=10)
    assert not any(th.is_alive() for th in threads)
    for kind in seen:
        seen[kind] = [o for o in seen[kind] if t0 <= o.ts_ns < t1]
    a, b = Counter(map(_fields, seen["tp_btf"])), Counter(map(_fields, seen["raw_tp"]))
    assert a == b, (list((a - b).items())[:3], list((b - a).items())[:3])
    kinds = {o.drop_reason is not None for o in seen["tp_btf"]}
    assert kinds == {True, False}, "the scenarios include a drop (blocked)"
    assert len(seen["tp_btf"]) > 50


def test_tp_btf_programs_are_detached_on_stop(lab_netns: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(monkeypatch, "tp_btf", lab_netns)
    assert src.attach_kind == "tp_btf", src.notices
    links = [p.link_fd for p in src._tp_btf]
    assert all(Path(f"/proc/self/fd/{fd}").exists() for fd in links)
    src.stop()
    list(src.batches())
    assert src._tp_btf == []
    assert not any(Path(f"/proc/self/fdinfo/{fd}").exists()
                   and "link_type" in Path(f"/proc/self/fdinfo/{fd}").read_text() for fd in links)


def test_a_refused_tp_btf_load_falls_back_and_says_why(lab_netns: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's refusal is made here (the lab kernel takes tp_btf); everything else is real:
    bcc compiles both ways, the raw tracepoints attach, and the notice live prints names the
    errno and the verifier's last line."""
    import errno

    from probes import tp_btf

    def refuse(insns: bytes, btf_id: int, name: str, tracepoint: str) -> tp_btf.TpBtfProgram:
        raise tp_btf.TpBtfError(f"{tracepoint}: tp_btf load refused", errno.EACCES,
                                "0: (79) r1 = *(u64 *)(r1 +0)\nR1 invalid mem access 'scalar'")

    monkeypatch.setattr(tp_btf, "load_and_attach", refuse)
    src = _source(monkeypatch, "", lab_netns)
    try:
        assert src.attach_kind == "raw_tp"
        assert src.notices == ["tp_btf not taken (netif_receive_skb: tp_btf load refused: Permission denied; "
                               "the verifier: R1 invalid mem access 'scalar'): raw tracepoints instead (slower)"]
        assert src.attachments().count == 3
    finally:
        src.stop()
        list(src.batches())
