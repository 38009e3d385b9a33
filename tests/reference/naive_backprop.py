"""Naive reference for rule-based backprop, written independently of convscope.

Mechanism (deliberately different from convscope's TorchFunctionMode): a deep copy of the model
whose ``nn.ReLU`` modules are swapped for a module calling a hand-written autograd function,
and the functional ReLU spellings monkey-patched to the same function for the duration. Every
ReLU is computed out of place, so in-place and reused ReLU modules need no care.

    rule "gradient": g * [z > 0];  "deconv": g * [g > 0];  "guided": g * [g > 0] * [z > 0]

Example::

    grad = naive_attribution(model, x, lambda m, x: m(x)[:, 3], rule="guided")
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RULES = ("gradient", "deconv", "guided")


class NaiveRuleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, rule: str) -> Tensor:  # noqa: ANN401
        ctx.save_for_backward(z)
        ctx.rule = rule
        return torch.where(z > 0, z, torch.zeros_like(z))

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # noqa: ANN401
        (z,) = ctx.saved_tensors
        keep = {"gradient": z > 0, "deconv": g > 0, "guided": (g > 0) & (z > 0)}[ctx.rule]
        return torch.where(keep, g, torch.zeros_like(g)), None


class NaiveReLU(nn.Module):
    """Stands in for an ``nn.ReLU`` (in place or not): always out of place, rule ``rule``."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, z: Tensor) -> Tensor:
        return NaiveRuleReLU.apply(z, self.rule)


def swap_relus(model: nn.Module, rule: str) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU`` replaced by :class:`NaiveReLU`."""
    clone = copy.deepcopy(model)
    for parent in list(clone.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, NaiveReLU(rule))
    return clone


@contextmanager
def patched_functional_relu(rule: str) -> Iterator[None]:
    """``F.relu``, ``torch.relu(_)``, ``Tensor.relu(_)`` and ``F.threshold(x, 0, 0)`` use the rule."""
    naive = lambda t, *a, **k: NaiveRuleReLU.apply(t, rule)  # noqa: E731
    original_threshold = F.threshold

    def threshold(t: Tensor, th: float, value: float, inplace: bool = False) -> Tensor:
        return naive(t) if th == 0 and value == 0 else original_threshold(t, th, value, inplace)

    targets = [(F, "relu", naive), (F, "relu_", naive), (torch, "relu", naive), (torch, "relu_", naive),
               (torch.Tensor, "relu", naive), (torch.Tensor, "relu_", naive), (F, "threshold", threshold)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    try:
        for owner, name, value in targets:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def naive_attribution(model: nn.Module, x: Tensor, score: Callable[[nn.Module, Tensor], Tensor],
                      rule: str = "gradient") -> Tensor:
    """``d sum(score(model', x)) / dx`` where ``model'`` back-propagates every ReLU by ``rule``."""
    clone = swap_relus(model, rule).eval()
    leaf = x.detach().clone().requires_grad_()
    with patched_functional_relu(rule):
        s = score(clone, leaf)
    (grad,) = torch.autograd.grad(s.sum(), leaf)
    return grad
