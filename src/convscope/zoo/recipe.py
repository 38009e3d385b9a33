"""How a zoo model is trained: a frozen recipe whose hash is the cache key.

A recipe names an architecture (``arch``), a task (``classify``, ``segment`` or ``detect``,
:mod:`convscope.zoo.tasks`) and a data source (``shapes``, ``signals``, ``volumes`` or ``scenes``,
:data:`convscope.data.SOURCES`). The key covers every hyper-parameter, the source code of the
architecture's module and of the data's modules, so changing any of them trains a new model
instead of loading a stale one. ``task`` and ``data`` enter the key only when they differ from
their defaults (``classify`` on ``shapes``), so the keys of the first zoo models are unchanged.

Example::

    r = Recipe(arch="vgg", epochs=4)
    r.key()  # '3f2a9c0d1e4b' (12 hex digits)
    Recipe(arch="fcn", task="segment").build()
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from dataclasses import asdict, dataclass, fields

from torch import nn

# name -> "module:callable" building the untrained model (imported on use: torchvision stays lazy)
ARCHITECTURES = {
    "vgg": "convscope.zoo.architectures:ShapesVGG",
    "resnet": "convscope.zoo.architectures:ShapesResNet",
    "vit": "convscope.zoo.vit:shapes_vit",
    "fcn": "convscope.zoo.segmenter:ShapesFCN",
    "fcos": "convscope.zoo.detector:shapes_fcos",
    "cnn1d": "convscope.zoo.nets_nd:SignalsCNN",
    "cnn3d": "convscope.zoo.nets_nd:VolumesCNN",
}
# data source -> the modules whose code draws it (part of the key)
DATA_MODULES = {
    "shapes": ("convscope.data.shapes",),
    "signals": ("convscope.data.procedural", "convscope.data.signals"),
    "volumes": ("convscope.data.procedural", "convscope.data.volumes"),
    "scenes": ("convscope.data.procedural", "convscope.data.scenes", "convscope.data.shapes", "convscope.data.draw"),
}
TASKS = ("classify", "segment", "detect")


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained zoo model."""

    arch: str
    n_train: int = 10_000
    n_val: int = 1_000
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    train_seed: int = 1  # data seed of the training samples
    val_seed: int = 2  # data seed of the held-out samples (never trained on)
    task: str = "classify"
    data: str = "shapes"

    def __post_init__(self) -> None:
        from convscope.errors import ConvscopeError, did_you_mean

        for value, known, what in ((self.arch, ARCHITECTURES, "architecture"), (self.task, TASKS, "task"),
                                   (self.data, DATA_MODULES, "data source")):
            if value not in known:
                raise ConvscopeError(f"unknown zoo {what} {value!r}", did_you_mean(value, list(known), what))

    def build(self) -> nn.Module:
        module, _, factory = ARCHITECTURES[self.arch].partition(":")
        return getattr(importlib.import_module(module), factory)()

    def key(self) -> str:
        later = {f.name: f.default for f in fields(self) if f.name in ("task", "data")}
        params = {k: v for k, v in asdict(self).items() if k not in later or v != later[k]}
        modules = (ARCHITECTURES[self.arch].partition(":")[0], *DATA_MODULES[self.data])
        source = "".join(inspect.getsource(importlib.import_module(m)) for m in modules)
        blob = json.dumps(params, sort_keys=True) + source
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
