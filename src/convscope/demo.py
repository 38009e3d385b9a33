"""``convscope demo``: the main job on the built-in default, as one self-contained HTML report.

It loads (training on first use) ``zoo:shapes-vgg``, takes one held-out Shapes image per class,
and writes ``index.html`` (PNGs embedded) plus the same pictures as PNG files. Each section is a
function of the :class:`DemoContext`; a section that a feature does not yet provide is skipped.

Example::

    path = run_demo(Path("convscope-demo"))   # -> convscope-demo/index.html
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from convscope import render
from convscope.images import Preprocess

Item = Any  # render.html items: text, Html, (caption, image) pairs


@dataclass
class DemoContext:
    """Everything a section needs: the model, the images (tensor and pixels), labels, output folder."""

    model: nn.Module
    preprocess: Preprocess
    x: torch.Tensor
    pixels: np.ndarray
    labels: list[int]
    class_names: list[str]
    out: Path
    masks: np.ndarray
    pngs: list[Path] = field(default_factory=list)
    loaded: Any = None  # the LoadedModel (name and weights, for the sections that record them)

    def save(self, name: str, image: np.ndarray, caption: str, *scale: np.ndarray) -> render.Figure:
        """Write ``image`` (with the colour bars ``scale`` centred under it) as ``out/name.png`` and
        return it as a full-width figure for the page."""
        if scale:
            image = render.stack([image, *scale], gap=6)
        self.pngs.append(render.save_png(self.out / f"{name}.png", image))
        return render.figure(image, caption, wide=True)


Section = Callable[[DemoContext], "tuple[str, list[Item]] | None"]


def _pick_images(n: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The first held-out images of each class in turn (seed 2 = the zoo's validation seed)."""
    from convscope.data import CLASSES, Shapes

    pool = Shapes(20 * n + 60, seed=seed)
    images, masks, labels = pool.arrays()
    chosen: list[int] = []
    for want in range(n):
        cls = want % len(CLASSES)
        chosen.append(next(i for i in range(len(labels)) if labels[i] == cls and i not in chosen))
    return images[chosen], masks[chosen], [int(labels[i]) for i in chosen]


def section_predictions(ctx: DemoContext) -> tuple[str, list[Item]]:
    with torch.no_grad():
        probs = torch.softmax(ctx.model(ctx.x), dim=1)
    captions = []
    for i, label in enumerate(ctx.labels):
        p, k = probs[i].max(0)
        mark = "" if int(k) == label else "  (wrong)"
        captions.append(f"{ctx.class_names[label]} -> {ctx.class_names[int(k)]} {float(p):.0%}{mark}")
    sheet = ctx.save("predictions", render.grid(list(ctx.pixels), labels=captions, ncols=len(captions),
                                                tile_size=(160, 160), interpolation="nearest"), "predictions")
    outlines = [render.overlay(px, m.astype(np.float32), alpha=0.45, cmap="inferno") for px, m in zip(ctx.pixels, ctx.masks)]
    masks = ctx.save("masks", render.grid(outlines, labels=[ctx.class_names[y] for y in ctx.labels], ncols=len(outlines),
                                          tile_size=(160, 160), interpolation="nearest"),
                     "ground-truth object masks (used to score localisation)")
    return "Predictions", [
        "Held-out Shapes images (never seen in training): true class -> predicted class and probability.",
        sheet,
        masks,
    ]


def section_activations(ctx: DemoContext) -> tuple[str, list[Item]]:
    relus = [(name, m) for name, m in ctx.model.named_modules() if isinstance(m, nn.ReLU) and name.startswith("features")]
    captured: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach().clone()))
               for name, m in relus]
    try:
        with torch.no_grad():
            ctx.model(ctx.x[:1])
    finally:
        for h in handles:
            h.remove()
    items: list[Item] = ["Feature maps of the first image after each ReLU (first 16 channels, each scaled to its own maximum)."]
    for name, acts in captured.items():
        maps = [render.apply_colormap(render.normalize(a.numpy(), mode="positive"), "viridis") for a in acts[0, :16]]
        sheet = render.grid(maps, labels=[f"ch {c}" for c in range(len(maps))], ncols=8, tile_size=(96, 96),
                            interpolation="nearest")
        items.append(ctx.save(f"activations-{name}", sheet, f"{name}: {tuple(acts.shape[1:])}",
                              render.colorbar("viridis", "0", "the channel's maximum", title="activation")))
    return "Layer activations", items


