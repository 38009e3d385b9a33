"""Targets for detectors and segmenters: one score per image from a structured model output
(:mod:`convscope.ops.structured`).

- ``Detection(label, box)``: the detection of class ``label`` whose box best matches ``box``,
  read from a detector's output (a list of one dict per image with ``boxes`` ``[D, 4]`` as
  ``x0, y0, x1, y1`` pixels of the input, ``labels`` ``[D]`` and ``scores`` ``[D]``: torchvision's
  Faster R-CNN, RetinaNet, FCOS and SSD)::

      j_n     = argmax_{j : labels_nj = label, IoU(boxes_nj, box) >= min_iou} IoU(boxes_nj, box)
      score_n = scores_nj  (+ IoU(boxes_nj, box) with iou=True)      0 where no detection matches

  torchvision computes ``scores`` and ``boxes`` from the heads' outputs by indexing and box
  decoding, both differentiable, so gradients flow through the kept detections; the choice of
  which detections survive the score threshold and non-maximum suppression is piecewise
  constant, as an argmax is. ``iou=True`` adds the box regression's agreement with ``box``
  (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``, which however takes the best-matching box of
  *any* class and scores nothing when its class differs; here the class is chosen first).
  Each pass matches anew, as pytorch-grad-cam's target does: a perturbed input (occlusion, an
  integrated-gradients path) may lose the detection (it then scores 0) or match another one of
  the class near the box. :meth:`Detection.matches` says what it matches in an output of the model.
- ``Region(label, box)`` / ``Region(label, mask=m)``: a segmenter's class ``label`` over a pixel region::

      score_n = sum_{y, x} w[y, x] * out[n, label, y, x]       (reduce="mean": divided by sum w)

  with ``w`` a mask ``[H, W]`` (bool or weights; or one per sample ``[N, H, W]``) or the
  pixels whose centres lie in a box ``x0, y0, x1, y1``. ``out`` is the model's output
  ``[N, K, H, W]``, or its entry ``key`` (default ``"out"``) where it returns a dict
  (torchvision's FCN, DeepLabV3, LRASPP).
- Both name places of the input: under :class:`~convscope.methods.AugSmooth` a mirrored copy is
  scored at the same box, which no longer holds the same object (``convscope explain`` refuses
  ``--aug-smooth`` with ``--box``/``--region``).
- any other model: a callable ``f(output) -> Tensor[N]`` is a
  :class:`~convscope.targets.FunctionTarget`, whatever the output's structure.

Example::

    t = Detection(label=3, box=(10, 20, 60, 90), iou=True)
    cam = GradCAM(detector).attribute(x, t)            # default layer: the backbone's last stage
    sal = Saliency(segmenter).attribute(x, Region(15, mask=person))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from convscope.errors import ConvscopeError
from convscope.ops.structured import describe, is_per_sample
from convscope.targets import Record, Target

BoxLike = Sequence[float] | Tensor | np.ndarray

DETECTOR_OUTPUT = ("Give a detector that returns a list of one dict per image with 'boxes' [D, 4] (x0, y0, x1, y1), "
                   "'labels' [D] and 'scores' [D], as torchvision's do; for another output write a callable "
                   "target f(output) -> Tensor[N]")


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box of ``a`` [M, 4] with every box of ``b`` [K, 4]
    (``x0, y0, x1, y1``): ``|A n B| / |A u B|``, shape [M, K], differentiable in both."""
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def as_boxes(box: BoxLike, what: str = "box") -> Tensor:
    """``box`` as float boxes [B, 4] (one box ``[4]`` becomes ``[1, 4]``), each with ``x0 < x1``, ``y0 < y1``."""
    try:
        t = torch.as_tensor(np.asarray(box, dtype=np.float64) if not isinstance(box, Tensor) else box).double()
    except (TypeError, ValueError):
        t = torch.zeros(0)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] != 4 or not len(t) or not bool(torch.isfinite(t).all()):
        raise ConvscopeError(f"{what} {box!r} is not x0, y0, x1, y1 (four finite numbers, or [N, 4] one per sample)",
                             "Write the box's corners in pixels of the input, e.g. (10, 20, 60, 90).")
    bad = (t[:, 2] <= t[:, 0]) | (t[:, 3] <= t[:, 1])
    if bool(bad.any()):
        raise ConvscopeError(f"{what} {t[bad][0].tolist()} is empty: it needs x0 < x1 and y0 < y1",
                             "Give the top-left corner first, then the bottom-right one.")
    return t.float()


