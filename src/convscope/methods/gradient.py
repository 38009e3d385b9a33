"""Gradient methods: one backward pass per target, differing only in the ReLU rule and a final product.

With ``s`` the target's score and ``a`` the input (or the output of layer ``wrt``):

- :class:`Saliency`:       ``ds/da``                                  (Simonyan et al. 2013)
- :class:`InputXGradient`: ``a * ds/da``                              (Shrikumar et al. 2016)
- :class:`DeconvNet`:      ``ds/da`` with :class:`~convscope.rules.DeconvReLU` at every ReLU
- :class:`GuidedBackprop`: ``ds/da`` with :class:`~convscope.rules.GuidedReLU` at every ReLU

The seed's "gradient of a layer's output w.r.t. the input" is ``Saliency`` with a Channel or
Neuron target. Neuron variants are targets, not classes:
``GuidedBackprop(model).attribute(x, Neuron("features.28", 5, 3, 4))``.

Example::

    maps = DeconvNet(model, max_batch=16).attribute(x, targets=[3, MaxNeuron("features.12", 7)])
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from convscope.backends.protocol import Engine, Ops, Run, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.methods.base import Method, Rows, chunked
from convscope.methods.registry import register_method
from convscope.rules import BackwardRule, DeconvReLU, Gradient, GuidedReLU, RuleMap, as_rule_map
from convscope.targets import MaxNeuron, Target, strongest


def strongest_units(ops: Ops, acts: Tensor, channel: int, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` largest values ``[n, count]`` of feature map ``channel`` of ``acts`` and their
    spatial coordinates ``[n, count, len(space)]``: descending, ties to the first unit in row-major
    order (the units :class:`~convscope.targets.MaxNeuron` ranks).

    Example: ``values, coords = strongest_units(ops, acts, 7, 3)``; ``coords[n, 0]`` is ``(y, x)``.
    """
    values, flat = strongest(ops.flat(ops.channel(acts, channel)), count, ops)
    coords = []
    for size in reversed([int(acts.shape[axis]) for axis in ops.space(acts)]):  # the last axis varies fastest
        coords.append(flat % size)
        flat = flat // size
    return values, ops.stack(coords[::-1], -1) if coords else flat[..., None][..., :0]


class GradientMethod(Method):
    """``combine(a, ds/da)`` with the ReLU rules of ``rules`` (default: the class's preset)."""

    default_rule: BackwardRule = Gradient()
    scores_input = True

    def __init__(self, model: Any, *, max_batch: MaxBatch = None, rules: RuleMap | BackwardRule | None = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.rules = as_rule_map(rules, self.default_rule)
        self.backend.accepts_rules(self.rules)

    def _rules(self) -> RuleMap | None:
        return self.rules

    def combine(self, value: Tensor, grad: Tensor) -> Tensor:
        """The map from the attributed tensor's value and the signal reaching it."""
        return grad

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        return engine.compiled(("gradient", self.rules.key()), self._maps)(x, rows)

    def _maps(self, engine: Engine, x: Tensor, rows: Rows) -> list[Tensor]:
        """One backward pass per target through the forward pass of the chunk ``x``."""
        return self._signals(engine, engine.forward(x, rows, grad=True, rules=self.rules))

    def _signals(self, engine: Engine, run: Run) -> list[Tensor]:
        value = run.value
        return [self.combine(engine.ops.detach(value), run.gradients(i, [value])[0]) for i in range(len(run.scores))]

    def attribute_units(self, x: Any, layer: Any, channels: Sequence[int], top: int = 1
                        ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The maps of the ``top`` strongest units of each feature map ``c`` of ``channels`` of
        ``layer``: ``maps[j * top + k]`` attributes ``MaxNeuron(layer, channels[j], rank=k)``, the
        ``k``-th strongest unit ``a`` seeded alone (``s = a**2 / 2``, so ``ds/d act = a`` there);
        ``values[j]`` ``[N, top]`` are those units' activations, ``positions[j]`` ``[N, top, dims]``
        their spatial coordinates. One forward pass per chunk of ``max_batch`` samples serves all.
        :func:`convscope.projection.project` is the entry point.

        Example: ``maps, values, positions = DeconvNet(model).attribute_units(x, "features.12", [7], top=3)``.
        """
        targets = [MaxNeuron(layer, c, rank=k) for c in channels for k in range(top)]
        key = self.backend.feature_key(self.model, layer)
        units = partial(self._units, layer=key, channels=tuple(channels), top=top)

        def body(engine: Engine, xs: Tensor, _targets: list[Target], _wrt: Any) -> list[Tensor]:
            fn = engine.compiled(("units", self.rules.key(), key, tuple(channels), top), units)
            return chunked(engine, int(xs.shape[0]), lambda r: fn(xs[r.start:r.stop], engine.rows(r)))

        found = self._run(x, None, None, targets, body)
        n, m = len(targets), len(channels)
        return found[:n], found[n:n + m], found[n + m:]

    def _units(self, engine: Engine, x: Tensor, rows: Rows, *, layer: Any, channels: tuple[int, ...],
               top: int) -> list[Tensor]:
        """The chunk's maps, then each channel's unit values, then their coordinates."""
        run = engine.forward(x, rows, grad=True, rules=self.rules)
        act = engine.ops.detach(run.act(layer))
        units = [strongest_units(engine.ops, act, c, top) for c in channels]
        return [*self._signals(engine, run), *(v for v, _ in units), *(p for _, p in units)]


@register_method("saliency", "gradient of the target w.r.t. the input (or a layer)")
class Saliency(GradientMethod):
    """``ds/da``: the plain gradient (signed; take ``.abs()`` yourself for Simonyan's maps).

    Example: ``Saliency(model).attribute(x, Channel("features.3", 5))``.
    """


@register_method("input_x_gradient", "input times the gradient of the target")
class InputXGradient(GradientMethod):
    """``a * ds/da``. Example: ``InputXGradient(model).attribute(x, 3)``."""

    def combine(self, value: Tensor, grad: Tensor) -> Tensor:
        return value * grad


@register_method("deconvnet", "Zeiler-Fergus deconvnet: backprop passing relu(signal) at each ReLU")
class DeconvNet(GradientMethod):
    """``ds/da`` with the deconvnet rule ``relu(g)`` at every ReLU (Zeiler & Fergus 2014).

    Equals the explicit top-down network of :func:`convscope.deconv.reconstruct` on chains.
    Example: ``DeconvNet(model).attribute(x, MaxNeuron("features.12", 7))``.
    """

    default_rule = DeconvReLU()
    #: ReLU rules inside the model: not on a TorchScript model (:mod:`convscope.formats`)
    frameworks = ("torch", "tf")


@register_method("guided_backprop", "guided backprop: relu(signal) * [input > 0] at each ReLU")
class GuidedBackprop(GradientMethod):
    """``ds/da`` with the guided rule ``relu(g) * [z > 0]`` at every ReLU (Springenberg et al. 2015).

    Example: ``GuidedBackprop(model).attribute(x, Neuron("features.28", 5, 3, 4))``.
    """

    default_rule = GuidedReLU()
    #: ReLU rules inside the model: not on a TorchScript model (:mod:`convscope.formats`)
    frameworks = ("torch", "tf")
