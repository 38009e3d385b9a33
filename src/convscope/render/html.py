"""Self-contained HTML reports: PNGs embedded as base64 data URIs, no external files.

All text is escaped with :func:`html.escape`; only :class:`Html` values (what
:func:`img_tag` and :func:`figure` return) are inserted as markup.

Example::

    page = html_page("Grad-CAM on shapes-vgg", {
        "Inputs": [("circle", image), "Heat maps are normalised per image."],
        "More": [link("every channel", "atlas/pages/index.html", before="The atlas: ")],
        "Overlays": [figure(sheet, "layer features.8", wide=True)],
    })
    save_html("out/report.html", page)
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from convscope.errors import ConvscopeError
from convscope.fileio import write_atomic
from convscope.render.image import to_image_uint8
from convscope.render.png import to_png_bytes

PIXELATED_UP_TO = 128  # images this small (longest side) are drawn with crisp pixels

_CSS = """
:root { --bg: #f5f6f8; --card: #ffffff; --ink: #1f2328; --muted: #5f6873; --line: #e2e5e9; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #101217; --card: #181b21; --ink: #e6e8eb; --muted: #9aa3ad; --line: #2b3038; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 32px 24px 56px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; letter-spacing: -0.01em; }
.subtitle { color: var(--muted); margin: 0; }
section { margin-top: 36px; }
h2 { font-size: 1.1rem; margin: 0 0 14px; padding-bottom: 6px;
  border-bottom: 1px solid var(--line); }
.note { color: var(--muted); max-width: 75ch; margin: 0 0 14px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr));
  gap: 16px; margin-bottom: 14px; }
.card { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 10px; box-shadow: 0 1px 3px rgba(0, 0, 0, 0.06); }
.card img { display: block; width: 100%; height: auto; border-radius: 6px; }
.card.wide { grid-column: 1 / -1; }
.card.wide img { width: auto; max-width: 100%; margin: 0 auto; }
img.pixelated { image-rendering: pixelated; }
figcaption { margin-top: 8px; font-size: 0.85rem; color: var(--muted); text-align: center;
  overflow-wrap: anywhere; }
