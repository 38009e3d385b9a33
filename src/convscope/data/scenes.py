"""``Scenes``: several Shapes on one textured background, with per-object masks and boxes.

Each scene holds 1..``max_objects`` shapes (classes of :data:`convscope.data.CLASSES`, chosen
uniformly, as is the count) on a Shapes background (the same texture model, see
:mod:`convscope.data.shapes`). Every shape covers a fraction in ``AREA_RANGE`` of the image; their
circumcircles are kept ``GAP`` pixels apart and one pixel inside the image, so masks never overlap
or touch the border and every mask is the whole shape. A shape whose place cannot be found in
``_TRIES`` draws is left out (the scene holds fewer). Each shape's colour is picked as in Shapes:
at least ``MIN_CONTRAST`` from the mean background under it. The ground truth per object:
its ``mask`` and its ``box`` ``(x0, y0, x1, y1)`` in pixel edges (the tight box of the mask:
``x1 = last column + 1``).

Example::

    ds = Scenes(100, seed=0)
    s = ds.sample(0)     # s['image'] uint8 [64, 64, 3], s['masks'] bool [k, 64, 64], s['boxes'] [k, 4], s['labels'] [k]
    images, targets = ds.detection(0, 8)   # float32 [8, 3, 64, 64] in [0, 1]; torchvision-style target dicts
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from convscope.data.draw import INNER_RADII, UNIT_AREAS, shape_masks, texture
from convscope.data.procedural import Procedural
from convscope.data.shapes import _COLOUR_CANDIDATES, _DRAWS, CLASSES, _check_int, _pick_colours, _texture_params

if TYPE_CHECKING:
    import torch

AREA_RANGE = (0.04, 0.10)
GAP = 2.0
MIN_SIZE = 48
_TRIES = 50


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight box ``(x0, y0, x1, y1)`` of a non-empty bool mask ``[H, W]`` in pixel edges."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


class Scenes(Procedural):
    """``n`` scenes of ``size x size`` pixels with 1..``max_objects`` shapes each, drawn from ``seed``.

    ``sample(i)`` holds ``image`` (uint8 ``[H, W, 3]``), ``x`` (float32 ``[3, H, W]`` in [0, 1]),
    ``masks`` (bool ``[k, H, W]``), ``boxes`` (float32 ``[k, 4]``), ``labels`` (int64 ``[k]``,
    Shapes classes), ``mask`` (the union, bool ``[H, W]``), ``label`` (the class of the largest
    shape) and ``segmentation`` (int64 ``[H, W]``: 0 background, class + 1 on each shape).
    """

    class_names = CLASSES

    def __init__(self, n: int, seed: int = 0, size: int = 64, max_objects: int = 3) -> None:
        super().__init__(n, seed)
        self.size = _check_int(size, "size", MIN_SIZE, f"Scenes smaller than {MIN_SIZE} px leave no room for "
                                                     f"several shapes; use size >= {MIN_SIZE}.")
        self.max_objects = _check_int(max_objects, "max_objects", 1, "Use at least one object per scene.")

    def __repr__(self) -> str:
        return f"Scenes(n={self.n}, seed={self.seed}, size={self.size}, max_objects={self.max_objects})"

    def _place(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, centres and scales of up to ``count`` shapes with disjoint circumcircles."""
        s = self.size
        labels, centres, scales = [], [], []
        for _ in range(count):
            label = int(rng.integers(len(CLASSES)))
            area = AREA_RANGE[0] + (AREA_RANGE[1] - AREA_RANGE[0]) * rng.random()
            scale = float(np.clip(np.sqrt(area * s * s / UNIT_AREAS[label]), 1.0 / INNER_RADII[label], s / 4.0))
            for _try in range(_TRIES):
                centre = scale + 1.0 + rng.random(2) * (s - 2.0 * scale - 2.0)
                if all(np.hypot(*(centre - c)) >= scale + r + GAP for c, r in zip(centres, scales)):
                    labels.append(label)
                    centres.append(centre)
                    scales.append(scale)
                    break
        return np.array(labels, dtype=np.int64), np.array(centres).reshape(-1, 2), np.array(scales)

    def _one(self, rng: np.random.Generator) -> dict[str, Any]:
        s = self.size
        count = int(rng.integers(1, self.max_objects + 1))
        labels, centres, scales = self._place(rng, count)
        angles = 360.0 * rng.random(len(labels))
        masks = shape_masks(labels, centres, scales, angles, s)
        draws, noise = rng.random((1, _DRAWS)), rng.random((1, 3, s, s), dtype=np.float32) * 2.0 - 1.0
        background = np.clip(texture(_texture_params(draws, noise), s), 0.0, 255.0)
        image = np.rint(background[0]).astype(np.uint8)  # [3, H, W]
        candidates = np.rint(255.0 * rng.random((len(labels), _COLOUR_CANDIDATES, 3)))
        colours = _pick_colours(candidates, np.repeat(image[None], len(labels), axis=0), masks)
        segmentation = np.zeros((s, s), dtype=np.int64)
        for k in range(len(labels)):
            image[:, masks[k]] = colours[k][:, None]
            segmentation[masks[k]] = labels[k] + 1
        boxes = np.stack([mask_box(m) for m in masks])
        return {"image": np.ascontiguousarray(image.transpose(1, 2, 0)),
                "x": image.astype(np.float32) / 255.0, "masks": masks, "boxes": boxes, "labels": labels,
                "mask": masks.any(axis=0), "label": np.int64(labels[np.argmax(masks.sum(axis=(1, 2)))]),
                "segmentation": segmentation, "colours": colours}

    def arrays(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Per-scene arrays stacked; the per-object ones (``masks``, ``boxes``, ``labels``,
        ``colours``) padded to ``max_objects`` (label ``-1``, empty mask, zero box, for none)."""
        stop = self.n if stop is None else stop
        self._check_range(start, stop)
        rows = [self._one(np.random.default_rng([self.seed, i])) for i in range(start, stop)]
        m, s = self.max_objects, self.size
        out: dict[str, np.ndarray] = {
            "masks": np.zeros((len(rows), m, s, s), dtype=bool), "boxes": np.zeros((len(rows), m, 4), np.float32),
            "labels": np.full((len(rows), m), -1, dtype=np.int64), "colours": np.zeros((len(rows), m, 3), np.uint8)}
        for j, r in enumerate(rows):
            for key in out:
                out[key][j, :len(r["labels"])] = r[key]
        for key in ("image", "x", "mask", "label", "segmentation"):
            out[key] = np.stack([r[key] for r in rows]) if rows else np.zeros((0,), np.float32)
        return out

    def detection(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Scenes ``start..stop-1`` as torchvision detection data: images float32 ``[N, 3, H, W]``
        in [0, 1] and one target per image, ``{'boxes': float [k, 4], 'labels': int64 [k]}``
        with **labels = Shapes class + 1** (0 is the background, torchvision's convention)."""
        import torch

        stop = self.n if stop is None else stop
        self._check_range(start, stop)
        rows = [self._one(np.random.default_rng([self.seed, i])) for i in range(start, stop)]
        images = torch.from_numpy(np.stack([r["x"] for r in rows])) if rows else torch.zeros(0, 3, self.size, self.size)
        targets = [{"boxes": torch.from_numpy(r["boxes"]), "labels": torch.from_numpy(r["labels"] + 1)} for r in rows]
        return images, targets
