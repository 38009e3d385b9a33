"""Apply LRP rules to every layer spelling with a scoped ``TorchFunctionMode``.

As the ReLU rules do (:mod:`convscope.backends.torch.rule_mode`), a torch-function mode sees each
call of an operation, whoever makes it: ``nn.Conv2d`` and ``F.conv2d`` in a block's own forward
alike, in-place ``relu_`` and ``out += identity`` too. During the model's forward pass each call
on a tensor that depends on the input becomes an autograd function whose backward pass carries
*relevance* instead of the gradient (the gradient slots hold relevance, as in Zennit):

- convolutions and linear layers (``kind`` ``conv``/``linear``, the first of them ``first``), and
  average pooling, adaptive average pooling, ``mean``/``sum`` over dimensions (``pool``): the
  composite's rule for that layer (:mod:`~convscope.methods.lrp.rules`);
- ``batch_norm`` right after a convolution or linear layer is *folded* into it (``canonize``):
  relevance goes from the norm's output to the convolution's input by the convolution's rule on
  ``w' = w * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``; every value
  the model computes stays as it was. Other normalisations get the composite's ``norm`` rule;
- sums of input-dependent tensors (residual additions): ``R_i = x_i R / s(sum_j x_j)``, the
  composite's ``sum`` rule; a constant term keeps its share, as a bias does;
- products with a constant or a gate (``x * sigmoid(s)``, a squeeze-excitation: a factor that a
  sigmoid made or one broadcast over the other): the whole relevance to the other factor, none
  to the gate;
- activations and other element-wise functions: passed through; re-arrangements (``cat``,
  ``flatten``, ``view``, indexing, max pooling, ``dropout``): the gradient, which moves relevance
  with the values it belongs to.

Any other operation on an input-dependent tensor raises a :class:`~convscope.errors.ConvscopeError`
naming it and the layer that called it: never a silently wrong map.

Example::

    with lrp_rules(model, composite("epsilon_plus")) as mode:
        out = model(x.requires_grad_())
    (r,) = torch.autograd.grad(out, x, grad_outputs=out * one_hot)   # relevance of x
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from convscope.errors import ConvscopeError
from convscope.ops.nested import tensors_in
from convscope.layers import resolve_layer
from convscope.methods.lrp.composites import Composite
from convscope.methods.lrp.rules import Epsilon, Layer, LRPRule, Pass, stabilize

__all__ = ["LRPMode", "OP_KINDS", "lrp_rules"]

_CONV = ("conv1d", "conv2d", "conv3d")
_POOL = ("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
         "adaptive_avg_pool3d", "mean", "sum")
_NORM = ("batch_norm", "layer_norm", "group_norm", "instance_norm")
_PASS = ("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "elu", "elu_", "leaky_relu", "leaky_relu_", "gelu",
         "silu", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_", "softplus", "mish", "selu",
         "celu", "threshold", "threshold_", "prelu", "rrelu")
_ROUTE = ("flatten", "view", "reshape", "permute", "transpose", "contiguous", "chunk", "split", "split_with_sizes",
          "tensor_split", "unbind", "__getitem__", "squeeze", "unsqueeze", "cat", "concat", "concatenate", "stack",
          "clone", "expand", "expand_as", "repeat", "narrow", "pad", "max_pool1d", "max_pool2d", "max_pool3d",
          "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "dropout", "dropout1d",
          "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "view_as", "reshape_as", "to",
          "float", "double", "type_as", "roll", "channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "movedim",
          "swapaxes", "flip", "detach")
_SUM = ("add", "add_", "__add__", "__radd__", "__iadd__")
_PRODUCT = ("mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__",
            "true_divide")

#: how the mode treats each operation, by function name
OP_KINDS: dict[str, str] = {
    **dict.fromkeys(_CONV, "conv"), "linear": "linear", **dict.fromkeys(_POOL, "pool"),
    **dict.fromkeys(_NORM, "norm"), **dict.fromkeys(_PASS, "pass"), **dict.fromkeys(_ROUTE, "route"),
    **dict.fromkeys(_SUM, "sum"), **dict.fromkeys(_PRODUCT, "product"),
}

_MARK = "_convscope_lrp"          # the mode's token on tensors that depend on the input
_SOURCE = "_convscope_lrp_source"  # (token, input, layer, rule, layer name) on outputs of linear layers
_GATE = "_convscope_lrp_gate"      # the mode's token on outputs of a sigmoid: a gate in a product
_GATES = ("sigmoid", "sigmoid_", "hardsigmoid")


class _Relevance(torch.autograd.Function):
    """``layer(x)`` forward; backward: ``rule.relevance(layer, x, R)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layer: Layer, rule: LRPRule) -> Tensor:  # noqa: ANN401
        ctx.layer, ctx.rule = layer, rule
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)  # a branch no relevance reaches stays None: no rule computed on zeros
        return layer(x)

    @staticmethod
    def backward(ctx: Any, r: Tensor | None) -> tuple[Tensor | None, None, None]:  # noqa: ANN401
        if r is None:  # e.g. the convolution before a folded batch norm: its relevance went past it
            return None, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            return ctx.rule.relevance(ctx.layer, x.detach(), r).detach(), None, None


