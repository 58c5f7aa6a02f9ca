"""The command line: flags per CONTRACT.md, and the one place errors become exit codes.

Each command's work lives in its own module (``tracer.commands.replay``,
``tracer.lab.cli``, ...), imported only when that command runs, so
``hoptrace --help`` and ``doctor`` stay fast and small.

The parser is also the source of the man page and the shell completions
(``tracer.manpage``): every flag has a one-line help, every command an epilog
of examples, and an argument whose values come from somewhere (a node name, a
scenario, a file) says so in ``COMPLETE`` (read by the completion scripts).

Like tcpdump, ``live`` takes its pcap-filter expression as trailing words, and
``replay`` / ``report`` after ``--`` (their positionals are files): ``main``
folds them into ``args.filter``, the one place the commands read it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tracer import __version__
from tracer.errors import EXIT_PROBLEM, EXIT_USAGE, HoptraceError, UsageError
from tracer.safe_text import term_safe
from tracer.sampling import DEFAULT_MAX_CPU

# command -> "module:function"; the function takes the parsed args and returns an exit code.
# In the order a person meets them: `hoptrace --help` lists them so.
COMMANDS: dict[str, str] = {
    "lab": "tracer.lab.cli:run",
    "live": "tracer.commands.live:run",
    "probe": "tracer.commands.reach:run",
    "replay": "tracer.commands.replay:run",
    "report": "tracer.commands.report:run",
    "topology": "tracer.commands.topology:run",
    "doctor": "tracer.commands.doctor:run",
    "cleanup": "tracer.cleanup:run",
}

#: Commands whose filter can be given as words: ``live`` trailing, ``replay``/``report`` after ``--``.
FILTER_WORDS = ("live", "replay", "report")

#: What a completion offers for an argument, by its ``dest`` in a command (tracer.manpage reads it):
#: "file" a path, "dir" a directory, "node" a node name, "iface" NODE/IFACE, "hop" NODE/IFACE=FILE,
#: "scenario" a lab scenario.
COMPLETE: dict[tuple[str, str], str] = {
    ("live", "iface"): "iface", ("live", "record"): "file", ("live", "read"): "file",
    ("live", "ready_file"): "file",
    ("probe", "from_node"): "node",
    ("replay", "files"): "file", ("replay", "hop"): "hop",
    ("report", "files"): "file", ("report", "hop"): "hop", ("report", "parquet"): "dir",
    ("lab", "scenario"): "scenario",
}  # fmt: skip

#: tcpdump's -s 0: "the most the backend can take" (65535; eBPF: probes.skb_hops.max_snaplen()).
SNAPLEN_MAX = 65535

MORE = """\
More: `man hoptrace`, README.md ({section}); NDJSON and exit codes: CONTRACT.md."""

EPILOGS: dict[str, str] = {
    "": """\
commands in the order you meet them: build the lab, trace it live, probe a path,
replay or report a recording; topology names the nodes, doctor says what works here.

examples:
  hoptrace lab up                                   # a Docker network to trace (needs root)
  hoptrace live -i host/docker0 icmp and host 198.51.100.8
  hoptrace probe --from client --to 198.51.100.8
  hoptrace replay fixtures/internet-ping.pcapng
  hoptrace COMMAND --help                           # each command's flags and examples

""" + MORE.format(section="Commands"),
    "lab": """\
A Docker bridge network in namespaces: client and web on docker0 (172.17.0.0/16),
the host's uplink eth0 (203.0.113.2) and inet (198.51.100.8 behind 203.0.113.1),
MASQUERADE for the containers and web's port 80 published on 8080.

examples:
  hoptrace lab up                     # build it (docker engine when dockerd is installed, else netns)
  hoptrace lab run internet-ping      # client pings 198.51.100.8 through MASQUERADE
  hoptrace lab run published-port     # inet connects to 203.0.113.2:8080, DNATed to web:80
  hoptrace lab status --json          # what exists: namespaces, containers, DOCKER_HOST
  hoptrace lab down                   # remove everything the lab made

