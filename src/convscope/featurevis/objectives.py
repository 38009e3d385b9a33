"""Feature-visualization objectives, as :class:`~convscope.targets.Target` s (one sign convention:
bigger means "more of it", and :func:`~convscope.featurevis.render.render` maximizes).

Unit objectives are the usual targets (``Class``, ``Channel``, ``Neuron``, ``Direction``); this
module adds, per sample ``n``:

- ``DeepDream(layer)``: ``mean_{c,pos} act[n, c, pos]**2`` (the L2 energy of a layer);
- ``Diversity(layer)``: ``-1/(N-1) sum_{m != n} cos(G_n, G_m)`` with ``G_n = A_n A_n^T / P`` the
  Gram matrix of the layer's ``C x P`` activations; it compares the samples of one forward pass;
- ``Match(layer, reference)``: ``-||act_n - ref_n||^2 / ||ref_n||^2`` (feature inversion);
- ``LogSumExp()``: ``log sum_k exp(output[n, k])``; ``Class(k) - LogSumExp()`` is ``log p(k)``;

and penalties on the model input ``x = record.input`` (what the model saw, after transforms and
normalization), to be *subtracted*:

- ``TotalVariation(beta)``: ``sum |x[.., y+1, x] - x[.., y, x]|**beta + |x[.., y, x+1] - x[.., y, x]|**beta``;
- ``L1(reference)``: ``sum |x - reference|``; ``L2(reference)``: ``sum (x - reference)**2``;
- ``Blur()``: ``1/2 sum (x - stop_gradient(blur(x)))**2`` with a 3x3 box blur (edge-replicated),
  whose gradient ``x - blur(x)`` pulls each pixel toward its neighbours.

Example::

    objective = Channel("features.3", 5, reduce="mean") - 1e-4 * TotalVariation() + 0.5 * Diversity("features.3")
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from convscope.errors import ConvscopeError
from convscope.targets import (
    Channel,
    LayerKey,
    Record,
    Reduce,
    Target,
    _Combined,
    _layer_label,
)


class _LayerEnergy(Target):
    """A target reading one layer's whole output."""

    def __init__(self, layer: LayerKey) -> None:
        self.layer = layer

    def reads_output(self) -> bool:
        return False

    def layers(self) -> tuple[LayerKey, ...]:
        return (self.layer,)

    def flat(self, record: Record) -> Tensor:
        """The layer's output as ``[n, features]``."""
        return record.acts[self.layer].reshape(record.acts[self.layer].shape[0], -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.layer!r})"


class DeepDream(_LayerEnergy):
    """``score_n = mean act[n]**2``: DeepDream's objective. Example: ``DeepDream("features.4")``."""

    def score(self, record: Record) -> Tensor:
        return self.flat(record).pow(2).mean(1)


class Diversity(_LayerEnergy):
    """``score_n = -mean_{m != n} cos(G_n, G_m)`` over the Gram matrices of ``layer``; needs a batch
    of at least two samples, all in one forward pass. Example: ``Channel(l, 3) + 0.5 * Diversity(l)``."""

    def check_batch(self, n: int) -> None:
        if n < 2:
            raise ConvscopeError("Diversity compares the samples of a batch, but the batch has 1 sample",
                                 "Render several images at once, e.g. batch=4.")

    def score(self, record: Record) -> Tensor:
        act = record.acts[self.layer]
        n = act.shape[0]
        if n < 2:
            self.check_batch(n)
        a = act.reshape(n, act.shape[1], -1)
        gram = (a @ a.transpose(1, 2) / a.shape[2]).reshape(n, -1)
        unit = F.normalize(gram, dim=1)
        sim = unit @ unit.T
        return -(sim.sum(1) - sim.diagonal()) / (n - 1)


class Match(_LayerEnergy):
    """``score_n = -||act_n - ref_n||^2 / ||ref_n||^2``: how close the layer's output is to
    ``reference`` (one row per sample, or one for all). Example: ``Match("features.1", acts)``."""

    def __init__(self, layer: LayerKey, reference: Tensor) -> None:
        super().__init__(layer)
        self.reference = reference.detach()

    def score(self, record: Record) -> Tensor:
        return -self.distance(record.acts[self.layer], record.rows)

    def distance(self, act: Tensor, rows: slice | Tensor = slice(None)) -> Tensor:
        """``||act_n - ref_n||^2 / ||ref_n||^2`` for the samples ``act`` (rows ``rows`` of the batch)."""
        ref = self.reference.to(act.device, act.dtype)
        ref = ref if ref.shape[0] == 1 else ref[rows]
        if ref.shape[1:] != act.shape[1:] or ref.shape[0] not in (1, act.shape[0]):
            raise ConvscopeError(f"Match reference has shape {list(self.reference.shape)} but layer "
                                 f"{_layer_label(self.layer)!r} gives {list(act.shape)}",
                                 "Record the reference at the same layer, for the same image size (one row "
                                 "per image, or one for all).")
        diff = (act - ref).reshape(act.shape[0], -1).pow(2).sum(1)
        return diff / ref.reshape(ref.shape[0], -1).pow(2).sum(1).clamp(min=1e-12)


