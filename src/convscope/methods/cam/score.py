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

import torch
from torch import Tensor, nn

from convscope.methods.batching import MaxBatch
from convscope.methods.cam.base import CAMMethod, LayerSpec, LayerStep, upsample
from convscope.methods.registry import register_method


def minmax(maps: Tensor) -> Tensor:
    """Each ``[h, w]`` map of ``[N, 1, h, w]`` scaled to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    span = high - low
    scaled = (flat - low[:, None]) / torch.where(span > 0, span, torch.ones_like(span))[:, None]
    return torch.where((span > 0)[:, None], scaled, torch.zeros_like(scaled)).view_as(maps)


@register_method("score_cam", "Score-CAM: feature maps weighted by the softmax of the target's score on masked inputs")
class ScoreCAM(CAMMethod):
    """``relu(sum_k softmax_k(S(x * M_k)) A_k)`` with ``M_k`` the min-max normalised, upsampled map ``A_k``.

    ``max_batch`` bounds the masked inputs per model evaluation. Example:
    ``ScoreCAM(model, max_batch=32).attribute(x, 3)``.
    """

    uses_gradients = False

    def __init__(self, model: nn.Module, layer: LayerSpec = None, *, upsample: bool = True, relu: bool | None = None,
                 eigen_smooth: bool = False, align_corners: bool = False, max_batch: MaxBatch = None) -> None:
        super().__init__(model, layer, upsample=upsample, relu=relu, eigen_smooth=eigen_smooth, max_batch=max_batch)
        self.align_corners = align_corners

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        flat = acts.flatten(2)
        varying = flat.amax(2) > flat.amin(2)  # [n, K]; the rest have mask 0
        step.evaluations(int(varying.sum()) + 1)
        scores = torch.empty(acts.shape[:2], dtype=step.score.dtype, device=acts.device)
        if not bool(varying.all()):
            shared = step.shared_score(torch.zeros_like(step.x[:1]))
            scores.copy_(shared[:, None].expand_as(scores))
        samples, channels = varying.nonzero(as_tuple=True)
        size = step.x.shape[-2:]

        def masked_scores(part: slice) -> Tensor:
            i, k = samples[part], channels[part]
            masks = minmax(upsample(acts[i, k][:, None], size, align_corners=self.align_corners))
            return step.score_of(step.x[i] * masks, i)

        for part, found in step.batches().map(len(samples), masked_scores):
            scores[samples[part], channels[part]] = found
        return torch.softmax(scores, dim=1)
