"""The reference: ``hoptrace report`` as tracer/commands/report.py did it before the core
(crates/hoptrace-core/src/report.rs) took the aggregations over: a ``Summary`` built path
by path from ``PacketPath`` objects of the Python engine, rendered as text, markdown or
JSON. tests/unit/test_core_report.py holds the product to it byte for byte. Kept as it
was; not used by the product.

``hoptrace report FILE... [--hop ...] [--format text|json|markdown] [--parquet DIR] [-- EXPR...]``.

The same engine as replay, summarised: paths by verdict and protocol, flows,
NAT events grouped by where and how they rewrote (with packet counts), drops
by reason, and per-hop latency percentiles (hop-to-hop deltas per hop pair).
Built from the stream of finished paths, without pandas, so a report stays
light; ``--parquet DIR`` hands the paths to ``tracer.sinks.analysis`` for pandas.
"""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import argparse
import json
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, TextIO

from tests.reference.drops import counts_as_drop
from tracer.errors import CaptureFileError, HoptraceError, UsageError
from tracer.model import Endpoints, Flow, NatEvent, PacketPath, Stats
from tracer.sinks.output import duration_text
from tracer.safe_text import md_cell, term_safe

VERDICTS = ("delivered", "dropped", "left", "incomplete")
PERCENTILES = (50, 90, 99)

NatKey = tuple[str, str, str, str, str, str]  # node, kind, hook, before, after, rule


def _ep(e: Endpoints, side: str) -> str:
    addr, port = (e.src, e.sport) if side == "src" else (e.dst, e.dport)
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _nat_key(ev: NatEvent) -> NatKey:
    side = "src" if ev.kind == "snat" else "dst"
    return (ev.node, ev.kind, ev.hook, _ep(ev.before, side), _ep(ev.after, side), ev.rule or "")


@dataclass
class Summary:
    """Everything a report shows, accumulated path by path (no path is kept)."""

    paths: int = 0
    by_proto_verdict: Counter[tuple[str, str]] = field(default_factory=Counter)
    flows: list[Flow] = field(default_factory=list)
    nat: Counter[NatKey] = field(default_factory=Counter)
    drops: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (from hop, to hop) -> hop-to-hop deltas in ns, compact (8 bytes each).
    deltas: dict[tuple[str, str], array[int]] = field(default_factory=dict)
    latency: array[int] = field(default_factory=lambda: array("q"))
    stats: Stats | None = None

    def add_path(self, p: PacketPath) -> None:
        self.paths += 1
        self.by_proto_verdict[(p.proto, p.verdict)] += 1
        for ev in p.nat:
            self.nat[_nat_key(ev)] += 1
        for i, h in enumerate(p.hops):
            if counts_as_drop(p.hops, i, p.verdict):  # frees that lost nothing are no drops
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
        self.flows.append(f)

    # ---------------------------------------------------------------- views

    def percentiles(self) -> list[dict[str, Any]]:
        import numpy as np  # already loaded by the correlator

        out = []
        for (a, b), d in sorted(self.deltas.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            arr = np.frombuffer(d, dtype=np.int64)
            ps = np.percentile(arr, PERCENTILES, method="nearest")
            out.append({"from": a, "to": b, "count": len(arr),
                        **{f"p{q}_ns": int(v) for q, v in zip(PERCENTILES, ps, strict=True)}})
        return out

    def path_latency(self) -> dict[str, int] | None:
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
                       "reply": f.reply.to_json(), "paths": len(f.paths)} for f in self.flows],
            "relayed_flows": sum(1 for f in self.flows if f.relay is not None),
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
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return ["  " + fmt(header), *("  " + fmt(r) for r in rows)]


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
             f"{_ep(f.reply, 'src')} → {_ep(f.reply, 'dst')}", str(len(f.paths))]
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


def summarize(engine: Any, keep_paths: bool = False) -> tuple[Summary, list[PacketPath], BaseException | None]:
    """Drive ``engine``; a capture error ends the input but the summary of what was read stands."""
    summary = Summary()
    kept: list[PacketPath] = []
    error: BaseException | None = None
    try:
        for events in engine.events():
            for ev in events:
                if isinstance(ev, PacketPath):
                    summary.add_path(ev)
                    if keep_paths:
                        kept.append(ev)
                else:
                    summary.add_flow(ev)
    except CaptureFileError as exc:
        error = exc
    summary.stats = engine.stats()
    return summary, kept, error


def write_report(summary: Summary, fmt: str, files: list[str], stream: TextIO) -> None:
    stream.write(render(summary, fmt, files) + "\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    from tracer.engine import Engine
    from tracer.sources.files import open_files

    files = list(args.files or [])
    hop_args = list(getattr(args, "hop", None) or [])
    if not files and not hop_args:
        raise UsageError("report needs at least one capture file")
    path_filter = None
    if getattr(args, "filter", None):
        from tracer.filter import PathFilter

        path_filter = PathFilter(args.filter)
    write_parquet: Callable[[Iterable[PacketPath], str], dict[str, Path]] | None = None
    if getattr(args, "parquet", None):
        write_parquet = _write_parquet
    source = open_files(files, hop_args)
    if path_filter is not None:
        # The filter matches frames by link type, which only the source knows: tell it per hop.
        learn = path_filter.learn_linktype

        def tell(batch: Any) -> None:
            for h in batch.hops:
                learn(h.node, h.iface, h.linktype)
    engine = Engine(source, path_filter=path_filter)
    if path_filter is not None:
        engine.batch_hooks.append(tell)
    from tracer.engine import gc_policy
    from tracer.sinks.progress import FileProgress

    progress = FileProgress(source, "report")  # on stderr, when it is a terminal
    engine.batch_hooks.append(progress)
    try:
        with gc_policy():
            summary, paths, error = summarize(engine, keep_paths=write_parquet is not None)
    finally:
        progress.clear()
    if error is not None and summary.stats is not None and summary.stats.observations == 0:
        raise error  # nothing was read: an empty report would only hide the one line that matters
    labels = files + [h.split("=", 1)[-1] for h in hop_args]
    write_report(summary, args.format, labels, sys.stdout)
    if write_parquet is not None:
        written = write_parquet(paths, args.parquet)
        if args.format != "json":
            print("parquet: " + term_safe(", ".join(str(p) for p in written.values())))
    if error is not None:
        raise error
    return 0


# Columns written with dictionary pages besides the dictionary-typed ones, as
# tracer/sinks/analysis.py wrote them when the core took the report over.
_REPEATING = {"hop", "flow", "netns", "ifindex", "family", "ethertype", "ttl", "tcp_flags", "icmp_type",
              "icmp_code", "icmp_id", "length", "wire_len", "sport", "dport", "hops", "seq", "from_hop", "to_hop",
              "before_sport", "before_dport", "after_sport", "after_dport", "icmp_id_before", "icmp_id_after"}


def _write_parquet(paths: Iterable[PacketPath], directory: str) -> dict[str, Path]:
    """The three tables of the paths (tracer.sinks.analysis.to_tables, the Python column builder),
    written one after the other with pyarrow's writer and the options the product uses."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tracer.sinks.analysis import to_tables

    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror or exc}") from exc
    written: dict[str, Path] = {}
    for name, table in to_tables(paths).items():
        target = out / f"{name}.parquet"
        tmp = out / f".{name}.parquet.tmp"
        dictionary = [f.name for f in table.schema if pa.types.is_dictionary(f.type) or f.name in _REPEATING]
        try:
            pq.write_table(table, tmp, use_dictionary=dictionary)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        written[name] = target
    return written


__all__ = ["Summary", "render", "run", "summarize"]
