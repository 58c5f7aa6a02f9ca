"""tracer.safe_text: untrusted names made safe for a terminal and a markdown cell."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from tracer.safe_text import md_cell, source_text, term_safe

BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def unsafe(ch: str) -> bool:
    """What must never reach a terminal raw, decided independently of the module's regex."""
    code = ord(ch)
    return (unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")  # C0, DEL, C1; surrogates; U+2028/9
            or code in BIDI)


# Any code point, surrogates included (os.fsdecode and JSON can hand those over), biased
# towards the ranges that matter.
any_text = st.text(st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF),
    st.characters(min_codepoint=0, max_codepoint=0x9F),
    st.sampled_from([chr(c) for c in sorted(BIDI)] + ["\u2028", "\u2029", "\ud800", "\udcff"]),
))


def test_escapes_look_like_tcpdump() -> None:
    assert [term_safe(s) for s in (
        "\x1b[31mweb\x1b[0m/eth0\x1b]0;PWNED\x07",
        "host/veth\x1b[2J",
        "a\tb\nc\rd",
        "\x00\x7f\x85\x9b",
        "abc\u202egnp.exe",
        "\u2066x\u2069\u2028",
        "\udcff",
    )] == [
        "\\x1b[31mweb\\x1b[0m/eth0\\x1b]0;PWNED\\x07",
        "host/veth\\x1b[2J",
        "a\\tb\\nc\\rd",
        "\\x00\\x7f\\x85\\x9b",
        "abc\\u202egnp.exe",
        "\\u2066x\\u2069\\u2028",
        "\\udcff",
    ]


def test_printable_text_is_returned_as_is() -> None:
    for s in ("host/docker0", "web/eth0", "netns:4026532466", "été/ü", "容器/eth0", "a\\x1b", "[bold]"):
        assert term_safe(s) is s


@given(any_text)
def test_nothing_unsafe_survives(text: str) -> None:
    out = term_safe(text)
    assert [ch for ch in out if unsafe(ch)] == []
    # One control in, one visible escape out: the output's safe characters are the input's
    # safe ones in order, with the escapes in between.
    assert out.count("\\") == text.count("\\") + sum(unsafe(ch) for ch in text)


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF,
                             exclude_categories=("Cc", "Cs", "Zl", "Zp"))))
def test_safe_text_is_unchanged(text: str) -> None:
    if any(ord(ch) in BIDI for ch in text):
        return
    assert term_safe(text) == text
    assert source_text(text) == text


@given(any_text)
def test_markdown_cells_cannot_split_or_open_code(text: str) -> None:
    out = md_cell(text)
    assert [ch for ch in out if unsafe(ch)] == []
    # Every | and ` is preceded by the backslash that escapes it.
    assert [out[i - 1] if i else "" for i, ch in enumerate(out) if ch in "|`"] == [
        "\\" for ch in out if ch in "|`"]
    assert md_cell("a|b`c`") == "a\\|b\\`c\\`"


@given(any_text)
def test_source_text_replaces_only_surrogates(text: str) -> None:
    out = source_text(text)
    assert len(out) == len(text)
    assert [a if not 0xD800 <= ord(a) <= 0xDFFF else "\ufffd" for a in text] == list(out)
    out.encode("utf-8")  # always encodable now


def test_undecodable_file_name_bytes() -> None:
    import os

    name = os.fsdecode(b"ns\xff\x1b[2J")  # how /run/netns/<name> arrives
    assert (source_text(name), term_safe(source_text(name))) == ("ns\ufffd\x1b[2J", "ns\ufffd\\x1b[2J")
