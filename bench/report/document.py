"""One document model for the report, rendered to Markdown and to HTML.

A document is a list of blocks (:class:`Heading`, :class:`Paragraph`, :class:`Bullets`,
:class:`Table`, :class:`Figure`, :class:`Details`); :func:`to_markdown` and :func:`to_html` walk
the same list, so both files always say the same things in the same order. Prose may use two
inline marks, ```code``` and ``**bold**``. Neither file carries HTML from the text: the HTML is
escaped, and the Markdown is written so that no text renders as an HTML tag (strategy names,
labels and error messages come from users).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

from bench.report.model import PlotResult

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { color: #123; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef2f6; }
td:first-child, th:first-child { text-align: left; }
table.kv td, table.kv th { text-align: left; }
td { white-space: normal; }
.scroll { overflow-x: auto; }
.findings { background: #f6f8fa; border-left: 4px solid #3b6ea5; padding: 0.4em 1em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.skipped { color: #8a4b00; }
.note { color: #555; font-size: 0.9em; }
details > summary { cursor: pointer; font-weight: 600; margin: 1em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass
class Paragraph:
    text: str
    css_class: str | None = None  # "note" renders smaller; Markdown ignores it


@dataclass
class Bullets:
    items: list[str]
    css_class: str | None = None  # "findings" marks the verdict block


@dataclass
class Table:
    """A table of already formatted cells, rendered as Markdown or HTML."""

    headers: list[str]
    rows: list[list[str]]
    css_class: str = ""

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown (no ``tabulate`` dependency); pipes in cells escaped."""

        def cell(text: str) -> str:
            return inline_markdown(str(text).replace("\n", " ")).replace("|", "\\|")

        cells = [[cell(h) for h in self.headers]] + [[cell(c) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]

        def line(row: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])

    def to_html(self, css_class: str | None = None) -> str:
        """An escaped HTML table."""
        css_class = self.css_class if css_class is None else css_class
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "\n".join(
            "<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in row) + "</tr>"
            for row in self.rows
        )
        return (
            f'<div class="scroll"><table class="{css_class}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table></div>"
        )


def _cell_html(text) -> str:
    """An escaped cell; a mean and its interval (``25.95 ± 0.04``, ``[-0.02, +0.01]``) never
    break across lines when the browser wraps a cell to fit the table to the window."""
    text = html.escape(str(text)).replace(" ± ", "&nbsp;±&nbsp;")
    return re.sub(r"\[([^\]]*), ([^\]]*)\]", "[\\1,&nbsp;\\2]", text)


@dataclass
class Figure:
    plot: PlotResult


@dataclass
class Details:
    """A block folded away in HTML (``<details>``); in Markdown a section under ``summary`` as a
    heading of ``level``."""

    summary: str
    blocks: list = field(default_factory=list)
    level: int = 2


def inline_html(text: str) -> str:
    """Escape text, then render the only markup the report's prose uses: `code` and **bold**."""
    pieces = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))
    pieces = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(pieces))


# What makes ``<`` start raw HTML or an autolink in CommonMark: a tag name, ``/``, ``!`` or ``?``.
_MARKDOWN_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")
_MARKDOWN_ENTITY = re.compile(r"&(?=#?\w+;)")


def inline_markdown(text: str) -> str:
    """Text as Markdown that renders exactly like :func:`inline_html` and never as HTML.

    Code spans (between backticks, an unmatched one running to the end as in HTML) are kept
    verbatim: Markdown shows their content literally. Outside them ``<`` before a tag character
    becomes ``&lt;``, ``&`` before an entity name ``&amp;``, and backslashes are doubled, so that
    no backslash can escape a backtick and move where a code span begins or ends. An empty code
    span is dropped: its two backticks would open a span of another length.
    """
    pieces = str(text).split("`")
    if len(pieces) % 2 == 0:  # an unmatched backtick: close its code span at the end
        pieces.append("")
    out = []
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append(f"`{piece}`" if piece else "")
        else:
            piece = piece.replace("\\", "\\\\")
            out.append(_MARKDOWN_HTML_START.sub("&lt;", _MARKDOWN_ENTITY.sub("&amp;", piece)))
    return "".join(out)


def to_markdown(title: str, blocks: list) -> str:
    """The document as GitHub-flavoured Markdown (its text escaped: :func:`inline_markdown`)."""
    lines = [f"# {inline_markdown(title)}", ""]
    for block in blocks:
        lines += _markdown_block(block)
    return "\n".join(lines)


def _markdown_block(block) -> list[str]:
    md = inline_markdown
    if isinstance(block, Heading):
        return ["#" * block.level + " " + md(block.text), ""]
    if isinstance(block, Paragraph):
        return [md(block.text), ""]
    if isinstance(block, Bullets):
        return [f"- {md(item)}" for item in block.items] + [""]
    if isinstance(block, Table):
        return [block.to_markdown(), ""]
    if isinstance(block, Figure):
        plot = block.plot
        lines = [f"### {md(plot.title)}", ""]
        if plot.skipped:
            return lines + [f"*Skipped: {md(plot.skipped)}.*", ""]
        return lines + [
            f"![{md(plot.title)}]({plot.png.name})",
            "",
            f"{md(plot.caption)} ([SVG]({plot.svg.name}))",
            "",
        ]
    if isinstance(block, Details):
        lines = ["#" * block.level + " " + md(block.summary), ""]
        for inner in block.blocks:
            lines += _markdown_block(inner)
        return lines
    raise TypeError(f"unknown report block {block!r}")


def to_html(title: str, blocks: list) -> str:
    """The document as one self-contained HTML page (figures embedded as data URIs)."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"] + [_html_block(block) for block in blocks]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _html_block(block) -> str:
    esc = html.escape
    if isinstance(block, Heading):
        anchor = f' id="{esc(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{inline_html(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        css = f' class="{block.css_class}"' if block.css_class else ""
        return f"<p{css}>{inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        css = f' class="{block.css_class}"' if block.css_class else ""
        items = "".join(f"<li>{inline_html(item)}</li>" for item in block.items)
        return f"<ul{css}>{items}</ul>"
    if isinstance(block, Table):
        return block.to_html()
    if isinstance(block, Figure):
        plot = block.plot
        heading = f'<h3 id="{esc(plot.name)}">{esc(plot.title)}</h3>'
        if plot.skipped:
            return heading + f'<p class="skipped">Skipped: {esc(plot.skipped)}.</p>'
        data_uri = "data:image/png;base64," + base64.b64encode(plot.png.read_bytes()).decode()
        return heading + (
            f'<figure><img src="{data_uri}" alt="{esc(plot.title)}">'
            f"<figcaption>{esc(plot.caption)} "
            f'(<a href="{esc(plot.svg.name)}">SVG</a>, <a href="{esc(plot.png.name)}">PNG</a>)'
            "</figcaption></figure>"
        )
    if isinstance(block, Details):
        inner = "\n".join(_html_block(b) for b in block.blocks)
        return f"<details><summary>{inline_html(block.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown report block {block!r}")
