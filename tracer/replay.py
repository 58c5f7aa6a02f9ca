"""``hoptrace replay FILE... [--hop NODE/IFACE=FILE]... [--json] [--no-tui] [-- EXPR...]``.

The same engine as live, over capture files: FileSource -> Engine -> a sink
(text, NDJSON) or the TUI. A damaged file still shows every path read before
the damage: the source's error is held back until the engine has flushed
and the sink has printed its stats, then reported as one line (exit 2).
Reading a file shows a progress line on stderr when stderr is a terminal
(tracer.progress), not in the TUI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from tracer.errors import CaptureFileError, UsageError
from tracer.filter import PathFilter
from tracer.model import ObsBatch
from tracer.readers import FileSource, open_files

USAGE_HINT = "hoptrace replay FILE... [--hop NODE/IFACE=FILE]... [--json] [-- EXPR...]"


class HeldErrorSource:
    """Wraps a FileSource: ends the stream cleanly at a capture error and keeps the error.

    Also tells the path filter each hop's link type, which only the source knows.
    """

    def __init__(self, inner: FileSource, path_filter: PathFilter | None = None) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.error: CaptureFileError | None = None
        self._filter = path_filter
        self._told = 0

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    @property
    def lost_events(self) -> int:
        return self.inner.lost_events

    def batches(self) -> Iterator[ObsBatch]:
        try:
            for batch in self.inner.batches():
                if self._filter is not None and len(batch.hops) > self._told:
                    for h in batch.hops[self._told :]:
                        self._filter.learn_linktype(h.node, h.iface, h.linktype)
                    self._told = len(batch.hops)
                yield batch
        except CaptureFileError as exc:
            self.error = exc


def build_engine(args: argparse.Namespace) -> tuple[Any, HeldErrorSource]:
    files = list(getattr(args, "files", []) or [])
    hop_args = list(getattr(args, "hop", []) or [])
    if not files and not hop_args:
        raise UsageError("replay needs at least one capture file", USAGE_HINT)
    path_filter = PathFilter(args.filter) if getattr(args, "filter", None) else None
    source = HeldErrorSource(open_files(files, hop_args), path_filter)
    try:
        from tracer.engine import Engine
    except ModuleNotFoundError as exc:
        if exc.name != "tracer.engine":
            raise
        raise UsageError("replay needs the correlation engine (tracer.engine), not in this build yet") from exc
    return Engine(source, path_filter=path_filter, count=getattr(args, "count", None)), source


def _want_tui(args: argparse.Namespace) -> bool:
    if args.no_tui or args.json or not sys.stdout.isatty():
        return False
    try:
        import tui.app  # noqa: F401
    except ModuleNotFoundError:
        return False
    return hasattr(sys.modules["tui.app"], "make_app")


def run(args: argparse.Namespace) -> int:
    from tracer.output import NdjsonSink, TextSink, text_options, tui_color

    engine, source = build_engine(args)
    if _want_tui(args):
        from tui.app import make_app

        tui_color(args)
        make_app(engine, keep=args.keep, numeric=bool(getattr(args, "numeric", False))).run()
    else:
        from tracer.engine import run as run_engine
        from tracer.progress import FileProgress

        progress = FileProgress(source.inner, "replay")
        engine.batch_hooks.append(progress)
        out = progress.output(sys.stdout)
        sink = NdjsonSink(out) if args.json else TextSink(out, text_options(args, sys.stdout))
        try:
            run_engine(engine, [sink])
        finally:
            progress.clear()
    sys.stdout.flush()
    if source.error is not None:
        raise source.error
    return 0
