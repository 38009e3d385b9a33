"""Augmentation smoothing: any method's maps averaged over mirrored and rescaled inputs.

With ``m`` the wrapped method's map, ``T`` the augmentations (the identity and, if ``flips``, the
horizontal mirror ``R``, each with the input multiplied by every factor ``c``)::

    AugSmooth(x) = mean_{t in T} t^-1( m(t(x)) ),     t(x) = c * R^f(x),  t^-1(map) = R^f(map)

so each map is mirrored back before the mean. The defaults, a mirror and the factors 0.9, 1.0 and
1.1 (six passes), are pytorch-grad-cam's ``aug_smooth``; it averages maps that were each scaled
to [0, 1] first, which ``normalise=True`` does too (``(m - min) / (max - min)`` per sample and
channel). By default the maps are averaged as they are, as the noise tunnels average theirs.
Factors multiply the tensor the model receives, that is the already normalised input.

The targets are scored on the augmented inputs, so a target tied to a position (``Neuron``) is
read at the same place in the mirrored image, not at the mirrored place.

Example::

    AugSmooth(GradCAM(model, "layer4")).attribute(x, 3)
    AugSmooth(model, factors=(1.0,)).attribute(x, 3)          # Grad-CAM, mirror only
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from convscope.backends.protocol import Engine, Ops, Tensor
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Rows, Wrapper, wrapped_method
from convscope.methods.cam import GradCAM
from convscope.methods.options import check_flag
from convscope.ops import tensors
from convscope.targets import Target


def check_factors(factors: Sequence[float]) -> tuple[float, ...]:
    """``factors`` as a tuple of positive finite floats (at least one)."""
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0 for f in factors):
        raise ConvscopeError(f"factors={factors!r} must be a non-empty list of positive numbers",
                             "Write factors=(0.9, 1.0, 1.1), or factors=(1.0,) for mirroring alone.")
    return tuple(float(f) for f in factors)


def unit_range(maps: Tensor, ops: Ops = tensors) -> Tensor:
    """Each map scaled to [0, 1] per sample and channel: ``(m - min) / (max - min)``, 0 where the
    map is flat."""
    space = ops.space(maps)
    low = ops.amin(maps, space, keepdims=True)
    span = ops.amax(maps, space, keepdims=True) - low
    return ops.where(span > 0, (maps - low) / ops.where(span > 0, span, 1.0), 0.0)


class AugSmooth(Wrapper):
    """The mean of the wrapped method's maps over mirrored and rescaled inputs (see the module doc).

    ``method`` is a :class:`Method` instance, or a model (then ``use`` names the class built on
    it, default :class:`~convscope.methods.GradCAM`). The wrapped method keeps its own options
    (layer, ``max_batch``, ...); its maps must have the input's height and width.
    """

    def __init__(self, method: Method | Any, *, use: type[Method] = GradCAM, flips: bool = True,
                 factors: Sequence[float] = (0.9, 1.0, 1.1), normalise: bool = False) -> None:
        method = wrapped_method(method, use, "GradCAM")
        super().__init__(method.model, max_batch=method.max_batch)
        refuse_layer_maps(method)
        check_flag("flips", flips), check_flag("normalise", normalise)
        self.method, self.flips, self.normalise, self.factors = method, bool(flips), bool(normalise), \
            check_factors(factors)

    @property
    def expands(self) -> bool:  # type: ignore[override]
        """As the wrapped method: each of its calls sees the rows AugSmooth gets."""
        return self.method.expands

    def _prepare(self, x: Tensor, wrt: Any) -> None:
        if wrt is not None:
            raise ConvscopeError(f"AugSmooth mirrors maps back, which needs maps of the input; got wrt={wrt!r}",
                                 "Leave wrt unset, or attribute to the layer without AugSmooth.")
        if len(x.shape) < 3:
            raise ConvscopeError(f"AugSmooth mirrors images, so it needs inputs {self.backend.image_layout}, got "
                                 f"shape {list(x.shape)}", "Pass an image batch.")
        super()._prepare(x, wrt)

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        """``mean_t t^-1(m(t(x)))`` per target."""
        ops = engine.ops
        total: list[Tensor] = []
        for mirrored in (False, True) if self.flips else (False,):
            seen = ops.mirror(x) if mirrored else x
            for factor in self.factors:
                found = self.method._compute(engine, seen * factor, rows, targets, wrt)
                back = [self._back(ops, m, x, mirrored) for m in found]
                total = back if not total else [t + m for t, m in zip(total, back)]
        count = len(self.factors) * (2 if self.flips else 1)
        return [t / count for t in total]

    def _back(self, ops: Ops, m: Tensor, x: Tensor, mirrored: bool) -> Tensor:
        """One map in the original image's frame (and scaled to [0, 1] if ``normalise``)."""
        if ops.rank(m) < 3 or ops.spatial_shape(m) != ops.spatial_shape(x):
            raise ConvscopeError(f"{type(self.method).__name__} returned maps of shape {list(m.shape)} for inputs of "
                                 f"shape {list(x.shape)}; AugSmooth needs maps at the input's height and width",
                                 "Wrap a method whose maps have the input's size (CAM methods: upsample=True).")
        m = ops.mirror(m) if mirrored else m
        return unit_range(m, ops) if self.normalise else m

    def __repr__(self) -> str:
        return (f"AugSmooth({self.method!r}, flips={self.flips}, factors={self.factors}, "
                f"normalise={self.normalise})")


def refuse_layer_maps(method: Any) -> None:
    """A clear error for a CAM method with ``upsample=False`` (maps at its layer's resolution)."""
    if getattr(method, "upsample", True) is False:
        raise ConvscopeError(f"{type(method).__name__} with upsample=False gives maps at its layer's resolution, "
                             "which cannot be mirrored back exactly",
                             "Wrap the method with upsample=True (the default).")
