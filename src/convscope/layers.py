"""Address a model's layers by their qualified module name (``features.12``, ``layer4.1.conv2``).

An unknown name raises a :class:`~convscope.errors.ConvscopeError` that lists the closest names.

Example::

    conv = resolve_layer(model, "features.3")
    for row in layer_table(model, torch.zeros(1, 3, 64, 64)):
        print(row.name, row.kind, row.output_shape)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convscope.errors import ConvscopeError, did_you_mean
from convscope.formats import check_layers_visible, is_torchscript


def layer_names(model: nn.Module) -> list[str]:
    """Qualified names of every submodule, in definition order (the root, '', excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str | nn.Module) -> nn.Module:
    """The submodule called ``name`` (a module passes through if it belongs to ``model``); a
    TorchScript model refuses (its layers take no hooks: :mod:`convscope.formats`)."""
    check_layers_visible(model, f"the layer {name if isinstance(name, str) else type(name).__name__!r}")
    if isinstance(name, nn.Module):
        if any(m is name for m in model.modules()):
            return name
        raise ConvscopeError("the layer given is a module that is not part of this model",
                             "Pass a submodule of the model or its qualified name (see `convscope layers MODEL`).")
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    raise ConvscopeError(f"the model has no layer named {name!r}",
                         did_you_mean(name, layer_names(model), "layer")
                         + " Run `convscope layers MODEL` to see every name.")


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The qualified name of ``layer`` inside ``model`` (the first, if it is registered twice)."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ConvscopeError("the layer is not part of this model", "Pass one of the model's own submodules.")


@dataclass(frozen=True)
class LayerRow:
    """One line of the layer tree: name, depth, type, output shape of the probe input (or None)."""

    name: str
    depth: int
    kind: str
    output_shape: tuple[int, ...] | None
    params: int
    calls: int


def layer_table(model: nn.Module, probe: torch.Tensor | None = None) -> list[LayerRow]:
    """Every submodule with the output shape it produced for ``probe`` (hooks removed after).

    A module called several times (a shared ReLU) reports its last output shape and its call count.
    A TorchScript model's submodules take no hooks: they are listed (with their original type
    names) without output shapes, and ``probe`` is not run.
    """
    if is_torchscript(model):
        probe = None
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    handles = []

    def hook_for(name: str):  # noqa: ANN202
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape)

        return hook

    if probe is not None:
        try:
            for name, module in model.named_modules():
                if name:
                    handles.append(module.register_forward_hook(hook_for(name)))
            was_training = model.training
            try:
                model.eval()
                with torch.no_grad():
                    model(probe)
            finally:
                model.train(was_training)
        finally:
            for h in handles:
                h.remove()
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        kind = getattr(module, "original_name", None) or type(module).__name__  # a script module's own class name
        rows.append(LayerRow(name=name, depth=name.count(".") + 1, kind=kind,
                             output_shape=shapes.get(name), params=sum(p.numel() for p in module.parameters(recurse=False)),
                             calls=calls.get(name, 0)))
    return rows
