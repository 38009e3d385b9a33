"""A ReLU whose backward pass is a :class:`~convscope.rules.BackwardRule`.

Forward: exactly ``torch.relu`` (or ``torch.relu_`` in place, marking the input dirty so
autograd's version tracking stays correct). Backward: ``rule.backward(g, relu_output)``.

Example::

    y = rule_relu(x, GuidedReLU())            # y == relu(x); dy -> relu(dy) * [x > 0]
    rule_relu(h, DeconvReLU(), inplace=True)  # h is rectified in place, like h.relu_()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from convscope.rules import BackwardRule


class _RuleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: BackwardRule, inplace: bool) -> Tensor:  # noqa: ANN401
        out = torch.relu_(x) if inplace else torch.relu(x)
        if inplace:
            ctx.mark_dirty(x)
        ctx.rule = rule
        if rule.needs_output:
            ctx.save_for_backward(out)  # the output keeps the input's sign: [z > 0] == [r > 0]
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN401
        output = ctx.saved_tensors[0] if ctx.rule.needs_output else None
        return ctx.rule.backward(grad, output), None, None


def rule_relu(x: Tensor, rule: BackwardRule, inplace: bool = False) -> Tensor:
    """``relu(x)`` whose backward pass applies ``rule`` (in place when ``inplace``)."""
    return _RuleReLU.apply(x, rule, inplace)
