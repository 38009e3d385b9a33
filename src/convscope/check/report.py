"""``DIR/report.html`` of ``convscope check``: which map to trust, on one self-contained page.

Sections: a ranking table (each method's mean per metric, the best of each column in bold, an
arrow saying which way is better, and each method's mean rank over the metrics), the deletion /
insertion / perturbation curves, the cascading-randomisation figure in the style of Adebayo et
al. (maps of a few images as the layers are randomised from the top, then the similarity to the
trained model's maps per layer), the pointing game beside its centre baseline, and what did not
apply.

Example::

    write_report(Path("out"), json.loads(Path("out/results.json").read_text()), examples)
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from convscope.methods.base import display_kind
from convscope.methods.registry import get_method
from convscope.render import grid
from convscope.render.chart import line_chart
from convscope.render.display import heat
from convscope.render.html import Html, figure, html_page, save_html, table
from convscope.render.overlay import overlay


@dataclass(frozen=True)
class Examples:
    """Images ``pixels [n, H, W, 3]`` and, per method, their maps before and after each
    randomisation step (``maps[method][0]`` the trained model's): the randomisation figure."""

    pixels: np.ndarray
    maps: dict[str, list[Tensor]]

CURVES = {"deletion": ("fraction of pixels deleted", "p(class)"),
          "insertion": ("fraction of pixels inserted", "p(class)"),
          "region_perturbation": ("fraction of patches removed", "drop of p(class)"),
          "pixel_flipping": ("fraction of pixels flipped", "p(class)"),
          "road_morf": ("fraction removed (most relevant first)", "p(class)"),
          "road_lerf": ("fraction removed (least relevant first)", "p(class)")}


def _cell(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def ranking(state: dict[str, Any]) -> tuple[list[str], list[str], dict[str, float]]:
    """Methods ordered by their mean rank over the metrics (1 = best in a column), the metrics with
    values, and each method's mean rank."""
    means = state["methods"]
    metrics = [m for m in state["metrics"] if m not in state["skipped"]]
    ranks: dict[str, list[float]] = {name: [] for name in means}
    for metric in metrics:
        sign = -1 if state["metrics"][metric]["higher_is_better"] else 1
        scored = [(sign * v, name) for name, per in means.items() if (v := per.get(metric)) is not None]
        for place, (_, name) in enumerate(sorted(scored)):
            ranks[name].append(place + 1)
    mean_rank = {name: (sum(r) / len(r) if r else math.inf) for name, r in ranks.items()}
    return sorted(means, key=lambda n: mean_rank[n]), metrics, mean_rank


def ranking_table(state: dict[str, Any]) -> Html:
    """The ranking as a table: methods by mean rank, their mean per metric, the best of a column bold."""
    order, metrics, mean_rank = ranking(state)
    header = ["method", "mean rank"] + [f"{state['metrics'][m]['title']} {'↑' if state['metrics'][m]['higher_is_better'] else '↓'}"
                                        for m in metrics] + ["seconds"]
    rows, strong = [], set()
    for c, metric in enumerate(metrics):
        values = [(state["methods"][n].get(metric), r) for r, n in enumerate(order)]
        finite = [(v, r) for v, r in values if v is not None]
        if finite:
            best = (max if state["metrics"][metric]["higher_is_better"] else min)(finite)[0]
            strong |= {(r, c + 2) for v, r in finite if v == best}
    for name in order:
        rows.append([name, f"{mean_rank[name]:.1f}"] + [_cell(state["methods"][name].get(m)) for m in metrics]
                    + [f"{state['seconds'].get(name, 0.0):.1f}"])
    return table(header, rows, strong)


def _curves(state: dict[str, Any]) -> list[Any]:
    charts = []
    for metric, curves in state["curves"].items():
        x_label, y_label = CURVES.get(metric, ("fraction", "score"))
        fractions = curves["fractions"]
        series = {name: (fractions, values) for name, values in curves.items() if name != "fractions"}
        charts.append(line_chart(series, title=state["metrics"][metric]["title"].split(" AUC")[0].split(" AOPC")[0],
                                 x_label=x_label, y_label=y_label))
    return charts


def _randomisation(state: dict[str, Any], examples: Examples | None) -> list[Any]:
    r = state.get("randomisation") or {}
    layers = r.get("layers") or []
    if not layers:
        return []
    items: list[Any] = [
        "Cascading randomisation (Adebayo et al., 2018): the layers are re-initialised from the output down, "
        "one more per column, and each method's map is computed again. A map that explains the model should "
        "change; one that stays the same shows the image, not what the model learned."]
    if examples is not None:
        tiles, labels, row_labels = [], [], []
        for name, steps in examples.maps.items():
            kind = display_kind(get_method(name))
            for i in range(len(examples.pixels)):
                row_labels.append(f"{name} #{i}")
                for k, maps in enumerate(steps):
                    tiles.append(overlay(examples.pixels[i], heat(maps[i].numpy(), kind), alpha=0.6))
        labels = ["trained"] + [f"+ {layer}" for layer in layers]
        labels = labels * (len(tiles) // len(labels))
        sheet = grid(tiles, labels=labels, ncols=len(layers) + 1, row_labels=row_labels,
                     tile_size=(96, 96))
        items.append(figure(np.asarray(sheet), "maps as the layers are randomised (left: the trained model)", wide=True))
    ticks = [layer for layer in layers]
    for similarity, title in (("ssim", "SSIM to the trained model's map"),
                              ("spearman_abs", "rank correlation (absolute maps)")):
        series = {name: (list(range(len(layers))), [v if v is not None else math.nan for v in per[similarity]])
                  for name, per in r.items() if name != "layers" and similarity in per}
        if series:
            items.append(line_chart(series, title=title, x_label="randomised down to", y_label=similarity,
                                    x_ticks=ticks, width=420))
    return items


def _pointing(state: dict[str, Any]) -> list[Any]:
    names = [m for m in ("pointing_game", "pointing_game_strict") if m in state["metrics"] and m not in state["skipped"]]
    if not names:
        return []
    rows = [[name] + [_cell(state["methods"][name].get(m)) for m in names] for name in state["methods"]]
    rows.append(["centre baseline"] + [_cell(state["baselines"].get(m)) for m in names])
    return ["A hit: the map's maximum lies on the object (within 15 px at 224 px, scaled with the image; strict: "
            "on it). The centre baseline always points at the image centre: a method must beat it to show "
            "that it localises.", table(["method"] + [state["metrics"][m]["title"] for m in names], rows)]


def write_report(out: Path, state: dict[str, Any], examples: Examples | None) -> Path:
    """Write ``out/report.html`` from a run's state (results.json) and its randomisation examples."""
    images = state["images"]
    subtitle = (f"{state['model']['name']} ({state['model']['weights']}), {images['done']} of {images['total']} images "
                f"of {state['data']}, seed {state['seed']}; each image explained for the class the model predicts")
    notes = [f"{state['metrics'][m]['title']}: {reason}" for m, reason in state["skipped"].items()]
    costs = [f"{spec['title']}: {spec['cost']} per image" for spec in state["metrics"].values()]
    sections = [("Which map to trust", [ranking_table(state),
                                        "↑: higher is better, ↓: lower is better; bold: the best of a column; mean rank: "
                                        "the average place over the metrics (1 = first)."]),
                ("Faithfulness curves", _curves(state)),
                ("Sanity check: model randomisation", _randomisation(state, examples)),
                ("Pointing game", _pointing(state)),
                ("What each metric costs", costs),
                ("Not computed", notes)]
    page = html_page("Which map to trust", [(h, items) for h, items in sections if items], subtitle=subtitle)
    return save_html(out / "report.html", page)
