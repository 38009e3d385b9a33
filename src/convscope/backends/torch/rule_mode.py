"""Apply backward rules to every ReLU spelling with a scoped ``TorchFunctionMode``.

Module backward hooks cannot do this job: ``register_full_backward_hook`` raises on an
in-place ReLU (torchvision's ResNet) and never sees ``F.relu``/``torch.relu``/``Tensor.relu``.
A torch-function mode sees every call of the ReLU functions, whoever makes it, for exactly as
long as it is entered. Intercepted: ``F.relu`` (and thus ``nn.ReLU``, in place or not),
``torch.relu``, ``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_``, and ``F.threshold`` with
threshold 0 and value 0 (``nn.Threshold(0, 0)``). Not intercepted (a different function):
``clamp(min=0)``, ``relu6``, leaky/parametric ReLUs. Scripted or compiled models bypass modes.

Where a rule applies comes from the :class:`~convscope.rules.RuleMap`: forward pre/post hooks on
the listed layers push and pop their rule, so a ReLU gets the innermost listed layer's rule.

Example::

    with apply_rules(model, RuleMap(GuidedReLU())):
        out = model(x)            # every ReLU in this forward pass now back-propagates guided
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from convscope.backends.torch.relu import rule_relu
from convscope.rules import BackwardRule, RuleMap


def _relu_fn(args: tuple, kwargs: Mapping[str, Any]) -> tuple[Tensor, bool] | None:
    inplace = kwargs.get("inplace", args[1] if len(args) > 1 else False)
    return args[0], bool(inplace)


def _threshold_fn(args: tuple, kwargs: Mapping[str, Any]) -> tuple[Tensor, bool] | None:
    names = ("input", "threshold", "value", "inplace")
    bound = dict(zip(names, args)) | dict(kwargs)
    if bound.get("threshold") != 0 or bound.get("value") != 0:
        return None  # a genuine threshold, not a ReLU
    return bound["input"], bool(bound.get("inplace", False))


# function -> how to read (input, inplace) from its arguments (None: not a ReLU after all)
_RELU_CALLS: dict[Callable[..., Any], Callable[[tuple, Mapping[str, Any]], tuple[Tensor, bool] | None]] = {
    F.relu: _relu_fn,
    torch.relu: lambda a, k: (a[0], False),
    torch.Tensor.relu: lambda a, k: (a[0], False),
    torch.relu_: lambda a, k: (a[0], True),
    torch.Tensor.relu_: lambda a, k: (a[0], True),
    F.threshold: _threshold_fn,
}


def relu_call(func: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any] | None) -> tuple[Tensor, bool] | None:
    """``(input, inplace)`` when ``func(*args, **kwargs)`` is a ReLU, else None."""
    read = _RELU_CALLS.get(func)
    return None if read is None else read(args, kwargs or {})


class RuleMode(TorchFunctionMode):
    """Replaces each ReLU call by :func:`rule_relu` with the rule ``current()`` returns."""

    def __init__(self, current: Callable[[], BackwardRule]) -> None:
        super().__init__()
        self.current = current
        self.calls = 0  # ReLU calls rewritten (tests use it to prove the rules were applied)

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),  # noqa: ANN401
                           kwargs: Mapping[str, Any] | None = None) -> Any:  # noqa: ANN401
        kwargs = kwargs or {}
        call = relu_call(func, args, kwargs)
        if call is None or not isinstance(call[0], Tensor):
            return func(*args, **kwargs)
        self.calls += 1
        return rule_relu(call[0], self.current(), inplace=call[1])


@contextmanager
def apply_rules(model: nn.Module, rules: RuleMap) -> Iterator[RuleMode]:
    """Within the block, every ReLU run by ``model`` (or anything else) back-propagates by ``rules``.

    Hooks and the mode are removed on exit, also when the block raises.
    """
    stack: list[BackwardRule] = [rules.default]

    def enter(rule: BackwardRule) -> Callable[..., None]:
        return lambda *_: stack.append(rule)

    def leave(*_: object) -> None:
        if len(stack) > 1:
            stack.pop()

    with ExitStack() as scope:
        for module, rule in rules.resolve(model):
            scope.callback(module.register_forward_pre_hook(enter(rule)).remove)
            scope.callback(module.register_forward_hook(leave, always_call=True).remove)
        mode = scope.enter_context(RuleMode(lambda: stack[-1]))
        yield mode
