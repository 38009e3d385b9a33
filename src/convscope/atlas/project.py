"""Projections of single activations back to input space, many (image, unit) pairs per pass.

For a pair ``(image n, unit u = (c, y, x))`` of layer ``L`` with activation ``a = act_L[n, u]``
the score is ``a**2 / 2``, so the seed planted in ``L`` is ``a`` at ``u`` and zero elsewhere -
the Zeiler-Fergus "one activation, others zeroed" - and the projection is its signal at the
input under a backward rule: ``deconvnet`` (DeconvReLU), ``guided`` (GuidedReLU) or
``gradient`` (plain autograd). Pairs are stacked as rows of one batch (an image may repeat),
each row selecting its own unit, so one forward and one backward serve ``max_batch`` pairs;
rows never interact, so results do not depend on ``max_batch``.

Example::

    maps = project_units(model, "features.3", images, channels, coords, method="deconvnet", max_batch=64)
    # maps[i] is the input-space projection of unit (channels[i], *coords[i]) of image images[i]
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor, nn

from convscope.backends.torch.rule_mode import apply_rules
from convscope.backends.torch.session import eval_mode
from convscope.errors import ConvscopeError
from convscope.layers import resolve_layer
from convscope.methods.base import check_max_batch, chunks
from convscope.rules import DeconvReLU, Gradient, GuidedReLU, RuleMap

RULES = {"deconvnet": DeconvReLU(), "guided": GuidedReLU(), "gradient": Gradient()}


def rule_map(method: str) -> RuleMap:
    """The :class:`RuleMap` of a projection method name."""
    if method not in RULES:
        raise ConvscopeError(f"unknown projection method {method!r}", f"Use one of {sorted(RULES)}.")
    return RuleMap(RULES[method])


class _Reached(BaseException):
    """Raised by the layer's hook to end the forward pass there (nothing after it matters)."""


def project_units(model: nn.Module, layer: str | nn.Module, images: Tensor, channels: Sequence[int] | Tensor,
                  coords: Sequence[Sequence[int]] | Tensor | np.ndarray, *, method: str = "deconvnet",
                  max_batch: int | None = 64) -> Tensor:
    """Row ``i``: the projection of unit ``(channels[i], *coords[i])`` of ``layer`` for input ``images[i]``.

    ``images`` is ``[P, C, H, W]`` (one row per pair), ``coords`` ``[P, spatial dims]``.
    Returns ``[P, C, H, W]``. The forward pass stops at ``layer``: later layers cannot change
    the projection, and an in-place op after the layer cannot touch the recorded output.
    """
    rules = rule_map(method)
    max_batch = check_max_batch(max_batch)
    channels = torch.as_tensor(np.asarray(channels), dtype=torch.long).reshape(-1)
    coords = torch.as_tensor(np.asarray(coords), dtype=torch.long).reshape(len(channels), -1)
    if images.shape[0] != len(channels):
        raise ConvscopeError(f"{images.shape[0]} images for {len(channels)} units", "Give one image row per unit.")
    module = resolve_layer(model, layer)
    found: list[Tensor] = []

    def reached(_module: nn.Module, _inputs: object, output: object) -> None:
        found.append(output)  # type: ignore[arg-type]
        raise _Reached

    out = torch.empty_like(images, dtype=torch.float32)
    rule_scope = nullcontext() if rules.is_gradient else apply_rules(model, rules)
    handle = module.register_forward_hook(reached)
    try:
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad(), rule_scope:
            for rows in chunks(images.shape[0], max_batch):
                leaf = images[rows].detach().clone().requires_grad_()
                found.clear()
                try:
                    model(leaf)
                except _Reached:
                    pass
                if not found or not isinstance(found[0], Tensor):
                    raise ConvscopeError(f"layer {layer!r} did not produce a tensor in the forward pass",
                                         "Pick a convolutional layer the model's forward calls.")
                act = found[0]
                index = (torch.arange(act.shape[0], device=act.device), channels[rows].to(act.device),
                         *coords[rows].to(act.device).unbind(1))
                a = act[index]
                (grad,) = torch.autograd.grad((0.5 * a * a).sum(), leaf)
                out[rows] = grad.detach()
    finally:
        handle.remove()
    return out