a { color: #0b62d6; }
@media (prefers-color-scheme: dark) { a { color: #6aa8ff; } }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; margin: 0 0 16px; font-size: 0.9rem; }
table.data th, table.data td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
table.data th:first-child, table.data td:first-child { text-align: left; }
footer { margin-top: 48px; color: var(--muted); font-size: 0.8rem; }
""".strip()


class Html(str):
    """Markup that is trusted: inserted into a page as is (plain ``str`` is escaped)."""


class Figure(Html):
    """A card made by :func:`figure`; consecutive figures share one grid on the page."""


Item = Any  # Html | str | (caption, image) | image


def img_tag(
    image: Any, alt: str = "", pixelated: bool | None = None, channel_axis: int | None = None
) -> Html:
    """An ``<img>`` with ``image`` embedded as a ``data:image/png;base64,`` URI.

    ``pixelated`` (default: longest side <= ``PIXELATED_UP_TO``) keeps small images crisp when
    the page scales them up. Example: ``img_tag(heat_rgb, alt="Grad-CAM")``.
    """
    pixels = to_image_uint8(image, channel_axis)
    height, width = pixels.shape[:2]
    if pixelated is None:
        pixelated = max(height, width) <= PIXELATED_UP_TO
    data = base64.b64encode(to_png_bytes(pixels)).decode("ascii")
    cls = ' class="pixelated"' if pixelated else ""
    return Html(
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'width="{width}" height="{height}"{cls}>'
    )


def figure(image: Any, caption: str = "", wide: bool = False, alt: str | None = None) -> Figure:
    """A card: the image and an escaped caption under it. ``wide`` cards span the whole row
    and show the image at its own size (for sheets made by :func:`convscope.render.grid`).
    """
    cls = "card wide" if wide else "card"
    caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    tag = img_tag(image, alt=caption if alt is None else alt)
    return Figure(f'<figure class="{cls}">{tag}{caption_html}</figure>')


def link(text: str, href: str | os.PathLike[str], *, before: str = "", after: str = "") -> Html:
    """A paragraph ``before <a href="href">text</a> after``, all text escaped.

    ``href`` must be relative to the page (a report folder can then be moved or served as a
    whole): a path such as ``Path("atlas/pages/index.html")`` (``os.sep`` becomes ``/``) or a
    relative URL; characters that a URL cannot hold are percent-encoded. An absolute path or a
    URL with a scheme or host raises. Example: ``link("all channels", "atlas/pages/index.html")``.
    """
    target = os.fspath(href).replace(os.sep, "/")
    parts = urlsplit(target)
    if not target or parts.scheme or parts.netloc or target.startswith("/"):
        raise ConvscopeError(f"link target {target!r} is not relative to the page",
                             "pass a path relative to the page's folder, e.g. Path('atlas/pages/index.html')")
    url = html.escape(quote(target, safe="/#?=&%"), quote=True)
    return Html(f'<p class="note">{html.escape(before)}<a href="{url}">{html.escape(text)}</a>'
                f"{html.escape(after)}</p>")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], strong: set[tuple[int, int]] = frozenset()) -> Html:
    """A plain table, every cell escaped; cells ``(row, column)`` in ``strong`` are bold.

    Example: ``table(["method", "AUC"], [["saliency", "0.31"]], strong={(0, 1)})``.
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{'<strong>' if (r, c) in strong else ''}{html.escape(cell)}"
                         f"{'</strong>' if (r, c) in strong else ''}</td>" for c, cell in enumerate(row)) + "</tr>"
        for r, row in enumerate(rows))
    return Html(f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
                f'</table></div>')


def html_page(
    title: str,
    sections: Mapping[str, Sequence[Item]] | Sequence[tuple[str, Sequence[Item]]],
    subtitle: str = "",
) -> str:
    """A complete HTML page: a header, then one ``<section>`` per ``(heading, items)``.

    Items, in order: :class:`Html` is inserted as is; a ``str`` becomes an escaped paragraph;
    a ``(caption, image)`` pair or a bare image becomes a :func:`figure`. Consecutive
    figures share one responsive grid of cards.
    """
    pairs = sections.items() if isinstance(sections, Mapping) else sections
    body = "\n".join(_section(heading, items) for heading, items in pairs)
    sub = f'<p class="subtitle">{html.escape(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n"
        f"<body>\n<main>\n<header><h1>{html.escape(title)}</h1>{sub}</header>\n"
        f"{body}\n<footer>Made with convscope.</footer>\n</main>\n</body>\n</html>\n"
    )


def save_html(path: str | os.PathLike[str], page: str) -> Path:
    """Write a page (UTF-8) atomically, creating parent directories; returns the path."""
    return write_atomic(path, page.encode("utf-8"))


def _section(heading: str, items: Sequence[Item]) -> str:
    parts: list[str] = []
    cards: list[str] = []
    for item in items:
        if isinstance(item, Figure):
            cards.append(item)
        elif isinstance(item, Html):
            _flush(cards, parts)
            parts.append(item)
        elif isinstance(item, str):
            _flush(cards, parts)
            parts.append(f'<p class="note">{html.escape(item)}</p>')
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            cards.append(figure(item[1], item[0]))
        else:
            cards.append(figure(item))
    _flush(cards, parts)
    inner = "\n".join(parts)
    return f"<section>\n<h2>{html.escape(heading)}</h2>\n{inner}\n</section>"


def _flush(cards: list[str], parts: list[str]) -> None:
    """Move pending cards into ``parts`` as one grid."""
    if cards:
        parts.append('<div class="grid">\n' + "\n".join(cards) + "\n</div>")
        cards.clear()
