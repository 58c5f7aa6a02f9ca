"""Untrusted text made safe for a terminal, and for a markdown table cell.

Names hoptrace prints come from places it does not control: interface names in a
capture file, namespace names under /run/netns, container names and labels, process
names (any process may rename itself), the hop metadata in a recording's comments.
Printed raw, an ESC starts a terminal control sequence (recolour, clear the screen,
OSC 0 sets the window title, OSC 52 the clipboard), a CR or NEL rewrites a line, a
bidi override reorders what follows. ``term_safe`` shows every such character as a
visible escape, the way tcpdump and Wireshark print them (``\\x1b``), and leaves any
other text as it is.

Every human-facing writer (text paths, flows and stats, report, topology, doctor,
probe, error lines, the TUI) passes each untrusted field through it; machine formats
(NDJSON, Parquet, recordings) keep names exact, since JSON escapes controls itself.

``source_text`` is for where names come in: it replaces what is not valid Unicode
(the surrogates ``os`` uses for undecodable bytes, a lone ``\\ud800`` from JSON) with
U+FFFD, as the capture readers do for invalid UTF-8, so a name can always be
encoded, printed and written as JSON.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls (NEL U+0085 and CSI U+009B among them), the
# bidirectional marks, embeddings, overrides and isolates, the Unicode line and
# paragraph separators, and surrogates (not text; they cannot even be encoded).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def term_safe(text: str) -> str:
    """``text`` with every control, DEL, bidi control and surrogate shown as an escape.

    ``"\\x1b[2J"`` -> ``"\\\\x1b[2J"`` (backslash, x, 1, b: four visible characters);
    tab, newline and CR as ``\\t``, ``\\n``, ``\\r``; U+202E as ``\\u202e``. Text
    without such characters comes back unchanged (and is not copied).
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


def md_cell(text: str) -> str:
    """``term_safe`` for a markdown table cell: ``|`` and backticks escaped as well.

    A ``|`` would end the cell and shift the columns; a backtick would open a code
    span that swallows the cell borders after it.
    """
    return term_safe(text).replace("|", "\\|").replace("`", "\\`")


def source_text(text: str) -> str:
    """A name as it comes in, with what is not valid Unicode replaced by U+FFFD.

    Kept exact otherwise: controls stay (NDJSON shows them escaped, the writers for
    people with ``term_safe``); only surrogates, which no encoder accepts, go.
    """
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


__all__ = ["md_cell", "source_text", "term_safe"]