def check_inside(boxes: Tensor, width: int, height: int, what: str = "box") -> None:
    """Raise a clear error where a box [B, 4] does not lie within a ``width`` x ``height`` image."""
    out = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
    if bool(out.any()):
        raise ConvscopeError(f"{what} {[round(v, 2) for v in boxes[out][0].tolist()]} lies outside the "
                             f"{width}x{height} image", f"Keep 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}.")


def _labels(label: int | Sequence[int] | Tensor, what: str) -> Tensor:
    idx = torch.as_tensor(label)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() > 1 or not idx.numel():
        raise ConvscopeError(f"{what} {label!r} is not a class index or a list of them",
                             "Pass a class index such as 3, or one per sample like [3, 1].")
    return idx.long()


def _per_row(value: Tensor, rows: slice | Tensor, n: int, many: bool) -> Tensor:
    """This chunk's ``n`` entries of ``value``: one per sample (``many``: pick ``rows``), or one
    value for all (repeated)."""
    if not many:
        return value.expand(n, *value.shape)
    return value[rows] if isinstance(rows, slice) else value[rows.to(value.device)]


def _check_count(name: str, count: int, n: int) -> None:
    if count != n:
        raise ConvscopeError(f"{name} has {count} per-sample entries for a batch of {n} samples",
                             f"Give one {name.split()[-1]} for all samples, or one per sample.")


@dataclass(frozen=True)
class Match:
    """The detection a :class:`Detection` scored in one image: its ``index`` in the output,
    ``box``, ``score`` and ``iou`` with the asked box (``index`` -1: none matched; then
    ``iou`` is the best IoU of a detection of that class, 0 if there was none)."""

    index: int
    box: tuple[float, float, float, float] | None
    score: float
    iou: float


