"""Record layer outputs during a forward pass with forward hooks that are removed on exit.

Each recorded output stays differentiable. The hook hands the rest of the network a *copy*
(``output.clone()``), so an in-place op further on (``nn.ReLU(inplace=True)`` after a conv or
batch-norm, ``out += identity``) cannot overwrite the recorded values or re-point their
autograd history: the gradient w.r.t. the recorded tensor is the gradient w.r.t. the layer's
output, as the layer produced it.

Example::

    with Probes(model, ["features.3"]) as probes:
        model(x)
        act = probes.output("features.3")
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.layers import layer_name, resolve_layer

LayerKey = str | nn.Module


def key_name(model: nn.Module, key: LayerKey) -> str:
    """A layer key as a qualified name (for messages)."""
    return key if isinstance(key, str) else layer_name(model, key)


class SeenAll(BaseException):
    """Raised by the last probe to run when ``Probes.stop_when_seen``: the forward pass ends there.
    (A BaseException, so the model's own ``except Exception`` clauses let it through.)"""


class Probes:
    """Forward hooks recording the outputs of ``layers`` (names or submodules of ``model``).

    With ``stop_when_seen`` set, the hook of the last probed layer to run raises :class:`SeenAll`
    instead of returning, ending the forward pass early (whoever runs the model catches it).
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerKey]) -> None:
        self.model = model
        self.keys: list[LayerKey] = list(dict.fromkeys(layers))
        self.modules = {key: resolve_layer(model, key) for key in self.keys}  # clear error if unknown
        self.outputs: dict[Hashable, Tensor] = {}
        self.calls: dict[Hashable, int] = {}
        self.stop_when_seen = False
        self._handles: list = []

    def __enter__(self) -> Probes:
        try:
            for key, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(key)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def hook_ids(self) -> list[int]:
        """The ids of the hooks registered now (a deep copy of the model carries them along)."""
        return [handle.id for handle in self._handles]

    def reset(self) -> None:
        """Forget the outputs of the previous forward pass."""
        self.outputs.clear()
        self.calls.clear()

    def _hook(self, key: LayerKey) -> Callable[[nn.Module, object, object], Tensor]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> Tensor:
            if not isinstance(output, Tensor):
                raise ConvscopeError(
                    f"layer {key_name(self.model, key)!r} returns a {type(output).__name__}, not a tensor",
                    "Pick a layer whose output is a single tensor (`convscope layers MODEL` lists them).")
            self.calls[key] = self.calls.get(key, 0) + 1
            self.outputs[key] = output
            if self.stop_when_seen and len(self.calls) == len(self.keys):
                raise SeenAll
            return output.clone()  # later in-place ops change the copy, not the record

        return hook

    def output(self, key: LayerKey) -> Tensor:
        """The recorded output of ``key`` in the last forward pass (exactly one call required)."""
        calls = self.calls.get(key, 0)
        if calls == 1:
            return self.outputs[key]
        name = key_name(self.model, key)
        if calls == 0:
            raise ConvscopeError(f"layer {name!r} did not run in the forward pass",
                                 "Pick a layer the model's forward actually calls.")
        parent = name.rpartition(".")[0]
        raise ConvscopeError(
            f"layer {name!r} ran {calls} times in one forward pass (one module reused, like "
            "torchvision ResNet's relu), so its output is ambiguous",
            f"Pick a layer that runs once{f', e.g. its parent {parent!r}' if parent else ''}.")
