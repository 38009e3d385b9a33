"""LRP rules: how the relevance ``R`` of a layer's outputs is shared among its inputs.

A rule sees one *linear* layer ``z = f(x; w, b)`` (a convolution, a linear layer, a pooling that
averages, a batch norm folded into its convolution) and the relevance ``R`` of each output
``z_k``, and returns the relevance of each input ``x_j``. With ``s(z) = z + eps * sign(z)``
(``sign(0) = 1``, Zennit's stabiliser), ``x+ = max(x, 0)``, ``x- = min(x, 0)``, ``w+``/``w-``
likewise, and ``J_w^T g`` the transposed layer applied to ``g``:

=================  ======================================================================
rule               ``R_j =``
=================  ======================================================================
``Epsilon``        ``sum_k x_j w_jk R_k / s(z_k)``                 (LRP-0 for ``epsilon=0``)
``Norm``           the same, a stabiliser only (pooling, residual sums)
``ZPlus``          ``sum_k (x+_j w+_jk + x-_j w-_jk) R_k / s(z+_k)``
``AlphaBeta``      ``alpha * positive share - beta * negative share`` (``alpha - beta = 1``)
``Gamma``          as Epsilon with ``w + gamma * w+`` (``w + gamma * w-`` for negative outputs)
``ZBox``           ``sum_k (x_j w_jk - l_j w+_jk - h_j w-_jk) R_k / s(z_k - l.w+ - h.w-)``
``WSquare``        ``sum_k w_jk^2 R_k / s(sum_i w_ik^2)``
``Flat``           ``sum_k 1 * R_k / s(sum_i 1)``                   (every input alike)
``Pass``           ``R_j = R_j``                                    (element-wise layers)
=================  ======================================================================

The parameters are Zennit's (its ``zennit.rules``, release 0.5.1), so that the maps agree.
Rules are objects holding configuration only; the layer is given to :meth:`LRPRule.relevance`.

Example::

    rule = Epsilon(0.25)
    layer = Layer(lambda x, w, b: F.linear(x, w, b), w, b)
    r_in = rule.relevance(layer, x, r_out)       # sum(r_in) == sum(r_out) when b == 0 and eps -> 0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from convscope.errors import ConvscopeError
from convscope.methods.lrp.ops import TORCH, RuleOps, stabilize

LayerFn = Callable[[Tensor, Tensor | None, Tensor | None], Tensor]

__all__ = ["AlphaBeta", "Epsilon", "Flat", "Gamma", "LRPRule", "Layer", "Norm", "Pass", "WSquare", "ZBox", "ZPlus",
           "stabilize"]


@dataclass(frozen=True)
class Layer:
    """A layer linear in its input: ``fn(x, weight, bias)``; ``weight``/``bias`` None where it has none
    (average pooling), and then parameter modifications leave it as it is. ``ops``: its framework's
    tensor operations (:mod:`~convscope.methods.lrp.ops`; PyTorch by default)."""

    fn: LayerFn
    weight: Tensor | None = None
    bias: Tensor | None = None
    ops: RuleOps = TORCH

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x, self.weight, self.bias)

    def params(self, modify: Callable[[Tensor], Tensor], bias: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """``(modify(weight), modify(bias))``; the bias is dropped when ``bias`` is False."""
        w = None if self.weight is None else modify(self.ops.detach(self.weight))
        b = None if self.bias is None or not bias else modify(self.ops.detach(self.bias))
        return w, b


def _keep(w: Any) -> Any:  # noqa: ANN401
    return w


class LRPRule:
    """How relevance flows back through one linear layer (see the module docstring)."""

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        """The relevance of ``x``, given the relevance ``r`` of ``layer(x)``."""
        raise NotImplementedError

    def _config(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._config().items())})"


class Pass(LRPRule):
    """``R_j = R_j``: relevance passes an element-wise layer (activations, unfolded normalisation)
    unchanged. Example: ``Pass().relevance(layer, x, r) is r``."""

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        return r


class Epsilon(LRPRule):
    """``R_j = x_j * sum_k w_jk R_k / s(z_k)``, ``z = f(x; w, b)``, ``s(z) = z + epsilon * sign(z)``.

    LRP-0 for ``epsilon=0`` (Bach et al. 2015). Example: ``Epsilon(0.25)`` for middle layers.
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = float(epsilon)

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        found = layer.ops.products(layer.fn, [(x, layer.params(_keep))])
        (g,) = found.transposed([r / layer.ops.stabilize(found.outs[0], self.epsilon)])
        return x * g


class Norm(Epsilon):
    """Epsilon with a small stabiliser only: ``R_j = x_j * sum_k dz_k/dx_j R_k / s(z_k)``, for layers
    without weights (average pooling) and residual sums (``R_i = x_i R / s(x_1 + x_2)``).

    Example: ``Norm()`` is every built-in composite's rule for pooling and sums.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer)

    def _config(self) -> dict[str, object]:
        return {"stabilizer": self.epsilon}


class ZPlus(LRPRule):
    """``R_j = sum_k (x+_j w+_jk + x-_j w-_jk) R_k / s(z+_k)``, ``z+ = f(x+; w+, b+) + f(x-; w-, 0)``:
    only the positive contributions (Montavon et al. 2017; for negative inputs as Zennit does).

    Example: ``ZPlus()`` for convolutions (``epsilon_plus``).
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        o = layer.ops
        xp, xn = o.pos(x), o.neg(x)
        found = o.products(layer.fn, [(xp, layer.params(o.pos)), (xn, layer.params(o.neg, bias=False))])
        g = r / o.stabilize(found.outs[0] + found.outs[1], self.stabilizer)
        gp, gn = found.transposed([g, g])
        return xp * gp + xn * gn


