"""Ablation-CAM: weight each feature map by the relative drop of the score when it is zeroed.

``w_k = (S - S_k) / S`` where ``S_k`` is the target's score with channel ``k`` of the layer's
output set to 0 (Desai & Ramaswamy 2020); the map is ``relu(sum_k w_k A_k)``. Where ``S = 0`` the
relative drop is undefined and the absolute drop ``S - S_k`` is used. Note the sign: for a
negative ``S`` the weights flip, as in the paper's formula.

Exact savings: a channel that is already all zero cannot change the score when zeroed, so it
gets ``w_k = 0`` without a model evaluation; the others are evaluated up to ``max_batch`` at a
time, packed across samples.

pytorch-grad-cam zeroes a channel only when the layer's smallest value is 0, and otherwise sets
it to ``min - 1e7``; on layers after a ReLU (the usual choice) the two agree.

Example::

    maps = AblationCAM(model, "layer4", max_batch=64).attribute(x, 3)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.methods.cam.base import CAMMethod, LayerStep
from convscope.methods.registry import register_method


@contextmanager
def replaced_output(module: nn.Module, values: Tensor) -> Iterator[None]:
    """Within the block, ``module`` returns ``values`` instead of its output (a hook run before any
    other, so probes on the module record ``values``); removed on exit."""

    def hook(_module: nn.Module, _inputs: object, output: object) -> Tensor:
        if not isinstance(output, Tensor) or output.shape != values.shape:
            shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ConvscopeError(f"the ablated layer produced {shape}, expected {list(values.shape)}",
                                 "Ablation needs a layer that runs once per forward pass with a fixed output shape.")
        return values

    handle = module.register_forward_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


@register_method("ablation_cam", "Ablation-CAM: feature maps weighted by the relative score drop when each is zeroed")
class AblationCAM(CAMMethod):
    """``relu(sum_k (S - S_k) / S * A_k)`` with ``S_k`` the score with channel ``k`` zeroed.

    Example: ``AblationCAM(model, max_batch=32).attribute(x, 3)``.
    """

    uses_gradients = False

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        ablated = step.score[:, None].repeat(1, acts.shape[1])
        samples, channels = acts.flatten(2).ne(0).any(2).nonzero(as_tuple=True)  # zeroing a zero channel: no change
        step.evaluations(len(samples))
        module = step.session.inference().module(step.layer)  # where score_of evaluates

        def ablated_scores(part: slice) -> Tensor:
            i, k = samples[part], channels[part]
            values = acts[i].clone()
            values[torch.arange(len(i), device=values.device), k] = 0
            with replaced_output(module, values):
                return step.score_of(step.x[i], i)

        for part, found in step.batches().map(len(samples), ablated_scores):
            ablated[samples[part], channels[part]] = found
        score = step.score[:, None]
        drop = score - ablated
        return torch.where(score != 0, drop / torch.where(score != 0, score, torch.ones_like(score)), drop)
