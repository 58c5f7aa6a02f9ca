"""The command line: flags per CONTRACT.md, and the one place errors become exit codes.

Each command's work lives in its own module (``tracer.replay``,
``tracer.lab.cli``, ...), imported only when that command runs, so
``hoptrace --help`` and ``doctor`` stay fast and small.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from tracer import __version__
from tracer.errors import EXIT_PROBLEM, EXIT_USAGE, HoptraceError
from tracer.safe_text import term_safe

# command -> "module:function"; the function takes the parsed args and returns an exit code.
COMMANDS: dict[str, str] = {
    "doctor": "tracer.doctor:run",
    "topology": "tracer.topology_cmd:run",
    "live": "tracer.live:run",
    "replay": "tracer.replay:run",
    "report": "tracer.report:run",
    "lab": "tracer.lab.cli:run",
    "cleanup": "tracer.cleanup:run",
    "probe": "tracer.probe:run",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _snaplen(text: str) -> int:
    value = _positive_int(text)
    if not 14 <= value <= 65535:  # an Ethernet header at least; a frame at most
        raise argparse.ArgumentTypeError(f"must be 14..65535: {text!r}")
    return value


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-tui", action="store_true", help="print paths instead of opening the TUI")
    p.add_argument("--json", action="store_true", help="NDJSON, one object per line (implies --no-tui)")
    p.add_argument(
        "--filter",
        metavar="EXPR",
        help='pcap-filter expression (tcpdump syntax), matched at any hop, e.g. "host 198.51.100.8"',
    )
    p.add_argument("--keep", type=_positive_int, default=10_000, metavar="N",
                   help="TUI: keep the last N paths (default 10000)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoptrace",
        description="Trace packets hop by hop through Docker networking, across NAT.",
    )
    parser.add_argument("--version", action="version", version=f"hoptrace {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("doctor", help="what works here and which backends are usable")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("topology", help="namespaces, containers, veth peers, bridges, routes, NAT")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("live", help="trace live")
    p.add_argument("--backend", choices=("auto", "ebpf", "pcap"), default="auto")
    p.add_argument("--iface", action="append", default=[], metavar="NAME",
                   help="trace this interface (NODE/IFACE or IFACE); repeatable")
    p.add_argument("--duration", type=_positive_float, metavar="SECONDS")
    p.add_argument("--count", type=_positive_int, metavar="N", help="stop after N paths")
    p.add_argument("--record", metavar="FILE.pcapng", help="also record every sighting to pcapng")
    p.add_argument("--record-max-mb", type=_positive_int, metavar="N")
    p.add_argument("--record-files", type=_positive_int, metavar="K")
    p.add_argument("--record-on-error", choices=("stop", "continue"), default="stop")
    p.add_argument("--rules", action="store_true",
                   help="add a netfilter trace so each NAT event names its rule")
    p.add_argument("--ready-file", metavar="F", help="created once every probe/tap is attached")
    p.add_argument("--snaplen", type=_snaplen, default=128, metavar="N")
    _add_output_flags(p)

    p = sub.add_parser("replay", help="the same engine over pcap / pcapng files")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--hop", action="append", default=[], metavar="NODE/IFACE=FILE",
                   help="a single-interface capture and the hop it was taken at; repeatable")
    _add_output_flags(p)

    p = sub.add_parser("report", help="summary of paths, flows, NAT events, drops, latency")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--hop", action="append", default=[], metavar="NODE/IFACE=FILE")
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    p.add_argument("--parquet", metavar="DIR", help="also write observations/paths/nat .parquet")
    p.add_argument("--filter", metavar="EXPR")

    p = sub.add_parser("lab", help="the embedded lab: a Docker bridge network in namespaces")
    p.add_argument("action", choices=("up", "down", "status", "demo", "run"))
    p.add_argument("scenario", nargs="?", help="with 'run': the scenario to run")
    p.add_argument("--engine", choices=("docker", "netns"), default=None,
                   help="default: docker when dockerd is installed, else netns")
    p.add_argument("--no-tui", action="store_true")
    p.add_argument("--keep", action="store_true", help="with 'demo': leave the lab up afterwards")
    p.add_argument("--json", action="store_true")

    sub.add_parser("cleanup", help="remove anything an earlier run left behind")

    p = sub.add_parser("probe", help="send a test packet from a container and trace it")
    p.add_argument("--from", dest="from_node", required=True, metavar="NODE")
    p.add_argument("--to", dest="to", required=True, metavar="ADDR[:PORT]")
    p.add_argument("--proto", choices=("icmp", "tcp", "udp"), default=None)
    p.add_argument("--count", type=_positive_int, default=1, metavar="N")
    p.add_argument("--timeout", type=_positive_float, default=2.0, metavar="S")
    p.add_argument("--backend", choices=("auto", "ebpf", "pcap"), default="auto")
    p.add_argument("--rules", action="store_true")
    p.add_argument("--json", action="store_true")
    return parser


def _resolve(command: str) -> Callable[[argparse.Namespace], int]:
    module_name, func_name = COMMANDS[command].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise HoptraceError(f"'{command}' is not available in this build yet") from exc
        raise
    func: Callable[[argparse.Namespace], int] = getattr(module, func_name)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(args.debug or os.environ.get("HOPTRACE_DEBUG"))
    if getattr(args, "json", False) and hasattr(args, "no_tui"):
        args.no_tui = True
    try:
        return _resolve(args.command)(args)
    except HoptraceError as exc:
        if debug:
            raise
        # Messages quote file names, interface and node names: one line, nothing for the terminal.
        print(f"hoptrace: {term_safe(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"hoptrace: hint: {term_safe(exc.hint)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `hoptrace replay x | head`: the reader left; say nothing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        if debug:
            raise
        print(f"hoptrace: internal error: {type(exc).__name__}: {term_safe(str(exc))} "
              "(run with --debug for details)",
              file=sys.stderr)
        return EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["EXIT_USAGE", "build_parser", "main"]
