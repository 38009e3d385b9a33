"""The PyTorch backend (:class:`convscope.backends.protocol.Backend`): inputs ``[N, C, ...]``
torch tensors, layers named by qualified module names (or given as modules).

Example::

    from convscope.backends.dispatch import backend_of
    backend = backend_of(model)                       # this module's BACKEND for an nn.Module
    with backend.engine(method, x, targets, None, [], None) as engine: ...
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from convscope.ops import tensors
from convscope.backends.torch.default_layer import default_layer
from convscope.backends.torch.engine import TorchEngine
from convscope.backends.torch.inputs import Inputs
from convscope.backends.torch.probes import LayerKey, key_name
from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.layers import resolve_layer
from convscope.rules import RuleMap
from convscope.targets import Target, as_targets


def check_input(x: object) -> Tensor:
    """``x`` if it is a floating-point tensor with a batch dimension, else a clear error."""
    if not isinstance(x, Tensor):
        hint = "Convert it with torch.from_numpy(x).float()." if type(x).__module__ == "numpy" else \
            "Pass a float tensor of shape [N, C, H, W]."
        raise ConvscopeError(f"the input is a {type(x).__name__}, not a torch tensor", hint)
    if not x.is_floating_point():
        raise ConvscopeError(f"the input has dtype {x.dtype}; attribution needs a floating-point input",
                             "Convert it, e.g. x.float() / 255.")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ConvscopeError(f"the input of shape {list(x.shape)} holds no samples",
                             "Pass a batch with at least one sample, e.g. x.unsqueeze(0) for one image.")
    return x


_DEFAULT_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], str]] = weakref.WeakKeyDictionary()


class TorchBackend:
    """PyTorch models (see the module docstring)."""

    name = "torch"
    ops = tensors
    layer_types = (str, nn.Module)
    image_layout = "[N, C, H, W]"
    feature_layout = "[N, C, h, w]"
    #: input ranks the CAM family takes (signals, images, volumes), and the feature map of each
    cam_ranks = (3, 4, 5)
    cam_layouts = "signals [N, C, L], images [N, C, H, W] or volumes [N, C, D, H, W]"
    feature_layouts = {3: "[N, C, l]", 4: "[N, C, h, w]", 5: "[N, C, d, h, w]"}

    def as_input(self, x: Any) -> Tensor:
        return check_input(x)

    def inputs(self, x: Any, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None
               ) -> tuple[Tensor, Inputs | None]:
        """The attributed input and how it reaches the model (:mod:`~convscope.backends.torch.inputs`):
        ``(x, None)`` for one float tensor without forward arguments."""
        inputs = Inputs.of(x, args, kwargs)
        return (check_input(x), None) if inputs is None else (inputs.x, inputs)

    def targets(self, target: Any, targets: Sequence[Any] | None, n: int) -> tuple[list[Target], bool]:
        return as_targets(target, targets, n)

    def accepts_rules(self, rules: RuleMap) -> None:
        """Every rule has a PyTorch form (layer names are checked on the model: :meth:`check_rules`)."""

    def check_rules(self, model: nn.Module, rules: RuleMap) -> None:
        rules.resolve(model)  # unknown layer names fail here, before any work

    def default_layer(self, model: nn.Module, x: Tensor) -> str:
        """:func:`~convscope.backends.torch.default_layer.default_layer`, found once per model,
        module tree and sample shape (one forward pass the first time)."""
        key = (tuple(x.shape[1:]), tuple(map(id, model.modules())))
        known = _DEFAULT_LAYERS.setdefault(model, {})
        if key not in known:
            known[key] = default_layer(model, x)
        return known[key]

    def layer_key(self, model: nn.Module, key: LayerKey) -> LayerKey:
        resolve_layer(model, key)  # a clear error if unknown
        return key

    def feature_key(self, model: nn.Module, key: LayerKey) -> LayerKey:
        return self.layer_key(model, key)

    def layer_name(self, model: nn.Module, key: LayerKey) -> str:
        return key_name(model, key)

    @contextmanager
    def engine(self, method: Any, x: Tensor, targets: list[Target], wrt: LayerKey | None, layers: Sequence[LayerKey],
               rules: RuleMap | None, inputs: Inputs | None = None) -> Iterator[TorchEngine]:
        probed = [key for t in targets for key in t.layers()] + list(layers) + ([wrt] if wrt is not None else [])
        stop_early = not any(t.reads_output() for t in targets)  # layer targets: no need to run the model's rest
        if rules is not None:
            self.check_rules(method.model, rules)
        with Session(method.model, layers=probed, stop_early=stop_early, inputs=inputs) as session:
            yield TorchEngine(session, targets, wrt, method.max_batch, x.device)


BACKEND = TorchBackend()
