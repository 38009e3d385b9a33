"""Choosing the layer a CAM method reads when none is given.

The default is the last module (in the order the forward pass *finishes* them, so a block wins
over the layers inside it) that runs once and outputs a feature map with more than one spatial
position and as many spatial axes as the input: ``[N, C, h, w]`` for images, ``[N, C, l]`` for
signals ``[N, C, L]``, ``[N, C, d, h, w]`` for volumes. Adaptive pooling layers are skipped: they resize for the head (VGG's
``avgpool`` turns any input into 7x7) and compute no features. For torchvision's ResNet that is
``layer4`` (``avgpool``'s 1x1 output does not count); for a VGG it is ``features``, the last
max-pool's output. A model with attention modules (a vision transformer) gets the input of its
last attention instead, the last block's ``norm1`` / ``ln_1``
(:func:`~convscope.backends.torch.tokens.transformer_layer`). A model returning a structured output (a dict, a list of per-image dicts:
torchvision's detectors and segmenters) is searched within its backbone (:func:`backbone_scope`):
its heads run per pyramid level or per proposal, and a segmenter's classifier outputs logits.
Faster R-CNN, RetinaNet and FCOS with a ResNet-50 FPN get ``backbone.body.layer4``; FCN and
DeepLabV3 ``backbone.layer4``. A detector whose backbone returns its levels without a pyramid (SSD)
gets the module its first level is computed from (SSD300: ``backbone.features``, conv4_3;
SSDlite: ``backbone.features.0``): its last block feeds only the coarsest level, and the
gradient of a detection from a finer level never reaches it.

Example::

    default_layer(torchvision.models.resnet18(), torch.zeros(1, 3, 224, 224))   # -> 'layer4'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from convscope.backends.torch.session import call_model, eval_mode
from convscope.backends.torch.tokens import transformer_layer
from convscope.errors import ConvscopeError
from convscope.formats import check_layers_visible
from convscope.ops.nested import tensors_in
from convscope.ops.structured import is_per_sample


_RESIZERS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


def _is_feature_map(module: nn.Module, shape: tuple[int, ...] | None, rank: int = 4) -> bool:
    return (shape is not None and len(shape) == rank and shape[0] == 1 and math.prod(shape[2:]) > 1
            and not isinstance(module, _RESIZERS))  # one sample in: per-proposal maps are not the image's


def backbone_scope(model: nn.Module) -> str:
    """Where a model with a structured output (a detector's, a segmenter's) keeps the layer a CAM
    reads: its ``backbone.body.`` (a backbone with a feature pyramid: the last stage feeds every
    level) or ``backbone.`` (torchvision's names); ``""``: anywhere."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return ""
    return "backbone.body." if isinstance(getattr(backbone, "body", None), nn.Module) else "backbone."


def _recorded_pass(model: nn.Module, x: Tensor, keep: bool = False
                   ) -> tuple[list[str], dict[str, int], dict[str, object], object]:
    """One pass of ``x[:1]`` in eval mode with a hook on every module (all removed after): the
    names in the order their forward pass returned, how often each ran, what each returned (its
    shape; ``keep``: the value itself, with gradients recorded) and the model's output."""
    finished: list[str] = []
    seen: dict[str, object] = {}
    calls: dict[str, int] = {}

    def record(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            seen[name] = output if keep else tuple(output.shape) if isinstance(output, Tensor) else None
            finished.append(name)

        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(record(name)))
        with eval_mode(model), torch.set_grad_enabled(keep):
            output = call_model(model, x[:1].detach())
    finally:
        for handle in handles:
            handle.remove()
    return finished, calls, seen, output


def _first_level_source(model: nn.Module, x: Tensor) -> str | None:
    """For a detector whose backbone returns its levels without a feature pyramid (SSD): the
    module of the backbone closest to the first (finest) level among those it is computed from,
    following the autograd graph back from that level. Every later level is computed from it, so
    every detection's gradient reaches it (the last block's map feeds the coarsest level only)."""
    finished, calls, seen, _ = _recorded_pass(model, x, keep=True)
    levels = list(tensors_in(seen.get("backbone")))
    if not levels or levels[0].grad_fn is None:
        return None
    modules = dict(model.named_modules())
    by_node: dict[object, str] = {}
    for name in finished:  # the outermost module of equal outputs finishes last, and wins
        out = seen[name]
        if (name.startswith("backbone.") and calls[name] == 1 and isinstance(out, Tensor) and out.grad_fn is not None
                and _is_feature_map(modules[name], tuple(out.shape))):
            by_node[out.grad_fn] = name
    queue, visited = [levels[0].grad_fn], set()
    while queue:  # breadth first: the closest source
        node = queue.pop(0)
        if node in by_node:
            return by_node[node]
        visited.add(node)
        queue += [n for n, _ in node.next_functions if n is not None and n not in visited]
    return None


def default_layer(model: nn.Module, x: Tensor) -> str:
    """The qualified name of the last once-run module (not an adaptive pool) whose output is a
    spatial feature map (see the module doc for detectors and segmenters).

    One forward pass of ``x[:1]`` in eval mode without gradients (a detector without a feature
    pyramid: one more, with them); every hook is removed after. A TorchScript model refuses (its
    layers take no hooks).
    """
    check_layers_visible(model, "a class activation map")
    block = transformer_layer(model, x)
    if block is not None:
        return block
    finished, calls, shapes, output = _recorded_pass(model, x)
    modules = dict(model.named_modules())
    scope = "" if isinstance(output, Tensor) else backbone_scope(model)
    if scope == "backbone." and is_per_sample(output):
        found = _first_level_source(model, x)
        if found is not None:
            return found
    for name in reversed(finished):
        if calls[name] == 1 and name.startswith(scope) and _is_feature_map(modules[name], shapes[name], x.dim()):  # type: ignore[arg-type]
            return name
    layout = {3: "[N, C, l]", 5: "[N, C, d, h, w]"}.get(x.dim(), "[N, C, h, w]")
    raise ConvscopeError(f"no layer of this {type(model).__name__} outputs a feature map {layout} with more "
                         f"than one position (for an input of shape {list(x.shape)}), so there is no layer to "
                         "choose for a class activation map",
                         "Pass layer='...' naming a convolutional layer (`convscope layers MODEL` lists them), "
                         "or give a larger input.")
