"""The method registry: snake_case names -> attribution methods, for the CLI and parametrized tests.

Example::

    @register_method("saliency", "gradient of the target w.r.t. the input")
    class Saliency(GradientMethod): ...

    get_method("guided-backprop")   # -> GuidedBackprop ('-' and '_' are interchangeable)
    get_method("gradcam")           # -> GradCAM (separators may be left out, case is ignored)
    for info in methods().values():
        print(info.name, info.description)
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from convscope.errors import ConvscopeError, did_you_mean
from convscope.formats import FROM_PYTHON, hidden_layers

if TYPE_CHECKING:
    from convscope.methods.base import Method

M = TypeVar("M", bound="type[Method]")

_SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its ``name``, a one-line ``description`` and its class."""

    name: str
    description: str
    cls: type[Method]


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(name: str, description: str) -> Callable[[M], M]:
    """Class decorator adding a :class:`~convscope.methods.base.Method` under a snake_case ``name``."""
    if not _SNAKE.fullmatch(name):
        raise ValueError(f"method name {name!r} is not snake_case")

    def add(cls: M) -> M:
        known = _REGISTRY.get(name)
        if known is not None and known.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name {name!r} is taken by {known.cls.__qualname__}")
        _REGISTRY[name] = MethodInfo(name, description, cls)
        cls.name = name
        return cls

    return add


def _load_builtin() -> None:
    importlib.import_module("convscope.methods")  # its import registers every built-in method


def methods() -> dict[str, MethodInfo]:
    """Every registered method by name, in registration order."""
    _load_builtin()
    return dict(_REGISTRY)


def supported(framework: str) -> list[str]:
    """The names of the registered methods that run on ``framework`` (``"torch"``, ``"torchscript"``
    or ``"tf"``, as :func:`~convscope.backends.dispatch.framework_of` names a model's): every method
    not declared otherwise (``frameworks = ("torch",)``; the layer and rule methods leave out
    ``"torchscript"``)."""
    return [name for name, info in methods().items() if framework in info.cls.frameworks]


def applicable(model: object) -> list[str]:
    """The methods that ``--method all`` and the demo run on ``model``: those :func:`supported` on its
    framework, less the ones that read a transformer's attention (``needs_attention``, attention
    rollout) where the model has no attention modules.

    Example: ``"attention_rollout" in applicable(torchvision.models.resnet18())`` is False.
    """
    from convscope.backends.dispatch import framework_of

    framework = framework_of(model)
    names = supported(framework)
    if framework == "torch":
        from convscope.backends.torch.tokens import has_attention

        if has_attention(model):  # type: ignore[arg-type]
            return names
    return [n for n in names if not methods()[n].cls.needs_attention]


def default_method(model: object) -> str:
    """The method ``convscope explain`` runs when none is named: ``"grad_cam"``, or ``"saliency"``
    on a model whose layers Grad-CAM cannot read (a TorchScript model).

    Example: ``default_method(torch.jit.load("model.pt"))`` -> ``"saliency"``.
    """
    from convscope.backends.dispatch import framework_of

    return "grad_cam" if "grad_cam" in supported(framework_of(model)) else "saliency"


def check_runs_on(model: object, name: str) -> None:
    """A clear error, naming the methods that do run, when method ``name`` (or ``"all"``: always
    fine) cannot run on ``model``; the CLI asks before any work.

    Example: ``check_runs_on(torch.jit.load("model.pt"), "grad_cam")`` raises: the layer is hidden.
    """
    from convscope.backends.dispatch import framework_of

    framework = framework_of(model)
    if name == "all" or framework in get_method(name).frameworks:
        return
    fix = f"Use --method {', '.join(supported(framework))}"
    if framework == "torchscript":
        raise hidden_layers(f"--method {name}", f"{fix}, or {FROM_PYTHON}.")
    raise ConvscopeError(f"--method {name} does not run on a {framework} model", f"{fix}.")


def method_for(model: object, asked: str | None, name: str = "the model") -> tuple[str, str | None]:
    """What ``convscope explain --method ASKED`` runs on ``model`` (called ``name``): the method
    (``asked``, or :func:`default_method` for None), checked by :func:`check_runs_on` before any
    work, and a note for the user when a TorchScript model changes the choice (None otherwise).

    Example: ``method_for(torch.jit.load("m.pt"), None, "m.pt")`` -> ``("saliency", "m.pt is a ...")``.
    """
    from convscope.backends.dispatch import framework_of

    method = asked or default_method(model)
    check_runs_on(model, method)
    if framework_of(model) != "torchscript" or (asked is not None and method != "all"):
        return method, None
    hidden = [n for n in methods() if n not in supported("torchscript")]
    change = f"leaving out {', '.join(hidden)}" if method == "all" else f"explaining with {method}"
    return method, f"{name} is a TorchScript model, whose layers take no hooks: {change}"


def by_class_name(name: str) -> type[Method] | None:
    """The registered method whose class is called ``name`` (None if there is none)."""
    return next((info.cls for info in methods().values() if info.cls.__name__ == name), None)


def _squashed(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``: 'guided_backprop', 'guided-backprop', 'GuidedBackprop'
    and 'guidedbackprop' all name the same method."""
    found = methods().get(name.replace("-", "_"))
    if found is None:
        found = next((info for key, info in _REGISTRY.items() if _squashed(key) == _squashed(name)), None)
    if found is None:
        names = list(_REGISTRY)
        raise ConvscopeError(f"there is no attribution method named {name!r}",
                             did_you_mean(name.replace("-", "_"), names, "method", show=len(names))
                             + " `convscope methods` lists every method with its description and options.")
    return found.cls
