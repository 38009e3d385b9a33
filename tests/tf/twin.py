"""The Keras 3 twin of a PyTorch CNN: the same computation and weights, NHWC instead of NCHW.

This is the TensorFlow backend's main oracle: a method run on the twin must give the torch
method's maps after the layout transpose. The torch model is traced with ``torch.fx`` and each
node becomes one Keras layer of a flat functional model:

==========================================  ====================================================
torch                                        Keras
==========================================  ====================================================
``Conv2d`` (padding p, stride, dilation)      ``ZeroPadding2D(p)`` ``<name>_pad`` + ``Conv2D`` valid
``BatchNorm2d`` (eval mode)                   ``BatchNormalization`` (same running stats and eps)
``ReLU`` (in-place or not, reused), F.relu    ``ReLU``
``MaxPool2d`` / ``AvgPool2d`` (no padding)    ``MaxPooling2D`` / ``AveragePooling2D``
``AdaptiveAvgPool2d(1)``                      ``GlobalAveragePooling2D(keepdims=True)``
``Flatten`` / ``torch.flatten(x, 1)``         ``Flatten`` (NHWC order: (h, w, c))
``Linear``                                    ``Dense`` (columns permuted after a 4-D flatten)
``Dropout`` / ``Identity``                    ``Dropout`` / ``Identity``
``a + b`` (incl. ``out += identity``)         ``Add``
==========================================  ====================================================

Names: a module ``features.3`` becomes the layer ``features_3`` (:func:`keras_name`); the k-th
call (k >= 2) of a reused module (torchvision ResNet's ``relu``) becomes ``<name>_<k>``; a
function call inside module ``layer1`` becomes ``layer1_add`` (``layer1_add_2``, ...). The
returned :class:`NameMap` maps every torch module name whose output is unambiguous (leaves that
run once, and containers such as ``layer1`` or ``features``, whose output is their last node's)
to the Keras layer that produces the same tensor.

A flatten of a C x H x W map orders its features (c, h, w) in torch and (h, w, c) in Keras, so the
first ``Dense`` after it gets its input columns permuted: with ``W`` of shape [out, C*H*W],
``kernel = W.reshape(out, C, H, W).permute(0, 2, 3, 1).reshape(out, -1).T``.

Example::

    kmodel, names = keras_twin(torch_model.eval(), input_hw=(64, 64))
    kmodel(to_nhwc(x))                       # == torch_model(x) (up to float rounding)
    names["features.3"]                      # 'features_3'
    names.to_keras_layout("features", t)     # a torch output of "features" in Keras layout
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import keras  # tests/conftest.py has imported torch and torchvision already (they must come first)
import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_METHODS = {"relu", "relu_"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


def keras_name(torch_name: str) -> str:
    """The Keras layer name of torch module ``torch_name``: dots become underscores.

    Example: ``keras_name("layer1.conv1") == "layer1_conv1"``.
    """
    return torch_name.replace(".", "_")


def to_nhwc(t: torch.Tensor) -> np.ndarray:
    """A torch NCHW (or [N, F]) tensor as a NumPy NHWC (or [N, F]) array (float32 copy)."""
    a = t.detach().cpu().numpy().astype(np.float32)
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def to_nchw(a: Any) -> torch.Tensor:
    """A Keras/NumPy NHWC (or [N, F]) array as a torch NCHW (or [N, F]) tensor."""
    t = torch.from_numpy(np.array(a, dtype=np.float32))
    return t.permute(0, 3, 1, 2).contiguous() if t.ndim == 4 else t


class NameMap(dict[str, str]):
    """torch module name -> Keras layer name, plus the layout of each flattened output.

    ``flat_chw[name] = (C, H, W)`` for outputs that are a flatten of a C x H x W map (their feature
    order differs between the frameworks); all other outputs are NCHW <-> NHWC or [N, F] alike.
    ``calls[name]`` lists the Keras layers of every call of a module, reused ones included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flat_chw: dict[str, tuple[int, int, int]] = {}
        self.calls: dict[str, list[str]] = {}

    def to_keras_layout(self, torch_name: str, t: torch.Tensor) -> np.ndarray:
        """Torch output ``t`` of module ``torch_name`` rearranged as the twin's layer computes it."""
        if torch_name in self.flat_chw:
            c, h, w = self.flat_chw[torch_name]
            return to_nhwc(t.reshape(t.shape[0], c, h, w)).reshape(t.shape[0], -1)
        return to_nhwc(t)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


