"""HTML for Snakemake's report viewer: the summary and every table as pages it shows inline (Markdown is only a
download there). A small converter for the Markdown that ``sdn.report.summary`` writes: headings, paragraphs,
lists, pipe tables, images, ``code`` and **bold**; everything else is escaped text."""

from __future__ import annotations

import html
import re

import pandas as pd

STYLE = (
    "body{font-family:sans-serif;max-width:72em;margin:1em auto;line-height:1.4}"
    "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #bbb;padding:2px 6px;text-align:right}"
    "th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
)


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML page."""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def table_html(frame: pd.DataFrame, title: str) -> str:
    """One table as a page, numbers as in the Markdown tables (missing values as a dash)."""
    from sdn.report.summary import fmt

    shown = frame.astype(object).map(fmt) if len(frame.columns) else frame
    body = f"<h1>{html.escape(title)}</h1>\n" + shown.to_html(index=False, border=0, escape=True)
    return page(title, body)


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)
    text = re.sub(r"(?<!\w)_(\S(?:.*?\S)?)_(?!\w)", r"<em>\1</em>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_html(text: str) -> str:
    """The body HTML of ``text`` (the subset of Markdown the report writes)."""
    out: list[str] = []
    lines = text.splitlines()
    paragraph: list[str] = []
    index = 0

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    while index < len(lines):
        line = lines[index].rstrip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        image = re.match(r"^!\[([^\]]*)\]\(([^)]+)\)$", line.strip())
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            flush()
            alt, src = (html.escape(part) for part in image.groups())
            out.append(f'<p><img alt="{alt}" src="{src}"></p>')
        elif line.lstrip().startswith("|"):
            flush()
            rows = []
            while index < len(lines) and lines[index].lstrip().startswith("|"):
                rows.append(_cells(lines[index]))
                index += 1
            head, body = rows[0], [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead>")
            out.append(
                "<tbody>"
                + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                + "</tbody></table>"
            )
            continue
        elif re.match(r"^\s*[-*]\s+", line):
            flush()
            items = []
            while index < len(lines) and re.match(r"^\s*[-*]\s+", lines[index]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[index].rstrip()))
                index += 1
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
            continue
        else:
            paragraph.append(line.strip())
        index += 1
    flush()
    return "\n".join(out)
