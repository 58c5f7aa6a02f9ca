"""hoptrace(1) and the bash / zsh completions, generated from the CLI's own parser.

``python -m tracer.manpage man|bash|zsh`` prints one; ``python -m tracer.manpage
--install PREFIX`` writes all three where man, bash-completion and zsh look
(``make install`` does it into ``.venv/share``)::

    PREFIX/share/man/man1/hoptrace.1
    PREFIX/share/bash-completion/completions/hoptrace
    PREFIX/share/zsh/site-functions/_hoptrace

Nothing here is written by hand per flag: a flag added to ``tracer.cli`` is in
all three the next time they are generated (tests check every flag is). Values
come from the parser (choices), ``tracer.cli.COMPLETE`` (files, nodes, scenarios)
and, at completion time, from ``hoptrace topology --json`` (node and interface
names: filtered to plain names, never evaluated by the shell).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tracer import __version__
from tracer.cli import COMMANDS, COMPLETE, build_parser

# --------------------------------------------------------------------- the parser, walked


@dataclass
class Flag:
    strings: list[str]  # "-i", "--iface"
    help: str
    metavar: str | None  # None: takes no value
    choices: list[str] = field(default_factory=list)
    complete: str | None = None  # COMPLETE's kind
    repeat: bool = False  # append / count


@dataclass
class Positional:
    name: str
    help: str
    many: bool
    choices: list[str] = field(default_factory=list)
    complete: str | None = None


@dataclass
class Command:
    name: str
    summary: str
    usage: str
    description: str
    epilog: str
    flags: list[Flag]
    positionals: list[Positional]


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": "hoptrace", "choices": action.choices}
    return text


def _flags_and_positionals(p: argparse.ArgumentParser, command: str) -> tuple[list[Flag], list[Positional]]:
    flags, positionals = [], []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            continue
        choices = [str(c) for c in a.choices] if a.choices else []
        kind = COMPLETE.get((command, a.dest))
        if a.option_strings:
            takes = a.nargs != 0
            metavar = (a.metavar if isinstance(a.metavar, str) else a.dest.upper()) if takes else None
            if takes and choices:
                metavar = "{" + ",".join(choices) + "}"
            flags.append(Flag(list(a.option_strings), _help(a), metavar, choices, kind,
                              isinstance(a, argparse._AppendAction | argparse._CountAction)))
        else:
            name = a.metavar if isinstance(a.metavar, str) else a.dest
            positionals.append(Positional(name, _help(a), a.nargs in ("*", "+"), choices, kind))
    return flags, positionals


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def walk(parser: argparse.ArgumentParser | None = None) -> tuple[Command, list[Command]]:
    """The top level and each command, in ``COMMANDS``' order."""
    parser = parser or build_parser()
    summaries = {}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            summaries = {c.dest: c.help or "" for c in a._choices_actions}
    flags, positionals = _flags_and_positionals(parser, "")
    top = Command("", parser.description or "", parser.format_usage(), parser.description or "",
                  parser.epilog or "", flags, positionals)
    commands = []
    subs = _subparsers(parser)
    for name in COMMANDS:
        p = subs[name]
        flags, positionals = _flags_and_positionals(p, name)
        commands.append(Command(name, summaries.get(name, ""), p.format_usage(), p.description or "",
                                p.epilog or "", flags, positionals))
    return top, commands


def scenario_names() -> list[str]:
    from tracer.lab.scenarios import SCENARIOS

    return list(SCENARIOS)


# --------------------------------------------------------------------- man page

ENVIRONMENT = [
    ("NO_COLOR", "when set and not empty, no colour (unless --color always); the TUI is monochrome."),
    ("DOCKER_HOST", "the Docker Engine API that names containers (the Docker SDK's usual variable)."),
    ("HOPTRACE_DEBUG", "when set, errors show their traceback, as --debug."),
    ("HOPTRACE_LAB_PREFIX", "the lab's name prefix (default hop), so several labs can exist side by side."),
]

