"""convscope: see inside convolutional networks.

``import convscope`` is cheap: it never imports TensorFlow, torchvision or matplotlib.
Public names are resolved lazily on first use (PEP 562), so ``convscope.zoo`` or
``convscope.ops`` cost nothing until touched.

Example::

    import convscope
    model = convscope.zoo.load("shapes-vgg")
    saliency = convscope.GuidedBackprop(model).attribute(x, target=convscope.Channel("features.7", 3))
    pooled, switches = convscope.ops.max_pool_with_switches(x, 2)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it (a submodule itself when the value is None)
_LAZY: dict[str, str | None] = {
    "data": None,
    "zoo": None,
    "ops": None,
    "render": None,
    "models": None,
    "layers": None,
    "images": None,
    "errors": None,
    "tf": None,
    "targets": None,
    "rules": None,
    "methods": None,
    "deconv": None,
    "project": None,
    "atlas": None,
    "featurevis": None,
    "metrics": None,
    "ConvscopeError": "convscope.errors",
    "load_model": "convscope.models",
    "load_images": "convscope.images",
    "Class": "convscope.targets",
    "Channel": "convscope.targets",
    "Neuron": "convscope.targets",
    "MaxNeuron": "convscope.targets",
    "Direction": "convscope.targets",
    "Target": "convscope.targets",
    "RuleMap": "convscope.rules",
    "GuidedReLU": "convscope.rules",
    "DeconvReLU": "convscope.rules",
    "Saliency": "convscope.methods",
    "InputXGradient": "convscope.methods",
    "DeconvNet": "convscope.methods",
    "GuidedBackprop": "convscope.methods",
    "get_method": "convscope.methods",
    "exact_forward": "convscope.backends.torch.inference",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'convscope' has no attribute {name!r}")
    where = _LAZY[name]
    if where is None:
        value: Any = importlib.import_module(f"convscope.{name}")
    else:
        value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