class AlphaBeta(LRPRule):
    """``R_j = alpha * sum_k p_jk R_k / s(P_k) - beta * sum_k n_jk R_k / s(N_k)`` with the positive
    contributions ``p = x+ w+ + x- w-`` (``P = f(x+; w+, b+) + f(x-; w-, 0)``) and the negative ones
    ``n = x+ w- + x- w+`` (``N = f(x+; w-, b-) + f(x-; w+, 0)``); ``alpha - beta = 1``.

    Example: ``AlphaBeta(2, 1)`` for convolutions (``epsilon_alpha2_beta1``); ``AlphaBeta(1, 0)``
    equals :class:`ZPlus`.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        if alpha < 0 or beta < 0 or alpha - beta != 1:
            raise ConvscopeError(f"AlphaBeta(alpha={alpha}, beta={beta}) needs alpha, beta >= 0 and alpha - beta == 1",
                                 "Use e.g. AlphaBeta(2, 1) or AlphaBeta(1, 0).")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        o = layer.ops
        xp, xn = o.pos(x), o.neg(x)
        found = o.products(layer.fn, [(xp, layer.params(o.pos)), (xn, layer.params(o.neg, bias=False)),
                                      (xp, layer.params(o.neg)), (xn, layer.params(o.pos, bias=False))])
        z = found.outs
        gp = r / o.stabilize(z[0] + z[1], self.stabilizer)
        gn = r / o.stabilize(z[2] + z[3], self.stabilizer)
        t = found.transposed([gp, gp, gn, gn])
        return self.alpha * (xp * t[0] + xn * t[1]) - self.beta * (xp * t[2] + xn * t[3])


class Gamma(LRPRule):
    """Generalised gamma rule (Montavon et al. 2019, Andeol et al. 2021), Zennit's form: for an output
    with ``z_k > 0``, ``R_j = sum_k (x+_j u_jk + x-_j v_jk) R_k / s(Z+_k)`` with ``u = w + gamma w+``,
    ``v = w + gamma w-`` (``Z+ = f(x+; u, b + gamma b+) + f(x-; v, 0)``); for ``z_k < 0`` the same with
    ``u`` and ``v`` swapped. ``gamma = 0`` is LRP-0, ``gamma -> inf`` approaches :class:`ZPlus`.

    Example: ``Gamma(0.25)`` for convolutions (``epsilon_gamma_box``).
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        gamma, o = self.gamma, layer.ops

        def up(w: Tensor) -> Tensor:
            return w + gamma * o.pos(w)

        def down(w: Tensor) -> Tensor:
            return w + gamma * o.neg(w)

        xp, xn = o.pos(x), o.neg(x)
        found = o.products(layer.fn, [(xp, layer.params(up)), (xn, layer.params(down, bias=False)),
                                      (xp, layer.params(down)), (xn, layer.params(up, bias=False))])
        z = found.outs
        plain = o.detach(layer(o.detach(x)))
        gp = o.cast(plain > 0, r) * r / o.stabilize(z[0] + z[1], self.stabilizer)
        gn = o.cast(plain < 0, r) * r / o.stabilize(z[2] + z[3], self.stabilizer)
        t = found.transposed([gp, gp, gn, gn])
        return xp * t[0] + xn * t[1] + xp * t[2] + xn * t[3]


class ZBox(LRPRule):
    """``R_j = sum_k (x_j w_jk - l_j w+_jk - h_j w-_jk) R_k / s(z_k)``,
    ``z = f(x; w, b) - f(l; w+, b+) - f(h; w-, b-)``: for inputs bounded by ``low <= x <= high``
    (Montavon et al. 2017). ``low``/``high``: numbers or tensors broadcasting against one sample
    (per channel: shape ``[C, 1, 1]``; on a Keras model, channels-last: ``[C]``).

    Example: ``ZBox(low=-2.12, high=2.64)`` for the first layer on ImageNet-normalised pixels.
    """

    def __init__(self, low: float | Tensor, high: float | Tensor, stabilizer: float = 1e-6) -> None:
        self.low, self.high, self.stabilizer = low, high, float(stabilizer)

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        o = layer.ops
        low, high = o.bound(self.low, x), o.bound(self.high, x)
        found = o.products(layer.fn, [(x, layer.params(_keep)), (low, layer.params(o.pos)),
                                      (high, layer.params(o.neg))])
        g = r / o.stabilize(found.outs[0] - found.outs[1] - found.outs[2], self.stabilizer)
        t = found.transposed([g, g, g])
        return x * t[0] - low * t[1] - high * t[2]


class WSquare(LRPRule):
    """``R_j = sum_k w_jk^2 R_k / s(sum_i w_ik^2 + b_k^2)``: the input's values play no part
    (Montavon et al. 2017), for a first layer whose inputs are unbounded.

    Example: ``WSquare()`` as ``first=`` of a :class:`~convscope.methods.lrp.Composite`.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        o = layer.ops
        found = o.products(layer.fn, [(o.ones_like(x), layer.params(o.square))])
        (g,) = found.transposed([r / o.stabilize(found.outs[0], self.stabilizer)])
        return g


class Flat(LRPRule):
    """``R_j = sum_k [j feeds k] R_k / s(#inputs of k)``: every input of an output gets an equal share
    (Lapuschkin et al. 2019); WSquare with all weights one and no bias.

    Example: ``Flat()`` is the first layer's rule of ``epsilon_plus_flat``.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def relevance(self, layer: Layer, x: Tensor, r: Tensor) -> Tensor:
        o = layer.ops
        found = o.products(layer.fn, [(o.ones_like(x), layer.params(o.ones_like, bias=False))])
        (g,) = found.transposed([r / o.stabilize(found.outs[0], self.stabilizer)])
        return g
