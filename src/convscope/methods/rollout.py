"""Attention rollout and its gradient-weighted form: where a vision transformer's class token looks.

Per block ``l = 1..L`` the attention weights ``A_l`` ``[heads, T, T]`` are recorded in the
forward pass, fused attention included (:mod:`convscope.backends.torch.attention`: recomputed
from the recorded queries and keys; the model is not changed). Then, per sample:

- :class:`AttentionRollout` (Abnar & Zuidema 2020): ``B_l = rows_sum_to_1(0.5 * fuse(A_l) + 0.5 * I)``
  with ``fuse`` the mean over heads (``head_fusion="max"`` / ``"min"`` as in the vit-explain
  code), and ``R = B_L ... B_2 B_1``. Class-agnostic: the target does not enter the map.
- :class:`GradRollout` (Chefer et al. 2021, "Generic attention-model explainability", eqs. 5-6):
  ``Abar_l = mean_heads(relu(dS/dA_l * A_l))``, ``R = I`` and ``R <- R + Abar_l R`` for
  ``l = 1..L``, with ``S`` the target's score (a logit, not a probability).

The map is the class token's row over the patch tokens, ``R[0, prefix:]``, as ``[N, 1, h, w]``
(the extra tokens and the grid are read from the model: :mod:`convscope.backends.torch.tokens`),
upsampled bilinearly to the input with ``upsample=True``. A model without a class token (global
average pooling) reads the mean of the patch tokens' rows. Only self-attention enters (an
attention-pooling head's ``[1, T]`` attention does not). Models whose attention runs over
windows (Swin) have no ``[T, T]`` attention over the whole image and are refused.

Example::

    maps = AttentionRollout(vit).attribute(x, 0)          # [N, 1, H, W]
    maps = GradRollout(vit).attribute(x, target=[3, 5])
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from convscope.backends.protocol import Engine
from convscope.backends.torch.attention import AttentionCapture
from convscope.backends.torch.batching import MaxBatch
from convscope.backends.torch.tokens import Tokens, has_class_token, sequence_tokens
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Rows
from convscope.methods.cam.tokens import check_tokens
from convscope.methods.options import check_flag
from convscope.methods.registry import register_method
from convscope.ops import tensors
from convscope.targets import Target

FUSIONS = ("mean", "max", "min")


class RolloutMethod(Method):
    """The common steps: record the attention, combine it block by block (:meth:`relevance`), read
    the class token's row as a map (module docstring)."""

    frameworks = ("torch",)
    display = "positive"
    scores_input = True
    needs_attention = True
    uses_gradients: ClassVar[bool] = False

    def __init__(self, model: Any, *, upsample: bool = True, tokens: Tokens | None = None,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        check_flag("upsample", upsample)
        self.upsample = upsample
        self.tokens = check_tokens(tokens)

    def _prepare(self, x: Tensor, wrt: Any) -> None:
        if x.dim() != 4:
            raise ConvscopeError(f"{type(self).__name__} needs an image batch [N, C, H, W], got shape {list(x.shape)}",
                                 "Pass images with a batch dimension.")
        if wrt is not None:
            raise ConvscopeError(f"{type(self).__name__} maps the input's patches; wrt={wrt!r} does not apply",
                                 "Leave wrt out.")

    def relevance(self, weights: list[Tensor], gradients: list[Tensor] | None) -> Tensor:
        """``R`` ``[n, T, T]`` from the blocks' ``A`` ``[n, heads, T, T]`` (and ``dS/dA``)."""
        raise NotImplementedError

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        with AttentionCapture() as capture:
            run = engine.forward(x, rows, grad=self.uses_gradients)
        weights = self._checked([w for w in capture.weights if w.shape[-1] == w.shape[-2]], x)
        tokens = sequence_tokens(self.model, x, int(weights[0].shape[-1]), self.tokens)
        if not tokens.is_tokens:
            raise ConvscopeError(f"the attention's {weights[0].shape[-1]} tokens are not a patch grid",
                                 "Pass tokens=Tokens(prefix=..., grid=(h, w)).")
        read_class = has_class_token(self.model) and tokens.prefix > 0
        if not self.uses_gradients:
            found = self._map(self.relevance([w.detach() for w in weights], None), tokens, read_class, x)
            return [found for _ in targets]
        return [self._map(self.relevance([w.detach() for w in weights], run.gradients(i, weights)), tokens,
                          read_class, x) for i in range(len(targets))]

    def _checked(self, weights: list[Tensor], x: Tensor) -> list[Tensor]:
        name = type(self).__name__
        if not weights:
            raise ConvscopeError(f"{name} found no attention in this {type(self.model).__name__}'s forward pass",
                                 "Use it on a vision transformer, or a CAM method on a convolutional network.")
        want = (int(x.shape[0]), weights[0].shape[-1], weights[0].shape[-1])
        for w in weights:
            if (int(w.shape[0]), *w.shape[-2:]) != want:
                raise ConvscopeError(f"{name} multiplies one [T, T] attention per block over the whole image, but this "
                                     f"model's attention has shape {list(w.shape)} for {want[0]} samples (attention over "
                                     "windows, as Swin's, or over sequences of different lengths)",
                                     "Use GradCAM(model) instead: it needs no layer argument on transformers.")
        return weights

    def _map(self, relevance: Tensor, tokens: Tokens, read_class: bool, x: Tensor) -> Tensor:
        p = tokens.prefix
        row = relevance[:, 0, p:] if read_class else relevance[:, p:, p:].mean(1)
        maps = row.reshape(row.shape[0], 1, *tokens.grid)  # type: ignore[misc]
        return tensors.resize(maps, x.shape[-2:]) if self.upsample else maps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._model_name()}, upsample={self.upsample}, max_batch={self.max_batch!r})"


