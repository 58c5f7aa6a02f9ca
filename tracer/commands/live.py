"""``hoptrace live``: trace live from the kernel (eBPF) or AF_PACKET taps.

Builds a source (probes.skb_hops.EbpfSource or tracer.sources.taps.TapSource), starts
it *before* the engine so that ``--ready-file`` is written only once every
probe/tap is attached, then drives tracer.engine into the TUI or a text /
NDJSON sink. SIGINT, SIGTERM and SIGHUP stop the engine (exit 0); the source is detached and
the recording flushed in ``finally``, and the sink's last line is the stats.

On stderr when it is a terminal, like tcpdump's "listening on ...": ``compiling probes…``
(or ``opening taps…``) before the source starts, and ``ready: N probes on M namespaces in
T s`` once everything is attached, when the ready file is written. ``-r FILE`` replays FILE instead (tracer.commands.replay).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracer.errors import HoptraceError, KernelFeatureMissing, PrivilegeError, UsageError
from tracer.protocols import Annotator, HasNotices, LiveSource, Recorder
from tracer.safe_text import term_safe

if TYPE_CHECKING:
    from probes.skb_hops import EbpfSource
    from tracer.annotate.local import LocalWorker
    from tracer.annotate.raw_sockets import RawSocketWatch
    from tracer.sources.taps import TapSource
    from tracer.topology import Topology

#: -s 0 (tcpdump's "the maximum"): per backend; eBPF's is probes.skb_hops.max_snaplen().
SNAPLEN_MAX = 65535


def _notice(msg: str) -> None:
    # Notices name interfaces and namespaces, which any process with the privilege may name.
    print(f"hoptrace: {term_safe(msg)}", file=sys.stderr, flush=True)


def _status(msg: str) -> None:
    """Start-up status for a person watching (compiling, ready): only when stderr is a
    terminal, so that a script's stderr holds nothing but warnings and the one error line
    (CONTRACT.md); scripts wait for --ready-file instead."""
    if sys.stderr.isatty():
        _notice(msg)


def make_ebpf_source(args: argparse.Namespace) -> EbpfSource:
    from probes.skb_hops import EbpfSource, kernel_filter_from_pcap, max_snaplen

    kf = kernel_filter_from_pcap(getattr(args, "filter", None))
    netns = _iface_netns(getattr(args, "iface", []) or [])
    return EbpfSource(snaplen=args.snaplen or max_snaplen(), netns=netns, kernel_filter=kf)


def _iface_netns(ifaces: list[str]) -> set[int] | None:
    """--iface NODE/IFACE with the eBPF backend: trace every interface of those nodes' namespaces.

    NODE is a node name (container, lab label, "host"), a /run/netns name, or
    "netns:<inode>" as hoptrace prints namespaces it cannot name.
    """
    if not ifaces:
        return None
    from tracer.sources.names import RUN_NETNS, NodeNamer, netns_inode

    known = NodeNamer().known()  # inode -> name
    out: set[int] = set()
    for spec in ifaces:
        node, iface = spec.split("/", 1) if "/" in spec else ("host", spec)
        if not valid_ifname(iface) or node in ("", ".", ".."):
            # checked, not just ignored: the eBPF backend traces the whole namespace anyway
            raise UsageError(f"--iface {spec[:80]!r}: not NODE/IFACE",
                             "IFACE is 1-15 bytes without '/', ':' or blanks; see `hoptrace topology`")
        inodes = {ino for ino, name in known.items() if name == node}
        if node.startswith("netns:") and node[6:].isdigit():
            inodes.add(int(node[6:]))
        elif (RUN_NETNS / node).exists():
            inodes.add(netns_inode(RUN_NETNS / node))
        if not inodes:
            raise UsageError(f"--iface {spec[:80]!r}: no network namespace named {node[:40]!r}",
                             "see `hoptrace topology` for node names")
        out |= inodes
    return out


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(): what it would accept as an interface name at all."""
    raw = name.encode("utf-8", "surrogateescape")
    return (0 < len(raw) < 16 and name not in (".", "..")
            and not any(c == "/" or c == ":" or c.isspace() or c == "\0" for c in name))


