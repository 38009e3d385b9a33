"""The explicit Zeiler-Fergus deconvnet: a top-down mirror of a model, built layer by layer.

One forward pass records the model as a chain of steps (leaf modules, plus functional ReLUs and
reshapes in ``forward``), the max-pool switches and the target's layer outputs. The target plants
its seed ``d score / d activation`` (for ``MaxNeuron``: the strongest activation, all others zero)
and the signal walks back down the chain, each step mirrored by hand:

==========================  ===============================================================
forward step                mirror (signal ``s`` -> signal below)
==========================  ===============================================================
``MaxPool1d/2d/3d``         ``ops.unpool(s, switches)``: add at the recorded switches
ReLU (module or function)   ``relu(s)``: rectify
``Conv1d/2d/3d``            ``conv_transpose{1,2,3}d(s, W)``: the layer's own weights, no bias
``Linear``                  ``s @ W``: the transpose, no bias
``BatchNorm`` (eval)        ``s * gamma / sqrt(running_var + eps)``: its linear part, no shift
``AvgPool1d/2d/3d``,        the transpose of the averaging (spread evenly over each window;
adaptive                    adaptive: per axis, ``P.T`` of its averaging matrix ``P``)
flatten/reshape, dropout,   reshape back to the step's input shape
identity
==========================  ===============================================================

Signals ``[N, C, L]``, images ``[N, C, H, W]`` and volumes ``[N, C, D, H, W]`` alike: every mirror
works along however many spatial axes its layer has.

Batch-norm follows the same documented rule as conv and linear layers (transpose of the linear
map, bias dropped), so the mirror equals :class:`~convscope.methods.DeconvNet` wherever both
apply. Anything else on the path - a residual add or other branch, a non-ReLU activation, an
unknown module - raises a :class:`~convscope.errors.ConvscopeError` naming the layer and pointing
to ``DeconvNet(model)``, which applies the same rule during backprop through any graph.

Example::

    img = reconstruct(model, x, MaxNeuron("features.12", 7))   # shaped like x
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from convscope import ops
from convscope.backends.torch.rule_mode import relu_call
from convscope.backends.torch.session import call_model, eval_mode
from convscope.errors import ConvscopeError
from convscope.ops.nested import tensors_in
from convscope.ops.switches import as_tuple
from convscope.layers import layer_name, resolve_layer
from convscope.methods.base import check_input
from convscope.targets import LayerKey, Record, Target, TargetLike, as_target

Mirror = Callable[[Tensor], Tensor]
_HINT = ("DeconvNet(model).attribute(x, target) applies the same deconvnet rule during backprop through "
         "any graph; or target a layer below this one.")


class _CannotMirror(Exception):
    """Raised while building a step's mirror; turned into a ConvscopeError only if the signal gets there."""


@dataclass
class Step:
    """One forward step on the chain: what ran (``name``, ``kind``), what it consumed and produced,
    and its mirror (None when it has none; ``why`` says why)."""

    name: str
    kind: str
    inputs: tuple[Tensor, ...]
    output: Tensor
    in_shape: torch.Size
    mirror: Mirror | None
    why: str = ""


def _reshape_back(shape: torch.Size) -> Mirror:
    return lambda s: s.reshape(shape)


