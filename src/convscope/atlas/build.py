"""Build a whole atlas: mine, then project and crop every top activation, then write the store.

For each layer and each (channel c, rank j) of its top-k: the receptive-field box of the unit,
the image patch under it (zero-padded to the layer's largest field), and the projection of that
single activation by each requested method (see :mod:`convscope.atlas.project`), cropped to the
same box (outside it a projection is zero), so the store grows with k x channels x field size.

Example::

    atlas = build_atlas(model, "shapes:1000", ["features.0", "features.3"], out="atlas", k=9)
    atlas.projections("features.3")[5, 0]     # channel 5's strongest activation, projected (cropped)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from convscope.atlas.mine import Mined, check_model, mine
from convscope.atlas.project import project_units
from convscope.atlas.receptive import crop, receptive_field
from convscope.atlas.source import Source, open_source
from convscope.atlas.store import FORMAT, Atlas, open_atlas, read_manifest, topk_arrays, write_arrays, write_manifest
from convscope.atlas.topk import EMPTY, TopK
from convscope.backends.torch.forward import model_device
from convscope.images import Preprocess
from convscope.methods.batching import MaxBatch
from convscope.projection import rule_map


def layer_views(model: nn.Module, layer: str, acc: TopK, source: Source, input_shape: Sequence[int],
                methods: Sequence[str], max_batch: MaxBatch, progress: bool = False) -> dict[str, np.ndarray]:
    """The receptive-field ``boxes`` [C, k, 4] ``(y0, y1, x0, x1)`` of a layer's top activations,
    the image ``patches`` [C, k, S, S, 3] uint8 under them, and per method the projections
    cropped to the same boxes [C, k, 3, S, S] (a projection is zero outside its unit's field).
    ``S`` is the layer's largest field; border boxes are zero-padded. Images are read
    ``max_batch`` pairs at a time (256 with ``"auto"`` or None), so memory stays bounded;
    ``progress`` shows a bar on stderr over the units' fields, then the pairs' projections."""
    field = receptive_field(model, layer, input_shape)
    used = np.argwhere(acc.images != EMPTY)
    coords = acc.coords()[used[:, 0], used[:, 1]]
    units = sorted({tuple(int(v) for v in unit) for unit in coords})
    # one bar: the units' fields (measured by gradients on a model that is not a plain chain), then the pairs
    bar = tqdm(total=len(units) + len(used) * len(methods), desc=f"atlas {layer}", unit="step", disable=not progress)
    box_of: dict[tuple[int, ...], tuple[int, ...]] = {}
    for lo in range(0, len(units), 256):
        box_of.update(zip(units[lo:lo + 256], field.boxes(units[lo:lo + 256])))
        bar.update(len(units[lo:lo + 256]))
    boxes = np.zeros((acc.channels, acc.k, 4), dtype=np.int64)
    for (c, j), unit in zip(used, coords):
        boxes[c, j] = box_of[tuple(int(v) for v in unit)]
    size = int(max((boxes[..., 1] - boxes[..., 0]).max(), (boxes[..., 3] - boxes[..., 2]).max(), 1))
    views = {"boxes": boxes, "patches": np.zeros((acc.channels, acc.k, size, size, 3), dtype=np.uint8)}
    for method in methods:
        views[method] = np.zeros((acc.channels, acc.k, input_shape[0], size, size), dtype=np.float32)
    device = model_device(model)
    step = max_batch if isinstance(max_batch, int) else 256
    for lo in range(0, len(used), step):
        part, part_coords = used[lo:lo + step], coords[lo:lo + step]
        ids = acc.images[part[:, 0], part[:, 1]]
        batch = source.take(np.unique(ids))
        row_of = {int(i): r for r, i in enumerate(batch.index)}
        rows = [row_of[int(i)] for i in ids]
        for (c, j), r in zip(part, rows):
            views["patches"][c, j] = crop(batch.pixels[r], tuple(boxes[c, j]), size)
        images = batch.tensor[torch.as_tensor(rows, dtype=torch.long)].to(device)
        for method in methods:
            maps = project_units(model, layer, images, part[:, 0], part_coords, method=method,
                                 max_batch=max_batch, field=field).cpu().numpy()
            for (c, j), m in zip(part, maps):
                views[method][c, j] = np.moveaxis(crop(np.moveaxis(m, 0, -1), tuple(boxes[c, j]), size), -1, 0)
            bar.update(len(part))
    bar.close()
    return views


def build_atlas(model: nn.Module, data: Any, layers: Sequence[str], out: str | Path, *, k: int = 9,  # noqa: ANN401
                batch_size: int = 64, max_batch: MaxBatch = 64, methods: Sequence[str] = ("deconvnet",),
                resume: bool = False, preprocess: Preprocess | None = None, progress: bool = False,
                model_name: str | None = None, checkpoint_every: int | None = None,
                mined: Mined | None = None, per_image: bool = True) -> Atlas:
    """Mine ``data`` and write a complete atlas folder at ``out`` (see module doc); returns it opened.

    ``mined`` skips mining (e.g. the merged result of a distributed run); ``per_image`` as in
    :func:`~convscope.atlas.mine.mine`. A Keras or TorchScript model is refused before any work
    (:func:`~convscope.atlas.mine.check_model`).
    """
    check_model(model)
    for method in methods:
        rule_map(method, option="method")  # unknown names fail before any work
    folder = Path(out)
    source = open_source(data, preprocess)
    if mined is None:
        mined = mine(model, source, layers, k=k, batch_size=batch_size, out=folder, resume=resume,
                     progress=progress, model_name=model_name, checkpoint_every=checkpoint_every,
                     per_image=per_image)
    stored = read_manifest(folder)
    if stored is not None and stored.get("complete") and set(methods) <= set(stored.get("methods", [])) \
            and mined.batches_run == 0:
        return open_atlas(folder)
    if stored is not None and stored.get("complete"):
        write_manifest(folder, {**stored, "complete": False})  # its files are about to change
    names = mined.identity["layers"]
    input_shape = tuple(source.take(np.asarray([_first_readable(mined)])).tensor.shape[1:])
    files = {"topk.npz": write_arrays(folder, "topk.npz", topk_arrays(names, mined.results))}
    views = {name: layer_views(model, name, mined.results[name], source, input_shape, methods, max_batch, progress)
             for name in names}
    files["patches.npz"] = write_arrays(folder, "patches.npz", {
        f"L{i}_{key}": views[name][key] for i, name in enumerate(names) for key in ("boxes", "patches")})
    for method in methods:
        files[f"proj-{method}.npz"] = write_arrays(folder, f"proj-{method}.npz", {
            f"L{i}": views[name][method] for i, name in enumerate(names)})
    write_manifest(folder, {**mined.identity, "format": FORMAT, "complete": True, "methods": list(methods),
                            "rules": {m: repr(rule_map(m).default) for m in methods},
                            "channels": {n: mined.results[n].channels for n in names},
                            "skipped": [list(s) for s in mined.skipped],
                            "names": {str(i): source.name(int(i)) for i in _all_ids(mined)},
                            "files": files})
    return open_atlas(folder)


def _all_ids(mined: Mined) -> list[int]:
    ids = np.unique(np.concatenate([acc.images.reshape(-1) for acc in mined.results.values()]))
    return [int(i) for i in ids if i != EMPTY]


def _first_readable(mined: Mined) -> int:
    return _all_ids(mined)[0]