class _Converter:
    """Walks the fx graph once, building Keras layers and collecting weights to set."""

    def __init__(self, model: nn.Module, input_hw: tuple[int, int]) -> None:
        self.model = model
        self.graph = fx.symbolic_trace(model).graph
        self.modules = dict(model.named_modules())
        self.input_hw = input_hw
        self.names = NameMap()
        self.used: set[str] = set()
        self.weights: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []
        self.env: dict[fx.Node, Any] = {}
        self.flat: dict[fx.Node, tuple[int, int, int]] = {}  # nodes holding a flattened C x H x W map
        self.layer_of: dict[fx.Node, str] = {}

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def scope_name(self, node: fx.Node, kind: str) -> str:
        stack = _scopes(node)
        return self.unique(f"{keras_name(stack[-1])}_{kind}" if stack else kind)

    def build(self) -> tuple[keras.Model, NameMap]:
        inputs = None
        outputs = None
        for node in self.graph.nodes:
            if node.op == "placeholder":
                if inputs is not None:
                    raise NotImplementedError("keras_twin supports models with one input")
                in_ch = self._in_channels()
                inputs = keras.Input((*self.input_hw, in_ch), name=self.unique("input"))
                self.env[node] = inputs
            elif node.op == "output":
                outputs = self.env[node.args[0]]
            elif node.op == "call_module":
                self._module(node)
            elif node.op in ("call_function", "call_method"):
                self._function(node)
            else:
                raise NotImplementedError(f"keras_twin cannot convert fx node {node.op} {node.target}")
        kmodel = keras.Model(inputs, outputs, name=keras_name(type(self.model).__name__))
        for layer, weights in self.weights:
            layer.set_weights(weights)
        self._containers()
        return kmodel, self.names

    def _in_channels(self) -> int:
        for m in self.model.modules():
            if isinstance(m, nn.Conv2d):
                return m.in_channels
        raise NotImplementedError("keras_twin needs a model whose first layer is a Conv2d")

    def _apply(self, node: fx.Node, layer: keras.layers.Layer, x: Any,
               weights: list[np.ndarray] | None = None) -> None:
        self.env[node] = layer(x)
        self.layer_of[node] = layer.name
        if weights is not None:
            self.weights.append((layer, weights))

    def _module(self, node: fx.Node) -> None:
        target = str(node.target)
        m = self.modules[target]
        calls = self.names.calls.setdefault(target, [])
        name = self.unique(keras_name(target) if not calls else f"{keras_name(target)}_{len(calls) + 1}")
        calls.append(name)
        x = self.env[node.args[0]]
        handler = _MODULES.get(type(m))
        if handler is None:
            raise NotImplementedError(f"keras_twin cannot convert {target!r} ({type(m).__name__})")
        handler(self, node, m, name, x)
        if node.args[0] in self.flat and isinstance(m, (nn.ReLU, nn.Dropout, nn.Identity)):
            self.flat[node] = self.flat[node.args[0]]

    def _function(self, node: fx.Node) -> None:
        fn = node.target
        args = node.args
        if fn in _ADD_FUNCTIONS or (node.op == "call_method" and fn in ("add", "add_", "__iadd__")):
            layer = keras.layers.Add(name=self.scope_name(node, "add"))
            self._apply(node, layer, [self.env[args[0]], self.env[args[1]]])
        elif fn in _RELU_FUNCTIONS or (node.op == "call_method" and fn in _RELU_METHODS):
            self._apply(node, keras.layers.ReLU(name=self.scope_name(node, "relu")), self.env[args[0]])
            if args[0] in self.flat:
                self.flat[node] = self.flat[args[0]]
        elif fn is torch.flatten or (node.op == "call_method" and fn == "flatten"):
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise NotImplementedError("keras_twin supports flatten(x, 1) only")
            self._flatten(node, self.scope_name(node, "flatten"), self.env[args[0]])
        else:
            raise NotImplementedError(f"keras_twin cannot convert the call {fn!r}")

    def _flatten(self, node: fx.Node, name: str, x: Any) -> None:
        if len(x.shape) == 4 and (x.shape[1], x.shape[2]) != (1, 1):
            self.flat[node] = (int(x.shape[3]), int(x.shape[1]), int(x.shape[2]))
        self._apply(node, keras.layers.Flatten(name=name), x)

    def _containers(self) -> None:
        """Leaves that ran once, and every container, mapped to the layer making their output."""
        last: dict[str, fx.Node] = {}
        for node in self.graph.nodes:
            if node in self.layer_of:
                for path in _scopes(node):
                    last[path] = node
        for path, node in last.items():
            if path in self.names.calls and len(self.names.calls[path]) != 1:
                continue  # a reused module's output is ambiguous (so it is in torch)
            self.names[path] = self.layer_of[node]
            if node in self.flat:
                self.names.flat_chw[path] = self.flat[node]


def _scopes(node: fx.Node) -> list[str]:
    """The module paths enclosing ``node``, outermost first (fx's keys add ``@k`` for reuses)."""
    return [path for path, _cls in node.meta.get("nn_module_stack", {}).values()]


