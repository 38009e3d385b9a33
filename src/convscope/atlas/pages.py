"""A static HTML atlas: ``index.html`` listing the layers, one page per layer, one card per channel.

Each card shows the channel's top-k image patches (receptive fields) in one row and the
projections of the same activations cropped to the same boxes in the row below, with the
activation values and image ids. Every card is one small PNG file in ``pages/img/`` loaded
with ``loading="lazy"``, so a page of 512 channels opens at once and fetches only what is on
screen. No script, no external resources: the folder works from a laptop's disk.

Example::

    write_pages(convscope.atlas.open("atlas"))   # -> atlas/pages/index.html
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from convscope.atlas.store import Atlas
from convscope.atlas.topk import EMPTY
from convscope.fileio import write_atomic
from convscope.render.png import to_png_bytes

_CSS = """
body{margin:0;font:14px/1.4 system-ui,sans-serif;background:#f5f6f8;color:#1f2328}
main{max-width:1400px;margin:0 auto;padding:16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{background:#fff;border:1px solid #e2e5e9;border-radius:8px;padding:8px;margin:0}
.card img{width:100%;height:auto;image-rendering:pixelated;display:block}
figcaption{font-size:12px;color:#5f6873;overflow-wrap:anywhere}
a{color:#0b62d6}
""".strip()


def _page(title: str, body: str) -> bytes:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>\n").encode()


def _projection_rgb(proj: np.ndarray) -> np.ndarray:
    """A cropped projection [3, S, S] as uint8 RGB: ``0.5 + 0.5 * p / max|p|`` (grey = 0)."""
    scale = float(np.abs(proj).max()) or 1.0
    rgb = np.clip(0.5 + 0.5 * np.moveaxis(proj, 0, -1) / scale, 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def card_image(patches: np.ndarray, projections: np.ndarray | None) -> np.ndarray:
    """One channel's strip: k patches in a row, their projections (if any) in a row below."""
    rows = [np.concatenate(list(patches), axis=1)]
    if projections is not None:
        rows.append(np.concatenate([_projection_rgb(p) for p in projections], axis=1))
    return np.concatenate(rows, axis=0)


def write_pages(atlas: Atlas, method: str = "deconvnet", weights: str | None = None) -> Path:
    """Write ``atlas.path/pages`` (index + one page per layer); returns the index path. ``weights``
    says what the model's weights are (:attr:`convscope.loaded.LoadedModel.weights`), on the index."""
    root = atlas.path / "pages"
    names = atlas.manifest.get("names", {})
    has_proj = method in atlas.manifest.get("methods", [])
    links = []
    for i, layer in enumerate(atlas.layers):
        acc, patches = atlas.topk(layer), atlas.patches(layer)
        proj = atlas.projections(layer, method) if has_proj else None
        cards, dead = [], 0
        for c in range(acc.channels):
            src = f"img/L{i}_c{c}.png"
            write_atomic(root / src, to_png_bytes(card_image(patches[c], None if proj is None else proj[c])))
            used = acc.images[c] != EMPTY
            caption = ", ".join(f"{v:.3g} @ {html.escape(names.get(str(int(n)), f'#{n}'))}"
                                for v, n in zip(acc.values[c][used], acc.images[c][used]))
            best = float(acc.values[c][used].max()) if used.any() else 0.0
            if best <= 0:  # no unit of the channel is positive on any image: its patches are ties, not evidence
                dead += 1
                caption = (f"<i>never fires on these {atlas.manifest['data']['count']} images</i> (strongest unit "
                           f"{best:.3g}): its patches are arbitrary")
            h, w = patches.shape[2] * (2 if proj is not None else 1), patches.shape[3] * patches.shape[1]
            cards.append(f'<figure class="card"><img src="{src}" loading="lazy" width="{w * 2}" height="{h * 2}" '
                         f'alt="channel {c}"><figcaption><b>channel {c}</b>: {caption}</figcaption></figure>')
        page = f"layer-{i}.html"
        each = "one per image" if atlas.manifest.get("per_image", False) else "several may share an image"
        body = (f'<p><a href="index.html">all layers</a> - top {atlas.k} patches per channel ({each})'
                f'{f", with their {html.escape(method)} projections below" if proj is not None else ""}.</p>'
                f'<div class="cards">{"".join(cards)}</div>')
        write_atomic(root / page, _page(f"{layer} - {acc.channels} channels", body))
        silent = f", {dead} never fire" if dead else ""
        links.append(f'<li><a href="{page}">{html.escape(layer)}</a> ({acc.channels} channels{silent})</li>')
    model = atlas.manifest["model"]
    said = f", weights: {html.escape(weights)}" if weights else ""
    body = (f"<p>Model {html.escape(str(model['name']))} ({model['hash']}{said}), data "
            f"{html.escape(str(atlas.manifest['data']['fingerprint']))}, k = {atlas.k}.</p><ul>{''.join(links)}</ul>")
    return write_atomic(root / "index.html", _page("convscope atlas", body))