_TRANSPOSED = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _transposed(s: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], shape: torch.Size,
                groups: int = 1, dilation: Sequence[int] | None = None) -> Tensor:
    """The transposed convolution of ``s`` that lands exactly on the input ``shape`` (1-D to 3-D).

    ``output_padding`` puts back the rows a strided forward pass dropped: along each axis,
    ``extra = n - ((o - 1) * stride - 2 * pad + dil * (k - 1) + 1)``.
    """
    dims = len(shape) - 2
    dilation = dilation or (1,) * dims
    extra = tuple(shape[2 + i] - ((s.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                      + dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in range(dims))
    return _TRANSPOSED[dims](s, weight, None, tuple(stride), tuple(padding), extra, groups, tuple(dilation))


def _mirror_conv(conv: nn.modules.conv._ConvNd, inp: Tensor, out: Tensor) -> Mirror:
    if conv.padding_mode != "zeros":
        raise _CannotMirror(f"padding_mode={conv.padding_mode!r} has no transpose here")
    shape = inp.shape
    if conv.padding != "same":
        pad = (0,) * len(conv.kernel_size) if conv.padding == "valid" else conv.padding
        return lambda s: _transposed(s, conv.weight, conv.stride, pad, shape, conv.groups, conv.dilation)
    # 'same' pads d * (k - 1) in total per axis, the odd one at the end: transpose onto the padded
    # input, then crop the padding off
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    padded = torch.Size((*shape[:2], *(n + t for n, t in zip(shape[2:], total))))
    crop = (slice(None), slice(None), *(slice(t // 2, t // 2 + n) for n, t in zip(shape[2:], total)))

    def back(s: Tensor) -> Tensor:
        return _transposed(s, conv.weight, conv.stride, (0,) * len(total), padded, conv.groups, conv.dilation)[crop]

    return back


def _mirror_pool(pool: nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d, inp: Tensor, out: Tensor) -> Mirror:
    if pool.return_indices:
        raise _CannotMirror("it returns indices as well as values")
    dims = inp.dim() - 2
    k, stride, pad, dil = (as_tuple(v, dims, name) for v, name in (
        (pool.kernel_size, "kernel_size"), (pool.stride or pool.kernel_size, "stride"), (pool.padding, "padding"),
        (pool.dilation, "dilation")))
    pooled, switches = ops.max_pool_with_switches(inp, k, stride, pad, dil, pool.ceil_mode)
    if not torch.equal(pooled, out):
        raise _CannotMirror("its output is not the max-pool of its input")
    return lambda s: ops.unpool(s, switches)


def _mirror_batchnorm(bn: nn.modules.batchnorm._BatchNorm, inp: Tensor, out: Tensor) -> Mirror:
    if bn.running_var is None:
        raise _CannotMirror("it normalises with batch statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    scale = scale.reshape(1, -1, *([1] * (inp.dim() - 2)))
    return lambda s: s * scale


def _averaging(n: int, o: int, like: Tensor) -> Tensor:
    """``P [o, n]``: adaptive average pooling along one axis, ``out = P @ in``; cell ``i`` averages
    positions ``[floor(i n / o), ceil((i + 1) n / o))``."""
    matrix = like.new_zeros(o, n)
    for i in range(o):
        lo, hi = (i * n) // o, math.ceil((i + 1) * n / o)
        matrix[i, lo:hi] = 1.0 / (hi - lo)
    return matrix


def _mirror_adaptive_avg(pool: nn.Module, inp: Tensor, out: Tensor) -> Mirror:
    """Adaptive averaging is separable (a product window, a product divisor): its transpose applies
    each axis's ``P.T`` in turn."""
    matrices = [_averaging(n, o, inp) for n, o in zip(inp.shape[2:], out.shape[2:])]

    def back(s: Tensor) -> Tensor:
        for axis, matrix in enumerate(matrices):
            s = torch.movedim(torch.tensordot(s, matrix, dims=([2 + axis], [0])), -1, 2 + axis)
        return s

    return back


def _mirror_avg(pool: nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d, inp: Tensor, out: Tensor) -> Mirror:
    dims = inp.dim() - 2
    k, stride, pad = (as_tuple(v, dims, name) for v, name in (
        (pool.kernel_size, "kernel_size"), (pool.stride or pool.kernel_size, "stride"), (pool.padding, "padding")))
    if pool.ceil_mode or getattr(pool, "divisor_override", None) or (any(pad) and not pool.count_include_pad):
        raise _CannotMirror("its divisor varies from window to window (ceil_mode, divisor_override or "
                            "count_include_pad=False)")
    channels = inp.shape[1]
    kernel = inp.new_full((channels, 1, *k), 1.0 / math.prod(k))
    shape = inp.shape
    return lambda s: _transposed(s, kernel, stride, pad, shape, channels)


_MODULE_MIRRORS: list[tuple[type | tuple[type, ...], Callable[[Any, Tensor, Tensor], Mirror]]] = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _mirror_conv),
    (nn.Linear, lambda m, i, o: lambda s: s @ m.weight),
    (nn.ReLU, lambda m, i, o: torch.relu),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), _mirror_pool),
    (nn.modules.batchnorm._BatchNorm, _mirror_batchnorm),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), _mirror_adaptive_avg),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), _mirror_avg),
    ((nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d),
     lambda m, i, o: _reshape_back(i.shape)),
]

_RESHAPES = {torch.flatten, torch.Tensor.flatten, torch.Tensor.view, torch.Tensor.reshape, torch.reshape,
             torch.Tensor.contiguous, torch.squeeze, torch.Tensor.squeeze, torch.unsqueeze, torch.Tensor.unsqueeze}


