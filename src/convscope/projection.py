"""Project a unit back to pixels, Zeiler-Fergus style: the one entry point, PyTorch and Keras alike.

For each image, the ``top`` strongest units ``a_k`` of feature map ``c`` of ``layer`` are found
(descending, ties to the first in row-major order); projection ``k`` seeds the layer with
``a_k`` at that unit and zero everywhere else (``MaxNeuron(layer, c, rank=k)``, score
``a_k**2 / 2``) and sends it down by ``rule``:

    maps[n, k] = d (a_k**2 / 2) / d x[n]    with, at every ReLU, the backward rule of ``rule``

- ``"deconvnet"``: ``relu(g)`` (:class:`~convscope.methods.DeconvNet`; equals the explicit
  mirrors :func:`convscope.deconv.reconstruct` and :func:`convscope.tf.deconv.reconstruct`)
- ``"guided"``: ``relu(g) * [z > 0]`` (:class:`~convscope.methods.GuidedBackprop`)
- ``"gradient"``: ``g * [z > 0]``, plain autograd (:class:`~convscope.methods.Saliency`)

The method classes run it (:meth:`~convscope.methods.gradient.GradientMethod.attribute_units`),
so it works on every backend: torch tensors ``[N, C, H, W]`` for a PyTorch model, numpy arrays
or tf tensors ``[N, H, W, C]`` for a Keras model; ``maps[n, k]`` is shaped like ``x[n]``, in the
model's layout. All projections of all channels share one forward pass per chunk of
``max_batch`` images. :data:`RULES` is also the dataset atlas's rule table
(:mod:`convscope.atlas.project`, which projects given units on receptive-field crops).
``convscope project MODEL IMAGE --layer L --channel C [--rule R] [--top N]`` runs it.

Example::

    p = project(model, x, "features.12", 7, top=3)
    p.maps.shape       # [N, 3, C, H, W]   (a Keras model: [N, 3, H, W, C])
    p.positions[0, 0]  # (row, column) of image 0's strongest unit; p.values[0, 0] its activation
    project(model, x, "features.12", [7, 9]).maps.shape    # [N, 2, 1, C, H, W]: one axis per channel
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from convscope.backends.protocol import Tensor
from convscope.errors import ConvscopeError
from convscope.methods.base import MaxBatch
from convscope.methods.gradient import DeconvNet, GradientMethod, GuidedBackprop, Saliency
from convscope.rules import RuleMap

RULES: dict[str, type[GradientMethod]] = {"deconvnet": DeconvNet, "guided": GuidedBackprop, "gradient": Saliency}


def projection_method(rule: str, *, option: str = "rule") -> type[GradientMethod]:
    """The method class of a projection rule name; a clear error naming ``option`` otherwise.

    Example: ``projection_method("guided")`` -> ``GuidedBackprop``.
    """
    if rule not in RULES:
        raise ConvscopeError(f"{option}={rule!r} is not a projection rule (an unknown projection method)",
                             f"Use one of {', '.join(map(repr, RULES))}.")
    return RULES[rule]


def rule_map(rule: str, *, option: str = "rule") -> RuleMap:
    """The backward rules of a projection rule name: its method's rule at every ReLU.

    Example: ``rule_map("deconvnet").default`` -> ``DeconvReLU()``.
    """
    return RuleMap(projection_method(rule, option=option).default_rule)


@dataclass(frozen=True)
class Projection:
    """``maps[n, k]``: the projection of image ``n``'s ``k``-th strongest unit, shaped like ``x[n]``;
    ``values[n, k]`` its activation; ``positions[n, k]`` its spatial coordinates (row, column).
    When ``channel`` is a list, an axis for it follows ``n``: ``maps[n, j, k]`` is channel
    ``channel[j]``'s. Tensors of the model's framework."""

    maps: Tensor
    values: Tensor
    positions: Tensor
    layer: Any
    channel: int | tuple[int, ...]
    rule: str


def project(model: Any, x: Any, layer: Any, channel: int | Sequence[int], rule: str = "deconvnet",  # noqa: ANN401
            top: int = 1, *, max_batch: MaxBatch = None) -> Projection:
    """The pixel-space projections of the ``top`` strongest units of ``layer``'s feature map
    ``channel`` (or of each of a list of channels) in each image of ``x`` (see module doc)."""
    method = projection_method(rule)(model, max_batch=max_batch)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConvscopeError(f"top={top!r} must be a positive int", "top=1 projects the strongest unit only.")
    one = not isinstance(channel, Sequence)
    found = [channel] if one else list(channel)  # type: ignore[list-item]
    if not found or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in found):
        raise ConvscopeError(f"channel={channel!r} is not a channel index or a non-empty list of them",
                             "Pass e.g. channel=7 or channel=[7, 9].")
    channels = [int(c) for c in found]
    maps, values, positions = method.attribute_units(x, layer, channels, top)
    ops = method.backend.ops
    per_channel = [ops.stack(maps[j * top:(j + 1) * top], 1) for j in range(len(channels))]
    if one:
        return Projection(per_channel[0], values[0], positions[0], layer, channels[0], rule)
    return Projection(ops.stack(per_channel, 1), ops.stack(values, 1), ops.stack(positions, 1), layer,
                      tuple(channels), rule)


__all__ = ["RULES", "Projection", "project", "projection_method", "rule_map"]
