"""tracer.pcap_expr: the one tokenizer of pcap-filter expressions and its three readings."""

from __future__ import annotations

import pytest

from tracer.pcap_expr import kernel_sets, protocol_only, tokens


@pytest.mark.parametrize(("expr", "expected"), [
    ("tcp and port 80", ["tcp", "and", "port", "80"]),
    ("(TCP||udp)&&!icmp", ["(", "tcp", "||", "udp", ")", "&&", "!", "icmp"]),
    ("tcp[13] & 2 != 0", ["tcp[13]", "&", "2", "!=", "0"]),
    ("ip[9]==6|ip6", ["ip[9]==6", "|", "ip6"]),
    ("net 10.0.0.0/8 or host fe80::1", ["net", "10.0.0.0/8", "or", "host", "fe80::1"]),
    ("  ", []),
])  # fmt: skip
def test_tokens_as_pcaps_lexer_splits_operators(expr: str, expected: list[str]) -> None:
    assert tokens(expr) == expected


@pytest.mark.parametrize("expr", ["tcp[13] & 2 != 0", "a&b|c", "!!(x)  y", "ip[9]==6|ip6", "host\t1.2.3.4\n"])
def test_every_non_blank_character_is_in_a_token(expr: str) -> None:
    assert "".join(tokens(expr)) == "".join(expr.lower().split())


def test_protocol_only_and_kernel_sets_share_the_tokens() -> None:
    assert protocol_only("tcp||udp") is True
    assert kernel_sets("udp&&(port 53||port 5353)") == (frozenset({17}), frozenset(), frozenset({53, 5353}))
    assert kernel_sets("udp and !port 53") == (frozenset({17}), frozenset(), frozenset())
    assert kernel_sets("!udp") is None
    assert kernel_sets(None) is None