def _module_mirror(module: nn.Module, inp: Tensor, out: Tensor) -> Mirror:
    for kind, build in _MODULE_MIRRORS:
        if isinstance(module, kind):
            return build(module, inp, out)
    raise _CannotMirror(f"{type(module).__name__} has no deconvnet mirror (supported: conv, linear, ReLU, "
                        "max/avg-pool, batch-norm, flatten, dropout, identity)")


def _op_mirror(func: Callable[..., Any], args: tuple, kwargs: Mapping[str, Any], inp: Tensor) -> Mirror:
    if relu_call(func, args, kwargs) is not None:
        return torch.relu
    if func in _RESHAPES:
        return _reshape_back(inp.shape)
    raise _CannotMirror("only ReLUs and reshapes are mirrored outside modules")


def _op_name(func: Callable[..., Any]) -> str:
    """``Tensor.view``, ``torch.sigmoid``, ``torch.nn.functional.gelu``."""
    name = getattr(func, "__name__", repr(func))
    if getattr(func, "__qualname__", "").startswith(("TensorBase.", "Tensor.")):
        return f"Tensor.{name}"
    return f"{getattr(func, '__module__', None) or 'torch'}.{name}"


class _Recorder(TorchFunctionMode):
    """Records the chain of steps of one forward pass (leaf modules via hooks, other ops via the mode)."""

    def __init__(self, model: nn.Module, x: Tensor, watch: Mapping[nn.Module, list[LayerKey]]) -> None:
        super().__init__()
        self.model, self.watch = model, watch
        self.steps: list[Step] = []
        self.chain: dict[int, Tensor] = {id(x): x}
        self.where: list[str] = []
        self.leaf_depth = 0
        self.paused = 0
        self.seen: dict[LayerKey, tuple[Tensor, int]] = {}
        self.calls: dict[LayerKey, int] = {}

    def _on_chain(self, *values: object) -> tuple[Tensor, ...]:
        return tuple(t for t in tensors_in(values) if self.chain.get(id(t)) is t)

    def _add(self, name: str, kind: str, inputs: tuple[Tensor, ...], output: Tensor,
             build: Callable[[], Mirror]) -> None:
        mirror, why = None, ""
        try:
            mirror = build()
        except _CannotMirror as reason:
            why = str(reason)
        self.steps.append(Step(name, kind, inputs, output, inputs[0].shape, mirror, why))
        self.chain[id(output)] = output

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),  # noqa: ANN401
                           kwargs: Mapping[str, Any] | None = None) -> Any:  # noqa: ANN401
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.paused or self.leaf_depth or not isinstance(result, Tensor):
            return result
        inputs = self._on_chain(args, kwargs)
        if inputs:
            where = f"in {self.where[-1]!r}" if self.where and self.where[-1] else "in the model's forward"
            self._add(f"{_op_name(func)} {where}", _op_name(func), inputs, result,
                      lambda: _op_mirror(func, args, kwargs, inputs[0]))
        return result

    def hooks(self) -> Iterator[Callable[[], None]]:
        """Register the module hooks; yields each handle's remover."""
        for name, module in self.model.named_modules():
            leaf = next(module.children(), None) is None
            yield module.register_forward_pre_hook(self._pre(name, leaf)).remove
            yield module.register_forward_hook(self._post(name, module, leaf), always_call=True).remove

    def _pre(self, name: str, leaf: bool) -> Callable[..., None]:
        def pre(_module: nn.Module, _args: object) -> None:
            self.where.append(name)
            self.leaf_depth += leaf

        return pre

    def _post(self, name: str, module: nn.Module, leaf: bool) -> Callable[..., None]:
        def post(_module: nn.Module, args: tuple, output: object) -> None:
            self.where.pop()
            self.leaf_depth -= leaf
            if self.paused or self.leaf_depth or not isinstance(output, Tensor):
                return
            self.paused += 1  # the hook's own tensor ops are not steps of the model
            try:
                inputs = self._on_chain(args)
                if leaf and inputs:
                    self._add(name, type(module).__name__, inputs, output,
                              lambda: _module_mirror(module, inputs[0], output))
                for key in self.watch.get(module, ()):
                    self.calls[key] = self.calls.get(key, 0) + 1
                    if self.steps and self.steps[-1].output is output:
                        self.seen[key] = (output.detach().clone(), len(self.steps) - 1)
            finally:
                self.paused -= 1

        return post


