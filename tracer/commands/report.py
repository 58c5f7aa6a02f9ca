"""``hoptrace report FILE... [--hop ...] [--format text|json|markdown] [--parquet DIR] [-- EXPR...]``.

The same engine as replay, summarised: paths by verdict and protocol, flows,
NAT events grouped by where and how they rewrote (with packet counts), drops
by reason, and per-hop latency percentiles (hop-to-hop deltas per hop pair).
The command runs in the core (``tracer._core.report``: crates/hoptrace-core/src/report.rs),
which runs the engine over the files and hands back the aggregates (and, for ``--parquet
DIR``, the tables' columns as numpy arrays, which ``tracer.sinks.analysis`` turns into Parquet):
no Python object per sighting or path. ``Summary.add_path`` builds the same summary from
``PacketPath`` objects, for callers that hold them (tests/reference/report.py keeps the
Python report the core is held to).
"""

from __future__ import annotations

import argparse
import json
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, NamedTuple, TextIO

from tracer.drops import drop_note
from tracer.errors import HoptraceError, UsageError
from tracer.model import Endpoints, Flow, NatEvent, PacketPath, Stats
from tracer.safe_text import md_cell, term_safe
from tracer.sinks.output import duration_text

VERDICTS = ("delivered", "dropped", "left", "incomplete")
PERCENTILES = (50, 90, 99)

NatKey = tuple[str, str, str, str, str, str]  # node, kind, hook, before, after, rule


def _ep_text(addr: str, port: int | None) -> str:
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _ep(e: Endpoints, side: str) -> str:
    return _ep_text(e.src, e.sport) if side == "src" else _ep_text(e.dst, e.dport)


def _nat_key(ev: NatEvent) -> NatKey:
    side = "src" if ev.kind == "snat" else "dst"
    return (ev.node, ev.kind, ev.hook, _ep(ev.before, side), _ep(ev.after, side), ev.rule or "")


class FlowRow(NamedTuple):
    """A flow as a report lists it."""

    id: str
    proto: str
    original: Endpoints
    reply: Endpoints
    paths: int
    #: A leg of a connection a userland proxy relayed (``"relay"``: tracer/annotate/relay.py).
    relayed: bool = False


def _name(raw: bytes) -> str:
    """A name from the core: "surrogatepass" UTF-8, as the readers' labels hold it."""
    return raw.decode("utf-8", "surrogatepass")


