"""What a zoo recipe trains for: its data, its loss and its held-out scores, per task.

- ``classify`` (``shapes``, ``signals``, ``volumes``): cross-entropy; ``val_accuracy``.
- ``segment`` (``shapes``): per-pixel cross-entropy over ``{'out': [N, K, H, W]}`` with
  ``K = 1 + classes`` (0 is the background, ``c + 1`` the Shapes class ``c`` on its mask);
  ``val_miou`` (mean over the K classes of ``|pred & true| / |pred | true|``, pixels pooled
  over the held-out set) and ``val_pixel_accuracy``.
- ``detect`` (``scenes``): torchvision's detection losses summed; ``val_map50`` (mean over the
  classes of the VOC average precision at IoU >= 0.5, all-point interpolation) and
  ``val_recall50`` (share of objects matched at IoU >= 0.5 by a right-class detection scoring >= 0.5).

A task's ``data(recipe, n, seed)`` returns ``(inputs, targets)`` indexable by a tensor of sample
indices (``take``); ``loss(model, inputs, targets)`` is a scalar in train mode;
``scores(model, inputs, targets)`` runs in eval mode, without gradients.

Example::

    task = TASKS["segment"]
    x, y = task.data(Recipe(arch="fcn", task="segment"), 100, seed=2)
    task.scores(model.eval(), x, y)  # {'val_miou': ..., 'val_pixel_accuracy': ...}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.zoo.recipe import Recipe


def shapes_tensors(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` Shapes images (normalised, float32 NCHW) and their labels."""
    x, _masks, y = _shapes(n, seed)
    return x, y


def _shapes(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    from convscope.data import MEAN, STD, Shapes

    images, masks, labels = Shapes(n, seed=seed).arrays(0, n)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.contiguous(), torch.from_numpy(masks), torch.from_numpy(labels).long()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode by the caller) on ``x``."""
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def take(data: Any, index: Tensor) -> Any:  # noqa: ANN401
    """Rows ``index`` of a tensor, or items of a list."""
    return data[index] if isinstance(data, Tensor) else [data[i] for i in index.tolist()]


class Classify:
    """One label per sample."""

    def data(self, recipe: Recipe, n: int, seed: int) -> tuple[Tensor, Tensor]:
        if recipe.data == "shapes":
            return shapes_tensors(n, seed)
        from convscope.data import SOURCES

        return SOURCES[recipe.data](n, seed=seed).tensors()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y)

    def scores(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        return {"val_accuracy": accuracy(model, x, y)}


class Segment:
    """One class per pixel, from the Shapes masks."""

    def data(self, recipe: Recipe, n: int, seed: int) -> tuple[Tensor, Tensor]:
        x, masks, labels = _shapes(n, seed)
        return x, masks.long() * (labels + 1).view(-1, 1, 1)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x)["out"], y)

    @torch.no_grad()
    def scores(self, model: nn.Module, x: Tensor, y: Tensor, batch: int = 128) -> dict[str, float]:
        pred = torch.cat([model(x[i:i + batch])["out"].argmax(1) for i in range(0, len(x), batch)])
        k = int(model(x[:1])["out"].shape[1])
        ious = [miou_parts(pred, y, c) for c in range(k)]
        return {"val_miou": float(np.mean([i for i in ious if i is not None])),
                "val_pixel_accuracy": float((pred == y).float().mean())}


def miou_parts(pred: Tensor, true: Tensor, c: int) -> float | None:
    """IoU of class ``c`` over all pixels (None when the class is in neither)."""
    p, t = pred == c, true == c
    union = int((p | t).sum())
    return None if union == 0 else int((p & t).sum()) / union


class Detect:
    """Boxes and classes of the objects in a scene (torchvision detection models)."""

    def data(self, recipe: Recipe, n: int, seed: int) -> tuple[Tensor, list[dict[str, Tensor]]]:
        from convscope.data import Scenes

        return Scenes(n, seed=seed).detection()

    def loss(self, model: nn.Module, x: Tensor, y: list[dict[str, Tensor]]) -> Tensor:
        return sum(model(x, y).values())

    @torch.no_grad()
    def scores(self, model: nn.Module, x: Tensor, y: list[dict[str, Tensor]], batch: int = 128) -> dict[str, float]:
        found = [d for i in range(0, len(x), batch) for d in model(x[i:i + batch])]
        return {"val_map50": mean_average_precision(found, y), "val_recall50": recall(found, y)}


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``[len(a), len(b)]`` of boxes ``(x0, y0, x1, y1)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda z: (z[:, 2:] - z[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def average_precision(found: list[dict[str, Tensor]], truth: list[dict[str, Tensor]], label: int,
                      iou: float = 0.5) -> float | None:
    """VOC average precision of class ``label``: detections sorted by score, each a true positive
    when it overlaps a not yet matched object of that class by ``>= iou``; the area under the
    precision-recall curve with precision made monotone (all-point). None: no such object."""
    total = sum(int((t["labels"] == label).sum()) for t in truth)
    if total == 0:
        return None
    hits: list[tuple[float, bool]] = []
    for d, t in zip(found, truth):
        gt = t["boxes"][t["labels"] == label]
        used = torch.zeros(len(gt), dtype=torch.bool)
        keep = d["labels"] == label
        boxes, scores = d["boxes"][keep], d["scores"][keep]
        for j in scores.argsort(descending=True).tolist():
            ok = False
            if len(gt):
                overlaps = _iou(boxes[j:j + 1], gt)[0].masked_fill(used, -1.0)
                best = int(overlaps.argmax())
                if overlaps[best] >= iou:
                    used[best] = ok = True
            hits.append((float(scores[j]), ok))
    hits.sort(key=lambda h: -h[0])
    tp = np.cumsum([h[1] for h in hits], dtype=np.float64)
    precision = tp / np.arange(1, len(hits) + 1) if hits else np.zeros(0)
    recall_at = tp / total
    precision = np.maximum.accumulate(precision[::-1])[::-1] if hits else precision
    steps = np.diff(np.concatenate([[0.0], recall_at]))
    return float((steps * precision).sum())


def mean_average_precision(found: list[dict[str, Tensor]], truth: list[dict[str, Tensor]], iou: float = 0.5) -> float:
    labels = sorted({int(v) for t in truth for v in t["labels"]})
    aps = [average_precision(found, truth, c, iou) for c in labels]
    return float(np.mean([a for a in aps if a is not None]))


def recall(found: list[dict[str, Tensor]], truth: list[dict[str, Tensor]], iou: float = 0.5, score: float = 0.5) -> float:
    """Share of objects with a right-class detection scoring ``>= score`` at IoU ``>= iou``."""
    hit = total = 0
    for d, t in zip(found, truth):
        total += len(t["labels"])
        keep = d["scores"] >= score
        if keep.any() and len(t["labels"]):
            match = (_iou(t["boxes"], d["boxes"][keep]) >= iou) & (t["labels"][:, None] == d["labels"][keep][None])
            hit += int(match.any(1).sum())
    return hit / max(total, 1)


TASKS: dict[str, Any] = {"classify": Classify(), "segment": Segment(), "detect": Detect()}