def section_unpooling(ctx: DemoContext) -> tuple[str, list[Item]] | None:
    try:
        from convscope.ops import max_pool_with_switches, unpool
    except ImportError:
        return None
    pool = next(m for m in ctx.model.features if isinstance(m, nn.MaxPool2d))
    with torch.no_grad():
        acts = ctx.model.features[:2](ctx.x[:1])
        pooled, switches = max_pool_with_switches(acts, pool.kernel_size, pool.stride, pool.padding)
        back = unpool(pooled, switches)
    tiles, labels = [], []
    for c in range(4):
        for what, t in (("activation", acts), ("pooled", pooled), ("unpooled", back)):
            tiles.append(render.apply_colormap(render.normalize(t[0, c].numpy(), mode="positive"), "inferno"))
            labels.append(f"ch {c} {what}")
    sheet = ctx.save("unpooling", render.grid(tiles, labels=labels, ncols=6, tile_size=(160, 160),
                                              interpolation="nearest"), "switch unpooling",
                     render.colorbar("inferno", "0", "the channel's maximum", title="activation"))
    return "Max-pool switches and unpooling", [
        "The first block's activation, its 2x2 max-pool, and the pooled values put back at the argmax "
        "switches (convscope.ops.unpool): the deconvnet's way back through a pooling layer.",
        sheet,
    ]


_KIND_TEXT = {
    "magnitude": "Gradient-based maps: |attribution| summed over colour, each map scaled to its own 99.5th percentile.",
    "positive": "Maps of the evidence for the class (the CAM family's ReLU'd maps, occlusion's score drop): the "
                "positive part, each map scaled to its own 99.5th percentile; zero or less is black.",
    "relative": "Maps whose values all sit near one level (RISE's: the expected score with a pixel kept, near the "
                "mean score everywhere, so a scale from 0 would show a flat map): each map is shown from its own "
                "lowest to its highest value, i.e. where keeping the pixel helps the score more than elsewhere.",
}


def section_methods(ctx: DemoContext) -> tuple[str, list[Item]] | None:
    try:
        from convscope.methods import registry
    except ImportError:
        return None
    from convscope.methods import AugSmooth, GradCAM, display_kind

    predicted = ctx.model(ctx.x).argmax(1).tolist()
    runs = registry.applicable(ctx.model)  # attention rollout only on a transformer
    builders = {name: spec.cls for name, spec in registry.methods().items()
                if name in runs or not spec.cls.needs_attention}
    builders |= {"grad_cam+eigen_smooth": lambda m: GradCAM(m, eigen_smooth=True),
                 "grad_cam+aug_smooth": lambda m: AugSmooth(GradCAM(m))}
    rows: dict[str, list[tuple[str, list[np.ndarray]]]] = {}  # display kind -> (method, overlays)
    for name, build in tqdm(builders.items(), desc="demo: attribution methods", leave=False):
        method = build(ctx.model)
        kind = display_kind(method)
        maps = method.attribute(ctx.x, target=predicted)
        rows.setdefault(kind, []).append(
            (name, [render.overlay(px, render.heat(m, kind), alpha=0.6) for px, m in zip(ctx.pixels, maps)]))
    items: list[Item] = [
        "Every registered method explaining the predicted class of each image (rows: methods; under each "
        "picture: the predicted class), then Grad-CAM with eigen_smooth and with AugSmooth (mirrored and "
        "rescaled inputs). Each method declares how its maps are shown; one sheet per kind, its colour scale "
        "under it."]
    for kind in render.DISPLAY_KINDS:
        if kind not in rows:
            continue
        names = [name for name, _ in rows[kind]]
        tiles = [tile for _, overlays in rows[kind] for tile in overlays]
        sheet = render.grid(tiles, labels=[ctx.class_names[p] for _ in names for p in predicted],
                            row_labels=names, ncols=len(ctx.labels), tile_size=(160, 160), interpolation="nearest")
        d = render.DISPLAYS[kind]
        items += [_KIND_TEXT.get(kind, d.meaning),
                  ctx.save(f"methods-{kind}", sheet, f"{kind} maps: {', '.join(names)}",
                           render.colorbar("inferno", d.low, d.high, title=d.meaning))]
    items += _conservation_items(ctx, predicted[0])
    return "Attribution methods", items


def _conservation_items(ctx: DemoContext, target: int) -> list[Item]:
    """LRP's conservation report on the first image: how much of the score each layer's relevance holds."""
    from convscope.methods.lrp import conservation

    report = conservation(ctx.model, ctx.x[:1], target, composite="epsilon_plus_flat")
    return ["LRP conserves relevance layer by layer up to what biases and stabilisers absorb: the share of the "
            "score held at every cut of the model (the first image, its predicted class; a convolution folded into "
            "its batch norm holds none of its own).",
            ctx.save("lrp-conservation", report.picture(), "LRP (epsilon_plus_flat): relevance / score, per layer")]