class LogSumExp(Target):
    """``score_n = log sum_k exp(output[n, k])``, so ``Class(k) - LogSumExp()`` is the log-probability
    of class ``k``: raising it raises class ``k`` *against* the others (a logit alone can grow
    with every other logit, as it does when a ReLU network's input gains contrast)."""

    def score(self, record: Record) -> Tensor:
        if record.output.dim() != 2:
            raise ConvscopeError(f"LogSumExp needs a model output [N, classes], got {list(record.output.shape)}",
                                 "Use it with a classifier's logits.")
        return record.output.logsumexp(1)

    def __repr__(self) -> str:
        return "LogSumExp()"


class _InputPenalty(Target):
    """A penalty on the model input ``record.input``."""

    def reads_output(self) -> bool:
        return False

    def image(self, record: Record) -> Tensor:
        if record.input is None:
            raise ConvscopeError(f"{self!r} reads the model input, but this forward pass did not record it",
                                 "Use input penalties with featurevis.render (or a Session forward pass).")
        return record.input

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TotalVariation(_InputPenalty):
    """``score_n = sum |dy|**beta + |dx|**beta`` over neighbouring pixels of ``x_n`` (``beta >= 1``).
    Example: ``Class(3) - 1e-3 * TotalVariation(beta=2)``."""

    def __init__(self, beta: float = 1.0) -> None:
        if not beta >= 1:
            raise ConvscopeError(f"TotalVariation beta={beta!r} must be >= 1", "Use beta=1 (edges) or beta=2 (smooth).")
        self.beta = float(beta)

    def score(self, record: Record) -> Tensor:
        x = self.image(record)
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs().pow(self.beta)
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs().pow(self.beta)
        return dy.reshape(x.shape[0], -1).sum(1) + dx.reshape(x.shape[0], -1).sum(1)

    def __repr__(self) -> str:
        return f"TotalVariation(beta={self.beta})"


class L1(_InputPenalty):
    """``score_n = sum |x_n - reference|``. Example: ``Channel(l, 3) - 1e-3 * L1()``."""

    def __init__(self, reference: float = 0.0) -> None:
        self.reference = float(reference)

    def score(self, record: Record) -> Tensor:
        x = self.image(record)
        return (x - self.reference).abs().reshape(x.shape[0], -1).sum(1)


class L2(_InputPenalty):
    """``score_n = sum (x_n - reference)**2``. Example: ``Channel(l, 3) - 1e-3 * L2()``."""

    def __init__(self, reference: float = 0.0) -> None:
        self.reference = float(reference)

    def score(self, record: Record) -> Tensor:
        x = self.image(record)
        return (x - self.reference).pow(2).reshape(x.shape[0], -1).sum(1)


def box_blur(x: Tensor) -> Tensor:
    """Each pixel replaced by the mean of its 3x3 neighbourhood (edges replicated)."""
    c = x.shape[1]
    kernel = torch.full((c, 1, 3, 3), 1.0 / 9.0, dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


class Blur(_InputPenalty):
    """``score_n = 1/2 sum (x_n - stop_gradient(box_blur(x_n)))**2``; its gradient is
    ``x - box_blur(x)``. Example: ``Channel(l, 3) - 0.5 * Blur()``."""

    def score(self, record: Record) -> Tensor:
        x = self.image(record)
        return 0.5 * (x - box_blur(x.detach())).pow(2).reshape(x.shape[0], -1).sum(1)


def parse_channels(spec: str) -> list[int]:
    """``"0-3,8"`` -> ``[0, 1, 2, 3, 8]`` (inclusive ranges, comma-separated, order kept)."""
    found: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ConvscopeError(f"cannot read channels {spec!r}", "Write e.g. 0-15 or 0,3,5 or 0-3,8.")
        found += range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1)
    return found


def channels(layer: LayerKey, which: Iterable[int] | str, reduce: Reduce = "mean") -> list[Target]:
    """One :class:`~convscope.targets.Channel` target per channel (``which``: ints or ``"0-15"``),
    for rendering one image per channel in one batch. Example: ``channels("features.3", "0-15")``."""
    index = parse_channels(which) if isinstance(which, str) else list(which)
    if not index:
        raise ConvscopeError("no channels to visualize", "Give at least one channel, e.g. '0-15'.")
    return [Channel(layer, c, reduce=reduce) for c in index]


def parts(target: Target) -> Iterator[Target]:
    """Every target inside ``target`` (itself, and the pieces of ``+ - *`` combinations)."""
    yield target
    if isinstance(target, _Combined):
        yield from parts(target.left)
        yield from parts(target.right)


__all__ = [
    "L1",
    "L2",
    "Blur",
    "DeepDream",
    "Diversity",
    "LogSumExp",
    "Match",
    "TotalVariation",
    "box_blur",
    "channels",
    "parse_channels",
    "parts",
]