class _Folded(torch.autograd.Function):
    """A batch norm after a linear layer: forward ``norm(z)``; backward the linear layer's rule on the
    folded layer, from the norm's output straight to the linear layer's input ``x`` (none to ``z``)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, x: Tensor, folded: Layer, rule: LRPRule,  # noqa: ANN401
                call: Callable[[], Tensor]) -> Tensor:
        ctx.layer, ctx.rule = folded, rule
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)
        return call()

    @staticmethod
    def backward(ctx: Any, r: Tensor | None) -> tuple[None, Tensor | None, None, None, None]:  # noqa: ANN401
        if r is None:
            return None, None, None, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            return None, ctx.rule.relevance(ctx.layer, x.detach(), r).detach(), None, None, None


class _Pass(torch.autograd.Function):
    """``call()`` forward (in place when it returns ``x`` itself); backward: ``R`` unchanged."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, call: Callable[[], Tensor]) -> Tensor:  # noqa: ANN401
        out = call()
        if out is x:
            ctx.mark_dirty(x)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx: Any, r: Tensor | None) -> tuple[Tensor | None, None]:  # noqa: ANN401
        return r, None


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """``t`` summed over the dimensions broadcasting added to a tensor of ``shape``."""
    while t.dim() > len(shape):
        t = t.sum(0)
    dims = [i for i, (a, b) in enumerate(zip(t.shape, shape)) if b == 1 and a != 1]
    return t.sum(dims, keepdim=True) if dims else t


class _Sum(torch.autograd.Function):
    """``call()`` (a sum, maybe in place on ``xs[0]``); backward ``R_i = x_i R / s(z)``."""

    @staticmethod
    def forward(ctx: Any, epsilon: float, call: Callable[[], Tensor], inplace: bool,  # noqa: ANN401
                *xs: Tensor) -> Tensor:
        ctx.parts = [x.detach().clone() for x in xs]  # later in-place ops must not change them
        out = call()
        if inplace:
            ctx.mark_dirty(xs[0])
        ctx.z, ctx.epsilon = out.detach().clone(), epsilon
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx: Any, r: Tensor | None) -> tuple[Tensor | None, ...]:  # noqa: ANN401
        if r is None:
            return (None,) * (3 + len(ctx.parts))
        g = r / stabilize(ctx.z, ctx.epsilon)
        return (None, None, None, *(_sum_to(x * g, x.shape) for x in ctx.parts))


