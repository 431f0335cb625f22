"""Text from users is data, never markup: one escaper per place it ends up.

    from spurcli.text import csv_cell, html_text, mathtext, rich_text, terminal
    terminal("a\\x1b[2Jb")        # 'a\\\\x1b[2Jb': control characters shown, not obeyed
    rich_text("[red]x")          # '\\\\[red]x': rich prints it as typed
    csv_cell("=HYPERLINK(...)")  # "'=HYPERLINK(...)": a spreadsheet shows it, never runs it
    mathtext("$5 $x$")           # '\\\\$5 \\\\$x\\\\$': matplotlib draws dollars, not math
    html_text("שלום abc")        # '<bdi>שלום abc</bdi>': escaped, and its direction isolated
    html_attribute('a "b"')      # 'a &quot;b&quot;': for attribute values and <title>

Labels, prompts, file names, class nouns and folder names reach rich tables and log lines, the
terminal, CSV files opened in spreadsheets, matplotlib titles and the HTML report. Each sink has
its own special characters; the functions here are the only place that knows them.
"""

from __future__ import annotations

import html
import re
from typing import Any

# C0 and C1 control characters except tab, plus the bidi embeddings/overrides/isolates that
# reorder what a terminal shows (a file name could otherwise display as another name).
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets start a formula with (OWASP)


def terminal(text: Any) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\u202e``)."""

    def show(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(show, str(text))


def rich_text(text: Any) -> str:
    """``text`` for rich markup (tables, ``console.print``): escaped, control characters shown."""
    from rich.markup import escape

    return escape(terminal(text))


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: formula starts get a ``'`` (`csv_value` undoes it).

    A value that already starts with ``'`` gets one more too, so the round trip is exact.
    """
    if isinstance(value, str) and value.startswith((*_FORMULA, "'")):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The value `csv_cell` wrote."""
    return cell[1:] if cell.startswith("'") else cell


def mathtext(text: Any) -> str:
    """``text`` for a matplotlib label or title: a ``$`` is a dollar, not the start of math
    (control characters shown, as in the terminal: they would land raw in the SVG)."""
    return terminal(text).replace("$", r"\$")


def html_text(text: Any) -> str:
    """``text`` as HTML element content: escaped, and in ``<bdi>`` so that right-to-left text
    (or a stray override character) cannot reorder the text around it; control characters are
    shown as escapes (HTML has no use for them)."""
    return f"<bdi>{html_attribute(text)}</bdi>"


def html_attribute(text: Any) -> str:
    """``text`` for an HTML attribute value or ``<title>``: escaped, control characters shown."""
    return html.escape(terminal(text), quote=True)


def slugify(prompt: str, limit: int = 60) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-")
    return slug or "prompt"
