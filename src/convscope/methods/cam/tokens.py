"""Vision transformers in the CAM family: a layer's tokens as a feature map, with no reshape code.

For each CAM layer, :func:`layer_views` gives the :class:`~convscope.backends.torch.tokens.Tokens`
that turn its output into ``[N, D, h, w]`` (the CAM weights those channels) and back (Ablation-CAM
sets the layer's output): ViT tokens ``[N, T, D]`` lose their class, distillation and register
tokens, Swin's ``[N, h, w, D]`` turns channels-first; a CNN's map stays as it is. The layout is
read from the model (see :mod:`convscope.backends.torch.tokens`); ``tokens=Tokens(...)`` gives it
where the model does not say. Keras maps are channels-last by convention and stay so.

Example::

    GradCAM(vit).attribute(x, 3)                               # layer: the last block's norm1
    GradCAM(model, "blocks.3", tokens=Tokens(prefix=1, grid=(7, 7))).attribute(x, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convscope.backends.protocol import Tensor
from convscope.backends.torch.tokens import Tokens, layer_tokens
from convscope.errors import ConvscopeError

__all__ = ["Tokens", "check_tokens", "layer_views"]


def check_tokens(tokens: Any) -> Tokens | None:
    """``tokens`` if it is None or a :class:`Tokens`, else a clear error."""
    if tokens is not None and not isinstance(tokens, Tokens):
        raise ConvscopeError(f"tokens={tokens!r} is not a token layout",
                             "Pass tokens=Tokens(prefix=1, grid=(14, 14)) (from convscope.methods.cam import Tokens).")
    return tokens


def layer_views(method: Any, x: Tensor, keys: Sequence[Any], tokens: Tokens | None) -> tuple[Tokens | None, ...]:
    """Per layer key, the :class:`Tokens` of its output on ``method``'s model (None on Keras)."""
    backend = method.backend
    if backend.name != "torch":
        if tokens is not None:
            raise ConvscopeError("tokens= describes PyTorch token outputs; Keras feature maps are [N, h, w, C] already",
                                 "Leave tokens out for a Keras model.")
        return tuple(None for _ in keys)
    return tuple(layer_tokens(method.model, x, backend.layer_name(method.model, k), tokens) for k in keys)
