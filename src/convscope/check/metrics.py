"""The metrics ``convscope check`` runs, by name: what each computes per image, which way is
better, what it needs and what it costs.

Each :class:`MetricSpec` turns one batch of images (:class:`Context`: model, inputs, explained
classes, object masks where the data has them) and one method's maps into per-image values and,
for curves, the curve itself. The values are :mod:`convscope.evaluate`'s; this module only picks
their settings for images of any size:

- ``deletion`` / ``insertion``: AUC over 50 steps (zero baseline / a blurred image), probabilities;
- ``region_perturbation``: AOPC over the most relevant 8 x 8 patches (all of them up to 100);
- ``pixel_flipping``: AUC of the curve of 64 steps (``pixels_in_step = ceil(P / 64)``);
- ``road_morf`` / ``road_lerf``: Rong et al.'s ROAD, the mean class probability over 10%..90% of the
  pixels removed (most / least relevant first) and filled by noisy linear imputation;
- ``infidelity``: Yeh et al.'s, 10 Gaussian perturbations, optimally scaled maps (Captum's
  ``normalize=True``); ``max_sensitivity``: Yeh et al.'s, relative, 10 shifts of radius 0.02;
- ``randomisation``: cascading model-parameter randomisation, the mean SSIM of the
  maps to the trained model's over the randomised layers (lower: the map depends on the model);
- ``random_logit``: SSIM of the maps for the class and a random other class (lower: class-sensitive);
- ``pointing_game``: Zhang et al.'s, 15 px at 224 px; ``pointing_game_strict``: no tolerance;
- ``relevance_mass`` / ``relevance_rank``: Arras et al.'s, inside the object masks;
- ``sparseness`` (Gini) / ``complexity`` (entropy) of the absolute maps.

Example::

    spec = METRICS["deletion"]
    result = spec.compute(context, method, maps)    # result.values: [n]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from convscope import evaluate
from convscope.evaluate.maps import one_channel
from convscope.methods.base import Method


@dataclass(frozen=True)
class Context:
    """One batch: the model, its inputs ``x [n, C, H, W]``, the classes explained, the object masks
    ``[n, H, W]`` (None when the data has none), the seed and the batch knob. ``native`` is ``x``
    in the model's own layout (a Keras model's: channels-last), as :mod:`convscope.evaluate` takes it."""

    model: Any
    x: Tensor
    classes: Tensor
    masks: Tensor | None
    seed: int
    max_batch: Any
    native: Any = None

    @property
    def inputs(self) -> Any:
        """The inputs as the evaluation functions take them (the model's layout)."""
        return self.x if self.native is None else self.native

    def maps(self, maps: Tensor) -> Any:
        """Channels-first ``maps`` in the model's layout (channels-last for a Keras model)."""
        return maps if self.native is None else maps.movedim(1, -1).numpy()


@dataclass(frozen=True)
class Result:
    """Per-image ``values [n]``; a curve (``fractions [S]``, ``curve [n, S]``) or per-layer similarities
    (``layers``, ``steps {similarity: [L, n]}``) where the metric has them."""

    values: Tensor
    fractions: Tensor | None = None
    curve: Tensor | None = None
    layers: list[str] | None = None
    steps: dict[str, Tensor] | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A metric of ``convscope check``: name, title, direction, needs, cost and how to compute it."""

    name: str
    title: str
    higher_is_better: bool
    needs_masks: bool
    cost: str  # model passes (or maps) per image
    compute: Callable[[Context, Method, Tensor], Result]
    torch_only: bool = False


def _deletion(c: Context, method: Method, maps: Tensor) -> Result:
    curve = evaluate.deletion(c.model, c.inputs, c.classes, c.maps(maps), steps=50, max_batch=c.max_batch)
    return Result(curve.auc(), curve.fractions, curve.values)


def _insertion(c: Context, method: Method, maps: Tensor) -> Result:
    curve = evaluate.insertion(c.model, c.inputs, c.classes, c.maps(maps), steps=50, max_batch=c.max_batch)
    return Result(curve.auc(), curve.fractions, curve.values)


def _region(c: Context, method: Method, maps: Tensor) -> Result:
    cells = math.ceil(c.x.shape[-2] / 8) * math.ceil(c.x.shape[-1] / 8)
    curve, reference = evaluate.region_perturbation(c.model, c.inputs, c.classes, c.maps(maps), patch=8, regions=min(100, cells),
                                                    max_batch=c.max_batch)
    return Result(curve.aopc(reference), curve.fractions, reference[:, None] - curve.values)


def _flipping(c: Context, method: Method, maps: Tensor) -> Result:
    pixels = c.x.shape[-2] * c.x.shape[-1]
    curve = evaluate.pixel_flipping(c.model, c.inputs, c.classes, c.maps(maps), pixels_in_step=math.ceil(pixels / 64),
                                    max_batch=c.max_batch)
    return Result(torch.trapezoid(curve.values, curve.fractions, dim=1), curve.fractions, curve.values)


def _road(order: str) -> Callable[[Context, Method, Tensor], Result]:
    def compute(c: Context, method: Method, maps: Tensor) -> Result:
        curve = evaluate.road(c.model, c.inputs, c.classes, c.maps(maps), order=order, seed=c.seed, max_batch=c.max_batch)
        return Result(curve.values.mean(1), curve.fractions, curve.values)

    return compute


def _infidelity(c: Context, method: Method, maps: Tensor) -> Result:
    return Result(evaluate.infidelity(c.model, c.inputs, c.classes, c.maps(maps), normalize=True, seed=c.seed,
                                      max_batch=c.max_batch))


def _sensitivity(c: Context, method: Method, maps: Tensor) -> Result:
    return Result(evaluate.max_sensitivity(method, c.inputs, c.classes, seed=c.seed, max_batch=c.max_batch))


def _randomisation(c: Context, method: Method, maps: Tensor) -> Result:
    result = evaluate.model_randomisation(method, c.inputs, c.classes, seed=c.seed, similarities=("ssim", "spearman_abs"))
    return Result(result.similarity["ssim"].nanmean(0), layers=result.layers, steps=result.similarity)


def _random_logit(c: Context, method: Method, maps: Tensor) -> Result:
    return Result(evaluate.random_logit(method, c.inputs, c.classes, seed=c.seed)[0])


def _masks(c: Context) -> Tensor:
    assert c.masks is not None  # the runner skips mask metrics on data without masks
    return c.masks


def _pointing(tolerance: float | str) -> Callable[[Context, Method, Tensor], Result]:
    def compute(c: Context, method: Method, maps: Tensor) -> Result:
        return Result(evaluate.pointing_game(one_channel(maps), _masks(c), tolerance=tolerance).float())

    return compute


def _mass(c: Context, method: Method, maps: Tensor) -> Result:
    return Result(evaluate.mass_inside(one_channel(maps), _masks(c)))


def _rank(c: Context, method: Method, maps: Tensor) -> Result:
    return Result(evaluate.rank_inside(one_channel(maps), _masks(c)))


def _sparseness(c: Context, method: Method, maps: Tensor) -> Result:
    return Result(evaluate.sparseness(one_channel(maps, absolute=True)))


def _complexity(c: Context, method: Method, maps: Tensor) -> Result:
    return Result(evaluate.complexity(one_channel(maps, absolute=True)))


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in [
    MetricSpec("deletion", "Deletion AUC", False, False, "51 passes", _deletion),
    MetricSpec("insertion", "Insertion AUC", True, False, "51 passes", _insertion),
    MetricSpec("region_perturbation", "Region perturbation AOPC", True, False, "up to 101 passes", _region),
    MetricSpec("pixel_flipping", "Pixel flipping AUC", False, False, "64 passes", _flipping),
    MetricSpec("road_morf", "ROAD MoRF mean", False, False, "9 passes", _road("morf")),
    MetricSpec("road_lerf", "ROAD LeRF mean", True, False, "9 passes", _road("lerf")),
    MetricSpec("infidelity", "Infidelity", False, False, "11 passes", _infidelity),
    MetricSpec("max_sensitivity", "Max-sensitivity", False, False, "11 maps", _sensitivity),
    MetricSpec("randomisation", "Randomisation SSIM", False, False, "1 map per randomised layer", _randomisation,
               torch_only=True),
    MetricSpec("random_logit", "Random-logit SSIM", False, False, "2 maps", _random_logit),
    MetricSpec("pointing_game", "Pointing game (15 px at 224)", True, True, "none", _pointing("standard")),
    MetricSpec("pointing_game_strict", "Pointing game (strict)", True, True, "none", _pointing(0.0)),
    MetricSpec("relevance_mass", "Relevance mass", True, True, "none", _mass),
    MetricSpec("relevance_rank", "Relevance rank", True, True, "none", _rank),
    MetricSpec("sparseness", "Sparseness (Gini)", True, False, "none", _sparseness),
    MetricSpec("complexity", "Complexity (entropy)", False, False, "none", _complexity),
]}

DEFAULT = ("deletion", "insertion", "region_perturbation", "randomisation", "random_logit", "pointing_game",
           "pointing_game_strict", "relevance_mass", "relevance_rank", "sparseness", "complexity")