def section_projections(ctx: DemoContext) -> tuple[str, list[Item]] | None:
    try:
        from convscope.projection import project
    except ImportError:
        return None
    items: list[Item] = ["Zeiler-Fergus deconvnet projections: for the 8 strongest channels of a layer on the first "
                         "image, the image patch under each channel's strongest unit and that unit's projection back to "
                         "pixels (grey = 0), cropped to where the projection is non-zero."]
    relus = [name for name, m in ctx.model.named_modules() if isinstance(m, nn.ReLU) and name.startswith("features")]
    for layer in relus[-2:]:
        with torch.no_grad():
            acts = _capture(ctx.model, layer, ctx.x[:1])
        top = acts[0].amax(dim=(1, 2)).topk(8).indices.tolist()
        tiles, labels = [], []
        result = project(ctx.model, ctx.x[:1], layer=layer, channel=top, rule="deconvnet")  # one forward pass
        for j, c in enumerate(top):
            proj = result.maps[0, j, 0].detach().numpy()
            box = _support_box(proj)
            tiles += [ctx.pixels[0][box], _signed_rgb(proj)[box]]
            labels += [f"ch {c} patch", f"ch {c} deconv"]
        sheet = render.grid(tiles, labels=labels, ncols=8, tile_size=(128, 128), interpolation="nearest")
        items.append(ctx.save(f"deconv-{layer}", sheet, f"{layer}: top-8 channels"))
    return "Deconvnet projections", items


def section_atlas(ctx: DemoContext) -> tuple[str, list[Item]] | None:
    try:
        from convscope.atlas import build_atlas, write_pages
    except ImportError:
        return None
    layer, n_images = "features.7", 1000
    atlas = build_atlas(ctx.model, f"shapes:{n_images}", [layer], out=ctx.out / "atlas", k=9,
                        preprocess=ctx.preprocess, progress=True, model_name="zoo:shapes-vgg")
    index = write_pages(atlas)
    acc = atlas.topk(layer)
    strongest = np.argsort(-acc.values[:, 0], kind="stable")[:6]
    items: list[Item] = [
        f"For each channel of {layer}, the {atlas.k} of {n_images} Shapes images that excite it most (top row: the "
        "image patch under the unit's receptive field, with the activation) and the deconvnet projection of that "
        "single activation (bottom row; grey = 0). The six channels with the strongest activations are shown.",
        render.link("atlas/pages/index.html", index.relative_to(ctx.out),
                    before=f"All {acc.channels} channels of {layer}, one card each, are in the atlas pages: ",
                    after=" (keep the atlas folder beside this report)."),
    ]
    projections, patches = atlas.projections(layer), atlas.patches(layer)
    for c in strongest.tolist():
        items.append(ctx.save(f"atlas-{layer}-c{c}", _atlas_card(patches[c], projections[c], acc.values[c]),
                              f"{layer} channel {c}: top activation {acc.values[c, 0]:.3g}"))
    return f"Dataset atlas ({layer}, {n_images} images)", items


def _atlas_card(patches: np.ndarray, projections: np.ndarray, values: np.ndarray, tile: int = 56) -> np.ndarray:
    """One channel's top patches (HWC uint8) over their projections (CHW), ``tile`` px each, labelled."""
    k = len(patches)
    tiles = list(patches) + [_signed_rgb(p) for p in projections]
    labels = [f"{v:.3g}" for v in values[:k]] + [""] * k
    return render.grid(tiles, labels=labels, row_labels=["patch", "deconv"], ncols=k, tile_size=(tile, tile),
                       interpolation="nearest")


