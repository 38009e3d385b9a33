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

from convscope.backends.protocol import Tensor
from convscope.methods.cam.base import CAMMethod, LayerStep
from convscope.methods.registry import register_method


@register_method("ablation_cam", "Ablation-CAM: feature maps weighted by the relative score drop when each is zeroed")
class AblationCAM(CAMMethod):
    """``relu(sum_k (S - S_k) / S * A_k)`` with ``S_k`` the score with channel ``k`` zeroed.

    Example: ``AblationCAM(model, max_batch=32).attribute(x, 3)``.
    """

    uses_gradients = False
    scores_input = False  # masked or ablated copies are scored

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        ops = step.ops
        score = step.score[:, None]
        ablated = score + ops.zeros(ops.amax(acts, ops.space(acts)).shape, like=score)
        live = ops.amax(ops.abs(acts), ops.space(acts)) > 0  # zeroing a zero channel: no change
        samples, channels = ops.nonzero(live)
        step.evaluations(int(samples.shape[0]))
        depth = int(acts.shape[ops.channel_axis])

        def ablated_scores(part: slice) -> Tensor:
            i, k = samples[part.start:part.stop], channels[part.start:part.stop]
            values = ops.take(acts, i) * ops.per_channel(1 - ops.one_hot(k, depth, like=acts), acts)
            return step.score_of(ops.take(step.x, i), i, replace=(step.layer, values))

        found = [s for _, s in step.batches().map(int(samples.shape[0]), ablated_scores)]
        if found:
            ablated = ops.scatter(ablated, samples, channels, ops.cat(found))
        drop = score - ablated
        return ops.where(score != 0, ops.divide(drop, score + ops.zeros_like(drop)), drop)
