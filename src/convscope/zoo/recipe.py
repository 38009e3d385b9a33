"""How a zoo model is trained: a frozen recipe whose hash is the cache key.

The key covers every hyper-parameter, the dataset's version and the architecture's source code,
so changing any of them trains a new model instead of loading a stale one.

Example::

    r = Recipe(arch="vgg", epochs=4)
    r.key()  # '3f2a9c0d1e4b' (12 hex digits)
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass

from convscope.zoo import architectures

ARCHITECTURES = {"vgg": architectures.ShapesVGG, "resnet": architectures.ShapesResNet}


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
    train_seed: int = 1  # Shapes seed of the training images
    val_seed: int = 2  # Shapes seed of the held-out images (never trained on)

    def build(self):  # noqa: ANN201 - returns an nn.Module
        return ARCHITECTURES[self.arch]()

    def key(self) -> str:
        from convscope.data import shapes  # the data's drawing code is part of the recipe too

        source = inspect.getsource(architectures) + inspect.getsource(shapes)
        blob = json.dumps(asdict(self), sort_keys=True) + source
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
