"""The conservation report: how much of the target's score each layer's relevance holds.

LRP's rules conserve relevance layer by layer (``sum_j R_j = sum_k R_k``) up to what biases and
stabilisers absorb, so the relevance summed over the output of a layer that every path crosses (a
*cut*: a top-level child, or a child of an ``nn.Sequential`` cut), per sample, drifts from the score by
exactly that: ``drift = sum_j R_j / score - 1``. :func:`conservation` measures it at the cuts (or the
listed layers) and at the input, all in one forward and one backward pass. A convolution folded into
the batch norm after it holds no relevance of its own (NaN: it is the norm's).

Example::

    report = conservation(model, x, 3, composite="epsilon_plus")   # every cut of the model
    print(report.table())        # layer, relevance sum, drift from the score (first sample)
    save_png("conservation.png", report.picture())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from convscope.backends.protocol import Engine
from convscope.errors import ConvscopeError
from convscope.methods.base import Rows
from convscope.methods.lrp.composites import Composite
from convscope.methods.lrp.method import LRP, relevances
from convscope.methods.lrp.mode import lrp_rules
from convscope.targets import Target, TargetLike

__all__ = ["Conservation", "conservation", "cuts"]

_SILENT = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Dropout, nn.Identity,
           nn.Flatten)  # relevance passes them unchanged: a row equal to the one before


@dataclass(frozen=True)
class Conservation:
    """Per layer (``"input"`` last), the relevance sum ``[N]`` (NaN where a fold holds it) and its
    ``drift = sum / score - 1``."""

    score: Tensor
    layers: tuple[str, ...]
    sums: tuple[Tensor, ...]

    def drift(self, i: int) -> Tensor:
        """``sum / score - 1`` at layer ``i`` (per sample)."""
        return self.sums[i] / self.score - 1

    def rows(self) -> list[tuple[str, list[float], list[float]]]:
        """``(layer, sums, drifts)`` as plain numbers, one row per layer."""
        return [(name, s.tolist(), self.drift(i).tolist()) for i, (name, s) in enumerate(zip(self.layers, self.sums))]

    def table(self, sample: int = 0) -> str:
        """The rows of one sample as text."""
        lines = [f"{'layer':<24} {'relevance':>12} {'drift':>10}", f"{'(score)':<24} {self.score[sample].item():>12.6g}"]
        lines += [f"{name:<24} {s[sample]:>12.6g} {d[sample]:>+10.2e}" for name, s, d in self.rows()]
        return "\n".join(lines)

    def picture(self, sample: int = 0) -> np.ndarray:
        """A bar per layer of ``sum / score`` for one sample, a dashed line at 1 (the whole score)."""
        from convscope.render.bars import bar_chart

        return bar_chart(list(self.layers), [float(s[sample] / self.score[sample]) for s in self.sums],
                         reference=1.0, missing="folded",
                         title=f"LRP relevance / score ({self.score[sample].item():.4g}), per layer")


def cuts(model: nn.Module) -> list[str]:
    """The layers every path crosses, in order: the top-level children, a ``nn.Sequential``'s children in
    its place, activations and dropout left out (they pass relevance unchanged)."""
    found: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                walk(child, qualified + ".")
            elif not isinstance(child, _SILENT):
                found.append(qualified)

    walk(model, "")
    return found


class _Probed(LRP):
    """LRP whose one backward pass also reads the relevance at ``probes``; ``_compute`` returns, per
    target, ``[n, len(probes) + 2]``: the score, then the sums (the input last; NaN where no relevance
    reaches)."""

    def __init__(self, model: nn.Module, probes: Sequence[str], **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(model, **kwargs)
        self.probes = tuple(probes)

    def _layers(self) -> tuple[Any, ...]:
        return tuple(self.backend.layer_key(self.model, name) for name in self.probes)

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:  # noqa: ANN401
        with lrp_rules(self.model, self.composite, fold=self.canonize):
            run = engine.forward(x, rows, grad=True)
        values = [*(run.act(key) for key in self._layers()), run.value]
        out = []
        for i, target in enumerate(targets):
            score = target.score(run.record).detach()
            found = relevances(run, target, values, i == len(targets) - 1)
            out.append(torch.stack([score, *(torch.full_like(score, float("nan")) if r is None else r.flatten(1).sum(1)
                                             for r in found)], 1))
        return out


def conservation(model: nn.Module, x: Tensor, target: TargetLike, *, composite: str | Composite = "epsilon_plus_flat",
                 layers: Sequence[str] | None = None, canonize: bool = True) -> Conservation:
    """The relevance summed at each of ``layers`` (default: :func:`cuts`) and at the input, beside the
    target's score, for the ``LRP`` maps of ``x``: one forward and one backward pass."""
    if not isinstance(model, nn.Module):
        raise ConvscopeError(f"the conservation report runs on PyTorch models, not on a {type(model).__name__}",
                             "On a Keras model, sum LRP(model).attribute(x, target, wrt=layer) over each layer's "
                             "output and compare it with the score.")
    names = list(layers) if layers is not None else cuts(model)
    method = _Probed(model, names, composite=composite, canonize=canonize)
    found = method.attribute(x, target)
    return Conservation(found[:, 0], (*names, "input"), tuple(found[:, i] for i in range(1, found.shape[1])))
