"""Score-CAM: weight each feature map by how much the target likes the input masked by it.

For sample ``x`` and channel ``k``: ``M_k = minmax(bilinear(A_k, H x W))`` (0 where the upsampled
map is constant), ``s_k = S(x * M_k)``, ``w = softmax_k(s)``; the map is ``relu(sum_k w_k A_k)``
(Wang et al. 2020). The paper's baseline ``S(x_b)`` cancels in the softmax, so it is left out.

Exact savings, not approximations:

- a channel that is constant over the layer (all-zero channels included) has mask 0, so its
  masked input is the zero image: its score is computed once per chunk (one sample, shared).
  Constancy is decided on the layer's grid: bilinear weights sum to 1, so the upsampled map is
  constant too, but in floating point it carries one-ulp rounding noise that min-max scaling
  would blow up into an arbitrary 0/1 mask (pytorch-grad-cam's masks do that);
- the masks are built batch by batch, never all at once, and each model evaluation takes up
  to ``max_batch`` masked inputs, packed across samples.

pytorch-grad-cam upsamples the masks with ``align_corners=True``; pass that to agree with it.

Example::

    maps = ScoreCAM(model, "layer4", max_batch=64).attribute(x, 3)
"""

from __future__ import annotations

from functools import partial
from typing import Any

from convscope.backends.protocol import Engine, Ops, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.methods.base import Rows
from convscope.methods.cam.base import CAMMethod, LayerSpec, LayerStep, Tokens, upsample
from convscope.methods.registry import register_method
from convscope.ops import tensors

__all__ = ["ScoreCAM", "minmax", "upsample"]


def minmax(maps: Tensor, ops: Ops = tensors) -> Tensor:
    """Each map of a batch of one-channel maps scaled to [0, 1]; a constant map becomes 0."""
    axes = tuple(range(1, ops.rank(maps)))
    low = ops.amin(maps, axes, keepdims=True)
    span = ops.amax(maps, axes, keepdims=True) - low
    return ops.where(span > 0, (maps - low) / ops.where(span > 0, span, 1.0), 0.0)


@register_method("score_cam", "Score-CAM: feature maps weighted by the softmax of the target's score on masked inputs")
class ScoreCAM(CAMMethod):
    """``relu(sum_k softmax_k(S(x * M_k)) A_k)`` with ``M_k`` the min-max normalised, upsampled map ``A_k``.

    ``max_batch`` bounds the masked inputs per model evaluation. Example:
    ``ScoreCAM(model, max_batch=32).attribute(x, 3)``.
    """

    uses_gradients = False
    scores_input = False  # masked or ablated copies are scored

    def __init__(self, model: Any, layer: LayerSpec = None, *, upsample: bool = True, relu: bool | None = None,
                 eigen_smooth: bool = False, align_corners: bool = False, tokens: Tokens | None = None,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, layer, upsample=upsample, relu=relu, eigen_smooth=eigen_smooth, tokens=tokens,
                         max_batch=max_batch)
        self.align_corners = align_corners

    def _config(self) -> tuple[Any, ...]:
        return (self.align_corners,)

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        ops = step.ops
        space = ops.space(acts)
        varying = ops.amax(acts, space) > ops.amin(acts, space)  # [n, K]; the rest have mask 0
        samples, channels = ops.nonzero(varying)
        count = int(samples.shape[0])
        step.evaluations(count + 1)
        scores = ops.zeros(tuple(varying.shape), like=step.score)
        if count < int(varying.shape[0]) * int(varying.shape[1]):
            shared = step.shared_score(ops.zeros_like(step.x[:1]))
            scores = scores + shared[:, None]
        masked = step.engine.compiled(("masked", self.align_corners, step.index),
                                      partial(self._masked_scores, step.index))

        def masked_scores(part: slice) -> Tensor:
            i, k = samples[part.start:part.stop], channels[part.start:part.stop]
            return masked(ops.take(step.x, i), ops.channel_maps(acts, i, k), ops.take(step.rows, i))

        found = [s for _, s in step.batches().map(count, masked_scores)]
        if found:
            scores = ops.scatter(scores, samples, channels, ops.cat(found))
        return ops.softmax(scores, axis=1)

    def _masked_scores(self, index: int, engine: Engine, x: Tensor, maps: Tensor, rows: Rows) -> Tensor:
        """Target ``index``'s scores of ``x * minmax(upsample(maps))``."""
        ops = engine.ops
        masks = minmax(ops.resize(maps, ops.spatial_shape(x), align_corners=self.align_corners), ops)
        return ops.detach(engine.forward(x * masks, rows, fast=True, targets=[engine.targets[index]]).scores[0])
