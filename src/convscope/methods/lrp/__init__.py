"""Layer-wise relevance propagation (``convscope.lrp``): rules, composites, canonizing, the method.

- :mod:`~convscope.methods.lrp.rules`: Epsilon, Norm, ZPlus, AlphaBeta, Gamma, ZBox, WSquare,
  Flat, Pass - each with its formula;
- :mod:`~convscope.methods.lrp.composites`: :class:`Composite` and the named ones (Zennit's);
- :mod:`~convscope.methods.lrp.mode`: the torch-function mode that reaches every layer spelling;
- :mod:`~convscope.methods.lrp.graph`: the fx report of what canonizing does to a model;
- :mod:`~convscope.methods.lrp.method`: :class:`LRP`, a registered method;
- :mod:`~convscope.methods.lrp.report`: the conservation report, per layer;
- :mod:`~convscope.methods.lrp.ops`: the tensor operations the rules are written with (PyTorch's);
- :mod:`convscope.methods.lrp.keras`: the same on Keras models (loaded only for one).

Example::

    from convscope import lrp
    maps = lrp.LRP(model, composite=lrp.composite("epsilon_gamma_box", low=-3, high=3)).attribute(x, 3)
"""

from convscope.methods.lrp.composites import COMPOSITES, Composite, composite
from convscope.methods.lrp.graph import CanonicalReport, canonical_report
from convscope.methods.lrp.method import LRP
from convscope.methods.lrp.mode import lrp_rules
from convscope.methods.lrp.report import Conservation, conservation, cuts
from convscope.methods.lrp.rules import (AlphaBeta, Epsilon, Flat, Gamma, Layer, LRPRule, Norm, Pass, WSquare, ZBox,
                                         ZPlus, stabilize)

__all__ = ["COMPOSITES", "LRP", "AlphaBeta", "CanonicalReport", "Composite", "Conservation", "Epsilon", "Flat", "Gamma", "LRPRule",
           "Layer", "Norm", "Pass", "WSquare", "ZBox", "ZPlus", "canonical_report", "composite", "conservation", "cuts", "lrp_rules",
           "stabilize"]
