"""Composites: which LRP rule each layer of a model gets.

A :class:`Composite` gives a rule per kind of layer - convolutions, linear layers, the first of
them (the one reading the input), average pooling, residual sums, unfolded normalisations - and
takes a user's own mapping from layer names or layer types to rules, which wins over the kinds
(the innermost listed layer around a call decides, as in :class:`~convscope.rules.RuleMap`); on
a Keras model, Keras layer names or paths and Keras layer classes.
Activations always pass relevance through (:class:`~convscope.methods.lrp.rules.Pass`).

The named composites are Zennit's, with its default parameters:

==============================  =========  =========  =============  ========  =======  ====
name                            conv       linear     first layer    pooling   sums     norm
==============================  =========  =========  =============  ========  =======  ====
``epsilon_plus``                ZPlus      Epsilon    (conv/linear)  Norm      Norm     Pass
``epsilon_plus_flat``           ZPlus      Epsilon    Flat           Norm      Norm     Pass
``epsilon_gamma_box``           Gamma      Epsilon    ZBox(low,high) Norm      Norm     Pass
``epsilon_alpha2_beta1``        AlphaBeta  Epsilon    (conv/linear)  Norm      Norm     Pass
``epsilon_alpha2_beta1_flat``   AlphaBeta  Epsilon    Flat           Norm      Norm     Pass
==============================  =========  =========  =============  ========  =======  ====

(``epsilon=1e-6``, ``stabilizer=1e-6``, ``gamma=0.25``, ``AlphaBeta(2, 1)``.)

Example::

    composite("epsilon_gamma_box", low=-2.12, high=2.64)
    composite("epsilon_plus", layers={"classifier.6": Epsilon(0.25), nn.Linear: Epsilon(0.1)})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from torch import Tensor, nn

from convscope.errors import ConvscopeError, did_you_mean
from convscope.methods.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, LRPRule, Norm, Pass, ZBox, ZPlus

__all__ = ["COMPOSITES", "Composite", "composite"]

#: the kinds of layer a composite gives rules to
KINDS = ("conv", "linear", "first", "pool", "sum", "norm")


@dataclass(frozen=True)
class Composite:
    """Rules by kind of layer, and ``layers``: qualified names or module types -> rules (they win).

    ``first`` is the rule of the first convolution or linear layer a forward pass runs (None: its
    kind's rule). Example: ``Composite(conv=ZPlus(), linear=Epsilon(), first=Flat())``.
    """

    conv: LRPRule
    linear: LRPRule
    first: LRPRule | None = None
    pool: LRPRule = field(default_factory=Norm)
    sum: LRPRule = field(default_factory=Norm)
    norm: LRPRule = field(default_factory=Pass)
    layers: Mapping[str | type, LRPRule] = field(default_factory=dict)
    name: str = "custom"

    def __post_init__(self) -> None:
        for kind in KINDS:
            rule = getattr(self, kind)
            if rule is not None and not isinstance(rule, LRPRule):
                raise ConvscopeError(f"the composite's rule for {kind} is {rule!r}, not an LRP rule",
                                     "Use a rule from convscope.lrp, e.g. Epsilon(), ZPlus() or Flat().")
        for key, rule in self.layers.items():
            if not isinstance(key, str) and not _is_layer_type(key):
                raise ConvscopeError(f"composite layer keys are qualified names or module types, not {key!r}",
                                     "Write e.g. layers={'features.0': Flat(), nn.Linear: Epsilon(0.1)} (on Keras "
                                     "models: layer names or paths, and Keras layer classes).")
            if not isinstance(rule, LRPRule):
                raise ConvscopeError(f"the rule for {key!r} is {rule!r}, not an LRP rule",
                                     "Use a rule from convscope.lrp, e.g. Epsilon(), ZPlus() or Flat().")
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))

    def names(self) -> list[str]:
        """The layer names the user's mapping lists."""
        return [k for k in self.layers if isinstance(k, str)]

    def rule(self, kind: str, around: Sequence[tuple[str, nn.Module]], first: bool) -> LRPRule:
        """The rule of a layer of ``kind`` called inside the modules ``around`` (outermost first);
        ``first``: it is the first convolution or linear layer of the pass."""
        for name, module in reversed(around):
            found = self.layers.get(name)
            if found is None:
                found = next((r for k, r in self.layers.items() if isinstance(k, type) and isinstance(module, k)), None)
            if found is not None:
                return found
        if first and self.first is not None and kind in ("conv", "linear"):
            return self.first
        return getattr(self, kind)

    def with_layers(self, layers: Mapping[str | type, LRPRule]) -> Composite:
        """This composite with ``layers`` added to (and winning over) its own mapping."""
        return replace(self, layers={**self.layers, **layers})


def _is_layer_type(key: object) -> bool:
    """Whether ``key`` is a torch module class or a Keras layer class (Keras is never imported here)."""
    return isinstance(key, type) and (issubclass(key, nn.Module) or any(
        c.__module__.split(".")[0] in ("keras", "tf_keras") and c.__name__ == "Layer" for c in key.__mro__))


def _box(low: float | Tensor | None, high: float | Tensor | None) -> ZBox:
    if low is None or high is None:
        raise ConvscopeError("the composite epsilon_gamma_box needs the input's bounds",
                             "Pass low= and high=, e.g. composite('epsilon_gamma_box', low=-2.12, high=2.64) "
                             "for ImageNet-normalised pixels.")
    return ZBox(low, high)


def composite(name: str, *, epsilon: float = 1e-6, stabilizer: float = 1e-6, gamma: float = 0.25,
              low: float | Tensor | None = None, high: float | Tensor | None = None,
              layers: Mapping[str | type, LRPRule] | None = None) -> Composite:
    """The named composite (see the module docstring) with Zennit's defaults, and ``layers`` added.

    Example: ``composite("epsilon_alpha2_beta1_flat")``.
    """
    key = name.replace("-", "_").lower()
    eps, st = Epsilon(epsilon), stabilizer
    made = {
        "epsilon_plus": lambda: Composite(ZPlus(st), eps),
        "epsilon_plus_flat": lambda: Composite(ZPlus(st), eps, first=Flat(st)),
        "epsilon_gamma_box": lambda: Composite(Gamma(gamma, st), eps, first=_box(low, high)),
        "epsilon_alpha2_beta1": lambda: Composite(AlphaBeta(2, 1, st), eps),
        "epsilon_alpha2_beta1_flat": lambda: Composite(AlphaBeta(2, 1, st), eps, first=Flat(st)),
    }.get(key)
    if made is None:
        raise ConvscopeError(f"there is no LRP composite named {name!r}", did_you_mean(key, COMPOSITES, "composite"))
    found = replace(made(), pool=Norm(st), sum=Norm(st), name=key)
    return found.with_layers(layers) if layers else found


COMPOSITES = ("epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat")
