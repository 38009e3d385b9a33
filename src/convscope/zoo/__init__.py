"""The model zoo: small models trained on the built-in procedural data on first use.

One per model family, each with ground truth for localisation in its data: image classifiers
(``shapes-vgg``, ``shapes-resnet``, the vision transformer ``shapes-vit``), a segmenter
(``shapes-segmenter``, torchvision-style ``{'out': logits}``), a detector (``shapes-detector``, a
torchvision FCOS on :class:`~convscope.data.Scenes`), a 1-D and a 3-D classifier (``signals-cnn``
on :class:`~convscope.data.Signals`, ``volumes-cnn`` on :class:`~convscope.data.Volumes`).

``load(name)`` returns the model in eval mode, training it (deterministically, with a progress
bar, in about a minute on two CPU cores) the first time and caching the weights under
:func:`convscope.cache.cache_dir` with a key that changes whenever the recipe does. A cache
entry that is missing, partial or corrupt is rebuilt, never loaded.

Example::

    from convscope import zoo
    model = zoo.load("shapes-vgg")
    zoo.names()  # ['shapes-detector', 'shapes-resnet', 'shapes-segmenter', 'shapes-vgg', ...]
    zoo.classes("shapes-segmenter")  # ['background', 'circle', ...]
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
register("shapes-vit", Recipe(arch="vit", n_train=8_000, epochs=5, lr=1e-3),
         "torchvision VisionTransformer: conv stem to 8x8 tokens + class token, 2 layers of width 64, Shapes 64x64")
register("shapes-segmenter", Recipe(arch="fcn", task="segment", n_train=4_000, n_val=500, epochs=3, batch_size=32),
         "FCN (dilated convs, stride 4) returning {'out': [N, 7, H, W]}: background + 6 Shapes classes per pixel")
register("shapes-detector", Recipe(arch="fcos", task="detect", data="scenes", n_train=4_000, n_val=500, epochs=3,
                                   batch_size=32),
         "torchvision FCOS with a tiny backbone: boxes of 1-3 shapes in 64x64 Scenes (labels = class + 1)")
register("signals-cnn", Recipe(arch="cnn1d", data="signals", n_train=6_000, epochs=3),
         "1-D conv-bn-relu-maxpool blocks + global average pool, Signals [2, 128], 4 pattern classes")
register("volumes-cnn", Recipe(arch="cnn3d", data="volumes", n_train=4_000, epochs=3, batch_size=32),
         "3-D conv-bn-relu-maxpool blocks + global average pool, Volumes [1, 16, 16, 16], 4 solids")


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
        print(f"convscope: trained {name} in {metrics['train_seconds']}s, held-out {headline(metrics)}; "
              f"cached at {path}", file=sys.stderr)
    return model.eval()


def headline(metrics: dict[str, Any]) -> str:
    """The held-out scores of a manifest in words, e.g. ``'accuracy 99.1%'``."""
    return ", ".join(f"{k[4:].replace('_', ' ')} {v:.1%}" for k, v in metrics.items() if k.startswith("val_"))


def classes(name: str) -> list[str]:
    """The names of ``name``'s output classes (index = output index; 'background' at 0 for the
    segmenter and the detector, whose class ``c + 1`` is the data's class ``c``)."""
    recipe = entry(name).recipe
    from convscope.data import SOURCES

    names = list(SOURCES[recipe.data].class_names)
    return names if recipe.task == "classify" else ["background", *names]


def preset(name: str):  # noqa: ANN201 - returns convscope.images.Preprocess
    """The preprocessing that ``name`` expects: 64x64 pictures, normalised with the Shapes
    mean/std (the detector normalises inside: mean 0, std 1). ``signals-cnn`` and
    ``volumes-cnn`` take tensors, not pictures: their preset is the identity on 64x64 pictures,
    a placeholder, and their inputs come from :class:`~convscope.data.Signals` /
    :class:`~convscope.data.Volumes` ``.tensors()`` as they are."""
    recipe = entry(name).recipe
    from convscope.data import MEAN, STD
    from convscope.images import Preprocess

    if recipe.data == "shapes":
        return Preprocess(size=64, crop=64, mean=tuple(MEAN), std=tuple(STD))
    return Preprocess(size=64, crop=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


__all__ = ["ZooEntry", "cache_path", "classes", "entry", "headline", "info", "load", "names", "preset", "register"]