def _netns_paths(inodes: frozenset[int]) -> dict[int, str] | None:
    """inode -> path of the namespaces the source is limited to (eBPF with --iface), for --rules;
    None (RuleTrace's own choice) when it traces every namespace."""
    if not inodes:
        return None
    from tracer.sources.names import RUN_NETNS, netns_inode

    paths: dict[int, str] = {}
    candidates = [Path("/proc/self/ns/net"), *(sorted(RUN_NETNS.iterdir()) if RUN_NETNS.is_dir() else [])]
    for p in candidates:
        with contextlib.suppress(OSError):
            ino = netns_inode(p)
            if ino in inodes:
                paths.setdefault(ino, str(p))
    return paths


def make_pcap_source(args: argparse.Namespace) -> TapSource:
    from tracer.sources.taps import TapSource

    return TapSource(args.iface or None, bpf_filter=args.filter, snaplen=args.snaplen or SNAPLEN_MAX)


def choose_source(args: argparse.Namespace) -> LiveSource:
    """The started source for --backend; auto falls back to taps with one line saying why."""
    backend = args.backend
    src: LiveSource
    if backend == "pcap":
        src = make_pcap_source(args)
        src.start()
        return src
    if backend == "auto":
        from tracer.commands.doctor import check_ebpf

        ok, reason = check_ebpf()
        if not ok:
            _notice(f"eBPF backend unavailable ({reason}); using AF_PACKET taps")
            src = make_pcap_source(args)
            src.start()
            return src
    src = make_ebpf_source(args)
    try:
        src.start()
    except (KernelFeatureMissing, PrivilegeError) as exc:
        if backend != "auto":
            raise
        _notice(f"eBPF backend failed ({exc.message}); using AF_PACKET taps")
        src = make_pcap_source(args)
        src.start()
    return src


def _want_tui(args: argparse.Namespace) -> bool:
    return not (args.no_tui or args.json) and sys.stdout.isatty()


def _ready_line(source: LiveSource, t0: float) -> str:
    try:
        att = source.attachments()
    except Exception:  # a count is a courtesy: never fail a run over it
        return f"ready ({source.kind}) in {time.monotonic() - t0:.2f} s"
    n, what, namespaces = att.count, att.what, att.namespaces
    return (f"ready: {n} {what if n != 1 else what[:-1]} on {namespaces} "
            f"namespace{'s' if namespaces != 1 else ''} in {time.monotonic() - t0:.2f} s")


# live's flags that mean nothing when -r replays a file instead
_LIVE_ONLY = (("iface", "-i/--iface"), ("record", "-w/--record"), ("rules", "--rules"),
              ("ready_file", "--ready-file"), ("duration", "--duration"))