class LRPMode(TorchFunctionMode):
    """Relevance rules for every operation of ``model``'s forward passes (see the module docstring).

    ``folded`` lists, for the latest pass, each ``(linear layer, batch norm)`` pair that was
    folded; ``counts`` how many operations of each kind got a rule.
    """

    def __init__(self, model: nn.Module, composite: Composite, fold: bool = True) -> None:
        super().__init__()
        self.model, self.composite, self.fold = model, composite, fold
        self.around: list[tuple[str, nn.Module]] = []
        self.token = object()
        self.first_done = False
        self.folded: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()

    # -- the modules running now (forward hooks on every module keep the stack) --
    def start(self, inputs: Sequence[object]) -> None:
        """A new forward pass of the model begins with ``inputs``."""
        self.first_done, self.folded, self.counts = False, [], Counter()
        for t in tensors_in(list(inputs)):
            setattr(t, _MARK, self.token)

    def where(self) -> str:
        return (self.around[-1][0] or "the model") if self.around else "the model"

    def _active(self, t: object) -> bool:
        return isinstance(t, Tensor) and getattr(t, _MARK, None) is self.token

    def _mark(self, out: object) -> object:
        for t in tensors_in(out):
            if t.requires_grad:
                setattr(t, _MARK, self.token)
        return out

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),  # noqa: ANN401
                           kwargs: Mapping[str, Any] | None = None) -> Any:  # noqa: ANN401
        kwargs = dict(kwargs or {})
        if not self.around:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        kind = OP_KINDS.get(name)
        operands = [t for t in tensors_in([*args, *kwargs.values()]) if self._active(t)]
        if not operands:
            return func(*args, **kwargs)
        if kind is None:
            out = func(*args, **kwargs)
            if any(t.requires_grad for t in tensors_in(out)) or name == "__setitem__":
                self.unhandled(name)
            return out
        self.counts[kind] += 1
        return self._mark(getattr(self, f"_{kind}")(func, name, args, kwargs))

    def unhandled(self, name: str, why: str = "") -> None:
        raise ConvscopeError(f"LRP has no rule for the operation {name!r} in layer {self.where()!r}{why}",
                             "Explain this model with another method (such as Saliency or GradCAM), or "
                             "rewrite the layer with convolutions, linear layers, pooling, sums and activations.")

    def _rule(self, kind: str) -> LRPRule:
        first = kind in ("conv", "linear") and not self.first_done
        if kind in ("conv", "linear"):
            self.first_done = True
        return self.composite.rule(kind, self.around, first)

    def _conv(self, func: Callable[..., Any], name: str, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        return self._linear(func, name, args, kwargs, "conv")

    def _linear(self, func: Callable[..., Any], name: str, args: tuple, kwargs: dict[str, Any],
                kind: str = "linear") -> Tensor:
        bound = dict(zip(("input", "weight", "bias"), args)) | {k: kwargs.pop(k) for k in ("input", "weight", "bias")
                                                                  if k in kwargs}
        x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
        if not self._active(x) or self._active(weight) or self._active(bias):
            self.unhandled(name, " (its weights depend on the input)")
        rest = args[3:]
        layer = Layer(lambda v, w, b: func(v, w, b, *rest, **kwargs), weight, bias)
        rule = self._rule(kind)
        out = _Relevance.apply(x, layer, rule)
        setattr(out, _SOURCE, (self.token, x, layer, rule, self.where()))
        return out

    def _pool(self, func: Callable[..., Any], name: str, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        x, rest = args[0], args[1:]
        if not self._active(x) or any(self._active(t) for t in tensors_in([rest, list(kwargs.values())])):
            self.unhandled(name)
        if name in ("mean", "sum") and not rest and "dim" not in kwargs:
            self.unhandled(name, " (over every dimension, the batch too)")
        layer = Layer(lambda v, w, b: func(v, *rest, **kwargs))
        return _Relevance.apply(x, layer, self._rule("pool"))

    def _norm(self, func: Callable[..., Any], name: str, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        x = args[0] if args else kwargs["input"]
        if any(self._active(t) for t in tensors_in([args[1:], [v for k, v in kwargs.items() if k != "input"]])):
            self.unhandled(name, " (its statistics depend on the input)")
        source = getattr(x, _SOURCE, None)
        if self.fold and name == "batch_norm" and source is not None and source[0] is self.token:
            folded = _fold(source[2], args, kwargs)
            if folded is not None:
                self.folded.append((source[4], self.where()))
                return _Folded.apply(x, source[1], folded, source[3], lambda: func(*args, **kwargs))
        rule = self._rule("norm")
        if isinstance(rule, Pass):
            return _Pass.apply(x, lambda: func(*args, **kwargs))
        return _Relevance.apply(x, Layer(lambda v, w, b: func(v, *args[1:], **kwargs)), rule)

    def _pass(self, func: Callable[..., Any], name: str, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        x = args[0] if args else kwargs["input"]
        if not self._active(x):
            self.unhandled(name, " (a parameter depends on the input)")
        out = _Pass.apply(x, lambda: func(*args, **kwargs))
        if name in _GATES:
            setattr(out, _GATE, self.token)
        return out

    def _route(self, func: Callable[..., Any], name: str, args: tuple, kwargs: dict[str, Any]) -> object:
        out = func(*args, **kwargs)
        if name == "clone" and isinstance(out, Tensor):  # a probe's copy of a linear layer's output
            source = getattr(args[0], _SOURCE, None)
            if source is not None:
                setattr(out, _SOURCE, source)
        return out

    def _gate(self, t: object) -> bool:
        return isinstance(t, Tensor) and getattr(t, _GATE, None) is self.token

    def _sum(self, func: Callable[..., Any], name: str, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        if kwargs.get("alpha", args[2] if len(args) > 2 else 1) != 1:
            self.unhandled(name, " (with alpha)")
        inplace = name in ("add_", "__iadd__")
        active = [t for t in args[:2] if self._active(t)]
        if inplace and not self._active(args[0]):
            self.unhandled(name, " (in place on a constant)")
        rule = self.composite.sum
        if not isinstance(rule, Epsilon):
            raise ConvscopeError(f"the composite's rule for sums is {rule!r}",
                                 "Sums take Norm() or Epsilon(...) (relevance by each term's share).")
        return _Sum.apply(rule.epsilon, lambda: func(*args, **kwargs), inplace, *active)

    def _product(self, func: Callable[..., Any], name: str, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        a, b = (list(args) + [kwargs.get("other")])[:2]
        out_shape = torch.broadcast_shapes(*(t.shape for t in (a, b) if isinstance(t, Tensor)))
        divides = name in ("div", "div_", "__truediv__", "__itruediv__", "true_divide")
        if divides and self._active(b):
            self.unhandled(name, " (a division by an input-dependent tensor)")
        full = [t for t in (a, b) if self._active(t) and t.shape == out_shape and not self._gate(t)]
        if len(full) == 2 and a.numel() == b.numel():  # neither a gate nor broadcast: no rule says who gets what
            self.unhandled(name, " (a product of two input-dependent maps, neither of them a sigmoid gate)")
        if len(full) != 1:
            self.unhandled(name, " (a product whose full-shaped factor is not the input-dependent one)")
        if name in ("mul_", "div_", "__imul__", "__itruediv__") and full[0] is not a:
            self.unhandled(name, " (in place on the gate)")
        return _Pass.apply(full[0], lambda: func(*args, **kwargs))


def _fold(layer: Layer, args: tuple, kwargs: dict[str, Any]) -> Layer | None:
    """The linear layer ``layer`` followed by the batch norm called with ``args``/``kwargs``, as one
    layer (None where that is not a fixed affine map: batch statistics, or no weight)."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    bound = dict(zip(names, args)) | kwargs
    mean, var, training = bound.get("running_mean"), bound.get("running_var"), bound.get("training", False)
    if training or mean is None or var is None or layer.weight is None:
        return None
    scale = (var.detach() + bound.get("eps", 1e-5)).rsqrt()
    gamma, beta = bound.get("weight"), bound.get("bias")
    if gamma is not None:
        scale = scale * gamma.detach()
    w = layer.weight.detach()
    if w.shape[0] != scale.shape[0]:
        return None  # a transposed convolution keeps its outputs on the second axis
    weight = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    bias = (0 if layer.bias is None else layer.bias.detach()) - mean.detach()
    bias = bias * scale + (0 if beta is None else beta.detach())
    return Layer(layer.fn, weight, bias)


@contextmanager
def lrp_rules(model: nn.Module, composite: Composite, fold: bool = True) -> Iterator[LRPMode]:
    """Within the block, ``model``'s forward passes back-propagate relevance by ``composite``
    (``fold``: batch norms folded into their convolutions). Every hook and the mode are gone on
    exit, also when the block raises; the model and its parameters are never changed."""
    for name in composite.names():
        resolve_layer(model, name)  # an unknown name fails here, naming close ones
    mode = LRPMode(model, composite, fold)
    names = {id(m): n for n, m in model.named_modules()}

    def enter(module: nn.Module, inputs: tuple) -> None:
        if not mode.around:
            mode.start(inputs)
        mode.around.append((names.get(id(module), ""), module))

    def leave(*_: object) -> None:
        if mode.around:
            mode.around.pop()

    with ExitStack() as scope:
        for module in model.modules():
            scope.callback(module.register_forward_pre_hook(enter).remove)
            scope.callback(module.register_forward_hook(leave, always_call=True).remove)
        scope.enter_context(mode)
        yield mode
