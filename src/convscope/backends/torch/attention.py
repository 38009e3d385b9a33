"""Record every attention's weights during a forward pass, fused kernels included, touching no model.

Fused attention (``F.scaled_dot_product_attention``, which timm uses, and the path torch's
``nn.MultiheadAttention`` takes with ``need_weights=False``, as torchvision's ViT asks) never
materialises the weights ``A = softmax(q k^T * scale + mask)``. Inside ``with AttentionCapture()
as capture:`` a :class:`~torch.overrides.TorchFunctionMode` (thread-local, gone on exit, also when
the forward raises; no module, hook or global function is changed) answers:

- ``F.scaled_dot_product_attention(q, k, v, ...)`` with ``A = softmax(q k^T * scale + mask)``
  and ``A @ v``, computed explicitly;
- ``F.multi_head_attention_forward`` (the body of ``nn.MultiheadAttention``) from its in- and
  out-projection weights, with the same explicit ``A`` per head;
- an explicit ``softmax`` over the last axis of a 4-D ``[B, heads, T, T]`` tensor (attention
  written out, as timm's ``fused_attn=False``) is recorded as it is.

``capture.weights`` lists ``A`` ``[B, heads, Tq, Tk]`` in call order. Each is the tensor the
output is computed from, so gradients of the output reach it (``dS/dA``). The results equal the
fused kernel's up to float rounding (the explicit product sums in another order).

Example::

    with AttentionCapture() as capture:
        logits = vit(x)
    rollout_input = capture.weights           # one [N, heads, T, T] per block
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from convscope.errors import ConvscopeError

_SOFTMAX = {torch.softmax, F.softmax, Tensor.softmax}
_MHA = inspect.signature(F.multi_head_attention_forward)
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, scale: float | None = None
           ) -> tuple[Tensor, Tensor]:
    """``A = softmax(q k^T * scale + bias)`` and ``A @ v`` for ``[..., T, d]`` heads
    (``scale`` default ``1 / sqrt(d)``; ``bias`` additive, ``-inf`` where masked)."""
    logits = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if bias is not None:
        logits = logits + bias
    weights = torch.softmax(logits, dim=-1)
    return weights, weights @ v


def additive(mask: Tensor | None, like: Tensor, masked_when: bool) -> Tensor | None:
    """A mask as an additive bias: a boolean mask is ``-inf`` where it equals ``masked_when``."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(mask == masked_when, -math.inf)


def _refuse(what: str) -> ConvscopeError:
    return ConvscopeError(f"the model's attention uses {what}, which attention capture does not reproduce",
                          "Explain this model with a CAM method or a gradient method instead.")


class AttentionCapture(TorchFunctionMode):
    """Answers fused attention explicitly and records its weights (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._sdpa(**dict(zip(_SDPA_ARGS, args)), **kwargs)
        if func is F.multi_head_attention_forward:
            return self._mha(**_MHA.bind(*args, **kwargs).arguments)
        out = func(*args, **kwargs)
        if func in _SOFTMAX and isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] == out.shape[-2]:
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim in (-1, 3):
                self.weights.append(out)
        return out

    def _sdpa(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              enable_gqa: bool = False) -> Tensor:
        if dropout_p:
            raise _refuse(f"attention dropout ({dropout_p}) at evaluation")
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
            value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
        bias = additive(attn_mask, query, masked_when=False)
        if is_causal:
            causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
            bias = additive(causal, query, masked_when=False) + (0 if bias is None else bias)
        weights, out = attend(query, key, value, bias, scale)
        self.weights.append(weights)
        return out

    def _mha(self, query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int,
             in_proj_weight: Tensor | None, in_proj_bias: Tensor | None, bias_k: Tensor | None, bias_v: Tensor | None,
             add_zero_attn: bool, dropout_p: float, out_proj_weight: Tensor, out_proj_bias: Tensor | None,
             training: bool = True, key_padding_mask: Tensor | None = None, need_weights: bool = True,
             attn_mask: Tensor | None = None, use_separate_proj_weight: bool = False,
             q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
             v_proj_weight: Tensor | None = None, static_k: Tensor | None = None, static_v: Tensor | None = None,
             average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """``nn.MultiheadAttention``'s body (sequence-first ``[L, B, E]`` or unbatched ``[L, E]``)."""
        if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
            raise _refuse("add_bias_kv, add_zero_attn or static keys")
        if training and dropout_p:
            raise _refuse(f"attention dropout ({dropout_p}) in training mode")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        if use_separate_proj_weight:
            w_q, w_k, w_v = q_proj_weight, k_proj_weight, v_proj_weight
        else:
            w_q, w_k, w_v = in_proj_weight.chunk(3)  # type: ignore[union-attr]
        b_q, b_k, b_v = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
        size, batch, width = query.shape

        def heads(t: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:  # [L, B, E] -> [B, H, L, E / H]
            t = F.linear(t, w, b)  # type: ignore[arg-type]
            return t.reshape(t.shape[0], batch, num_heads, -1).permute(1, 2, 0, 3)

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        bias = additive(attn_mask, q, masked_when=True)
        if bias is not None:
            bias = bias.view(batch, num_heads, *bias.shape[-2:]) if bias.dim() == 3 else bias
        if is_causal and attn_mask is None:
            causal = torch.ones(size, k.shape[-2], dtype=torch.bool, device=q.device).tril()
            bias = additive(causal, q, masked_when=False)
        padding = additive(key_padding_mask, q, masked_when=True)
        if padding is not None:
            padding = padding.view(batch, 1, 1, -1)
            bias = padding if bias is None else bias + padding
        weights, out = attend(q, k, v, bias)
        self.weights.append(weights)
        out = F.linear(out.permute(2, 0, 1, 3).reshape(size, batch, width), out_proj_weight, out_proj_bias)
        shown = (weights.mean(1) if average_attn_weights else weights) if need_weights else None
        if unbatched:
            return out.squeeze(1), None if shown is None else shown.squeeze(0)
        return out, shown