def _replay_instead(args: argparse.Namespace) -> int:
    """``live -r FILE``: tcpdump's -r, the recording instead of the kernel (tracer.commands.replay)."""
    for dest, flag in _LIVE_ONLY:
        if getattr(args, dest, None):
            raise UsageError(f"-r replays a file: {flag} means nothing there",
                             "drop it, or trace live without -r")
    if args.backend != "auto" or args.snaplen != 128:
        raise UsageError("-r replays a file: --backend and -s/--snaplen mean nothing there")
    if args.sample != 1:
        raise UsageError("-r replays a file: --sample means nothing there", "drop it, or trace live without -r")
    from tracer.commands import replay

    args.files, args.hop = list(args.read), []
    return replay.run(args)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "read", None):
        return _replay_instead(args)
    from tracer.pipeline import Discovery, PipelineConfig, build, compile_filter

    path_filter = compile_filter(args.filter)  # FilterError (exit 2) before anything is attached

    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        _status("opening taps…" if args.backend == "pcap" else "compiling probes…")
        # the topology and its annotator, discovered while the probes compile (Discovery)
        discovery = Discovery()
        stack.callback(discovery.close)
        source = choose_source(args)
        stack.callback(source.stop)
        from tracer.sampling import Sampler

        # before the ready file: what a script sends once it sees the file is sampled already
        sampler = Sampler(args.sample)
        sampler.attach(source)
        args.snaplen = int(source.snaplen or args.snaplen or SNAPLEN_MAX)

        rules = None
        if args.rules:
            from tracer.annotate.nftrace import RuleTrace

            # our own SIGINT/SIGTERM handling exits this context, which removes the rules
            rules = stack.enter_context(RuleTrace(namespaces=_netns_paths(source.traced_netns),
                                                  filter_expr=args.filter, handle_signals=False))
            for msg in rules.notices:
                _notice(msg)
        rec = None
        if args.record:
            from tracer.sinks.record import PcapngRecorder

            rec = PcapngRecorder(args.record, snaplen=args.snaplen, max_mb=args.record_max_mb,
                                 files=args.record_files, on_error=args.record_on_error)
            stack.callback(rec.close)

        # Attached: from here on the kernel buffers every sighting, and nothing reads them
        # until the pipeline runs below; the topology was discovered meanwhile (Discovery).
        stopper = _Stopper(source)
        stopper.cleanup = stack.close
        stack.callback(stopper.close)
        if args.ready_file:
            # whole or not at all: a script that sees the file may read it at once
            part = Path(f"{args.ready_file}.part")
            part.write_text(f"{os.getpid()} {source.kind}\n")
            os.replace(part, args.ready_file)
            stack.callback(_unlink, args.ready_file)
        _status(_ready_line(source, t0))
        if isinstance(source, HasNotices):
            for msg in source.notices:  # e.g. the probes fell back to a slower attach kind
                _notice(msg)

        attributor, topo = discovery.result(source)
        for msg in attributor.notices:
            _notice(msg)
        annotators: list[Annotator] = [attributor]
        if rules is not None:
            annotators.append(rules)
        local = _local_worker(topo) if getattr(args, "local", True) else None
        if local is not None:
            stack.callback(local.close)
        raw_sockets = _raw_socket_watch(source.kind)
        if raw_sockets is not None:
            stack.callback(raw_sockets.close)
        pipeline = build(PipelineConfig(source, source_started=True, path_filter=path_filter,
                                        annotators=tuple(annotators), recorder=rec, count=args.count,
                                        duration_s=args.duration, sampler=sampler,
                                        max_cpu_pct=args.max_cpu or None, local=local,
                                        raw_sockets=raw_sockets, nat_scope=attributor))
        stopper.attach(pipeline)
        if _want_tui(args):
            from tracer.sinks.output import tui_color
            from tui.app import make_app

            tui_color(args)
            app = make_app(pipeline.engine, keep=args.keep, backend_name=source.kind, filter_expr=args.filter,
                           topology=topo, recorder=rec, recorder_factory=_recorder_factory(args),
                           numeric=bool(getattr(args, "numeric", False)), flow_view=True)
            stopper.app = app
            app.run()
        else:
            from tracer.sinks.output import NdjsonSink, TextSink, text_options

            # On a terminal a flood shows as the flow view (tracer/flow_view.py); piped, every path.
            sink = (NdjsonSink(sys.stdout) if args.json
                    else TextSink(sys.stdout, text_options(args, sys.stdout), flow_view=sys.stdout.isatty()))
            pipeline.run([sink])
    sys.stdout.flush()
    return 0


def _local_worker(topo: Topology) -> LocalWorker:
    """Who took the packets that ended locally (tracer.annotate.local), looked up off the hot
    path; container names from the topology's Docker API, lab node names otherwise."""
    from tracer.annotate.relay import RelayLookup, RelayWorker, address_names
    from tracer.sources.names import NodeNamer

    namer = NodeNamer()
    containers = {c.netns: c.name for c in topo.containers if c.netns and c.name}
    # RelayLookup: also links the two legs of connections docker-proxy relayed (tracer.annotate.relay).
    return RelayWorker(RelayLookup(containers=lambda: containers, names=namer.known,
                                   addresses=address_names(topo.namespaces)))


