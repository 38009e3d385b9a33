"""A faster private copy of the model for the many no-grad evaluations of perturbation methods.

Score-CAM, Ablation-CAM, Occlusion and RISE spend almost all their time in forward passes whose
gradients nobody takes. Those passes run on an *inference twin*: a copy of the model in eval mode
(its module tree copied, every tensor shared read-only; the weights it changes are new tensors
set on the copy's modules: the user's model is never touched) where

- every batch norm that reads a convolution's output (and nothing else does) is folded into it,
  ``conv'(x) = gamma / sqrt(var + eps) * (W * x + b - mean) + beta``, an exact identity in real
  arithmetic: in float32 the outputs move by rounding only (about 1e-7 relative), and
- on the CPU the copy and its inputs are channels-last, the layout oneDNN's kernels prefer.

On ResNet-18 at batch 16 on a 2-core CPU the two together take a forward pass to about 0.7x its
time. Layers that are probed keep their own outputs: a probed convolution is not folded, a folded
batch norm becomes ``nn.Identity`` (whose output is the batch norm's), and recorded outputs come back
contiguous. Folding needs a ``torch.fx`` trace of the copy (its ``forward`` runs once on symbolic
inputs: side effects outside the model, like a global log, see that call); a model that cannot be
traced is copied unfolded. The trace is remembered per model while its module tree is unchanged.
The twin is a CPU tool: off the CPU the model itself serves (see :meth:`InferenceSession.build`).
``with exact_forward():`` turns the twin off (every evaluation on the model itself).

Example::

    with Session(model, layers=["layer4"]) as session:
        scores = session.inference().forward(masked, rows).record.output
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from convscope.backends.torch.forward import Forward, call_model
from convscope.backends.torch.inputs import Inputs
from convscope.backends.torch.probes import LayerKey, Probes, key_name
from convscope.targets import Record

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TWIN_ENABLED: ContextVar[bool] = ContextVar("convscope_inference_twin", default=True)
# Below this many input elements to evaluate (about 28 images of 3x224x224, 340 of 3x64x64),
# building the twin (copying the module tree, folding, channels-last copies: ~40 ms for ResNet-18 on 2 cores)
# costs about what its faster passes save, so the model itself serves.
TWIN_MIN_WORK = 1 << 22


@contextmanager
def exact_forward() -> Iterator[None]:
    """Within the block every no-grad evaluation runs on the user's model itself (no folded copy)."""
    token = _TWIN_ENABLED.set(False)
    try:
        yield
    finally:
        _TWIN_ENABLED.reset(token)


def twin_enabled() -> bool:
    """False inside :func:`exact_forward`."""
    return _TWIN_ENABLED.get()


def conv_norm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, norm)`` names where the norm is the only reader of the conv's output and each
    module runs once per forward pass (an empty list if ``torch.fx`` cannot trace the model)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any trace failure only means: no folding
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _NORMS) or not node.args:
            continue
        source = node.args[0]
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), _CONVS) and len(source.users) == 1
                and calls[source.target] == 1 and calls[node.target] == 1):
            pairs.append((str(source.target), str(node.target)))
    return pairs


def fold_batchnorms(model: nn.Module, keep: Collection[str] = (),
                    pairs: Sequence[tuple[str, str]] | None = None) -> list[str]:
    """Fold each eval-mode batch norm into the convolution it reads, in ``model`` (a copy!): the
    convolution gets new weight and bias tensors, the norm becomes ``nn.Identity``. Convolutions
    named in ``keep`` stay as they are; ``pairs`` defaults to :func:`conv_norm_pairs` of ``model``.
    Returns the folded convolutions."""
    folded = []
    for conv_name, norm_name in conv_norm_pairs(model) if pairs is None else pairs:
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        if conv_name in keep or norm.training or norm.running_mean is None or norm.running_var is None:
            continue
        with torch.no_grad():
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                                          norm.running_var, norm.eps, norm.weight, norm.bias)
        _replace(model, norm_name, nn.Identity())
        folded.append(conv_name)
    return folded


_TRACED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[object, ...], list[tuple[str, str]]]] = \
    weakref.WeakKeyDictionary()


