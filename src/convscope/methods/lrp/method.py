"""``LRP``: layer-wise relevance propagation as a registered attribution method.

The target's score ``s`` is the relevance at the tensor it reads (``R = a * ds/da``: the logit
itself for a class), and each layer shares its outputs' relevance among its inputs by the rule
the composite gives it (:mod:`~convscope.methods.lrp.composites`), applied to every spelling of
every layer by :func:`~convscope.methods.lrp.mode.lrp_rules`. With ``canonize=True`` batch
norms are folded into the convolution or linear layer before them, and the model's ``torch.fx``
graph is read first (:func:`~convscope.methods.lrp.graph.canonical_report`, kept as
``last_report``) so that a model with operations no rule covers is refused before any work,
naming all of them. Residual sums are always split by contribution and average pooling is
always a linear layer. The user's model and parameters are never changed.

On a Keras model the same rules and composites apply to the layers of its functional graph
(:mod:`convscope.methods.lrp.keras`: the graph is always read, ``canonize`` folds batch norms),
NHWC in and out; a model or layer with no rule is refused before any work.

``wrt="layer3"`` gives the relevance of that layer's output. On a layer folded into the batch
norm after it, ask for the norm (the folded pair's relevance lives at the norm's output).

Example::

    maps = LRP(model, composite="epsilon_plus_flat").attribute(x, 3)
    maps.sum((1, 2, 3))      # ~ the class-3 logit (conservation; exact without biases and stabilisers)
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from convscope.backends.protocol import Engine
from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Rows
from convscope.methods.lrp.composites import Composite, composite
from convscope.methods.lrp.graph import CanonicalReport, canonical_report
from convscope.methods.lrp.mode import lrp_rules
from convscope.methods.registry import register_method
from convscope.targets import Target

__all__ = ["LRP", "relevance_of", "relevances"]


def relevances(run: Any, target: Target, values: Sequence[Tensor], last: bool) -> list[Tensor | None]:  # noqa: ANN401
    """The relevance reaching each of ``values`` from ``target`` in one backward pass (None where none
    reaches: a convolution folded into the batch norm after it passes its relevance past its output).
    Seeded with ``a * ds/da`` at each tensor ``a`` the target's score ``s`` reads (the model output,
    its layers), ``ds/da`` taken on detached copies so that no path through the model mixes in."""
    record = run.record
    read = {key: record.acts[key] for key in target.layers()}
    sources = [t for t in [record.output, *read.values()] if t.requires_grad]
    leaves = {id(t): t.detach().requires_grad_() for t in sources}
    copy = replace(record, output=leaves.get(id(record.output), record.output.detach()),
                   acts={**record.acts, **{k: leaves[id(t)] for k, t in read.items() if id(t) in leaves}})
    score = target.score(copy)
    if not score.requires_grad:
        return [None] * len(values)
    grads = torch.autograd.grad(score.sum(), [leaves[id(t)] for t in sources], allow_unused=True)
    seeded = [(t, t.detach() * g) for t, g in zip(sources, grads) if g is not None]
    if not seeded:
        return [None] * len(values)
    found = torch.autograd.grad([t for t, _ in seeded], list(values), grad_outputs=[s for _, s in seeded],
                                retain_graph=not last, allow_unused=True)
    return [None if r is None else r.detach() for r in found]


def relevance_of(run: Any, target: Target, value: Tensor, last: bool) -> Tensor:  # noqa: ANN401
    """The relevance reaching ``value`` from ``target`` (zeros where none does): :func:`relevances`."""
    (r,) = relevances(run, target, [value], last)
    return torch.zeros_like(value) if r is None else r


@register_method("lrp", "layer-wise relevance propagation (Zennit's composites; batch norms folded)")
class LRP(Method):
    """Layer-wise relevance propagation (Bach et al. 2015) with a composite of rules.

    ``composite``: a name from :data:`~convscope.methods.lrp.composites.COMPOSITES` or a
    :class:`~convscope.methods.lrp.composites.Composite` (``epsilon_gamma_box`` needs bounds:
    ``composite("epsilon_gamma_box", low=..., high=...)``). ``canonize``: fold batch norms into
    their convolutions and check the traced graph first.

    Example: ``LRP(model, composite="epsilon_alpha2_beta1_flat").attribute(x, 3)``.
    """

    frameworks = ("torch", "tf")
    scores_input = True
    display = "positive"

    def __init__(self, model: Any, *, composite: str | Composite = "epsilon_plus_flat", canonize: bool = True,  # noqa: ANN401
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.composite = _as_composite(composite)
        self.canonize = canonize
        self.last_report: CanonicalReport | None = None
        self.last_folds: list[tuple[str, str]] = []

    def _prepare(self, x: Tensor, wrt: Any) -> None:  # noqa: ANN401
        if self.backend.name == "tf":  # the functional graph is read always: it decides every layer's rule
            from convscope.methods.lrp.keras.graph import keras_canon

            self.last_report = report = deepcopy(keras_canon(self.model).report)
            self.last_folds = list(report.folds) if self.canonize else []
        elif self.canonize:
            self.last_report = report = canonical_report(self.model)
        else:
            return
        if report.unhandled:
            raise ConvscopeError(f"LRP has no rule for {len(report.unhandled)} operation(s) of this model: "
                                 f"{', '.join(report.unhandled[:8])}{' ...' if len(report.unhandled) > 8 else ''}",
                                 "Explain it with another method (such as Saliency or GradCAM), or rewrite those "
                                 "layers with convolutions, linear layers, pooling, sums and activations.")

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:  # noqa: ANN401
        if self.backend.name == "tf":
            return self._keras_maps(engine, x, rows)
        model: nn.Module = self.model
        with lrp_rules(model, self.composite, fold=self.canonize) as mode:
            run = engine.forward(x, rows, grad=True)
        self.last_folds = mode.folded
        n = len(targets)
        return [relevance_of(run, t, run.value, i == n - 1) for i, t in enumerate(targets)]

    def _keras_maps(self, engine: Engine, x: Tensor, rows: Rows) -> list[Tensor]:
        """A chunk's maps on a Keras model, run eagerly (see :mod:`convscope.methods.lrp.keras.maps`)."""
        from convscope.methods.lrp.keras.graph import keras_canon
        from convscope.methods.lrp.keras.maps import keras_maps

        return keras_maps(engine, x, rows, self.composite, keras_canon(self.model), self.canonize)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"LRP({self._model_name()}, composite={self.composite.name!r}, canonize={self.canonize})"


def _as_composite(value: str | Composite) -> Composite:
    if isinstance(value, Composite):
        return value
    if isinstance(value, str):
        return composite(value)
    raise ConvscopeError(f"composite={value!r} is neither a composite's name nor a Composite",
                         "Pass e.g. composite='epsilon_plus_flat' or composite=composite('epsilon_gamma_box', "
                         "low=-2.12, high=2.64).")