EXIT_STATUS = [
    ("0", "success."),
    ("1", "the job ran but found a problem (probe: the packet was dropped or not answered)."),
    ("2", "bad usage or bad input: an unknown flag, an unreadable file, a bad filter."),
    ("3", "a missing privilege or kernel feature (root, BTF, bcc)."),
]


def _roff(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line starting with a control."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in text.split("\n"))


def _flag_roff(f: Flag) -> str:
    names = ", ".join(f"\\fB{_roff(s)}\\fR" for s in f.strings)
    return names + (f" \\fI{_roff(f.metavar)}\\fR" if f.metavar else "")


def _usage_line(usage: str) -> str:
    return " ".join(usage.replace("usage:", "", 1).split())


def manpage(parser: argparse.ArgumentParser | None = None, date: str | None = None) -> str:
    top, commands = walk(parser)
    date = date or time.strftime("%Y-%m-%d", time.gmtime())
    out = [
        f'.TH HOPTRACE 1 "{date}" "hoptrace {__version__}" "User Commands"',
        ".SH NAME",
        "hoptrace \\- " + _roff(top.description.rstrip(".").lower()[:1] + top.description.rstrip(".")[1:]),
        ".SH SYNOPSIS",
    ]
    for c in commands:
        out += [".PP", ".nf", _roff(_usage_line(c.usage)), ".fi"]
    out += [".SH DESCRIPTION", _roff(
        "hoptrace follows a packet from a container's eth0 across the host's veth, the docker0 "
        "bridge and the uplink, recognises it at every hop even after NAT rewrote it, and shows "
        "the whole path: where MASQUERADE or a published port rewrote it (rule and conntrack "
        "entry), and where and why it was dropped. Sources: eBPF raw tracepoints, AF_PACKET taps, "
        "pcap/pcapng files; sinks: a TUI, text, NDJSON, pcapng recordings, Parquet.")]
    out += [".SH OPTIONS"]
    for f in top.flags:
        out += [".TP", _flag_roff(f), _roff(f.help)]
    out += [".SH COMMANDS"]
    for c in commands:
        out += [f".SS {c.name}", _roff(c.description)]
        out += [".PP", ".nf", _roff(_usage_line(c.usage)), ".fi"]
        for pos in c.positionals:
            out += [".TP", f"\\fI{_roff(pos.name)}\\fR" + (" ..." if pos.many else ""), _roff(pos.help)]
            if pos.choices:
                out[-1] += _roff(" (one of: " + ", ".join(pos.choices) + ")")
        for f in c.flags:
            out += [".TP", _flag_roff(f), _roff(f.help)]
        if c.epilog:
            out += [".PP", ".nf", _roff(c.epilog.rstrip()), ".fi"]
    out += [".SH FILTER", _roff(
        "live takes a pcap-filter(7) expression as trailing words, like tcpdump; replay and "
        "report after \"--\" (their other words are files); all three also as --filter EXPR, "
        "but not both ways at once. It is matched against the packet as seen at any hop, so "
        "\"host 198.51.100.8\" also keeps the copy MASQUERADE rewrote.")]
    out += [".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        out += [".TP", f"\\fB{_roff(name)}\\fR", _roff(text)]
    out += [".SH EXIT STATUS"]
    for code, text in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", _roff(text)]
    out += [".SH FILES", ".TP", _roff("share/bash-completion/completions/hoptrace, "
                                      "share/zsh/site-functions/_hoptrace"),
            _roff("shell completion (installed by make install under .venv/; see README.md).")]
    out += [".SH SEE ALSO", "\\fBtcpdump\\fR(8), \\fBpcap-filter\\fR(7), \\fBwireshark\\fR(1), "
            "\\fBpwru\\fR(8); README.md and CONTRACT.md of hoptrace"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------- shared by both shells

# Reads `hoptrace topology --json` on stdin; prints node names ("node") or NODE/IFACE ("iface"),
# one a line, only names of safe characters (a name is anyone's to choose; a shell must never
# see one that could mean something to it).
TOPOLOGY_PY = r'''import json, re, sys
ok = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}\Z").match
try:
    d = json.load(sys.stdin)
except Exception:
    sys.exit(0)
out = set()
for ns in d.get("namespaces") or []:
    node = ns.get("node")
    if not (isinstance(node, str) and ok(node)):
        continue
    if sys.argv[1] == "node":
        out.add(node)
        continue
    for i in ns.get("interfaces") or []:
        name = i.get("name")
        if isinstance(name, str) and ok(name) and name != "lo":
            out.add(node + "/" + name)
print("\n".join(sorted(out)))'''


def _values(kind: str | None, choices: list[str]) -> tuple[str, list[str]]:
    """("words", [...]) static words, ("files"|"dirs"|"node"|"iface"|"hop", []) or ("none", [])."""
    if choices:
        return "words", choices
    if kind == "scenario":
        return "words", scenario_names()
    if kind == "file":
        return "files", []
    if kind == "dir":
        return "dirs", []
    if kind in ("node", "iface", "hop"):
        return kind, []
    return "none", []


_SAFE_WORD = re.compile(r"[A-Za-z0-9_.:/@+=,-]+\Z")


def _words(words: list[str]) -> str:
    for w in words:
        if not _SAFE_WORD.match(w):  # our own flags and choices: checked, so quoting stays trivial
            raise ValueError(f"not a plain word for a completion: {w!r}")
    return " ".join(words)


# --------------------------------------------------------------------- bash


def bash_completion(parser: argparse.ArgumentParser | None = None) -> str:
    top, commands = walk(parser)
    top_words = [s for f in top.flags for s in f.strings] + [c.name for c in commands]
    out = [
        "# bash completion for hoptrace; generated from its parser by `python -m tracer.manpage bash`.",
        "# Source it (`. .venv/share/bash-completion/completions/hoptrace`), or let bash-completion",
        "# find it in share/bash-completion/completions/.",
        "",
        "_hoptrace_topology() {  # $1: node | iface; names from `hoptrace topology --json`",
        '    "${words[0]}" topology --json 2>/dev/null | python3 -c \'' + TOPOLOGY_PY.replace("'", "'\\''")
        + '\' "$1" 2>/dev/null',
        "}",
        "",
        "_hoptrace_add() {  # candidates one a line on stdin; those starting with $cur",
        "    local w",
        "    while IFS= read -r w; do",
        '        [[ -n $w && $w == "$cur"* ]] && COMPREPLY+=("$w")',
        "    done",
        "}",
        "",
        "_hoptrace_value() {  # $1: how to complete a value",
        "    case $1 in",
        "        files) COMPREPLY=($(compgen -f -- \"$cur\")); compopt -o filenames 2>/dev/null ;;",
        "        dirs) COMPREPLY=($(compgen -d -- \"$cur\")); compopt -o filenames 2>/dev/null ;;",
        "        node) _hoptrace_add < <(_hoptrace_topology node) ;;",
        "        iface) _hoptrace_add < <(_hoptrace_topology iface) ;;",
        "        hop) if [[ $cur == *=* ]]; then",
        "                 local pre=${cur%%=*}=",
        "                 COMPREPLY=($(compgen -f -P \"$pre\" -- \"${cur#*=}\"))",
        "             else",
        "                 _hoptrace_add < <(_hoptrace_topology iface | sed 's/$/=/')",
        "                 compopt -o nospace 2>/dev/null",
        "             fi ;;",
        "    esac",
        "}",
        "",
        "_hoptrace() {",
        "    # Words split on blanks only: bash's own split also breaks at = and : (NODE/IFACE=FILE,",
        "    # netns:<inode>), and without the bash-completion package nothing would join them again.",
        "    local line=${COMP_LINE:0:COMP_POINT} cur prev cword",
        "    local -a words",
        "    read -ra words <<< \"$line\"",
        "    [[ $line == *[[:space:]] || ${#words[@]} -eq 0 ]] && words+=('')",
        "    cword=$(( ${#words[@]} - 1 ))",
        "    cur=${words[cword]} prev=${words[cword-1]}",
        "    COMPREPLY=()",
        "    _hoptrace_complete",
        "    # bash replaces only the part of the word after its last = or :",
        "    local pre=${cur%\"${cur##*[=:]}\"}",
        "    if [[ -n $pre && ${#COMPREPLY[@]} -gt 0 ]]; then COMPREPLY=(\"${COMPREPLY[@]#\"$pre\"}\"); fi",
        "    return 0",
        "}",
        "",
        "_hoptrace_complete() {",
        "    local cmd='' i=1",
        "    while (( i < cword )); do",
        "        case ${words[i]} in -*) ;; *) cmd=${words[i]}; break ;; esac",
        "        (( i++ ))",
        "    done",
        "    if [[ -z $cmd ]]; then",
        f'        COMPREPLY=($(compgen -W "{_words(top_words)}" -- "$cur"))',
        "        return",
        "    fi",
        "    # after `--`: a pcap-filter expression, nothing to offer",
        "    local j",
        "    for (( j = i + 1; j < cword; j++ )); do [[ ${words[j]} == -- ]] && return; done",
        "    case $cmd in",
    ]
    for c in commands:
        out.append(f"    {c.name})")
        valued = [f for f in c.flags if f.metavar]
        if valued:
            out.append("        case $prev in")
            for f in valued:
                how, words = _values(f.complete, f.choices)
                pat = "|".join(f.strings)
                if how == "words":
                    out.append(f'            {pat}) COMPREPLY=($(compgen -W "{_words(words)}" -- "$cur")); return ;;')
                elif how == "none":
                    out.append(f"            {pat}) return ;;  # {f.metavar}")
                else:
                    out.append(f"            {pat}) _hoptrace_value {how}; return ;;")
            out.append("        esac")
        flag_words = [s for f in c.flags for s in f.strings]
        out.append("        if [[ $cur == -* ]]; then")
        out.append(f'            COMPREPLY=($(compgen -W "{_words(flag_words)}" -- "$cur")); return')
        out.append("        fi")
        if c.positionals:
            # which positional: count the words after the command that are not flags or their values
            valued_pat = "|".join(s for f in valued for s in f.strings) or "--no-such-flag"
            out += [
                "        local n=0 k",
                "        for (( k = i + 1; k < cword; k++ )); do",
                f"            case ${{words[k]}} in {valued_pat}) (( k++ )) ;; -*) ;; *) (( n++ )) ;; esac",
                "        done",
                "        case $n in",
            ]
            for idx, pos in enumerate(c.positionals):
                how, words = _values(pos.complete, pos.choices)
                pat = f"{idx}" if not pos.many else "*"
                if how == "words":
                    out.append(f'            {pat}) COMPREPLY=($(compgen -W "{_words(words)}" -- "$cur")) ;;')
                elif how != "none":
                    out.append(f"            {pat}) _hoptrace_value {how} ;;")
                if pos.many:
                    break
            out.append("        esac")
        out.append("        ;;")
    out += ["    esac", "}", "", "complete -F _hoptrace hoptrace", ""]
    return "\n".join(out)


# --------------------------------------------------------------------- zsh


def _zq(text: str) -> str:
    """Text inside a single-quoted _arguments spec's [description] or message."""
    return (text.replace("\\", "\\\\").replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]")
            .replace(":", "\\:"))


def _zaction(how: str, words: list[str]) -> str:
    return {
        "words": f"({_words(words)})",
        "files": "_files",
        "dirs": "_files -/",
        "node": "_hoptrace_topology node",
        "iface": "_hoptrace_topology iface",
        "hop": "_hoptrace_hop",
        "none": " ",
    }[how]


def _zflag(f: Flag) -> list[str]:
    specs = []
    exclusive = f"({' '.join(f.strings)})" if len(f.strings) > 1 and not f.repeat else ""
    for s in f.strings:
        head = ("*" if f.repeat else "") + (exclusive if exclusive else "") + s
        spec = f"{head}[{_zq(f.help)}]"
        if f.metavar:
            how, words = _values(f.complete, f.choices)
            spec += f":{_zq(f.metavar)}:{_zaction(how, words)}"
        specs.append(f"'{spec}'")
    return specs


def zsh_completion(parser: argparse.ArgumentParser | None = None) -> str:
    top, commands = walk(parser)
    out = [
        "#compdef hoptrace",
        "# zsh completion for hoptrace; generated from its parser by `python -m tracer.manpage zsh`.",
        "# Put its directory on $fpath before compinit: fpath=(.venv/share/zsh/site-functions $fpath)",
        "",
        "_hoptrace_topology() {  # $1: node | iface; names from `hoptrace topology --json`",
        "    local -a names",
        "    names=(${(f)\"$(${words[1]} topology --json 2>/dev/null | python3 -c '"
        + TOPOLOGY_PY.replace("'", "'\\''") + "' $1 2>/dev/null)\"})",
        "    compadd -a names",
        "}",
        "",
        "_hoptrace_hop() {  # NODE/IFACE=FILE",
        "    if compset -P '*='; then",
        "        _files",
        "    else",
        "        local -a names",
        "        names=(${(f)\"$(${words[1]} topology --json 2>/dev/null | python3 -c '"
        + TOPOLOGY_PY.replace("'", "'\\''") + "' iface 2>/dev/null)\"})",
        "        compadd -S = -a names",
        "    fi",
        "}",
        "",
        "_hoptrace() {",
        "    local curcontext=$curcontext state line ret=1",
        "    local -a commands",
        "    commands=(",
    ]
    for c in commands:
        out.append(f"        '{c.name}:{_zq(c.summary)}'")
    out += [
        "    )",
        "    _arguments -C \\",
    ]
    for f in top.flags:
        for spec in _zflag(f):
            out.append(f"        {spec} \\")
    out += [
        "        '1:command:->command' \\",
        "        '*::argument:->argument' && ret=0",
        "    case $state in",
        "        command) _describe -t commands 'hoptrace command' commands && ret=0 ;;",
        "        argument)",
        "            case $words[1] in",
    ]
    for c in commands:
        out.append(f"                {c.name})")
        out.append("                    _arguments -S \\")
        for f in c.flags:
            for spec in _zflag(f):
                out.append(f"                        {spec} \\")
        for idx, pos in enumerate(c.positionals):
            how, words = _values(pos.complete, pos.choices)
            where = "*" if pos.many else str(idx + 1)
            out.append(f"                        '{where}:{_zq(pos.name)}:{_zaction(how, words)}' \\")
        out.append("                        && ret=0 ;;")
    out += [
        "            esac ;;",
        "    esac",
        "    return ret",
        "}",
        "",
        '_hoptrace "$@"',
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------- entry

TARGETS = {
    "man": ("share/man/man1/hoptrace.1", manpage),
    "bash": ("share/bash-completion/completions/hoptrace", bash_completion),
    "zsh": ("share/zsh/site-functions/_hoptrace", zsh_completion),
}


def install(prefix: str | Path) -> list[Path]:
    """Write the three files under ``prefix``; a file whose text is unchanged is left alone."""
    written = []
    for rel, make in TARGETS.values():
        path = Path(prefix) / rel
        text = make()
        if rel.endswith(".1"):
            # The date in .TH changes daily: compare without it, so a rerun writes nothing.
            old = path.read_text() if path.exists() else ""
            if old.split("\n", 1)[-1] == text.split("\n", 1)[-1]:
                continue
        elif path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def iter_flags(parser: argparse.ArgumentParser | None = None) -> Iterator[tuple[str, Flag]]:
    top, commands = walk(parser)
    for f in top.flags:
        yield "", f
    for c in commands:
        for f in c.flags:
            yield c.name, f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tracer.manpage",
                                description="hoptrace(1) and shell completions from the CLI's parser")
    p.add_argument("what", nargs="?", choices=sorted(TARGETS), help="print this one to stdout")
    p.add_argument("--install", metavar="PREFIX", help="write all three under PREFIX/share/...")
    args = p.parse_args(argv)
    if args.install:
        for path in install(args.install):
            print(f"wrote {path}")
        return 0
    if not args.what:
        p.error("say what to print (man, bash, zsh) or --install PREFIX")
    sys.stdout.write(TARGETS[args.what][1]())
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["Command", "Flag", "bash_completion", "install", "iter_flags", "main", "manpage", "walk",
           "zsh_completion"]
