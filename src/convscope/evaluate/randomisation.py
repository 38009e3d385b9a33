"""Sanity checks: does a map change when what it claims to explain is destroyed?

- :func:`model_randomisation` (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018):
  re-initialise the model's layers from the top down, ``"cascading"`` (each step adds one more
  randomised layer) or ``"independent"`` (one layer at a time, the others trained), recompute the
  maps with the same method, and compare each with the trained model's map. A map that explains
  the model should become unlike the original; guided backprop and the deconvnet famously do not.
- :func:`random_logit` (Sixt et al., "When Explanations Lie", ICML 2020): the similarity of the map
  for the target class and the map for a random other class; a class-sensitive map scores low.

The similarities per step (:data:`SIMILARITIES`): ``"ssim"`` between each map's absolute values
summed over its channels and scaled to a maximum of 1 (Adebayo et al.'s normalised absolute
maps), ``"spearman_abs"`` the rank correlation of the absolute maps, ``"spearman"`` that of the
signed maps (channels summed), ``"pearson"``, and ``"hog"`` the Pearson correlation of the HOG
features of the normalised absolute maps (:func:`~convscope.evaluate.hog.hog_similarity`).

The randomised layers are those with parameters of their own and a ``reset_parameters`` method
(convolutions, linear layers, normalisations), randomised by that method on a CPU copy under
``torch.manual_seed(seed + i)`` for the ``i``-th layer, so the weights depend on the seed only,
never on the device or the global random state (which is left as it was). All of it happens on a
private deep copy: the user's model is never touched. Cost: one map of every sample per layer,
plus the original.

Example::

    result = model_randomisation(GuidedBackprop(model), x, labels, layers=["fc", "layer4", "layer3"])
    result.similarity["ssim"]     # [layers, N]
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from convscope.errors import ConvscopeError
from convscope.evaluate.hog import hog_similarity
from convscope.evaluate.maps import as_classes, as_inputs, attribute, one_channel
from convscope.evaluate.scoring import model_outputs
from convscope.evaluate.similarity import pearson, spearman, ssim
from convscope.methods.base import Method

SIMILARITIES = ("ssim", "spearman_abs", "spearman", "pearson", "hog")


@dataclass(frozen=True)
class Randomisation:
    """Maps and similarities along a randomisation: ``layers[i]`` is the layer randomised at step
    ``i``; ``maps[0]`` the trained model's maps and ``maps[i + 1]`` those after step ``i`` (each
    ``[N, 1, ...]``, channels summed); ``similarity[name]`` is ``[steps, N]``."""

    order: str
    layers: list[str]
    maps: list[Tensor]
    similarity: dict[str, Tensor]


def compare(original: Tensor, other: Tensor, names: Sequence[str] = SIMILARITIES) -> dict[str, Tensor]:
    """``{name: [N]}``: the similarities of :data:`SIMILARITIES` between two batches of maps ``[N, C, ...]``."""
    unknown = [n for n in names if n not in SIMILARITIES]
    if unknown:
        raise ConvscopeError(f"unknown similarity {unknown[0]!r}", f"Use some of {', '.join(SIMILARITIES)}.")
    a_abs, b_abs = one_channel(original, absolute=True), one_channel(other, absolute=True)
    a, b = one_channel(original), one_channel(other)

    def scaled(m: Tensor) -> Tensor:
        top = m.flatten(1).amax(1).clamp_min(1e-30)
        return m / top.view(-1, *[1] * (m.dim() - 1))

    measures = {
        "ssim": lambda: ssim(scaled(a_abs), scaled(b_abs)),
        "spearman_abs": lambda: spearman(a_abs, b_abs),
        "spearman": lambda: spearman(a, b),
        "pearson": lambda: pearson(a, b),
        "hog": lambda: hog_similarity(scaled(a_abs), scaled(b_abs)),
    }
    return {name: measures[name]() for name in names}


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the layers :func:`model_randomisation` can re-initialise, from the output down."""
    found = [name for name, m in model.named_modules()
             if name and callable(getattr(m, "reset_parameters", None)) and any(True for _ in m.parameters(recurse=False))]
    return found[::-1]


