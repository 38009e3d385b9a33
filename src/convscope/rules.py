"""Backward rules: how a signal flows back through a ReLU, and where each rule applies.

A rule replaces the ReLU's backward pass ``grad_in = rule(grad_out, relu_output)``; the forward
pass is never changed. With ``r = relu(z)`` and upstream signal ``g``:

- :class:`Gradient`:   ``g * [z > 0]``               (the true gradient: saliency)
- :class:`DeconvReLU`: ``relu(g)``                   (Zeiler & Fergus's deconvnet)
- :class:`GuidedReLU`: ``relu(g) * [z > 0]``         (Springenberg et al.'s guided backprop)

A :class:`RuleMap` says which rule each ReLU gets: the rule of the innermost listed layer whose
forward pass contains the ReLU call (a ReLU module, or a block calling ``F.relu``), else the
default. Deconvnet and guided backprop are therefore presets, not algorithms.

Example::

    rules = RuleMap(GuidedReLU(), layers={"classifier": Gradient()})
    GuidedBackprop(model, rules=rules).attribute(x, 3)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.formats import check_layers_visible
from convscope.layers import resolve_layer


class BackwardRule(ABC):
    """How a signal ``g`` flows back through ``r = relu(z)``; ``output`` is ``r`` ([z > 0] == [r > 0])."""

    #: whether :meth:`backward` reads ``output`` (if not, the forward pass need not keep it)
    needs_output: bool = True

    @abstractmethod
    def backward(self, grad: Tensor, output: Tensor | None) -> Tensor:
        """The signal passed to the ReLU's input."""

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _through_positive(grad: Tensor, output: Tensor) -> Tensor:
    """``grad * [output > 0]`` as one fused kernel (the one torch's own relu backward uses)."""
    return torch.ops.aten.threshold_backward(grad, output, 0)


class Gradient(BackwardRule):
    """The true ReLU gradient: ``g * [z > 0]``. Example: ``RuleMap(Gradient())`` = plain backprop."""

    def backward(self, grad: Tensor, output: Tensor | None) -> Tensor:
        assert output is not None
        return _through_positive(grad, output)


class DeconvReLU(BackwardRule):
    """The deconvnet rule: ``relu(g)``, the forward input's sign is ignored.

    Example: ``RuleMap(DeconvReLU())`` is what :class:`~convscope.methods.DeconvNet` uses.
    """

    needs_output = False

    def backward(self, grad: Tensor, output: Tensor | None) -> Tensor:
        return torch.relu(grad)


class GuidedReLU(BackwardRule):
    """The guided-backprop rule: ``relu(g) * [z > 0]``.

    Example: ``RuleMap(GuidedReLU())`` is what :class:`~convscope.methods.GuidedBackprop` uses.
    """

    def backward(self, grad: Tensor, output: Tensor | None) -> Tensor:
        assert output is not None
        return _through_positive(torch.relu(grad), output)


class RuleMap:
    """Which :class:`BackwardRule` each ReLU gets.

    ``layers`` maps qualified layer names to rules; a ReLU called while a listed layer's forward
    runs gets that layer's rule (the innermost listed layer wins), every other ReLU - module or
    functional, anywhere - gets ``default``.

    Example::

        RuleMap(DeconvReLU())                                    # deconvnet everywhere
        RuleMap(GuidedReLU(), layers={"layer4": Gradient()})     # but true gradient in layer4
    """

    def __init__(self, default: BackwardRule | None = None,
                 layers: Mapping[str, BackwardRule] | None = None) -> None:
        default = Gradient() if default is None else default
        for where, rule in [("default", default), *((repr(k), v) for k, v in (layers or {}).items())]:
            if not isinstance(rule, BackwardRule):
                raise ConvscopeError(f"the rule for {where} is {rule!r}, not a backward rule",
                                     "Use Gradient(), DeconvReLU() or GuidedReLU() from convscope.rules.")
        for name in layers or {}:
            if not isinstance(name, str):
                raise ConvscopeError(f"RuleMap layer keys must be qualified layer names, got {name!r}",
                                     "Write e.g. {'features.3': GuidedReLU()}.")
        self.default = default
        self.layers: Mapping[str, BackwardRule] = MappingProxyType(dict(layers or {}))

    @property
    def is_gradient(self) -> bool:
        """True when every ReLU gets the plain gradient (then no rule needs applying at all)."""
        return all(isinstance(r, Gradient) for r in self.rules())

    def key(self) -> tuple[object, ...]:
        """A hashable description (compiled functions are cached by it); ``()`` for plain gradients."""
        return () if self.is_gradient else (self.default, tuple(self.layers.items()))

    def rules(self) -> Iterator[BackwardRule]:
        """The default rule, then each per-layer rule."""
        yield self.default
        yield from self.layers.values()

    def resolve(self, model: nn.Module) -> list[tuple[nn.Module, BackwardRule]]:
        """The listed layers as modules of ``model`` (unknown names raise a clear error). Rules other
        than the gradient cannot reach the ReLUs of a TorchScript model: it refuses them."""
        if not self.is_gradient:
            check_layers_visible(model, f"the backward rule {self.default!r}" if not self.layers else repr(self))
        return [(resolve_layer(model, name), rule) for name, rule in self.layers.items()]

    def __repr__(self) -> str:
        extra = f", layers={dict(self.layers)!r}" if self.layers else ""
        return f"RuleMap({self.default!r}{extra})"


def as_rule_map(rules: RuleMap | BackwardRule | None, default: BackwardRule) -> RuleMap:
    """A :class:`RuleMap` from a map, a single rule (applied everywhere) or None (``default``)."""
    if rules is None:
        return RuleMap(default)
    if isinstance(rules, BackwardRule):
        return RuleMap(rules)
    if isinstance(rules, RuleMap):
        return rules
    raise ConvscopeError(f"rules={rules!r} is neither a RuleMap nor a backward rule",
                         "Pass e.g. rules=GuidedReLU() or rules=RuleMap(GuidedReLU(), layers={...}).")


__all__ = ["BackwardRule", "DeconvReLU", "Gradient", "GuidedReLU", "RuleMap", "as_rule_map"]
