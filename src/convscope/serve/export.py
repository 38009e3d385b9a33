"""``convscope serve --export DIR``: what the work folder holds, as a static site (no server, no script).

``index.html`` is the model view (layers, shapes, parameters, receptive fields) with links to one
page per layer that has an atlas or feature visualizations (a card per channel: its top-k patches
over their deconvnet projections, its feature visualization) and to ``maps.html``, every map the
server computed, grouped by image. Pictures are PNG files under ``img/``; links are relative and
the style sheet is the application's own, so the folder can be published as it is.

Example::

    export_site(Workspace(load_model("zoo:shapes-vgg"), "shapes:256", Path("convscope-serve")), Path("site"))
"""

from __future__ import annotations

import base64
import html
import shutil
from pathlib import Path

from convscope import render
from convscope.serve.workspace import Workspace, folder_name

STYLE = Path(__file__).parent / "static" / "app.css"


def _page(title: str, body: str) -> bytes:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html.escape(title) +
            "</title><link rel=\"stylesheet\" href=\"app.css\"></head><body><header><a id=\"brand\" "
            "href=\"index.html\">convscope</a></header><main>" + body + "</main></body></html>\n").encode()


def _img(src: str, alt: str, cls: str = "pix") -> str:
    return f'<img class="{cls}" src="{html.escape(src)}" alt="{html.escape(alt)}" loading="lazy">'


def export_site(ws: Workspace, out: Path) -> Path:
    """Write the site into ``out``; returns the path of its ``index.html``."""
    (out / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(STYLE, out / "app.css")
    info = ws.model_info()
    pages = {row["name"]: _layer_page(ws, row, out) for row in info["layers"] if row["channels"]}
    rows = "".join(
        f"<tr><td>{'&nbsp;' * 2 * (r['depth'] - 1)}"
        + (f'<a href="{pages[r["name"]]}">{html.escape(r["name"])}</a>' if pages.get(r["name"]) else html.escape(r["name"]))
        + f"</td><td>{html.escape(r['kind'])}</td><td class=num>{'×'.join(map(str, r['shape'] or [])) or '–'}</td>"
        f"<td class=num>{r['params']:,}</td><td class=num>"
        + (f"{r['field']['size']} px, stride {r['field']['stride']}" if r["field"] else "–") + "</td></tr>"
        for r in info["layers"])
    maps = _maps_page(ws, out)
    body = (f"<h1>{html.escape(info['name'])}</h1><p class=muted>{info['params']:,} parameters, input "
            f"{info['input']}×{info['input']}, weights: {html.escape(info['weights'])}</p>"
            + (f'<p><a href="{maps}">the maps computed</a></p>' if maps else "")
            + "<table><thead><tr><th>layer</th><th>type</th><th class=num>output</th><th class=num>params</th>"
            f"<th class=num>receptive field</th></tr></thead><tbody>{rows}</tbody></table>")
    return render.write_atomic(out / "index.html", _page(info["name"], body))


def _layer_page(ws: Workspace, row: dict, out: Path) -> str | None:
    """The page of one layer's channels, or None when nothing was computed for it."""
    layer = row["name"]
    atlas, rendered = ws.atlas(layer), ws.featurevis_done(layer)
    if atlas is None and not rendered:
        return None
    name = f"layer-{folder_name(layer)}.html"
    cards = []
    for c in range(row["channels"]):
        view = ws.channel_view(layer, c, None)
        parts = []
        for key, picture in (("atlas", (view["atlas"] or {}).get("png")), ("featurevis", view["featurevis"])):
            if picture:
                src = f"img/{folder_name(layer)}-c{c}-{key}.png"
                render.write_atomic(out / src, _decoded(picture))
                parts.append(_img(src, f"channel {c} {key}"))
        caption = ""
        if view["atlas"]:
            caption = ", ".join(f"{v:.3g} @ {html.escape(n)}" for v, n in zip(view["atlas"]["values"], view["atlas"]["images"]))
        cards.append(f'<figure class="box"><figcaption><b>channel {c}</b> {caption}</figcaption>{"".join(parts)}</figure>')
    body = (f'<p><a href="index.html">model</a> / {html.escape(layer)}</p><h1>{html.escape(layer)}: '
            f'{row["channels"]} channels</h1>' + (f"<p class=muted>top {atlas.k} patches in DATA over their deconvnet "
                                                  "projections</p>" if atlas else "") + "".join(cards))
    render.write_atomic(out / name, _page(layer, body))
    return name


def _maps_page(ws: Workspace, out: Path) -> str | None:
    by_image: dict[str, list[dict]] = {}
    for entry in ws.kept_maps():
        by_image.setdefault(entry["image"], []).append(entry)
    if not by_image:
        return None
    sections = []
    for image, found in by_image.items():
        figures = []
        for entry in found:
            src = f"img/map-{entry['file']}"
            shutil.copyfile(ws.work / "maps" / entry["file"], out / src)
            what = f"{entry['method']}, class {entry['target']}" + (f" at {entry['layer']}" if entry["layer"] else "")
            if entry.get("blank"):
                what += f" (blank: {entry['blank']})"
            if entry.get("scores"):
                scores = entry["scores"]
                what += f"; pointing game: {'hit' if scores['pointing_game'] else 'miss'}" + (
                    f", mass on the object: {100 * scores['mass_inside']:.0f}%" if scores["mass_inside"] is not None else "")
            figures.append(f'<figure class="box panel">{_img(src, what, "pix big")}<figcaption>{html.escape(what)}'
                           "</figcaption></figure>")
        sections.append(f"<h2>{html.escape(image)}</h2><div class=row>{''.join(figures)}</div>")
    render.write_atomic(out / "maps.html", _page("maps", '<p><a href="index.html">model</a> / maps</p><h1>Maps</h1>'
                                                 + "".join(sections)))
    return "maps.html"


def _decoded(url: str) -> bytes:
    return base64.b64decode(url.split(",", 1)[1])
