"""The model zoo: small CNNs trained on the built-in Shapes dataset on first use.

``load(name)`` returns the model in eval mode, training it (deterministically, with a progress
bar, in about a minute on two CPU cores) the first time and caching the weights under
:func:`convscope.cache.cache_dir` with a key that changes whenever the recipe does. A cache
entry that is missing, partial or corrupt is rebuilt, never loaded.

Example::

    from convscope import zoo
    model = zoo.load("shapes-vgg")
    zoo.names()  # ['shapes-resnet', 'shapes-vgg']
"""

from __future__ import annotations

import io
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convscope.cache import cache_dir, read_checked, write_checked
from convscope.errors import ConvscopeError, did_you_mean
from convscope.zoo.recipe import Recipe


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its recipe and a one-line description."""

    name: str
    recipe: Recipe
    description: str


_REGISTRY: dict[str, ZooEntry] = {}


def register(name: str, recipe: Recipe, description: str) -> None:
    """Add a model to the zoo."""
    _REGISTRY[name] = ZooEntry(name, recipe, description)


register("shapes-vgg", Recipe(arch="vgg"), "3 conv-relu-maxpool blocks + VGG-style MLP head, Shapes 64x64, 6 classes")
register("shapes-resnet", Recipe(arch="resnet"),
         "3 residual blocks with batch-norm and a reused in-place ReLU (torchvision-style), Shapes 64x64")


def names() -> list[str]:
    """The registered zoo model names."""
    return sorted(_REGISTRY)


def entry(name: str) -> ZooEntry:
    """The registry entry for ``name`` (a clear error listing close names if unknown)."""
    if name not in _REGISTRY:
        raise ConvscopeError(f"there is no zoo model named {name!r}", did_you_mean(name, names(), "zoo model"))
    return _REGISTRY[name]


def cache_path(name: str) -> Path:
    """Where ``name``'s weights live for its current recipe."""
    e = entry(name)
    return cache_dir() / "zoo" / f"{name}-{e.recipe.key()}.pt"


def info(name: str) -> dict[str, Any] | None:
    """The cached manifest (recipe, accuracy, training time) or None if not trained yet."""
    found = read_checked(cache_path(name))
    return None if isinstance(found, str) else found[1]


def load(name: str, *, progress: bool = True, retrain: bool = False) -> nn.Module:
    """The trained zoo model ``name`` in eval mode (trained and cached on first use)."""
    e = entry(name)
    path = cache_path(name)
    found = "retrain requested" if retrain else read_checked(path)
    if not isinstance(found, str):
        payload, _meta = found
        model = e.recipe.build()
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            return model.eval()
        except Exception as exc:  # noqa: BLE001 - any unreadable payload means: rebuild it
            found = f"unloadable ({type(exc).__name__}: {exc})"
    if found != "missing":
        print(f"convscope: cached weights for {name} at {path} are {found}; retraining.", file=sys.stderr)
    from convscope.zoo.train import train

    state, metrics = train(e.recipe, name=name, progress=progress)
    buf = io.BytesIO()
    torch.save(state, buf)
    write_checked(path, buf.getvalue(), {"name": name, "recipe": asdict(e.recipe), "key": e.recipe.key(), **metrics})
    model = e.recipe.build()
    model.load_state_dict(state)
    if progress:
        print(f"convscope: trained {name} in {metrics['train_seconds']}s, held-out accuracy "
              f"{metrics['val_accuracy']:.1%}; cached at {path}", file=sys.stderr)
    return model.eval()


def preset(name: str):  # noqa: ANN201 - returns convscope.images.Preprocess
    """The preprocessing that ``name`` expects: 64x64, Shapes mean/std."""
    entry(name)
    from convscope.data import MEAN, STD
    from convscope.images import Preprocess

    return Preprocess(size=64, crop=64, mean=tuple(MEAN), std=tuple(STD))


__all__ = ["ZooEntry", "cache_path", "entry", "info", "load", "names", "preset", "register"]