def _conv(c: _Converter, node: fx.Node, m: nn.Conv2d, name: str, x: Any) -> None:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise NotImplementedError(f"keras_twin needs numeric zero padding ({name})")
    pad = _pair(m.padding)
    if pad != (0, 0):
        x = keras.layers.ZeroPadding2D(pad, name=c.unique(f"{name}_pad"))(x)
    layer = keras.layers.Conv2D(m.out_channels, _pair(m.kernel_size), strides=_pair(m.stride), padding="valid",
                                dilation_rate=_pair(m.dilation), groups=m.groups, use_bias=m.bias is not None,
                                name=name)
    weights = [_np(m.weight).transpose(2, 3, 1, 0)]  # [out, in, kh, kw] -> [kh, kw, in, out]
    if m.bias is not None:
        weights.append(_np(m.bias))
    c._apply(node, layer, x, weights)


def _batchnorm(c: _Converter, node: fx.Node, m: nn.BatchNorm2d, name: str, x: Any) -> None:
    if m.running_mean is None or m.running_var is None:
        raise NotImplementedError(f"keras_twin needs batch-norm running statistics ({name})")
    layer = keras.layers.BatchNormalization(epsilon=m.eps, center=m.affine, scale=m.affine, name=name)
    weights = ([_np(m.weight), _np(m.bias)] if m.affine else []) + [_np(m.running_mean), _np(m.running_var)]
    c._apply(node, layer, x, weights)


def _pool(keras_cls: type) -> Callable[[_Converter, fx.Node, nn.Module, str, Any], None]:
    def convert(c: _Converter, node: fx.Node, m: nn.Module, name: str, x: Any) -> None:
        if _pair(m.padding) != (0, 0) or m.ceil_mode or _pair(getattr(m, "dilation", 1)) != (1, 1):
            raise NotImplementedError(f"keras_twin supports pools without padding, dilation or ceil_mode ({name})")
        stride = _pair(m.stride if m.stride is not None else m.kernel_size)
        c._apply(node, keras_cls(_pair(m.kernel_size), strides=stride, padding="valid", name=name), x)

    return convert


def _adaptive_avg(c: _Converter, node: fx.Node, m: nn.AdaptiveAvgPool2d, name: str, x: Any) -> None:
    if _pair(m.output_size) != (1, 1):
        raise NotImplementedError(f"keras_twin supports AdaptiveAvgPool2d(1) only ({name})")
    c._apply(node, keras.layers.GlobalAveragePooling2D(keepdims=True, name=name), x)


def _linear(c: _Converter, node: fx.Node, m: nn.Linear, name: str, x: Any) -> None:
    w = m.weight.detach()
    if node.args[0] in c.flat:  # columns in torch's (c, h, w) order -> Keras's (h, w, c)
        ch, h, wd = c.flat[node.args[0]]
        w = w.reshape(m.out_features, ch, h, wd).permute(0, 2, 3, 1).reshape(m.out_features, -1)
    weights = [_np(w).T.copy()] + ([_np(m.bias)] if m.bias is not None else [])
    c._apply(node, keras.layers.Dense(m.out_features, use_bias=m.bias is not None, name=name), x, weights)


def _flatten_module(c: _Converter, node: fx.Node, m: nn.Flatten, name: str, x: Any) -> None:
    if m.start_dim != 1 or m.end_dim != -1:
        raise NotImplementedError(f"keras_twin supports Flatten(1, -1) only ({name})")
    c._flatten(node, name, x)


_MODULES: dict[type, Callable[..., None]] = {
    nn.Conv2d: _conv,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: lambda c, node, m, name, x: c._apply(node, keras.layers.ReLU(name=name), x),
    nn.MaxPool2d: _pool(keras.layers.MaxPooling2D),
    nn.AvgPool2d: _pool(keras.layers.AveragePooling2D),
    nn.AdaptiveAvgPool2d: _adaptive_avg,
    nn.Linear: _linear,
    nn.Flatten: _flatten_module,
    nn.Dropout: lambda c, node, m, name, x: c._apply(node, keras.layers.Dropout(m.p, name=name), x),
    nn.Identity: lambda c, node, m, name, x: c._apply(node, keras.layers.Identity(name=name), x),
}


def keras_twin(torch_model: nn.Module, input_hw: tuple[int, int] = (64, 64)) -> tuple[keras.Model, NameMap]:
    """The Keras twin of ``torch_model`` (read in eval-mode semantics; the model is not changed).

    Returns ``(keras_model, name_map)``: a functional model taking [N, H, W, C] float32 inputs
    with ``(H, W) = input_hw``, and the torch-name -> Keras-name map (see the module docstring).

    Example::

        kmodel, names = keras_twin(ShapesVGG().eval(), input_hw=(64, 64))
        kmodel.get_layer(names["features.0"])  # the first Conv2D
    """
    return _Converter(torch_model, input_hw).build()
