"""``convscope explain``: run registered attribution methods on image files and write pictures.

For every image x method an overlay PNG (the map, reduced over colour by ``|.|`` sum, clipped at
the 99.5th percentile, over the image), with ``method="all"`` also one side-by-side grid per image
(rows = images, columns = methods), and ``maps.json`` with each raw map's shape, range and target.

A Keras model (``load_model("model.keras")``) takes the same path: its NHWC maps are transposed to
[N, C, H, W] for rendering.

Example::

    paths = explain(load_model("zoo:shapes-vgg"), ["a.png"], method="all", out=Path("out"))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from convscope import render
from convscope.backends.dispatch import framework_of
from convscope.errors import ConvscopeError
from convscope.images import load_images
from convscope.methods import AugSmooth, Method
from convscope.methods.registry import get_method, supported
from convscope.models import LoadedModel


def heat_map(attribution: torch.Tensor) -> np.ndarray:
    """One sample's map [C, H, W] as a 2-D heat map in [0, 1] (|.| summed over channels)."""
    a = attribution.detach().float().cpu().numpy()
    return render.normalize(np.abs(a).sum(axis=0), mode="positive", percentile=99.5)


def _predicted(loaded: LoadedModel, x: object) -> list[int]:
    """The predicted class of each sample (a Keras model takes the NHWC batch its preprocess made)."""
    if isinstance(loaded.model, torch.nn.Module):
        with torch.no_grad():
            return loaded.model(x).argmax(1).tolist()
    return np.asarray(loaded.model(x, training=False)).argmax(1).tolist()


def _channels_first(maps: object) -> torch.Tensor:
    """Maps as [N, C, H, W] torch tensors: a Keras model's NHWC maps are transposed."""
    if isinstance(maps, torch.Tensor):
        return maps
    return torch.tensor(np.moveaxis(np.asarray(maps), -1, 1))  # a copy: TF's arrays are read-only


def _options(cls: type[Method], layer: str | None, eigen_smooth: bool, asked_alone: bool) -> dict[str, object]:
    """The options of ``cls`` among ``layer`` and ``eigen_smooth`` (the ones it declares it takes)."""
    takes = cls.options
    if eigen_smooth and "eigen_smooth" not in takes and asked_alone:
        raise ConvscopeError(f"--eigen-smooth applies to the CAM methods; {cls.__name__} has no such option",
                             "Drop --eigen-smooth, or pick a CAM method such as --method grad_cam.")
    options: dict[str, object] = {"layer": layer} if layer is not None and "layer" in takes else {}
    if eigen_smooth and "eigen_smooth" in takes:
        options["eigen_smooth"] = True
    return options


def explain(loaded: LoadedModel, images: Sequence[str | Path], *, method: str = "grad_cam", target: int | None = None,
            layer: str | None = None, eigen_smooth: bool = False, aug_smooth: bool = False,
            out: Path = Path("convscope-explain")) -> list[Path]:
    """Write the overlays (and grids, and maps.json) into ``out``; return the written paths.
    ``eigen_smooth`` applies to the CAM methods (with ``method="all"``, to those only);
    ``aug_smooth`` wraps every method in :class:`~convscope.methods.AugSmooth`."""
    names = supported(framework_of(loaded.model)) if method == "all" else [get_method(method).name]
    batch = load_images(images, loaded.preprocess)
    predicted = _predicted(loaded, batch.tensor)
    targets = [target] * len(batch.names) if target is not None else predicted
    written: list[Path] = []
    meta: dict[str, list[dict[str, object]]] = {}
    overlays: dict[str, list[np.ndarray]] = {}
    for name in tqdm(names, desc="explain", disable=len(names) == 1, leave=False):
        cls = get_method(name)
        kwargs = _options(cls, layer, eigen_smooth, asked_alone=len(names) == 1)
        method = cls(loaded.model, **kwargs)
        maps = _channels_first((AugSmooth(method) if aug_smooth else method).attribute(batch.tensor, target=targets))
        overlays[name] = []
        for i, image_name in enumerate(batch.names):
            picture = render.overlay(batch.pixels[i], heat_map(maps[i]), alpha=0.6)
            overlays[name].append(picture)
            written.append(render.save_png(out / f"{Path(image_name).stem}-{name}.png", picture))
            meta.setdefault(image_name, []).append({
                "method": name, "target": int(targets[i]), "eigen_smooth": "eigen_smooth" in kwargs,
                "aug_smooth": aug_smooth,
                "shape": list(maps[i].shape),
                "min": float(maps[i].min()), "max": float(maps[i].max()), "png": written[-1].name})
    if len(names) > 1:
        for i, image_name in enumerate(batch.names):
            sheet = render.grid([batch.pixels[i]] + [overlays[n][i] for n in names], labels=["input", *names],
                                ncols=min(8, len(names) + 1), tile_size=(160, 160))
            written.append(render.save_png(out / f"{Path(image_name).stem}-all.png", sheet))
    record = {"model": {"name": loaded.name, "weights": loaded.weights}, **meta}
    written.append(render.write_atomic(out / "maps.json", json.dumps(record, indent=2).encode()))
    return written