""" + MORE.format(section="The lab"),
    "live": """\
The filter is a pcap-filter expression (tcpdump syntax), given as trailing words or
--filter, matched against the packet as seen at ANY hop: "host 198.51.100.8" also keeps
the MASQUERADEd copy whose source is the host's address. NODE is a container name,
"host", a /run/netns name or netns:<inode>, as `hoptrace topology` prints them.
Faster than anyone reads (over ~1,000 paths/s), the TUI and text on a terminal show the
flow view instead: per flow paths and bytes/s, p50/p99 latency, its NAT, drops per reason
and hop; single paths again once it calms down. --json, -w and piped output get every path.

examples:
  hoptrace live                                          # the TUI: every path as it finishes
  hoptrace live -i host/docker0 -w out.pcapng icmp and host 198.51.100.8
  hoptrace live --json -c 10 tcp port 8080 > paths.ndjson
  hoptrace live --no-tui -n --rules                      # text, namespaces by number, NAT rules traced
  hoptrace live -r fixtures/internet-ping.pcapng --no-tui    # a recording instead of the kernel

""" + MORE.format(section="What you see"),
    "probe": """\
Sends one test packet (ICMP echo, TCP SYN or UDP datagram) from inside NODE's network
namespace and traces it: where it went, where it was rewritten, where and why it died.
Exit 0 when the target answered, 1 when not (dropped, rejected, no route, no reply).

examples:
  hoptrace probe --from client --to 198.51.100.8            # through MASQUERADE to inet
  hoptrace probe --from inet --to 203.0.113.2:8080          # a published port, DNATed to web
  hoptrace probe --from client --to 198.51.100.8:53 --proto udp --json
  hoptrace probe --from client --to 172.17.0.2 --rules      # the rule from a netfilter trace

""" + MORE.format(section="Debugging a connection"),
    "replay": """\
The live engine over pcap / pcapng files: a pcapng whose interfaces are named
NODE/IFACE (what `live -w` records), or single-interface files labelled --hop
NODE/IFACE=FILE. Files and filter words look alike: the filter goes after --.
fixtures/ in a clone of hoptrace holds recordings from the lab.

examples:
  hoptrace replay fixtures/internet-ping.pcapng                      # the TUI on a terminal
  hoptrace replay --no-tui fixtures/published-port.pcapng
  hoptrace replay --json fixtures/blocked.pcapng -- icmp and host 198.51.100.8
  hoptrace replay -n -v --no-tui fixtures/udp.pcapng                 # namespaces by number, more per hop
  hoptrace replay -q --no-tui fixtures/hairpin.pcapng                # one line per path

""" + MORE.format(section="Recording and analysis"),
    "report": """\
The replay engine summarised: paths by verdict and protocol, flows, NAT events
with packet counts, drops by reason, per-hop latency percentiles.

examples:
  hoptrace report fixtures/internet-ping.pcapng
  hoptrace report --format markdown fixtures/published-port.pcapng
  hoptrace report --format json fixtures/blocked.pcapng -- icmp
  hoptrace report fixtures/udp.pcapng fixtures/hairpin.pcapng

""" + MORE.format(section="Recording and analysis"),
    "topology": """\
The node names every other command takes (--from NODE, -i NODE/IFACE) come from here.

examples:
  hoptrace topology                   # a tree per namespace: interfaces, veth peers, bridges, routes, NAT
  hoptrace topology --json            # the same for scripts (shell completion reads node names from it)
  DOCKER_HOST=unix:///run/docker.sock hoptrace topology      # containers named by that dockerd

""" + MORE.format(section="Commands"),
    "doctor": """\
examples:
  hoptrace doctor                     # privileges, BTF, tracefs, bcc + headers, tools, backends
  hoptrace doctor --json              # the same for scripts
  hoptrace doctor && hoptrace live    # trace once doctor says a backend is usable

""" + MORE.format(section="Commands"),
    "cleanup": """\