@dataclass
class Summary:
    """Everything a report shows, accumulated path by path (no path is kept), or as the
    core accumulated it (``from_core``)."""

    paths: int = 0
    by_proto_verdict: Counter[tuple[str, str]] = field(default_factory=Counter)
    flows: list[FlowRow] = field(default_factory=list)
    nat: Counter[NatKey] = field(default_factory=Counter)
    drops: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (from hop, to hop) -> hop-to-hop deltas in ns, compact (8 bytes each).
    deltas: dict[tuple[str, str], array[int]] = field(default_factory=dict)
    latency: array[int] = field(default_factory=lambda: array("q"))
    stats: Stats | None = None
    # Percentiles the core computed (hop_latency rows, path_latency), instead of deltas.
    core_latency: tuple[list[dict[str, Any]], dict[str, int] | None] | None = None

    @classmethod
    def from_core(cls, r: dict[str, Any]) -> Summary:
        """The summary ``tracer._core.report`` returned (its lists are small: one entry per
        group, flow or hop pair)."""
        s = cls(paths=r["paths"])
        for proto, verdict, n in r["by_proto_verdict"]:
            s.by_proto_verdict[(proto, verdict)] += n
        for node, kind, hook, before, after, n in r["nat"]:
            s.nat[(_name(node), kind, hook, _ep_text(*before), _ep_text(*after), "")] += n
        for hop, reason, n in r["drops"]:
            s.drops[(_name(hop), _name(reason))] += n
        s.flows = [FlowRow(f"f{num}", proto, Endpoints(*orig), Endpoints(*reply), n, relayed)
                   for num, proto, orig, reply, n, relayed in r["flows"]]
        rows = [{"from": _name(a), "to": _name(b), "count": n,
                 **{f"p{q}_ns": v for q, v in zip(PERCENTILES, ps, strict=True)}}
                for a, b, n, ps in r["hop_latency"]]
        rows.sort(key=lambda row: (-row["count"], (row["from"], row["to"])))
        pl = r["path_latency"]
        s.core_latency = (rows, None if pl is None else {
            "count": pl[0], **{f"p{q}_ns": v for q, v in zip(PERCENTILES, pl[1], strict=True)}})
        return s

    def add_path(self, p: PacketPath) -> None:
        self.paths += 1
        self.by_proto_verdict[(p.proto, p.verdict)] += 1
        for ev in p.nat:
            self.nat[_nat_key(ev)] += 1
        for i, h in enumerate(p.hops):
            # Frees that lost nothing (after delivery, a raw socket's copy) are no drops.
            if h.direction == "drop" and drop_note(p.hops, i, p.verdict)[0]:
                self.drops[(h.hop_name, h.drop_reason or "unknown")] += 1
        hops = p.hops
        for a, b in pairwise(hops):
            key = (f"{a.hop_name} {a.direction or '?'}", f"{b.hop_name} {b.direction or '?'}")
            d = self.deltas.get(key)
            if d is None:
                d = self.deltas[key] = array("q")
            d.append(b.ts_ns - a.ts_ns)
        if len(hops) > 1:
            self.latency.append(p.latency_ns)

    def add_flow(self, f: Flow) -> None:
        self.flows.append(FlowRow(f.id, f.proto, f.original, f.reply, len(f.paths), f.relay is not None))

    # ---------------------------------------------------------------- views

    def percentiles(self) -> list[dict[str, Any]]:
        if self.core_latency is not None:
            return self.core_latency[0]
        import numpy as np  # already loaded by the correlator

        out = []
        for (a, b), d in sorted(self.deltas.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            arr = np.frombuffer(d, dtype=np.int64)
            ps = np.percentile(arr, PERCENTILES, method="nearest")
            out.append({"from": a, "to": b, "count": len(arr),
                        **{f"p{q}_ns": int(v) for q, v in zip(PERCENTILES, ps, strict=True)}})
        return out

    def path_latency(self) -> dict[str, int] | None:
        if self.core_latency is not None:
            return self.core_latency[1]
        if not self.latency:
            return None
        import numpy as np

        arr = np.frombuffer(self.latency, dtype=np.int64)
        ps = np.percentile(arr, PERCENTILES, method="nearest")
        return {"count": len(arr), **{f"p{q}_ns": int(v) for q, v in zip(PERCENTILES, ps, strict=True)}}

    def to_json(self) -> dict[str, Any]:
        protos = sorted({p for p, _ in self.by_proto_verdict})
        return {
            "type": "report",
            "paths": self.paths,
            "by_verdict": {v: sum(n for (_, vv), n in self.by_proto_verdict.items() if vv == v)
                           for v in VERDICTS},
            "by_proto": {p: {v: self.by_proto_verdict[(p, v)] for v in VERDICTS
                             if self.by_proto_verdict[(p, v)]} for p in protos},
            "flows": [{"id": f.id, "proto": f.proto, "original": f.original.to_json(),
                       "reply": f.reply.to_json(), "paths": f.paths} for f in self.flows],
            # Beside the NAT rewrites: connections a userland proxy relayed (both legs counted).
            "relayed_flows": sum(1 for f in self.flows if f.relayed),
            "nat": [{"node": k[0], "kind": k[1], "hook": k[2], "before": k[3], "after": k[4],
                     "rule": k[5] or None, "packets": n} for k, n in self._nat_sorted()],
            "drops": [{"hop": h, "reason": r, "packets": n}
                      for (h, r), n in sorted(self.drops.items(), key=lambda kv: (-kv[1], kv[0]))],
            "hop_latency": self.percentiles(),
            "path_latency": self.path_latency(),
            "stats": None if self.stats is None else {
                "observations": self.stats.observations, "paths": self.stats.paths,
                "lost_events": self.stats.lost_events, "elapsed_s": round(self.stats.elapsed_s, 3)},
        }

    def _nat_sorted(self) -> list[tuple[NatKey, int]]:
        return sorted(self.nat.items(), key=lambda kv: (-kv[1], kv[0]))


# ------------------------------------------------------------------ render


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    # Cells hold names from capture files and the system: escaped here, for every table at once.
    rows = [[(md_cell if markdown else term_safe)(x) for x in r] for r in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return out
    widths = [max(map(len, col)) for col in zip(header, *rows, strict=True)]
    return ["  " + "  ".join(map(str.ljust, r, widths)).rstrip() for r in (header, *rows)]


def render(summary: Summary, fmt: str, files: list[str]) -> str:
    if fmt == "json":
        return json.dumps({**summary.to_json(), "files": files})
    md = fmt == "markdown"
    j = summary.to_json()

    def title(t: str) -> str:
        return f"\n## {t}\n" if md else f"\n{t}"

    named = ", ".join(files)
    lines = [f"# hoptrace report: {md_cell(named)}" if md else f"hoptrace report: {term_safe(named)}"]
    st = summary.stats
    if st is not None:
        lines.append(f"{st.observations} observations, {summary.paths} paths, {len(summary.flows)} flows, "
                     f"{st.lost_events} lost events")
    lines.append(title("Paths by verdict"))
    rows = [[p, *[str(c.get(v, 0)) for v in VERDICTS], str(sum(c.values()))]
            for p, c in j["by_proto"].items()]
    rows.append(["all", *[str(j["by_verdict"][v]) for v in VERDICTS], str(summary.paths)])
    lines += _table(["proto", *VERDICTS, "total"], rows, md)
    lines.append(title("Flows"))
    if summary.flows:
        lines += _table(["flow", "proto", "original", "reply", "paths"], [
            [f.id, f.proto, f"{_ep(f.original, 'src')} → {_ep(f.original, 'dst')}",
             f"{_ep(f.reply, 'src')} → {_ep(f.reply, 'dst')}", str(f.paths)]
            for f in summary.flows], md)
    else:
        lines.append("  (none)")
    lines.append(title("NAT"))
    if summary.nat:
        lines += _table(["node", "kind", "hook", "rewrite", "rule", "packets"], [
            [k[0], k[1].upper(), k[2], f"{k[3]} → {k[4]}", k[5] or "-", str(n)]
            for k, n in summary._nat_sorted()], md)
    else:
        lines.append("  (no rewrites seen)")
    if j["relayed_flows"]:
        # A userland proxy's connections are not NATed: said beside the rewrites, counted per leg.
        lines.append(f"  {j['relayed_flows']} flows relayed by a userland proxy (docker-proxy: the "
                     "connection it accepted and the one it opened), not rewritten")
    lines.append(title("Drops"))
    if summary.drops:
        lines += _table(["hop", "reason", "packets"],
                        [[d["hop"], d["reason"], str(d["packets"])] for d in j["drops"]], md)
    else:
        lines.append("  (no drops seen)")
    lines.append(title("Hop-to-hop latency"))
    if j["hop_latency"]:
        lines += _table(["from", "to", "count", *[f"p{q}" for q in PERCENTILES]], [
            [r["from"], r["to"], str(r["count"]), *[duration_text(r[f"p{q}_ns"]) for q in PERCENTILES]]
            for r in j["hop_latency"]], md)
        pl = j["path_latency"]
        if pl:
            lines.append(("\n" if md else "") + "  whole path: " + ", ".join(
                f"p{q} {duration_text(pl[f'p{q}_ns'])}" for q in PERCENTILES) + f" ({pl['count']} paths)")
    else:
        lines.append("  (no path with two hops)")
    return "\n".join(lines)


# --------------------------------------------------------------------- run


def write_report(summary: Summary, fmt: str, files: list[str], stream: TextIO) -> None:
    stream.write(render(summary, fmt, files) + "\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    from tracer import _core  # type: ignore[attr-defined]  # the compiled core, no stub
    from tracer.pipeline import CoreRun

    files = list(args.files or [])
    hop_args = list(getattr(args, "hop", None) or [])
    if not files and not hop_args:
        raise UsageError("report needs at least one capture file")
    expr = getattr(args, "filter", None)
    parquet = getattr(args, "parquet", None)
    if parquet:
        try:
            from tracer.sinks import analysis
        except ImportError as exc:
            raise HoptraceError("--parquet needs tracer.sinks.analysis, which is not in this build") from exc
    run = CoreRun(files, hop_args, expr, "report")  # a progress line on stderr, on a terminal
    loading = analysis.import_in_background() if parquet else None
    try:
        with run:
            r = _core.report(run.source.core_inputs(), columns=bool(parquet), on_batch=run.on_batch,
                             program=run.program)
    except ValueError as exc:  # the columns outgrew one Parquet file
        raise UsageError(str(exc)) from exc
    finally:
        if loading is not None:
            loading.join()
    summary = Summary.from_core(r)
    summary.stats = Stats(observations=r["observations"], paths=r["paths"], lost_events=0,
                          elapsed_s=r["elapsed_s"])
    error = run.error(r["error"])
    if error is not None and r["observations"] == 0:
        raise error  # nothing was read: an empty report would only hide the one line that matters
    labels = files + [h.split("=", 1)[-1] for h in hop_args]
    # The Parquet files are written on threads while the report is rendered and printed.
    writing = analysis.start_writing(analysis.tables_from_core(r["columns"]), parquet) if parquet else None
    write_report(summary, args.format, labels, sys.stdout)
    if writing is not None:
        written = writing()
        if args.format != "json":
            print("parquet: " + term_safe(", ".join(str(p) for p in written.values())))
    if error is not None:
        raise error
    return 0


__all__ = ["Summary", "render", "run"]
