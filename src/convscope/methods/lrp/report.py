"""The conservation report: how much of the target's score each layer's relevance holds.

LRP's rules conserve relevance layer by layer (``sum_j R_j = sum_k R_k``) up to what biases and
stabilisers absorb, so the relevance summed over a layer's output, per sample, drifts from the
score by exactly that. :func:`conservation` measures it at the listed layers and at the input.

Example::

    report = conservation(model, x, 3, composite="epsilon_plus", layers=["layer1", "layer4", "fc"])
    print(report.table())        # layer, relevance sum, drift from the score, per sample
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convscope.backends.torch.session import Session
from convscope.methods.lrp.composites import Composite
from convscope.methods.lrp.method import LRP
from convscope.targets import TargetLike, as_targets

__all__ = ["Conservation", "conservation"]


@dataclass(frozen=True)
class Conservation:
    """Per layer (``"input"`` last), the relevance sum ``[N]`` and its ``drift = sum / score - 1``."""

    score: Tensor
    layers: tuple[str, ...]
    sums: tuple[Tensor, ...]

    def drift(self, i: int) -> Tensor:
        """``sum / score - 1`` at layer ``i`` (per sample)."""
        return self.sums[i] / self.score - 1

    def rows(self) -> list[tuple[str, list[float], list[float]]]:
        """``(layer, sums, drifts)`` as plain numbers, one row per layer."""
        return [(name, s.tolist(), self.drift(i).tolist()) for i, (name, s) in enumerate(zip(self.layers, self.sums))]

    def table(self) -> str:
        """The rows as text: the first sample's numbers."""
        lines = [f"{'layer':<24} {'relevance':>12} {'drift':>10}", f"{'(score)':<24} {self.score[0].item():>12.6g}"]
        lines += [f"{name:<24} {s[0]:>12.6g} {d[0]:>+10.2e}" for name, s, d in self.rows()]
        return "\n".join(lines)


def conservation(model: nn.Module, x: Tensor, target: TargetLike, *, composite: str | Composite = "epsilon_plus_flat",
                 layers: Sequence[str] | None = None, canonize: bool = True) -> Conservation:
    """The relevance summed at each of ``layers`` (default: the model's top-level children) and at the
    input, beside the target's score, for the ``LRP`` maps of ``x``."""
    names = list(layers) if layers is not None else [n for n, _ in model.named_children()]
    method = LRP(model, composite=composite, canonize=canonize)
    sums = [method.attribute(x, target, wrt=name).flatten(1).sum(1) for name in names]
    sums.append(method.attribute(x, target).flatten(1).sum(1))
    (found,), _ = as_targets(target, None, int(x.shape[0]))
    with Session(model, layers=found.layers()) as session:  # eval mode, as the maps had it
        score = found.score(session.forward(x, torch.arange(int(x.shape[0])), grad=False).record)
    return Conservation(score.detach(), (*names, "input"), tuple(s.detach() for s in sums))
