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
from pathlib import Path
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


def render_html(folder: Path, template: str, **context: Any) -> str:
    """A Jinja2 template as HTML: every value escaped (`html_attribute`'s rules) unless marked
    safe; ``|bdi`` puts user text in an isolating ``<bdi>`` (`html_text`)."""
    import jinja2

    def show(value: Any) -> Any:  # control characters shown, as everywhere else
        return (
            terminal(value) if isinstance(value, str) and not hasattr(value, "__html__") else value
        )

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,
        finalize=show,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["bdi"] = lambda text: markup(html_text(text))
    return env.get_template(template).render(**context)


def markup(html_fragment: str) -> Any:
    """An HTML fragment spurcli made itself (an SVG plot, a data URI): not escaped again."""
    import markupsafe

    return markupsafe.Markup(html_fragment)


def markdown_text(text: Any) -> str:
    """``text`` as Markdown inline text (mid-line, as every template puts it): the characters
    that start emphasis, code, links, HTML, entities or GFM table cells are backslash-escaped,
    control characters shown, lines joined (a value cannot start a heading or a list)."""
    flat = " ".join(terminal(text).split("\\x0a"))
    return re.sub(r"([\\`*_\[\]<>&|~])", r"\\\1", flat)


def markdown_code(text: Any) -> str:
    """``text`` as a Markdown code span: a fence longer than any backtick run inside (CommonMark),
    ``|`` escaped for GFM tables, control characters shown."""
    flat = " ".join(terminal(text).split("\\x0a")).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def render_markdown(folder: Path, template: str, **context: Any) -> str:
    """A Jinja2 template as Markdown: every value escaped by `markdown_text` unless it goes
    through ``|code`` (`markdown_code`) or ``|safe``."""
    import jinja2
    import markupsafe

    class Escaped(markupsafe.Markup):
        """Markdown already escaped (jinja2's autoescape machinery with Markdown's rules)."""

    def finalize(value: Any) -> Any:
        if isinstance(value, markupsafe.Markup) or not isinstance(value, str):
            return value
        return Escaped(markdown_text(value))

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=False,
        finalize=finalize,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["code"] = lambda text: markupsafe.Markup(markdown_code(text))
    return env.get_template(template).render(**context)