def _support_box(proj: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """Rows/columns where a CHW projection is non-zero (plus ``margin``), as HWC slices."""
    energy = np.abs(proj).sum(axis=0)
    rows, cols = np.nonzero(energy > 1e-6 * max(float(energy.max()), 1e-30))
    if len(rows) == 0:
        return slice(None), slice(None)
    h, w = energy.shape
    return (slice(max(rows.min() - margin, 0), min(rows.max() + margin + 1, h)),
            slice(max(cols.min() - margin, 0), min(cols.max() + margin + 1, w)))


def _signed_rgb(proj: np.ndarray) -> np.ndarray:
    """A CHW projection as an HWC image in [0, 1]: ``0.5 + p / (2 max|p|)``, so grey is zero."""
    scale = float(np.abs(proj).max()) or 1.0
    return np.clip(0.5 + proj.transpose(1, 2, 0) / (2 * scale), 0.0, 1.0)


def _capture(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    from convscope.layers import resolve_layer

    out: list[torch.Tensor] = []
    handle = resolve_layer(model, layer).register_forward_hook(lambda _m, _i, o: out.append(o.detach().clone()))
    try:
        model(x)
    finally:
        handle.remove()
    return out[0]


def section_class_visualizations(ctx: DemoContext) -> tuple[str, list[Item]] | None:
    from convscope.featurevis import class_visualizations

    images, probs = class_visualizations(ctx.model, ctx.preprocess, steps=128, progress=False)
    tiles = list(images.mul(255).round().byte().permute(0, 2, 3, 1).numpy())
    labels = [f"{name}: p = {float(probs[k, k]):.3f}" for k, name in enumerate(ctx.class_names)]
    sheet = render.grid(tiles, labels=labels, ncols=len(tiles), tile_size=(128, 128), interpolation="nearest")
    text = ("One image per class, optimized from noise (Fourier basis, decorrelated colour, random shifts, scales "
            "and rotations) to maximize log p(class) under a small total-variation prior; under each image, the "
            "probability the model gives that class for it. They are not pictures of the classes: a Shapes image "
            "is one flat-coloured geometric figure (circle, square, triangle, cross, ring, star) on a textured "
            "background; these are whatever patterns raise the class's probability (here to at least "
            f"{float(probs.diagonal().min()):.2f}). A model's score can be driven up by colour and texture patterns "
            "that look like no shape to us: the images show what moves the score, not what the class looks like.")
    return "Class visualizations", [text, ctx.save(
        "class-visualizations", sheet, "Images optimized for each class (not what the classes look like)")]


TRUST_METHODS = ("saliency", "guided_backprop", "grad_cam")
TRUST_METRICS = ("deletion", "insertion", "randomisation", "random_logit", "pointing_game", "sparseness")


def section_trust(ctx: DemoContext) -> tuple[str, list[Item]] | None:
    """Which map to trust: ``convscope check`` on 32 Shapes images for three methods, its ranking
    table here and its full report (curves, the randomisation figure) linked."""
    import json

    from convscope.check import check
    from convscope.check.report import ranking_table

    folder = ctx.out / "check"
    if (folder / "results.json").exists():
        (folder / "results.json").unlink()  # the demo's own previous run: the report is made afresh
    path = check(ctx.loaded, "shapes:32", TRUST_METHODS, TRUST_METRICS, folder, progress=False)
    state = json.loads(path.read_text(encoding="utf-8"))
    baseline = state["baselines"].get("pointing_game")
    items: list[Item] = [
        "Each method's maps scored on 32 Shapes images: deletion (the class score should fall fast as the "
        "top-ranked pixels go: lower is better), insertion (it should rise fast: higher is better), model "
        "randomisation (the map should change when the model's layers are re-initialised: lower SSIM is better), "
        "random logit (the map for another class should differ: lower is better), the pointing game and "
        "sparseness.",
        ranking_table(state),
        render.link("the full report", "check/report.html", before="Curves and the randomisation figure: ")]
    if baseline is not None:
        items.insert(2, f"The centre baseline (a map that always points at the image centre) scores {baseline:.3f} "
                        "in the pointing game: these shapes sit near the centre, so a method must beat that number "
                        "to show that it localises.")
    return "Which map to trust", items


SECTIONS: list[Section] = [section_predictions, section_activations, section_unpooling, section_methods,
                           section_trust, section_projections, section_class_visualizations, section_atlas]


def run_demo(out: Path, n_images: int = 6, model_name: str = "shapes-vgg") -> Path:
    """Write the demo report into ``out`` and return the path of its ``index.html``."""
    from convscope.models import load_model

    start = time.perf_counter()
    loaded = load_model(f"zoo:{model_name}")
    pixels, masks, labels = _pick_images(n_images)
    ctx = DemoContext(loaded.model, loaded.preprocess, loaded.preprocess.to_tensor(pixels), pixels, labels,
                      list(loaded.class_names or []), out, masks, loaded=loaded)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for section in SECTIONS:
        made = section(ctx)
        if made is not None:
            sections.append(made)
    subtitle = (f"Model {loaded.name}, weights: {loaded.weights}. Report made in "
                f"{time.perf_counter() - start:.0f}s.")
    page = render.html_page("convscope demo", sections, subtitle=subtitle)
    return render.save_html(out / "index.html", page)
