"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML file.

Blocks: ``("h1" | "h2" | "h3" | "p", text)``, ``("table", header, rows)``, ``("img", path, caption)``
and ``("list", items)``. The HTML embeds every image as a base64 data URI and carries its own CSS,
so ``report.html`` opens offline, attached to an e-mail or moved elsewhere.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

Block = tuple

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _inline_md(text: str) -> str:
    """``code`` and **bold** of the Markdown text, as HTML (everything else escaped)."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def to_markdown(blocks: list[Block], base: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in b[1]] + [""]
        elif kind == "table":
            header, rows = b[1], b[2]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]
        elif kind == "img":
            lines += [f"![{b[2]}]({Path(b[1]).relative_to(base).as_posix()})", ""]
    return "\n".join(lines)


def from_markdown(text: str, base: Path) -> list[Block]:
    """The blocks of Markdown written in this module's subset (headings, paragraphs, ``- `` lists,
    pipe tables, ``![caption](path)`` images relative to ``base``)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,3}) (.*)", line):
            blocks.append((f"h{len(m.group(1))}", m.group(2)))
            i += 1
        elif m := re.match(r"!\[(.*)\]\((.*)\)$", line.strip()):
            blocks.append(("img", base / m.group(2), m.group(1)))
            i += 1
        elif line.startswith("|"):
            table = []
            while i < len(lines) and lines[i].startswith("|"):
                table.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            blocks.append(("table", table[0], [r for r in table[2:]]))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(lines[i][2:])
                i += 1
            blocks.append(("list", items))
        else:
            blocks.append(("p", line))
            i += 1
    return blocks


def to_html(blocks: list[Block], title: str) -> str:
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>"
    ]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            anchor = re.sub(r"[^a-z0-9]+", "-", b[1].lower()).strip("-")
            parts.append(f"<{kind} id='{anchor}'>{_inline_md(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_md(h)}</th>" for h in b[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline_md(str(c))}</td>" for c in r) + "</tr>" for r in b[2]
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(b[2])}'>"
                f"<figcaption>{_inline_md(b[2])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
