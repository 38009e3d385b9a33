"""``convscope project``: a channel's strongest units projected back to pixels, one PNG sheet per image.

The computation is :func:`convscope.projection.project` (re-exported here), on PyTorch and Keras
models alike. Each sheet shows the image, then projection ``k`` of its ``k``-th strongest unit
as a grey signed map ``0.5 + 0.5 * clip(s / q, -1, 1)`` (``s`` the projection summed over colour,
``q`` the 99.5th percentile of ``|s|``), labelled with the unit's activation and position. A unit that does not fire (``a <= 0``) is
labelled "never fires" and its image named on stderr: its projection is blank, not broken.

Example::

    paths = project_images(load_model("model.keras"), ["cat.png"], "conv3", 7, top=3, out=Path("out"))
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convscope import render
from convscope.formats import check_layers_visible
from convscope.images import ImageBatch, ImageStream, images_per_batch
from convscope.loaded import LoadedModel
from convscope.methods.batching import MaxBatch
from convscope.projection import RULES, Projection, project


def _channels_first(maps: object) -> np.ndarray:
    """``maps [N, top, ...]`` as a numpy array with each map ``[C, H, W]`` (a Keras map is NHWC)."""
    if type(maps).__module__.startswith("torch"):
        return maps.detach().cpu().numpy()  # type: ignore[attr-defined]
    return np.moveaxis(np.asarray(maps), -1, 2)


def project_images(loaded: LoadedModel, images: Sequence[str | Path], layer: str, channel: int, *,
                   rule: str = "deconvnet", top: int = 1, out: Path = Path("convscope-project"),
                   max_batch: MaxBatch = "auto") -> list[Path]:
    """Write one sheet per image into ``out`` (see module doc) and return the paths. The images are
    read and projected a batch at a time (:func:`~convscope.images.images_per_batch`); ``max_batch``:
    most images per model evaluation (an int, ``"auto"`` or None). A TorchScript model is refused
    before any image is read (:mod:`convscope.formats`)."""
    check_layers_visible(loaded.model, "`convscope project`")
    written = []
    for batch in ImageStream(images, loaded.preprocess, images_per_batch(max_batch)):
        written += _project_batch(loaded, batch, layer, channel, rule, top, out, max_batch)
    return written


def _project_batch(loaded: LoadedModel, batch: ImageBatch, layer: str, channel: int, rule: str, top: int, out: Path,
                   max_batch: MaxBatch) -> list[Path]:
    result = project(loaded.model, batch.tensor, layer, channel, rule=rule, top=top, max_batch=max_batch)
    maps, values, positions = _channels_first(result.maps), np.asarray(result.values), np.asarray(result.positions)
    written = []
    for n, name in enumerate(batch.names):
        tiles, labels = [batch.pixels[n]], [name + (" (random weights)" if loaded.random_weights else "")]
        if float(values[n, 0]) <= 0:  # the strongest unit is not positive: nothing to project
            print(f"convscope: {name}: channel {channel} of {layer} never fires on this image (its strongest unit is "
                  f"{float(values[n, 0]):.3g}): its projections are blank", file=sys.stderr)
        for k in range(top):
            heat = render.normalize(maps[n, k], mode="signed", percentile=99.5, channel_axis=0)
            tiles.append(render.channels_last(heat * 0.5 + 0.5))
            where = positions[n, k].tolist()  # (y, x); nothing for a layer without positions (a logit)
            place = f" at ({','.join(map(str, where))})" if where else ""
            labels.append(f"#{k + 1} a={float(values[n, k]):.3g}" + (place if float(values[n, k]) > 0 else ": never fires"))
        sheet = render.grid(tiles, labels=labels, ncols=len(tiles), tile_size=(192, 192), interpolation="nearest")
        label = layer.replace("/", "_")  # a Keras layer inside a nested model: "block/conv"
        written.append(render.save_png(out / f"{Path(name).stem}-{label}-c{channel}-{rule}.png", sheet))
    return written


__all__ = ["RULES", "Projection", "project", "project_images"]
