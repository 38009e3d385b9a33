"""convscope: see inside convolutional networks.

``import convscope`` is cheap: it never imports TensorFlow, torchvision or matplotlib.
Public names are resolved lazily on first use (PEP 562), so ``convscope.zoo`` or
``convscope.ops`` cost nothing until touched. Every registered attribution method is a top-level
name too (``convscope.IntegratedGradients``, ``from convscope import GradCAM``), found in the
method registry on first use.

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
    "targets_vision": None,
    "rules": None,
    "methods": None,
    "deconv": None,
    "project": None,
    "projection": None,
    "atlas": None,
    "featurevis": None,
    "evaluate": None,
    "lrp": "convscope.methods",
    "ConvscopeError": "convscope.errors",
    "load_model": "convscope.models",
    "load_images": "convscope.images",
    "Class": "convscope.targets",
    "Channel": "convscope.targets",
    "Neuron": "convscope.targets",
    "MaxNeuron": "convscope.targets",
    "Direction": "convscope.targets",
    "Predicted": "convscope.targets",
    "Output": "convscope.targets",
    "Element": "convscope.targets",
    "Target": "convscope.targets",
    "Detection": "convscope.targets_vision",
    "Region": "convscope.targets_vision",
    "RuleMap": "convscope.rules",
    "GuidedReLU": "convscope.rules",
    "DeconvReLU": "convscope.rules",
    "get_method": "convscope.methods",
    "exact_forward": "convscope.backends.torch.inference",
}


def _registered(name: str) -> Any:
    """The registered method class called ``name``, else None (dunder names never look)."""
    if name.startswith("_"):
        return None
    from convscope.methods.registry import by_class_name

    return by_class_name(name)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        found = _registered(name)  # not cached: the registry stays the one source
        if found is None:
            raise AttributeError(f"module 'convscope' has no attribute {name!r}")
        return found
    where = _LAZY[name]
    if where is None:
        value: Any = importlib.import_module(f"convscope.{name}")
    else:
        value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    from convscope.methods.registry import methods

    return sorted(set(globals()) | set(_LAZY) | {info.cls.__name__ for info in methods().values()})


__all__ = sorted(_LAZY)