def _trace(model: nn.Module, x: Tensor, keys: list[LayerKey]) -> tuple[_Recorder, Tensor]:
    watch: dict[nn.Module, list[LayerKey]] = {}
    for key in keys:
        watch.setdefault(resolve_layer(model, key), []).append(key)
    recorder = _Recorder(model, x, watch)
    with ExitStack() as scope:
        scope.enter_context(eval_mode(model))
        for remove in recorder.hooks():
            scope.callback(remove)
        scope.enter_context(torch.no_grad())
        scope.enter_context(recorder)
        output = call_model(model, x)
    return recorder, output


def _layer_label(model: nn.Module, key: LayerKey) -> str:
    return key if isinstance(key, str) else layer_name(model, key)


def _seeds(model: nn.Module, recorder: _Recorder, output: Tensor, target: Target,
           keys: list[LayerKey]) -> dict[int, Tensor]:
    """Step index -> ``d score / d (that step's output)``, planted by the target."""
    acts = {}
    for key in keys:
        calls = recorder.calls.get(key, 0)
        if calls != 1:
            raise ConvscopeError(f"layer {_layer_label(model, key)!r} ran {calls} times in one forward pass",
                                 "Target a layer that runs exactly once.")
        if key not in recorder.seen:
            raise ConvscopeError(f"the deconvnet mirror cannot find layer {_layer_label(model, key)!r} on the "
                                 "model's chain of layers", _HINT)
        acts[key] = recorder.seen[key][0].requires_grad_()
    out = output.detach().clone().requires_grad_()
    with torch.enable_grad():
        score = target.score(Record(output=out, acts=acts, rows=slice(0, output.shape[0])))
        wanted = [out, *acts.values()]
        grads = (torch.autograd.grad(score.sum(), wanted, allow_unused=True) if score.requires_grad
                 else [None] * len(wanted))
    seeds: dict[int, Tensor] = {}
    for key, grad in zip([None, *acts], grads):
        if grad is None:
            continue
        if key is None:
            index = max((i for i, s in enumerate(recorder.steps) if s.output is output), default=None)
            if index is None:
                raise ConvscopeError("the deconvnet mirror cannot find the step that produced the model's output",
                                     _HINT)
        else:
            index = recorder.seen[key][1]
        seeds[index] = seeds[index] + grad if index in seeds else grad
    return seeds


def _check_link(step: Step, below: Tensor) -> None:
    if len(step.inputs) == 1 and step.inputs[0] is below:
        return
    what = "joins several tensors (a residual add or concatenation)" if len(step.inputs) > 1 else \
        "reads an earlier tensor, not the previous step's output (a branch, as in a residual block)"
    raise ConvscopeError(f"the deconvnet mirror cannot pass {step.name}: it {what}", _HINT)


def reconstruct(model: nn.Module, x: Tensor, target: TargetLike) -> Tensor:
    """The pixel-space projection of ``target``'s seed through the explicit top-down mirror of ``model``.

    Equals ``DeconvNet(model).attribute(x, target)`` on conv/ReLU/max-pool/linear chains and, like
    it, returns a plain tensor (detached: no autograd graph through the model's weights is kept).

    Example::

        reconstruct(model, x, MaxNeuron("features.12", 7))  # shaped like x
    """
    x = check_input(x)
    target = as_target(target)
    target.check_batch(x.shape[0])
    keys = list(dict.fromkeys(target.layers()))
    with torch.inference_mode(False):
        fed = x.detach().clone()
        recorder, output = _trace(model, fed, keys)
        seeds = _seeds(model, recorder, output, target, keys)
        return _walk_down(recorder.steps, seeds, fed).detach()


def _walk_down(steps: list[Step], seeds: dict[int, Tensor], fed: Tensor) -> Tensor:
    """Plant each seed at its step and mirror every step from the highest seed down to the input."""
    if not seeds:
        return torch.zeros_like(fed)
    top = max(seeds)
    signal = torch.zeros_like(steps[top].output)
    for i in range(top, -1, -1):
        step = steps[i]
        if i in seeds:
            signal = signal + seeds[i]
        _check_link(step, steps[i - 1].output if i else fed)
        if step.mirror is None:
            kind = "" if step.kind in step.name else f" ({step.kind})"
            raise ConvscopeError(f"the deconvnet mirror cannot pass {step.name}{kind}: {step.why}", _HINT)
        signal = step.mirror(signal)
    return signal
