"""Small builders for one self-contained HTML page: no scripts, no external files; images are
embedded as base64 PNG ``data:`` URIs, so the page opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:72em;margin:1.5em auto;
  padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
.note{color:#777;font-style:italic}
.w{margin:.5em 0;padding:.4em .6em;border:1px solid #e4e4e4;border-radius:5px;line-height:1.9}
.w .id{color:#888;font-size:.8em}
.out{white-space:pre-wrap;font-family:monospace;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:1em}.grid>div{flex:1 1 30em}
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def png_img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[Any]], *, numeric: Sequence[int] = (), cls: str = "") -> str:
    """An HTML table (``headers`` None: a key-value table without a header row); cells are
    escaped; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers or ())
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    c = f' class="{cls}"' if cls else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table{c}>{thead}<tbody>{''.join(body)}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole document: a title and (heading, HTML body) sections."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>",
    ]
    for heading, body in sections:
        slug = "".join(ch if ch.isalnum() else "-" for ch in heading.lower()).strip("-")
        parts.append(f'<section id="{slug}"><h2>{esc(heading)}</h2>{body}</section>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