class Detection(Target):
    """The detection of class ``label`` whose box best matches ``box`` (see the module doc).

    ``label``: a class index (or one per sample); ``box``: ``x0, y0, x1, y1`` in pixels of the
    model's input (or one per sample, ``[N, 4]``); ``iou=True`` adds the matched box's IoU with
    ``box``; ``min_iou``: the least IoU that counts as a match.

    Example: ``GradCAM(detector).attribute(x, Detection(3, (10, 20, 60, 90)))``.
    """

    def __init__(self, label: int | Sequence[int] | Tensor, box: BoxLike, *, iou: bool = False,
                 min_iou: float = 0.5) -> None:
        self.label = _labels(label, "label")
        self.box = as_boxes(box)
        if not 0.0 <= float(min_iou) <= 1.0:
            raise ConvscopeError(f"min_iou={min_iou!r} is not in [0, 1]", "Use e.g. min_iou=0.5 (0 matches any overlap).")
        self.iou, self.min_iou = bool(iou), float(min_iou)
        self._last: dict[int, Match] = {}

    def check_batch(self, n: int) -> None:
        if self.label.dim() == 1:
            _check_count("Detection label", len(self.label), n)
        if len(self.box) > 1:
            _check_count("Detection box", len(self.box), n)
        self._last.clear()

    def score(self, record: Record) -> Tensor:
        out = record.output
        if not is_per_sample(out) or not all(k in d for d in out for k in ("boxes", "labels", "scores")):
            raise ConvscopeError(f"a Detection target needs a detector's output, got {describe(out)}", DETECTOR_OUTPUT)
        if record.input is not None:
            check_inside(self.box, int(record.input.shape[-1]), int(record.input.shape[-2]), "the Detection box")
        n = len(out)
        labels = _per_row(self.label, record.rows, n, self.label.dim() == 1)
        boxes = _per_row(self.box if len(self.box) > 1 else self.box[0], record.rows, n, len(self.box) > 1)
        rows = record.rows.tolist() if isinstance(record.rows, Tensor) else range(record.rows.start or 0, (record.rows.start or 0) + n)
        scores = []
        for det, label, box, row in zip(out, labels.tolist(), boxes, rows):
            value, self._last[row] = self._one(det, label, box)
            scores.append(value)
        return torch.stack(scores)

    def _one(self, det: Mapping[str, Tensor], label: int, box: Tensor) -> tuple[Tensor, Match]:
        """The score and the match in one image's detections ``det``."""
        of_class = (det["labels"] == label).nonzero()[:, 0]
        zero = det["scores"].new_zeros(())  # no match: a constant, no gradient
        if not len(of_class):
            return zero, Match(-1, None, 0.0, 0.0)
        ious = box_iou(box[None].to(det["boxes"]), det["boxes"][of_class])[0]
        best = int(ious.detach().argmax())  # ties: the first, the highest-scored (outputs are sorted by score)
        overlap = float(ious[best].detach())
        if overlap < self.min_iou:
            return zero, Match(-1, None, 0.0, overlap)
        j = int(of_class[best])
        value = det["scores"][j] + (ious[best] if self.iou else 0.0)
        found = tuple(float(v) for v in det["boxes"][j].detach().tolist())
        return value, Match(j, found, float(det["scores"][j].detach()), overlap)  # type: ignore[arg-type]

    def last_matches(self) -> list[Match]:
        """What the latest pass that scored each row matched, in row order (on a perturbed input
        that is the last perturbed copy's)."""
        return [self._last[r] for r in sorted(self._last)]

    def matches(self, output: Sequence[Mapping[str, Tensor]], *, require: bool = True,
                names: Sequence[str] | None = None) -> list[Match]:
        """Which detection this target scores in each image of a detector's ``output`` (``model(x)``
        in eval mode); ``require``: a clear error naming the first image where none matches (by
        its index, or its entry of ``names``), with its nearest detection of the class.

        Example: ``with torch.no_grad(): t.matches(detector.eval()(x))``."""
        if is_per_sample(output):  # else the score says what the output is
            self.check_batch(len(output))
        self.score(Record(output=output, acts={}, rows=torch.arange(len(output))))
        found = self.last_matches()
        for i, match in enumerate(found):
            if require and match.index < 0:
                image = f"image {i}" if names is None else repr(names[i])
                raise ConvscopeError(self._no_match(output[i], i, image), "Pick a box and class among the model's detections "
                                     "(print model(x)), lower min_iou, or lower the model's score threshold "
                                     "(torchvision: box_score_thresh / score_thresh).")
        return found

    def _no_match(self, det: Mapping[str, Tensor], i: int, image: str) -> str:
        label = int(self.label if self.label.dim() == 0 else self.label[i])
        box = self.box[0 if len(self.box) == 1 else i]
        of_class = det["labels"] == label
        where = f"no detection of class {label} matches box {[round(v, 1) for v in box.tolist()]} (input pixels) in {image}"
        if not bool(of_class.any()):
            seen = sorted(set(det["labels"].tolist()))[:10]
            return f"{where}: the model detects no class {label} there (classes detected: {seen or 'none'})"
        ious = box_iou(box[None].to(det["boxes"]), det["boxes"][of_class])[0]
        k = int(ious.argmax())
        near = [round(v, 1) for v in det["boxes"][of_class][k].tolist()]
        return f"{where} with IoU >= {self.min_iou}: the nearest has IoU {float(ious[k]):.2f} at {near}"

    def __repr__(self) -> str:
        box = self.box[0].tolist() if len(self.box) == 1 else f"<{len(self.box)} boxes>"
        return f"Detection({self.label.tolist()!r}, {box}{', iou=True' if self.iou else ''})"


