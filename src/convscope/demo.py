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

    def save(self, name: str, image: np.ndarray, caption: str) -> render.Figure:
        """Write ``image`` as ``out/name.png`` and return it as a full-width figure for the page."""
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
        items.append(ctx.save(f"activations-{name}", sheet, f"{name}: {tuple(acts.shape[1:])}"))
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
                                              interpolation="nearest"), "switch unpooling")
    return "Max-pool switches and unpooling", [
        "The first block's activation, its 2x2 max-pool, and the pooled values put back at the argmax "
        "switches (convscope.ops.unpool): the deconvnet's way back through a pooling layer.",
        sheet,
    ]


def section_methods(ctx: DemoContext) -> tuple[str, list[Item]] | None:
    try:
        from convscope.methods import registry
    except ImportError:
        return None
    from convscope.methods import AugSmooth, GradCAM

    rows = []
    predicted = ctx.model(ctx.x).argmax(1).tolist()
    builders = {name: spec.cls for name, spec in registry.methods().items()}
    builders |= {"grad_cam+eigen_smooth": lambda m: GradCAM(m, eigen_smooth=True),
                 "grad_cam+aug_smooth": lambda m: AugSmooth(GradCAM(m))}
    for name, build in tqdm(builders.items(), desc="demo: attribution methods", leave=False):
        method = build(ctx.model)
        maps = method.attribute(ctx.x, target=predicted)
        heat = [render.normalize(render.reduce_channels(m.detach().numpy(), "abs-sum", channel_axis=0)
                                 if m.dim() == 3 else m.detach().numpy(), mode="positive", percentile=99.5)
                for m in maps]
        rows += [render.overlay(px, h, alpha=0.6) for px, h in zip(ctx.pixels, heat)]
    labels = [f"{name}: {ctx.class_names[p]}" for name in builders for p in predicted]
    sheet = ctx.save("methods", render.grid(rows, labels=labels, ncols=len(ctx.labels), tile_size=(160, 160),
                                            interpolation="nearest"), "methods x images")
    return "Attribution methods", [
        "Every registered method explaining the predicted class of each image (|attribution| summed over colour, "
        "clipped at the 99.5th percentile, over the image), then Grad-CAM with eigen_smooth and with AugSmooth "
        "(mirrored and rescaled inputs).",
        sheet,
    ]


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
        from convscope.atlas.pages import card_image
    except ImportError:
        return None
    layer, n_images = "features.7", 1000
    atlas = build_atlas(ctx.model, f"shapes:{n_images}", [layer], out=ctx.out / "atlas", k=9,
                        preprocess=ctx.preprocess, progress=True, model_name="zoo:shapes-vgg")
    index = write_pages(atlas)
    acc = atlas.topk(layer)
    strongest = np.argsort(-acc.values[:, 0], kind="stable")[:6]
    items: list[Item] = [
        f"For each channel of {layer}, the 9 of {n_images} Shapes images that excite it most (top row: the image "
        "patch under the unit's receptive field) and the deconvnet projection of that single activation (bottom "
        f"row). The six channels with the strongest activations are shown; all channels: "
        f"{index.relative_to(ctx.out)} (open it beside this report)."]
    projections, patches = atlas.projections(layer), atlas.patches(layer)
    for c in strongest.tolist():
        card = card_image(patches[c], projections[c])
        items.append(ctx.save(f"atlas-{layer}-c{c}", card, f"{layer} channel {c}: top activation {acc.values[c, 0]:.3g}"))
    return f"Dataset atlas ({layer}, {n_images} images)", items


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
            "and rotations) to maximize log p(class) under a small total-variation prior; each caption is the "
            "probability the model gives that class for the image.")
    return "Class visualizations", [text, ctx.save("class-visualizations", sheet,
                                                   "What shapes-vgg thinks each class looks like")]


SECTIONS: list[Section] = [section_predictions, section_activations, section_unpooling, section_methods,
                           section_projections, section_class_visualizations, section_atlas]


def run_demo(out: Path, n_images: int = 6, model_name: str = "shapes-vgg") -> Path:
    """Write the demo report into ``out`` and return the path of its ``index.html``."""
    from convscope import zoo
    from convscope.data import CLASSES

    start = time.perf_counter()
    model = zoo.load(model_name)
    preprocess = zoo.preset(model_name)
    pixels, masks, labels = _pick_images(n_images)
    ctx = DemoContext(model, preprocess, preprocess.to_tensor(pixels), pixels, labels, list(CLASSES), out, masks)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for section in SECTIONS:
        made = section(ctx)
        if made is not None:
            sections.append(made)
    meta = zoo.info(model_name) or {}
    subtitle = (f"zoo:{model_name} - held-out accuracy {meta.get('val_accuracy', float('nan')):.1%}, "
                f"report made in {time.perf_counter() - start:.0f}s")
    page = render.html_page("convscope demo", sections, subtitle=subtitle)
    return render.save_html(out / "index.html", page)
