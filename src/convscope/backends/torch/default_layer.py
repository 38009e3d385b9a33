"""Choosing the layer a CAM method reads when none is given.

The default is the last module (in the order the forward pass *finishes* them, so a block wins
over the layers inside it) that runs once and outputs a feature map with more than one spatial
position and as many spatial axes as the input: ``[N, C, h, w]`` for images, ``[N, C, l]`` for
signals ``[N, C, L]``, ``[N, C, d, h, w]`` for volumes. Adaptive pooling layers are skipped: they resize for the head (VGG's
``avgpool`` turns any input into 7x7) and compute no features. For torchvision's ResNet that is
``layer4`` (``avgpool``'s 1x1 output does not count); for a VGG it is ``features``, the last
max-pool's output. A model with attention modules (a vision transformer) gets the input of its
last attention instead, the last block's ``norm1`` / ``ln_1``
(:func:`~convscope.backends.torch.tokens.transformer_layer`).

Example::

    default_layer(torchvision.models.resnet18(), torch.zeros(1, 3, 224, 224))   # -> 'layer4'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from convscope.backends.torch.session import call_model, eval_mode
from convscope.errors import ConvscopeError
from convscope.backends.torch.tokens import transformer_layer
from convscope.formats import check_layers_visible


_RESIZERS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


def _is_feature_map(module: nn.Module, shape: tuple[int, ...] | None, rank: int) -> bool:
    return (shape is not None and len(shape) == rank and math.prod(shape[2:]) > 1
            and not isinstance(module, _RESIZERS))


def default_layer(model: nn.Module, x: Tensor) -> str:
    """The qualified name of the last once-run module (not an adaptive pool) whose output is a
    spatial feature map.

    One forward pass of ``x[:1]`` in eval mode without gradients; every hook is removed after.
    A TorchScript model refuses (its layers take no hooks).
    """
    check_layers_visible(model, "a class activation map")
    block = transformer_layer(model, x)
    if block is not None:
        return block
    finished: list[str] = []  # names in the order their forward pass returned
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}

    def record(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else None
            finished.append(name)

        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(record(name)))
        with eval_mode(model), torch.no_grad():
            call_model(model, x[:1].detach())
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(model.named_modules())
    for name in reversed(finished):
        if calls[name] == 1 and _is_feature_map(modules[name], shapes[name], x.dim()):
            return name
    layout = {3: "[N, C, l]", 5: "[N, C, d, h, w]"}.get(x.dim(), "[N, C, h, w]")
    raise ConvscopeError(f"no layer of this {type(model).__name__} outputs a feature map {layout} with more "
                         f"than one position (for an input of shape {list(x.shape)}), so there is no layer to "
                         "choose for a class activation map",
                         "Pass layer='...' naming a convolutional layer (`convscope layers MODEL` lists them), "
                         "or give a larger input.")