Removes netfilter trace rules tagged by a hoptrace (live --rules, probe --rules)
whose process is gone, in every namespace. A running hoptrace's rules stay.

examples:
  hoptrace cleanup                    # after a run killed with SIGKILL
  hoptrace --debug cleanup            # with a traceback if something fails
  hoptrace cleanup && hoptrace doctor

""" + MORE.format(section="Debugging a connection"),
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


def _cpu_pct(text: str) -> float:
    """--max-cpu: percent of one core, 0 for no budget; a number of cores' worth at most."""
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 100 * (os.cpu_count() or 1):
        raise argparse.ArgumentTypeError(f"must be 0 (no budget) .. {100 * (os.cpu_count() or 1)}: {text!r}")
    return value


def _snaplen(text: str) -> int:
    """14..65535 bytes, or 0 (tcpdump's -s 0): the backend's maximum, chosen when it is known."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value != 0 and not 14 <= value <= SNAPLEN_MAX:  # an Ethernet header at least; a frame at most
        raise argparse.ArgumentTypeError(f"must be 14..65535, or 0 for the maximum: {text!r}")
    return value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs keep their lines (examples); help columns a little wider than argparse's 24."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _add_display_flags(p: argparse.ArgumentParser) -> None:
    """How paths are shown: shared by live and replay (and live -r)."""
    p.add_argument("--no-tui", action="store_true", help="print paths instead of opening the TUI")
    p.add_argument("--json", action="store_true", help="NDJSON, one object per line (implies --no-tui)")
    p.add_argument("--filter", metavar="EXPR",
                   help='pcap-filter expression matched at any hop (or give it as trailing words)')
    p.add_argument("-c", "--count", type=_positive_int, metavar="N",
                   help="stop after N paths (that the filter kept)")
    p.add_argument("-n", dest="numeric", action="store_true",
                   help="namespaces by number (netns:<inode>), not container names (text, TUI)")
    detail = p.add_mutually_exclusive_group()
    detail.add_argument("-q", dest="quiet", action="store_true", help="text: one line per path")
    detail.add_argument("-v", dest="verbose", action="count", default=0,
                        help="text: addresses, TTL, IP id, length per hop; -vv adds time and skb")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour verdicts and drops: auto = on a terminal unless NO_COLOR is set")
    p.add_argument("--keep", type=_positive_int, default=10_000, metavar="N",
                   help="TUI: keep the last N paths (default 10000)")


def _add_hop_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hop", action="append", default=[], metavar="NODE/IFACE=FILE",
                   help="a single-interface capture and the hop it was taken at; repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoptrace",
        description="Trace packets hop by hop through Docker networking, across NAT.",
        epilog=EPILOGS[""],
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"hoptrace {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also HOPTRACE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    def command(name: str, summary: str, usage: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                              epilog=EPILOGS[name], formatter_class=_Formatter, usage=usage)

    p = command("lab", "the embedded lab: a Docker bridge network in namespaces, and its scenarios")
    p.add_argument("action", choices=("up", "down", "status", "demo", "run"),
                   help="up: build it; down: remove it; status: what exists; demo: up, every "
                        "scenario traced, a report; run: one scenario")
    p.add_argument("scenario", nargs="?", help="with 'run': the scenario to run (e.g. internet-ping)")
    p.add_argument("--engine", choices=("docker", "netns"), default=None,
                   help="docker: a real dockerd; netns: plain namespaces (default: docker if installed)")
    p.add_argument("--userland-proxy", choices=("on", "off"), default=None,
                   help="with 'up'/'demo', docker engine: dockerd's --userland-proxy (default on, like "
                        "Docker: docker-proxy relays connections to published ports from the host and "
                        "from containers; off: hairpin DNAT). The netns engine has no docker-proxy")
    p.add_argument("--no-tui", action="store_true", help="with 'demo': text instead of the TUI")
    p.add_argument("--keep", action="store_true", help="with 'demo': leave the lab up afterwards")
    p.add_argument("--json", action="store_true", help="status and run results as JSON")

    p = command("live", "trace live from the kernel (eBPF) or AF_PACKET taps",
                usage="hoptrace live [options] [EXPR ...]")
    p.add_argument("expr", nargs="*", metavar="EXPR",
                   help="pcap-filter expression as words, like tcpdump (or --filter EXPR)")
    p.add_argument("--backend", choices=("auto", "ebpf", "pcap"), default="auto",
                   help="ebpf: raw tracepoints; pcap: AF_PACKET taps; auto: eBPF when it works")
    p.add_argument("-i", "--iface", action="append", default=[], metavar="NODE/IFACE",
                   help="trace this interface (NODE/IFACE or IFACE of the host); repeatable")
    p.add_argument("--duration", type=_positive_float, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("-w", "--record", metavar="FILE.pcapng",
                   help="also record every sighting to a pcapng (Wireshark opens it)")
    p.add_argument("--record-max-mb", type=_positive_int, metavar="N",
                   help="with -w: start a new file after N MB (FILE.1.pcapng, ...)")
    p.add_argument("--record-files", type=_positive_int, metavar="K",
                   help="with --record-max-mb: keep the last K files only")
    p.add_argument("--record-on-error", choices=("stop", "continue"), default="stop",
                   help="when the recording cannot be written (disk full): stop, or trace on")
    p.add_argument("--rules", action="store_true",
                   help="add a netfilter trace so each NAT event names its rule")
    p.add_argument("--ready-file", metavar="F",
                   help="create F once every probe/tap is attached (scripts wait for it)")
    p.add_argument("-s", "--snaplen", type=_snaplen, default=128, metavar="N",
                   help="bytes of each packet kept (default 128; 0: the most the backend can)")
    p.add_argument("--sample", type=_positive_int, default=1, metavar="N",
                   help="trace one packet in N, every hop of it (TCP SYN/FIN/RST, ICMP errors and a "
                        "ping's first echoes always); what is skipped is counted in the stats")
    p.add_argument("--max-cpu", type=_cpu_pct, default=DEFAULT_MAX_CPU, metavar="PCT",
                   help=f"CPU budget, in %% of one core (default {DEFAULT_MAX_CPU:g}; 0: none): over it "
                        "while packets flood in, sample more rather than fall behind")
    p.add_argument("--no-local", dest="local", action="store_false",
                   help="do not look up which process or socket took the packets that ended in a "
                        "namespace (sock_diag, /proc): no \"local\" in the output")
    p.add_argument("-r", dest="read", action="append", default=[], metavar="FILE",
                   help="replay this capture file instead of tracing live (as `hoptrace replay`)")
    _add_display_flags(p)

    p = command("probe", "send a test packet from a container and trace it")
    p.add_argument("--from", dest="from_node", required=True, metavar="NODE",
                   help="the node to send from: a container name or a node of `hoptrace topology`")
    p.add_argument("--to", dest="to", required=True, metavar="ADDR[:PORT]",
                   help="where to: an address, with a port for tcp/udp ([v6addr]:port)")
    p.add_argument("--proto", choices=("icmp", "tcp", "udp"), default=None,
                   help="default: tcp with a port, icmp without")
    p.add_argument("--count", type=_positive_int, default=1, metavar="N",
                   help="send N packets (default 1)")
    p.add_argument("--timeout", type=_positive_float, default=2.0, metavar="S",
                   help="wait S seconds for an answer (default 2)")
    p.add_argument("--backend", choices=("auto", "ebpf", "pcap"), default="auto",
                   help="how to trace it, as live --backend")
    p.add_argument("--rules", action="store_true",
                   help="name NAT rules from a netfilter trace instead of inferring them")
    p.add_argument("--json", action="store_true", help="NDJSON: the paths, a verdict, the stats")

    p = command("replay", "the live engine over pcap / pcapng files",
                usage="hoptrace replay [options] [FILE ...] [-- EXPR ...]")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="pcap or pcapng files (filter words go after --)")
    _add_hop_flag(p)
    _add_display_flags(p)

    p = command("report", "summary of paths, flows, NAT events, drops and latency of files",
                usage="hoptrace report [options] FILE ... [-- EXPR ...]")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="pcap or pcapng files (filter words go after --)")
    _add_hop_flag(p)
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                   help="text for people, json for scripts, markdown for a ticket")
    p.add_argument("--parquet", metavar="DIR",
                   help="also write observations/paths/nat as .parquet files in DIR")
    p.add_argument("--filter", metavar="EXPR",
                   help="pcap-filter expression matched at any hop (or after --)")

    p = command("topology", "namespaces, containers, veth peers, bridges, routes, NAT rules")
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")

    p = command("doctor", "what works here and which backends are usable")
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")

    command("cleanup", "remove trace rules an earlier, killed run left behind")
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


# Words that begin a pcap-filter expression and are unlikely names of capture files.
FILTER_KEYWORDS = frozenset((
    "host", "net", "port", "portrange", "src", "dst", "ether", "ip", "ip6", "arp", "rarp", "tcp",
    "udp", "icmp", "icmp6", "sctp", "vlan", "mpls", "not", "and", "or", "proto", "less", "greater",
    "gateway", "broadcast", "multicast", "inbound", "outbound", "len", "!", "(", ")"))


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word: the first word that is not one of the top-level options."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def parse_args(argv: Sequence[str] | None = None,
               parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``argv`` as the commands see it: filter words folded into ``args.filter``.

    Raises UsageError for a filter given twice or filter words where files belong; argparse's
    own errors exit 2 as usual.
    """
    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    words: list[str] = []
    if "--" in argv and _command_of(argv[: argv.index("--")]) in FILTER_WORDS:
        cut = argv.index("--")
        argv, words = argv[:cut], argv[cut + 1 :]
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "live" and not any(w.startswith("-") for w in extra):
            # tcpdump-like: options after the expression's first word (`live icmp -c 5 and ...`)
            args.expr += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "live":
        words = [*args.expr, *words]
    if args.command in ("replay", "report"):
        _files_not_words(args.command, args.files)
    if words:
        if getattr(args, "filter", None):
            where = "the words at the end" if args.command == "live" else "the words after --"
            raise UsageError("the filter is given twice: as --filter and as words",
                             f"give it one way: --filter 'EXPR' or {where}")
        args.filter = " ".join(words)
    return args