class Region(Target):
    """A segmenter's class ``label`` summed (or averaged) over a pixel region (see the module doc).

    The region is a ``box`` ``(x0, y0, x1, y1)`` in output pixels (the pixels whose centres lie in
    it; or one per sample, ``[N, 4]``) or a ``mask`` ``[H, W]`` / ``[N, H, W]`` (bool, or float
    weights); ``key``: the entry of a dict output to read (torchvision: ``"out"``).

    Example: ``Region(15, (8, 8, 40, 56))``, ``Region(15, mask=m, reduce="mean")``.
    """

    def __init__(self, label: int | Sequence[int] | Tensor, box: BoxLike | None = None, *,
                 mask: Tensor | np.ndarray | None = None, key: str = "out", reduce: Literal["sum", "mean"] = "sum") -> None:
        self.label = _labels(label, "label")
        if reduce not in ("sum", "mean"):
            raise ConvscopeError(f"reduce={reduce!r} is not supported", "Use 'sum' or 'mean'.")
        if (box is None) == (mask is None):
            raise ConvscopeError("a Region needs exactly one of box= or mask=",
                                 "Write Region(15, (8, 8, 40, 56)) or Region(15, mask=m) with m [H, W].")
        self.key, self.reduce = key, reduce
        self.box = None if box is None else as_boxes(box, "region box")
        self.mask: Tensor | None = None
        if mask is not None:
            m = mask if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))
            if m.dim() not in (2, 3) or not m.numel() or m.is_complex():
                raise ConvscopeError(f"the region mask has shape {list(m.shape)}, not [H, W] or [N, H, W]",
                                     "Pass one mask [H, W] (bool, or float weights) or one per sample [N, H, W].")
            self.mask = m.to(torch.float32)

    def check_batch(self, n: int) -> None:
        if self.label.dim() == 1:
            _check_count("Region label", len(self.label), n)
        if self.mask is not None and self.mask.dim() == 3:
            _check_count("Region mask", len(self.mask), n)
        if self.box is not None and len(self.box) > 1:
            _check_count("Region box", len(self.box), n)

    def logits(self, output: Any) -> Tensor:
        """The per-pixel class scores ``[N, K, H, W]`` this target reads from ``output``."""
        out = output
        if isinstance(output, Mapping):
            if self.key not in output:
                raise ConvscopeError(f"the model's output has no entry {self.key!r} (it has {sorted(output)})",
                                     f"Pass key= one of {sorted(output)} to Region.")
            out = output[self.key]
        if not isinstance(out, Tensor) or out.dim() != 4:
            raise ConvscopeError(f"a Region target needs per-pixel class scores [N, classes, H, W], got {describe(out)}",
                                 "Use it on a segmenter (FCN, DeepLabV3, LRASPP), or write a callable target.")
        return out

    def weights(self, height: int, width: int, rows: slice | Tensor, n: int) -> Tensor:
        """The region's pixel weights ``[n, H, W]`` for this chunk."""
        if self.box is not None:
            check_inside(self.box, width, height, "the Region box")
            boxes = _per_row(self.box if len(self.box) > 1 else self.box[0], rows, n, len(self.box) > 1)
            ys, xs = torch.arange(height) + 0.5, torch.arange(width) + 0.5  # pixel centres
            inside_y = (ys >= boxes[:, 1:2]) & (ys <= boxes[:, 3:4])  # [n, H]
            inside_x = (xs >= boxes[:, 0:1]) & (xs <= boxes[:, 2:3])  # [n, W]
            w = (inside_y[:, :, None] & inside_x[:, None, :]).float()
            if not bool(w.flatten(1).any(1).all()):
                raise ConvscopeError(f"a region box {boxes[~w.flatten(1).any(1)][0].tolist()} holds no pixel centre",
                                     "Make the box at least one pixel wide and high.")
            return w
        mask = self.mask
        assert mask is not None
        if tuple(mask.shape[-2:]) != (height, width):
            raise ConvscopeError(f"the region mask is {mask.shape[-1]}x{mask.shape[-2]} pixels but the model's output "
                                 f"is {width}x{height}", f"Give a mask of the output's size, {width}x{height} "
                                 "(torchvision's segmenters upsample theirs to the input's size).")
        if not bool((mask != 0).any()):
            raise ConvscopeError("the region mask is empty (all zero)", "Mark at least one pixel of the region.")
        return _per_row(mask, rows, n, mask.dim() == 3)

    def score(self, record: Record) -> Tensor:
        out = self.logits(record.output)
        n, classes, height, width = out.shape
        bad = self.label[(self.label < 0) | (self.label >= classes)]
        if bad.numel():
            raise ConvscopeError(f"class {int(bad.reshape(-1)[0])} is out of range for a segmenter of {classes} classes",
                                 f"Use a class in 0..{classes - 1}.")
        labels = _per_row(self.label, record.rows, n, self.label.dim() == 1).to(out.device)
        picked = out[torch.arange(n, device=out.device), labels]  # [n, H, W]
        w = self.weights(height, width, record.rows, n).to(out)
        total = (picked * w).flatten(1).sum(1)
        return total / w.flatten(1).sum(1) if self.reduce == "mean" else total

    def __repr__(self) -> str:
        where = (self.box[0].tolist() if len(self.box) == 1 else f"<{len(self.box)} boxes>") if self.box is not None \
            else f"mask=<{list(self.mask.shape)}>"  # type: ignore[union-attr]
        return f"Region({self.label.tolist()!r}, {where})"


__all__ = ["Detection", "Match", "Region", "as_boxes", "box_iou", "check_inside"]