def _raw_socket_watch(kind: str) -> RawSocketWatch | None:
    """Where raw ICMP sockets are open (tracer.annotate.raw_sockets), polled off the hot path:
    only the eBPF backend sees the NO_SOCKET frees it explains."""
    if kind != "ebpf":
        return None
    from tracer.annotate.raw_sockets import RawSocketWatch

    return RawSocketWatch()


def _recorder_factory(args: argparse.Namespace) -> Callable[[], Recorder]:
    """`r` in the TUI: record to ./hoptrace-<UTC time>.pcapng (tcpdump-like: where you are)."""
    from tracer.sinks.record import PcapngRecorder

    def make() -> Recorder:
        name = time.strftime("hoptrace-%Y%m%dT%H%M%SZ.pcapng", time.gmtime())
        return PcapngRecorder(name, snaplen=args.snaplen, on_error="continue")

    return make


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _Stopper:
    """SIGINT/SIGTERM/SIGHUP: the first stops the source, which hands over what the kernel had already
    seen and ends, so the engine finishes every path and prints the stats; a second one stops
    the engine at once. A signal before the engine exists is honoured when it does. A first
    signal the run does not honour in time is escalated (``_watchdog``)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.engine: Any = None
        self.app: Any = None  # the TUI, when it runs: a signal must end it too
        self.signals = 0
        self.cleanup: Callable[[], Any] = lambda: None  # what leaving after a stuck stop undoes
        self._timers: list[threading.Timer] = []
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
            # A closed terminal (SIGHUP) would otherwise end us before the recording is
            # flushed and the --rules trace rules are removed.
            signal.signal(signal.SIGHUP, self._on_signal)

    #: After a stop signal, the engine is stopped outright if the run has not ended this many
    #: seconds later, and the process exits if it still has not ended after the second.
    ESCALATE_S = (5.0, 12.0)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            self.source.stop()
            self._watchdog(signum)
        elif self.engine is not None:
            self.engine.stop()
        if self.app is not None:
            # The TUI owns the main thread's event loop. Stopping only the engine left it
            # running on a closed terminal (SIGHUP) at 100% CPU, probes attached, for good.
            # Leaving it ends run(), whose `finally` flushes the recording and removes rules.
            # Textual keeps the loop it runs on (None before and after): the way in from the
            # handler on the main thread and from the watchdog's thread alike.
            loop = getattr(self.app, "_loop", None)
            if loop is None:
                self.app.exit()
            else:
                loop.call_soon_threadsafe(self.app.exit)

    def attach(self, engine: Any) -> None:
        self.engine = engine
        if self.signals > 1:
            engine.stop()

    def _watchdog(self, signum: int) -> None:
        """A run that a signal asked to end must end even if something it waits on never
        returns (a closed terminal can leave the TUI's shutdown waiting on it): first act as a
        second signal; then, if the TUI still holds the process, undo what the run set up
        (``cleanup``: probes, trace rules, recording) and leave with 128+signum."""
        first, last = self.ESCALATE_S

        def leave() -> None:
            if self.app is None:
                return
            with contextlib.suppress(OSError):
                os.write(2, b"hoptrace: the TUI did not end after a stop signal; leaving\n")
            try:
                self.cleanup()
            finally:
                os._exit(128 + signum)

        for delay, act in ((first, lambda: self._on_signal(signum, None)), (last, leave)):
            timer = threading.Timer(delay, act)
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def close(self) -> None:
        """The run ended: no escalation after this."""
        for timer in self._timers:
            timer.cancel()


__all__ = ["HoptraceError", "choose_source", "run"]