def rebind(method: Method, model: Any, original: Any) -> Method:
    """A shallow copy of ``method`` that explains ``model`` (a copy of ``original``): layers it holds
    as modules of ``original`` become the same-named modules of ``model``; wrapped methods too."""
    names = {id(m): n for n, m in original.named_modules()}
    modules = dict(model.named_modules())

    def swap(value: Any) -> Any:
        if isinstance(value, Method):
            return rebind(value, model, original)
        if isinstance(value, nn.Module) and id(value) in names:
            return modules[names[id(value)]]
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return value

    clone = copy.copy(method)
    for key, value in vars(method).items():
        setattr(clone, key, model if value is original else swap(value))
    return clone


def _reset(layer: nn.Module, seed: int) -> None:
    """Re-initialise ``layer``'s own parameters and buffers by its ``reset_parameters``, drawn on a
    CPU copy from ``seed`` (the global random state is restored afterwards)."""
    fresh = copy.deepcopy(layer).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh.reset_parameters()
    with torch.no_grad():
        for mine, new in zip([*layer.parameters(recurse=False), *layer.buffers(recurse=False)],
                             [*fresh.parameters(recurse=False), *fresh.buffers(recurse=False)]):
            mine.copy_(new)


def model_randomisation(method: Method, x: Any, targets: Any, *, order: Literal["cascading", "independent"] = "cascading",
                        layers: Sequence[str] | None = None, similarities: Sequence[str] = SIMILARITIES,
                        seed: int = 0, progress: bool = False) -> Randomisation:
    """Adebayo et al.'s model-parameter randomisation test for ``method`` on its model (see the module).

    ``layers``: which layers to randomise, in the order given (default: every randomisable layer,
    output first). Example: ``model_randomisation(Saliency(model), x, 3).similarity["spearman_abs"]``.
    """
    model = method.model
    if not isinstance(model, nn.Module):
        raise ConvscopeError("model randomisation re-initialises PyTorch layers; this model is not a torch.nn.Module",
                             "Run it on the PyTorch twin of the model (the other metrics take Keras models).")
    if order not in ("cascading", "independent"):
        raise ConvscopeError(f"order={order!r} is not a randomisation order", "Use 'cascading' or 'independent'.")
    available = randomisable_layers(model)
    chosen = list(available if layers is None else layers)
    missing = [name for name in chosen if name not in available]
    if missing:
        raise ConvscopeError(f"layer {missing[0]!r} has no parameters to randomise",
                             f"Pick layers from: {', '.join(available[:12])}{' ...' if len(available) > 12 else ''}.")
    if not chosen:
        raise ConvscopeError("the model has no layer with parameters to randomise", "Give a model with trained layers.")
    inputs = as_inputs(x, model)
    classes = as_classes(targets, len(inputs))
    original = attribute(method, inputs, classes)
    twin = copy.deepcopy(model)
    copied = dict(twin.named_modules())
    trained = {name: copy.deepcopy(copied[name].state_dict()) for name in chosen} if order == "independent" else {}
    explain = rebind(method, twin, model)
    maps, scores = [one_channel(original)], {name: [] for name in similarities}
    for step, name in enumerate(tqdm(chosen, desc=f"randomising ({order})", disable=not progress)):
        _reset(copied[name], seed + step)
        after = attribute(explain, inputs, classes)
        if order == "independent":
            copied[name].load_state_dict(trained[name])
        maps.append(one_channel(after))
        for key, value in compare(original, after, similarities).items():
            scores[key].append(value)
    return Randomisation(order, chosen, maps, {k: torch.stack(v) for k, v in scores.items()})


def random_logit(method: Method, x: Any, targets: Any, *, classes: int | None = None, seed: int = 0,
                 similarity: str = "ssim") -> tuple[Tensor, Tensor]:
    """Sixt et al.'s random-logit test: ``(similarity [N], other [N])``, the similarity between each
    sample's map for its target and for ``other``, a class drawn uniformly from the ``classes``
    others (default: the model's output width) by a generator seeded with ``seed``."""
    inputs = as_inputs(x, method.model)
    wanted = as_classes(targets, len(inputs))
    if classes is None:
        classes = int(model_outputs(method.model, inputs[:1]).shape[1])
    if classes < 2 or int(wanted.max()) >= classes:
        raise ConvscopeError(f"random logit needs at least 2 classes and targets below {classes}",
                             "Pass classes= the number of the model's outputs.")
    draw = torch.randint(0, classes - 1, (len(inputs),), generator=torch.Generator().manual_seed(seed))
    other = draw + (draw >= wanted).long()  # uniform over the classes other than the target
    first, second = attribute(method, inputs, wanted), attribute(method, inputs, other)
    return compare(first, second, [similarity])[similarity], other

