"""``hoptrace replay FILE... [--hop NODE/IFACE=FILE]... [--json] [--no-tui] [-- EXPR...]``.

The same engine as live, over capture files: FileSource -> Engine -> a sink
(text, NDJSON) or the TUI. A damaged file still shows every path read before
the damage: the source's error is held back until the engine has flushed
and the sink has printed its stats, then reported as one line (exit 2).
Reading a file shows a progress line on stderr when stderr is a terminal
(tracer.progress), not in the TUI.

``--json`` and text (``--no-tui``, or stdout not a terminal) run the engine in Rust from
file to output (``tracer._core.replay_ndjson``: crates/hoptrace-core/src/engine.rs, the
text from crates/hoptrace-core/src/text_render.rs), the same bytes as the Python engine
(tests/unit/test_core_engine.py, tests/unit/test_core_text.py) tens of times faster,
``--filter`` included (libpcap compiles the expression per link type, the core runs it);
with ``--count``, which the core does not do yet, and for the TUI, the Python engine runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tracer.errors import CaptureFileError, UsageError
from tracer.readers import FileSource, open_files

if TYPE_CHECKING:
    from tracer.filter import PathFilter
    from tracer.model import ObsBatch

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
    path_filter = None
    if getattr(args, "filter", None):
        from tracer.filter import PathFilter

        path_filter = PathFilter(args.filter)
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


class _CoreRead:
    """A FileSource's progress as the core reports it: bytes read, of its inputs' size."""

    def __init__(self, source: FileSource) -> None:
        self.source = source
        self.bytes_read = 0

    def progress(self) -> tuple[int, int]:
        return self.bytes_read, self.source.progress()[1]


def _core_engine(args: argparse.Namespace) -> bool:
    """NDJSON or text, with nothing the core's engine does not do yet (--count), to a
    stream with a file descriptor."""
    if getattr(args, "count", None) is not None or (not args.json and _want_tui(args)):
        return False
    try:
        sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def run_core(args: argparse.Namespace) -> int:
    """``replay --json`` or text by the core's engine: files to stdout's descriptor, the GIL
    released. Text looks as -n, -q, -v and --color say (tracer.output ``text_options``)."""
    from tracer import _core  # type: ignore[attr-defined]  # the compiled core, no stub
    from tracer.progress import FileProgress

    files = list(getattr(args, "files", []) or [])
    hop_args = list(getattr(args, "hop", []) or [])
    if not files and not hop_args:
        raise UsageError("replay needs at least one capture file", USAGE_HINT)
    program = None
    expr = getattr(args, "filter", None)
    if expr:
        from tracer.errors import FilterError
        from tracer.filter import PathFilter, compile_insns

        PathFilter(expr)  # a bad expression fails here, before any file is opened

        def program(linktype: int) -> bytes | None:
            try:
                return compile_insns(expr, linktype)
            except FilterError:  # valid for Ethernet, meaningless here: never a match
                return None

    text = None
    if not args.json:
        from tracer.output import text_options

        opts = text_options(args, sys.stdout)
        text = (opts.numeric, opts.detail, opts.color)
    source = open_files(files, hop_args)
    source.start()
    read = _CoreRead(source)
    progress = FileProgress(read, "replay")

    def on_batch(records: int, bytes_read: int) -> None:
        read.bytes_read = bytes_read
        progress.add(records)

    line = progress.line
    same_terminal = line is not None and sys.stdout.isatty()
    sys.stdout.flush()
    try:
        _obs, _paths, error = _core.replay_ndjson(
            source.core_inputs(), sys.stdout.fileno(), on_batch=None if line is None else on_batch,
            before_write=line.clear if same_terminal and line is not None else None, program=program,
            text=text)
    finally:
        progress.clear()
    if error is not None:
        index, problem = error
        raise CaptureFileError(f"{source.input_path(index)}: {problem}")
    return 0


def run(args: argparse.Namespace) -> int:
    if _core_engine(args):
        return run_core(args)
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