def _files_not_words(command: str, files: Sequence[str]) -> None:
    """`replay FILE host 1.2.3.4`: a tcpdump habit. A missing "file" that is a filter word
    is the filter without its ``--``: say so instead of "host: no such file"."""
    for i, name in enumerate(files):
        if name in FILTER_KEYWORDS and not Path(name).exists():
            fixed = " ".join([*files[:i], "--", *files[i:]])
            raise UsageError(f"{name!r} is not a capture file: a filter goes after --",
                             f"hoptrace {command} {fixed[:200]}")


def main(argv: Sequence[str] | None = None) -> int:
    debug = bool(os.environ.get("HOPTRACE_DEBUG")) or "--debug" in (argv if argv is not None
                                                                    else sys.argv[1:])
    try:
        args = parse_args(argv)
        debug = bool(args.debug or debug)
        if getattr(args, "json", False) and hasattr(args, "no_tui"):
            args.no_tui = True
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
    except BaseException as exc:
        # A panic in the Rust core arrives as pyo3's PanicException, a BaseException: a bug
        # of ours, reported as one line like any other internal error.
        if debug or type(exc).__name__ != "PanicException":
            raise
        print(f"hoptrace: internal error in the core: {term_safe(str(exc))} "
              "(run with --debug for details)", file=sys.stderr)
        return EXIT_PROBLEM


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["COMMANDS", "COMPLETE", "EPILOGS", "EXIT_USAGE", "build_parser", "main", "parse_args"]
