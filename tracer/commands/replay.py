"""``hoptrace replay FILE... [--hop NODE/IFACE=FILE]... [--json] [--no-tui] [-- EXPR...]``.

The same engine as live, over capture files: FileSource -> Engine -> a sink
(text, NDJSON) or the TUI. A damaged file still shows every path read before
the damage: the source's error is held back until the engine has flushed
and the sink has printed its stats, then reported as one line (exit 2).
Reading a file shows a progress line on stderr when stderr is a terminal
(tracer.sinks.progress), not in the TUI.

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
from typing import TYPE_CHECKING

from tracer.errors import UsageError
from tracer.sources.files import open_files

if TYPE_CHECKING:
    from tracer.pipeline import Pipeline

USAGE_HINT = "hoptrace replay FILE... [--hop NODE/IFACE=FILE]... [--json] [-- EXPR...]"


def build_pipeline(args: argparse.Namespace, progress_label: str | None = None) -> Pipeline:
    """replay's pipeline on the Python engine (the TUI, text, --count): the files, --filter,
    --count, a damaged file's error held back."""
    files = list(getattr(args, "files", []) or [])
    hop_args = list(getattr(args, "hop", []) or [])
    if not files and not hop_args:
        raise UsageError("replay needs at least one capture file", USAGE_HINT)
    from tracer.pipeline import PipelineConfig, build, compile_filter

    path_filter = compile_filter(getattr(args, "filter", None))
    return build(PipelineConfig(open_files(files, hop_args), path_filter=path_filter,
                                progress_label=progress_label, count=getattr(args, "count", None),
                                hold_errors=True))


def _want_tui(args: argparse.Namespace) -> bool:
    return not (args.no_tui or args.json) and sys.stdout.isatty()


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
    released. Text looks as -n, -q, -v and --color say (tracer.sinks.output ``text_options``)."""
    from tracer import _core  # type: ignore[attr-defined]  # the compiled core, no stub
    from tracer.pipeline import CoreRun

    files = list(getattr(args, "files", []) or [])
    hop_args = list(getattr(args, "hop", []) or [])
    if not files and not hop_args:
        raise UsageError("replay needs at least one capture file", USAGE_HINT)
    text = None
    if not args.json:
        from tracer.sinks.output import text_options

        opts = text_options(args, sys.stdout)
        text = (opts.numeric, opts.detail, opts.color)
    with CoreRun(files, hop_args, getattr(args, "filter", None), "replay") as run:
        sys.stdout.flush()
        _obs, _paths, error = _core.replay_ndjson(
            run.source.core_inputs(), sys.stdout.fileno(), on_batch=run.on_batch,
            before_write=run.before_write(sys.stdout), program=run.program, text=text)
    held = run.error(error)
    if held is not None:
        raise held
    return 0


def run(args: argparse.Namespace) -> int:
    if _core_engine(args):
        return run_core(args)
    from tracer.sinks.output import NdjsonSink, TextSink, text_options, tui_color

    if _want_tui(args):
        from tui.app import make_app

        pipeline = build_pipeline(args)
        tui_color(args)
        make_app(pipeline.engine, keep=args.keep, numeric=bool(getattr(args, "numeric", False))).run()
    else:
        pipeline = build_pipeline(args, "replay")
        out = pipeline.output(sys.stdout)
        sink = NdjsonSink(out) if args.json else TextSink(out, text_options(args, sys.stdout))
        pipeline.run([sink])
    sys.stdout.flush()
    if pipeline.error is not None:
        raise pipeline.error
    return 0