def _tree(model: nn.Module) -> tuple[object, ...]:
    """What a trace depends on besides the classes' code: the module tree and per-instance forwards
    (their functions, not bound methods: the cache must not keep the model alive)."""
    def own_forward(m: nn.Module) -> object:
        forward = m.__dict__.get("forward")
        return getattr(forward, "__func__", forward)

    return tuple((name, type(m), own_forward(m)) for name, m in model.named_modules())


def twin_pairs(model: nn.Module, twin: nn.Module) -> list[tuple[str, str]]:
    """:func:`conv_norm_pairs` of ``twin`` (``model``'s eval-mode copy), traced once per model
    while its module tree stays the same (a trace costs ~15 ms for ResNet-18)."""
    tree = _tree(model)
    try:
        known = _TRACED.get(model)
    except TypeError:  # a module that cannot be weakly referenced or hashed: trace every time
        return conv_norm_pairs(twin)
    if known is None or known[0] != tree:
        known = _TRACED[model] = (tree, conv_norm_pairs(twin))
    return list(known[1])


def shallow_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree that shares every parameter and buffer with the model.
    Whatever the twin changes (folded weights, channels-last copies) it sets as new tensors on
    its own modules, so the model's tensors are only ever read."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, shared)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _channels_last(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _channels_last_weights(twin: nn.Module) -> None:
    """Channels-last copies of the twin's 4-D parameters and buffers, set on its own modules."""
    for module in twin.modules():
        for name, param in module._parameters.items():
            if param is not None and param.dim() == 4:
                module._parameters[name] = nn.Parameter(_channels_last(param.detach()), requires_grad=False)
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.dim() == 4:
                module._buffers[name] = _channels_last(buffer)


class InferenceSession:
    """No-grad forward passes on the inference twin of ``model``, probing the same ``layers``.

    ``forward`` and ``module`` mirror :class:`~convscope.backends.torch.session.Session`'s, so a
    method can hand either to the code that evaluates perturbed inputs.
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerKey], device: torch.device,
                 drop_hooks: Collection[int] = (), inputs: Inputs | None = None) -> None:
        self.inputs = inputs  # how x reaches the model (None: model(x))
        self.names = {key: key_name(model, key) for key in layers}
        twin = shallow_twin(model).eval()  # may raise: see build()
        for module in twin.modules():  # the session's own probes came along with the copy
            for hook_id in drop_hooks:
                module._forward_hooks.pop(hook_id, None)
                module._forward_hooks_with_kwargs.pop(hook_id, None)
                module._forward_hooks_always_called.pop(hook_id, None)
        self.folded = fold_batchnorms(twin, keep=set(self.names.values()), pairs=twin_pairs(model, twin))
        self.channels_last = device.type == "cpu"
        if self.channels_last:
            _channels_last_weights(twin)
        self.twin = twin
        self.probes = Probes(twin, list(self.names.values()))

    @classmethod
    def build(cls, model: nn.Module, layers: Sequence[LayerKey], device: torch.device,
              drop_hooks: Collection[int] = (), inputs: Inputs | None = None) -> InferenceSession | None:
        """The twin on the CPU, or None where the model itself serves: off the CPU (on an H200,
        ResNet-18 occlusion took 1.07x Captum's time with a twin, 1.01x without: cuDNN gains
        little from folding, and the copy costs), and for a model that cannot be deep-copied
        (it holds a lock, a file, a handle) or whose copy does not fit in memory."""
        if device.type != "cpu":
            return None
        try:
            return cls(model, layers, device, drop_hooks, inputs)
        except (TypeError, RuntimeError, MemoryError, AttributeError, copy.Error):
            return None

    def module(self, key: LayerKey) -> nn.Module:
        """The twin's module for a layer key of the original model."""
        return self.probes.modules[self.names[key]]

    def forward(self, x: Tensor, rows: slice | Tensor, *, grad: bool = False) -> Forward:
        """The twin's output and probed layers (contiguous) for ``x``; ``grad`` must be False."""
        if grad:
            raise ValueError("the inference twin runs no-grad evaluations only")
        self.probes.reset()
        leaf = _channels_last(x.detach()) if self.channels_last else x.detach()
        with torch.no_grad():
            output = call_model(self.twin, leaf, self.inputs, rows)
            output = output.contiguous() if isinstance(output, Tensor) else output  # a structured one: as it is
            acts = {key: self.probes.output(name).contiguous() for key, name in self.names.items()}
        return Forward(Record(output=output, acts=acts, rows=rows, input=x), input=x)
