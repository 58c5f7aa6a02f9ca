"""What a pcap-filter expression says, read without compiling it: one tokenizer, two readings.

libpcap (tracer/libpcap.py) compiles and judges; these readings only decide where a
filter may run besides the engine's own ``PathFilter``, each keeping a superset:

- ``protocol_only``: the same verdict at every hop of one packet (a tap's kernel filter);
- ``kernel_sets``: the protocols, addresses and ports every match must have (the eBPF
  probe's in-kernel filter).
"""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Any

# pcap's lexer takes its operators on their own, blanks or not ("tcp&&!udp"); anything
# else up to a blank or an operator is one word (a keyword, a number, an address, "tcp[13]").
_TOKEN = re.compile(r"\s*(&&|\|\||!=|[!()&|]|[^\s!()&|]+)")

PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58, "sctp": 132}


def tokens(expr: str) -> list[str]:
    """``expr``'s tokens, lower-cased (pcap keywords are case-blind); every non-blank
    character is in one of them."""
    return _TOKEN.findall(expr.lower())


# A kernel filter can drop a sighting only if the verdict is the same at every hop of
# that packet: NAT rewrites addresses and ports between hops, and a path is kept when
# ANY hop matches, so only protocol tests are safe in the kernel.
_PROTOCOL_WORDS = frozenset(
    ["ip", "ip6", "arp", "rarp", "icmp", "icmp6", "tcp", "udp", "sctp", "igmp", "proto", "and", "or", "not", "&&", "||", "!", "(", ")"]
)


def protocol_only(expr: str | None) -> bool:
    """True when ``expr`` gives the same verdict at every hop of one packet (protocol tests only)."""
    toks = tokens(expr or "")
    return bool(toks) and all(t in _PROTOCOL_WORDS or t.isdigit() for t in toks)


def kernel_sets(expr: str | None) -> tuple[frozenset[int], frozenset[str], frozenset[int]] | None:
    """(protocols, addresses, ports): what every packet ``expr`` keeps has one of, per
    non-empty set; None when nothing can be said.

    The result only ever has to be a superset of the expression (the whole expression
    still applies in userspace). The top level is read as conjuncts (``A and B and ...``);
    a conjunct made of terms of one kind — ``host A``, ``port N``,
    ``icmp``/``tcp``/``udp``/``icmp6``/``sctp`` (or ``proto X``) — joined by ``or`` becomes
    a set; any other conjunct (``not``, ``src``/``dst``, ``net``, ``or`` across kinds, ...)
    is left out, which keeps a superset. pcap's ``and``/``or`` have equal precedence and
    associate left: ``A and B or C`` is ``(A and B) or C``, so a top-level ``or`` after an
    ``and`` gives nothing at all.
    Example: ``udp and (port 53 or port 5353) and not host 10.0.0.1`` ->
    protocols {17}, ports {53, 5353}.
    """
    toks = tokens(expr or "")
    if not toks:
        return None
    groups: list[list[str]] = [[]]
    depth = 0
    seen_and = False
    for t in toks:
        if t == "(":
            depth += 1
        elif t == ")":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0 and t in ("and", "&&"):
            groups.append([])
            seen_and = True
            continue
        elif depth == 0 and t in ("or", "||") and seen_and:
            return None
        groups[-1].append(t)
    if depth != 0:
        return None
    protos: set[int] = set()
    addrs: set[str] = set()
    ports: set[int] = set()
    sets: dict[str, set[Any]] = {"proto": protos, "host": addrs, "port": ports}
    for g in groups:
        terms = [x for x in g if x not in ("(", ")")]
        if any(x in ("and", "&&") for x in terms):
            continue  # a nested conjunction: left out (superset)
        parsed = _or_terms(terms)
        if parsed is None:
            continue
        kind, values = parsed
        if sets[kind]:
            continue  # a second conjunct of one kind narrows further: the first is a superset
        sets[kind].update(values)
    if not (protos or addrs or ports):
        return None
    return frozenset(protos), frozenset(addrs), frozenset(ports)


def _or_terms(terms: list[str]) -> tuple[str, set[Any]] | None:
    items: list[list[str]] = [[]]
    for t in terms:
        if t in ("or", "||"):
            items.append([])
        else:
            items[-1].append(t)
    kind = None
    values: set[Any] = set()
    v: Any
    for it in items:
        if len(it) == 1 and it[0] in PROTO_NUMBERS:
            k, v = "proto", PROTO_NUMBERS[it[0]]
        elif len(it) == 2 and it[0] == "proto" and it[1] in PROTO_NUMBERS:
            k, v = "proto", PROTO_NUMBERS[it[1]]
        elif len(it) == 2 and it[0] == "host":
            try:
                v = str(ip_address(it[1]))
            except ValueError:
                return None
            k = "host"
        elif len(it) == 2 and it[0] == "port" and it[1].isdigit() and int(it[1]) < 65536:
            k, v = "port", int(it[1])
        else:
            return None
        if kind not in (None, k):
            return None
        kind = k
        values.add(v)
    if kind is None:
        return None
    return kind, values


__all__ = ["PROTO_NUMBERS", "kernel_sets", "protocol_only", "tokens"]
