"""What each model format can show, and one clear refusal, before any work, for what it cannot.

- A **TorchScript** file (``torch.jit.script`` or ``torch.jit.trace``, saved) runs as one compiled
  graph: PyTorch refuses forward hooks on its submodules, and its ReLUs never reach Python, so
  no backward rule applies to them. Whatever reads or changes a layer inside it (the CAM
  methods, ``project``, ``atlas``, ``visualize``, ``dream``, the output shapes in ``layers``) or
  applies a rule at its ReLUs (deconvnet, guided backprop) cannot run on it, and is refused with
  :func:`hidden_layers`; methods that need only the input and the output (saliency, integrated
  gradients, SmoothGrad, occlusion, RISE, ...) run on it as on any module.
- A **Keras** model runs every attribution method, ``project``, ``visualize`` and ``dream``; the
  dataset atlas reads PyTorch modules (receptive fields, projections of given units), so
  :func:`check_torch_modules` refuses a Keras model there.

The README's table "Model formats" lists every command against every format.

Example::

    check_layers_visible(model, "`convscope project`")   # a ConvscopeError for a TorchScript model
"""

from __future__ import annotations

import sys

from convscope.errors import ConvscopeError

FROM_PYTHON = "load the model from its Python code instead: package.module:factory --weights state_dict.pt"


def is_torchscript(model: object) -> bool:
    """Whether ``model`` is a TorchScript module (scripted or traced, loaded or in memory)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.jit.ScriptModule)


def hidden_layers(what: str, fix: str | None = None) -> ConvscopeError:
    """The refusal of ``what`` (something that reads layers or ReLUs inside the model) on a
    TorchScript model; ``fix`` says what to use instead (default: the model's Python code, or a
    method that needs no layer)."""
    return ConvscopeError(f"{what} cannot be used on a TorchScript model: its layers take no hooks and its ReLUs "
                          "no backward rules",
                          fix or f"Use a method that needs no layer (`convscope explain --method saliency`), or "
                                 f"{FROM_PYTHON}.")


def check_layers_visible(model: object, what: str, fix: str | None = None) -> None:
    """Raise :func:`hidden_layers` for a TorchScript ``model``; nothing for any other model."""
    if is_torchscript(model):
        raise hidden_layers(what, fix)


def check_torch_modules(model: object, what: str, fix: str) -> None:
    """Raise a clear error unless ``model`` is a PyTorch module whose layers can be hooked
    (``what`` is written for PyTorch modules only; ``fix`` says what to use instead)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(model, torch.nn.Module):
        kind = "a Keras model" if type(model).__module__.split(".")[0] in ("keras", "tf_keras") else \
            f"a {type(model).__name__}"
        raise ConvscopeError(f"{what} runs on PyTorch models only, and this is {kind}", fix)
    check_layers_visible(model, what)


__all__ = ["FROM_PYTHON", "check_layers_visible", "check_torch_modules", "hidden_layers", "is_torchscript"]