@register_method("attention_rollout", "attention rollout: the class token's attention multiplied through the blocks")
class AttentionRollout(RolloutMethod):
    """``R = B_L ... B_1`` with ``B_l = rows_sum_to_1((fuse_heads(A_l) + I) / 2)`` (Abnar & Zuidema
    2020); the map is the class token's row. ``head_fusion``: ``"mean"`` (the paper), ``"max"`` or
    ``"min"``. Example: ``AttentionRollout(vit, head_fusion="max").attribute(x, 0)``.
    """

    def __init__(self, model: Any, *, head_fusion: str = "mean", upsample: bool = True,
                 tokens: Tokens | None = None, max_batch: MaxBatch = None) -> None:
        super().__init__(model, upsample=upsample, tokens=tokens, max_batch=max_batch)
        if head_fusion not in FUSIONS:
            raise ConvscopeError(f"head_fusion={head_fusion!r} is not one of {', '.join(FUSIONS)}",
                                 "Pass head_fusion='mean' (the paper's), 'max' or 'min'.")
        self.head_fusion = head_fusion

    def relevance(self, weights: list[Tensor], gradients: list[Tensor] | None) -> Tensor:
        fuse = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}[self.head_fusion]
        eye = torch.eye(weights[0].shape[-1], dtype=weights[0].dtype, device=weights[0].device)
        rollout = eye.expand(weights[0].shape[0], -1, -1)
        for a in weights:
            b = 0.5 * fuse(a, dim=1) + 0.5 * eye
            rollout = (b / b.sum(-1, keepdim=True)) @ rollout
        return rollout


@register_method("grad_rollout", "gradient-weighted attention relevance (Chefer et al. 2021), per class")
class GradRollout(RolloutMethod):
    """``R <- R + mean_heads(relu(dS/dA_l * A_l)) R`` from ``R = I`` over the blocks (Chefer et al.
    2021); the map is the class token's row. Example: ``GradRollout(vit).attribute(x, 3)``.
    """

    uses_gradients = True

    def relevance(self, weights: list[Tensor], gradients: list[Tensor] | None) -> Tensor:
        assert gradients is not None
        eye = torch.eye(weights[0].shape[-1], dtype=weights[0].dtype, device=weights[0].device)
        relevance = eye.expand(weights[0].shape[0], -1, -1)
        for a, g in zip(weights, gradients):
            relevance = relevance + torch.relu(g * a).mean(1) @ relevance
        return relevance
