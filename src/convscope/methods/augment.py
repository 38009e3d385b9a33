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

import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.methods.base import Method, check_input, wrapped_method
from convscope.methods.cam import GradCAM
from convscope.methods.options import check_flag
from convscope.targets import TargetLike


def check_factors(factors: Sequence[float]) -> tuple[float, ...]:
    """``factors`` as a tuple of positive finite floats (at least one)."""
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0 for f in factors):
        raise ConvscopeError(f"factors={factors!r} must be a non-empty list of positive numbers",
                             "Write factors=(0.9, 1.0, 1.1), or factors=(1.0,) for mirroring alone.")
    return tuple(float(f) for f in factors)


def unit_range(maps: Tensor) -> Tensor:
    """Each ``[H, W]`` map scaled to [0, 1]: ``(m - min) / (max - min)``, 0 where the map is flat."""
    low = maps.amin((-2, -1), keepdim=True)
    span = maps.amax((-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), 0.0)


class AugmentedMean:
    """The augmentation loop both backends share; a backend says how to mirror an image or a map
    (:meth:`mirror`), where a map's height and width are (:meth:`plane`) and how to rescale it."""

    method: Any
    flips: bool
    factors: tuple[float, ...]
    normalise: bool

    def _configure(self, method: Any, flips: bool, factors: Sequence[float], normalise: bool) -> None:
        refuse_layer_maps(method)
        check_flag("flips", flips), check_flag("normalise", normalise)
        self.method, self.flips, self.normalise, self.factors = method, bool(flips), bool(normalise), \
            check_factors(factors)

    def attribute(self, x: Any, target: TargetLike | None = None, wrt: Any = None, *,
                  targets: Sequence[TargetLike] | None = None) -> Any:
        """The averaged maps for ``target`` (a list of them for ``targets=[...]``), at the input's size."""
        if wrt is not None and not (isinstance(wrt, str) and wrt == "input"):
            raise ConvscopeError(f"AugSmooth mirrors maps back, which needs maps of the input; got wrt={wrt!r}",
                                 "Leave wrt unset, or attribute to the layer without AugSmooth.")
        maps = self._mean(self.images(x), target, targets)
        return maps if targets is not None else maps[0]

    def _compute(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise ConvscopeError("AugSmooth runs its wrapped method through attribute(); it cannot be wrapped itself",
                             "Call AugSmooth(...).attribute(x, target) directly.")

    def images(self, x: Any) -> Any:
        """``x`` as the backend's image batch, else a clear error."""
        raise NotImplementedError

    def mirror(self, t: Any) -> Any:
        """``t`` (an input or a map) mirrored left to right."""
        raise NotImplementedError

    def plane(self, t: Any) -> tuple[int, ...]:
        """The height and width of ``t``."""
        raise NotImplementedError

    def unit_range(self, maps: Any) -> Any:
        """Each map scaled to [0, 1] per sample and channel."""
        raise NotImplementedError

    def _mean(self, x: Any, target: TargetLike | None, targets: Sequence[TargetLike] | None) -> list[Any]:
        """``mean_t t^-1(m(t(x)))`` per target."""
        total: list[Any] = []
        for mirrored in (False, True) if self.flips else (False,):
            seen = self.mirror(x) if mirrored else x
            for factor in self.factors:
                found = self.method.attribute(seen * factor, target, targets=targets)
                for i, m in enumerate(found if targets is not None else [found]):
                    m = self._back(m, x, mirrored)
                    if len(total) <= i:
                        total.append(m)
                    else:
                        total[i] = total[i] + m
        count = len(self.factors) * (2 if self.flips else 1)
        return [t / count for t in total]

    def _back(self, m: Any, x: Any, mirrored: bool) -> Any:
        """One map in the original image's frame (and scaled to [0, 1] if ``normalise``)."""
        if len(m.shape) < 3 or self.plane(m) != self.plane(x):
            raise ConvscopeError(f"{type(self.method).__name__} returned maps of shape {list(m.shape)} for inputs of "
                                 f"shape {list(x.shape)}; AugSmooth needs maps at the input's height and width",
                                 "Wrap a method whose maps have the input's size (CAM methods: upsample=True).")
        m = self.mirror(m) if mirrored else m
        return self.unit_range(m) if self.normalise else m

    def __repr__(self) -> str:
        return (f"AugSmooth({self.method!r}, flips={self.flips}, factors={self.factors}, "
                f"normalise={self.normalise})")


class AugSmooth(AugmentedMean, Method):
    """The mean of the wrapped method's maps over mirrored and rescaled inputs (see the module doc).

    ``method`` is a :class:`Method` instance, or a model (then ``use`` names the class built on
    it, default :class:`~convscope.methods.GradCAM`). The wrapped method keeps its own options
    (layer, ``max_batch``, ...); its maps must have the input's height and width.
    """

    def __init__(self, method: Method | nn.Module, *, use: type[Method] = GradCAM, flips: bool = True,
                 factors: Sequence[float] = (0.9, 1.0, 1.1), normalise: bool = False) -> None:
        method = wrapped_method(method, use, (Method,), "GradCAM")
        super().__init__(method.model, max_batch=method.max_batch)
        self._configure(method, flips, factors, normalise)

    def images(self, x: Tensor) -> Tensor:
        x = check_input(x)
        if x.dim() < 3:
            raise ConvscopeError(f"AugSmooth mirrors images, so it needs inputs [N, C, H, W], got shape {list(x.shape)}",
                                 "Pass an image batch.")
        return x

    def mirror(self, t: Tensor) -> Tensor:
        return t.flip(-1)

    def plane(self, t: Tensor) -> tuple[int, ...]:
        return tuple(t.shape[-2:])

    def unit_range(self, maps: Tensor) -> Tensor:
        return unit_range(maps)


def refuse_layer_maps(method: Any) -> None:
    """A clear error for a CAM method with ``upsample=False`` (maps at its layer's resolution)."""
    if getattr(method, "upsample", True) is False:
        raise ConvscopeError(f"{type(method).__name__} with upsample=False gives maps at its layer's resolution, "
                             "which cannot be mirrored back exactly",
                             "Wrap the method with upsample=True (the default).")
