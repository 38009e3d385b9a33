"""The few tensor operations LRP rules are written with, one object per framework.

The rules (:mod:`~convscope.methods.lrp.rules`) hold each formula once; a
:class:`~convscope.methods.lrp.rules.Layer` carries the operations of its framework
(:data:`TORCH` by default, the TensorFlow ones in :mod:`convscope.methods.lrp.keras.ops`).
Besides element-wise helpers, a rule needs the *transposed products* of a linear layer:
:meth:`RuleOps.products` evaluates ``z_i = f(x_i; w_i, b_i)`` for a few inputs and parameter sets
and returns ``J_i^T g_i`` for the signals ``g_i`` given later (``f``'s transpose, by autograd).

Example::

    found = TORCH.products(layer.fn, [(x, (w, b))])
    (g,) = found.transposed([r / stabilize(found.outs[0], 1e-6)])   # J^T (R / s(z))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["TORCH", "Products", "RuleOps", "stabilize"]

Params = tuple[Any, Any]


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = 1``: a denominator that is never zero."""
    return z + ((z == 0).to(z) + z.sign()) * epsilon


@dataclass(frozen=True)
class Products:
    """``outs``: each ``f(x_i; params_i)`` (detached); ``transposed(g)``: each ``J_i^T g_i``."""

    outs: list[Any]
    transposed: Callable[[Sequence[Any]], list[Any]]


class RuleOps(Protocol):
    """What a rule does to tensors, in one framework."""

    def detach(self, t: Any) -> Any: ...
    def pos(self, t: Any) -> Any: """``max(t, 0)``."""
    def neg(self, t: Any) -> Any: """``min(t, 0)``."""
    def ones_like(self, t: Any) -> Any: ...
    def square(self, t: Any) -> Any: ...
    def stabilize(self, z: Any, epsilon: float) -> Any: """See :func:`stabilize`."""
    def cast(self, mask: Any, like: Any) -> Any: """A boolean mask in ``like``'s dtype."""
    def bound(self, value: Any, like: Any) -> Any: """A number or array broadcast to ``like``'s shape and dtype."""
    def products(self, fn: Callable[..., Any], pairs: Sequence[tuple[Any, Params]]) -> Products:
        """``f(x_i; *params_i)`` for each pair, and their transposes (see the module docstring)."""


class _TorchOps:
    """:class:`RuleOps` in PyTorch."""

    def detach(self, t: Tensor) -> Tensor:
        return t.detach()

    def pos(self, t: Tensor) -> Tensor:
        return t.clamp(min=0)

    def neg(self, t: Tensor) -> Tensor:
        return t.clamp(max=0)

    def ones_like(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def square(self, t: Tensor) -> Tensor:
        return torch.square(t)

    def stabilize(self, z: Tensor, epsilon: float) -> Tensor:
        return stabilize(z, epsilon)

    def cast(self, mask: Tensor, like: Tensor) -> Tensor:
        return mask.to(like)

    def bound(self, value: Any, like: Tensor) -> Tensor:
        return torch.as_tensor(value).to(like).expand_as(like)

    def products(self, fn: Callable[..., Tensor], pairs: Sequence[tuple[Tensor, Params]]) -> Products:
        leaves = [x.detach().requires_grad_() for x, _ in pairs]
        outs = [fn(leaf, *params) for leaf, (_, params) in zip(leaves, pairs)]

        def transposed(grads: Sequence[Tensor]) -> list[Tensor]:
            found = torch.autograd.grad(outs, leaves, grad_outputs=list(grads), allow_unused=True)
            return [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, found)]

        return Products([o.detach() for o in outs], transposed)


#: the PyTorch operations (every :class:`~convscope.methods.lrp.rules.Layer`'s default)
TORCH: RuleOps = _TorchOps()
