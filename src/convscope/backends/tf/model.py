"""A Keras model as convscope sees it: layers by name, and forward passes that record layer outputs.

Layers are named by path (:mod:`convscope.tf.paths`): a layer inside a nested model or a custom
layer is ``"outer/inner"``, and a name used once anywhere may be given bare. An unknown name
raises a :class:`~convscope.errors.ConvscopeError` listing the closest names.

:meth:`KerasNet.run` calls the model (``training=False``) with the ``call`` of each probed layer
wrapped for that one call (see :mod:`convscope.tf.scoped`): the wrapper records the
layer's output, or *replaces* it by a given tensor (path and perturbation methods on layers).
Inside a ``tf.function`` the wrappers exist only while it is traced; the traced graph keeps the
recorded tensors, so later calls touch no Python object of the model at all.

Example::

    net = keras_net(model)
    with tf.GradientTape() as tape:
        tape.watch(x)
        record = net.run(x, ["block5_conv3"])
    grads = tape.gradient(record.output[:, 3], record.acts["block5_conv3"])
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from convscope.backends.tf.rules import apply_rules
from convscope.errors import ConvscopeError
from convscope.rules import RuleMap
from convscope.tf.paths import LayerKey, layer_paths, resolve_layer, resolve_path
from convscope.tf.scoped import patched


@dataclass(frozen=True)
class Record:
    """One forward pass as targets see it: the model ``output`` and the recorded layer outputs ``acts``."""

    output: tf.Tensor
    acts: Mapping[str, tf.Tensor]


class KerasNet:
    """Name resolution, recorded forward passes and compiled functions for one Keras model.

    Holds the model weakly: the compiled functions cached here (:meth:`function`) never keep it alive.
    """

    def __init__(self, model: keras.Model) -> None:
        self._model = weakref.ref(model)
        self._functions: dict[Hashable, Callable[..., Any]] = {}
        self.output_shape: tuple[int | None, ...] | None = None  # seen while tracing (classes: [-1])
        self._default_layers: dict[tuple[int | None, ...], str] = {}  # by sample shape

    @property
    def model(self) -> keras.Model:
        model = self._model()
        if model is None:
            raise ConvscopeError("the Keras model of this method no longer exists", "Keep a reference to the model.")
        return model

    def paths(self) -> dict[str, keras.Layer]:
        """Every layer by path."""
        return layer_paths(self.model)

    def path(self, key: LayerKey) -> str:
        """The full path of a layer given by path, by a name used once, or as a layer object
        (see :func:`convscope.tf.paths.resolve_path`)."""
        return resolve_path(self.model, key, self.paths())

    def layer(self, key: LayerKey) -> keras.Layer:
        """The layer object for ``key`` (see :meth:`path`)."""
        return resolve_layer(self.model, key)

    def channels_last(self, key: LayerKey) -> str:
        """The path of ``key``, if its output is channels-last (the layout every target and map here
        assumes), else a clear error."""
        path = self.path(key)
        if getattr(self.paths()[path], "data_format", "channels_last") == "channels_first":
            raise ConvscopeError(f"layer {path!r} is channels_first, but convscope's Keras backend reads "
                                 "feature maps channels-last [N, h, w, C]",
                                 "Build the model with data_format='channels_last' (Keras' default).")
        return path

    def function(self, key: Hashable, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        """The ``tf.function`` of ``build()``, cached per ``key`` and traced once for every batch
        size: each argument's first dimension is left open (chunks of different sizes share a graph)."""
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = tf.function(build(), autograph=False)
        return lambda *args: _call_open_batch(fn, args)

    def traces(self) -> int:
        """How many graphs the compiled functions have traced so far (each costs a Python pass)."""
        return sum(fn.experimental_get_tracing_count() for fn in self._functions.values())

    def run(self, x: tf.Tensor, layers: Sequence[str] = (), *, rules: RuleMap | None = None,
            replace: Mapping[str, tf.Tensor] | None = None) -> Record:
        """Call the model on ``x`` recording ``layers`` (paths), with ``rules`` at every ReLU and
        the outputs of the layers in ``replace`` set to the given tensors."""
        seen: dict[str, list[tf.Tensor]] = {name: [] for name in dict.fromkeys([*layers, *(replace or {})])}
        with ExitStack() as scope:
            if rules is not None and not rules.is_gradient:
                scope.enter_context(apply_rules(self, rules))
            for name, outs in seen.items():
                scope.enter_context(self._probe(name, outs, (replace or {}).get(name)))
            output = self.call(x)
        for name, outs in seen.items():
            if len(outs) != 1:
                raise ConvscopeError(f"layer {name!r} ran {len(outs)} times in one forward pass, so its output "
                                     f"is {'missing' if not outs else 'ambiguous'}",
                                     "Pick a layer that the model's forward pass calls exactly once.")
        self.output_shape = tuple(output.shape[1:])
        return Record(output, {name: outs[0] for name, outs in seen.items()})

    @contextmanager
    def _probe(self, name: str, outs: list[tf.Tensor], replacement: tf.Tensor | None) -> Iterator[None]:
        layer = self.layer(name)
        inner = layer.call

        def call(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            if not tf.is_tensor(out):
                raise ConvscopeError(f"layer {name!r} returns a {type(out).__name__}, not one tensor",
                                     "Pick a layer whose output is a single tensor.")
            if replacement is not None:
                if not out.shape.is_compatible_with(replacement.shape):
                    raise ConvscopeError(f"layer {name!r} returned {out.shape.as_list()} where "
                                         f"{replacement.shape.as_list()} was expected",
                                         "Attribute to a layer whose output is one tensor of a fixed shape.")
                out = replacement
            outs.append(out)
            return out

        with patched(layer, "call", call):
            yield

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """``model(x, training=False)``, with a clear error if it fails or returns no batch of outputs."""
        try:
            output = self.model(x, training=False)
        except ConvscopeError:
            raise
        except Exception as error:  # a model failing on our input: say what we fed it
            shape = ["N" if d is None else d for d in x.shape.as_list()]
            raise ConvscopeError(f"the Keras model's forward pass failed on an input of shape {shape} "
                                 f"({x.dtype.name}): {type(error).__name__}: {error}",
                                 "Check that the input is NHWC with the size and channels the model "
                                 "expects.") from error
        if isinstance(output, (list, tuple)) and len(output) == 1:
            output = output[0]
        if not tf.is_tensor(output) or output.shape.rank in (None, 0):
            raise ConvscopeError(f"the Keras model returned {type(output).__name__}, not one batch of outputs",
                                 "Wrap the model so that it returns one tensor [N, ...].")
        return output

    def default_layer(self, x: tf.Tensor) -> str:
        """The path of the last layer (in the order calls *finish*, so a nested model wins over its
        layers) that runs once and outputs a feature map with more than one position and as many
        spatial axes as ``x``: ``[N, h, w, C]`` for images, ``[N, l, C]``, ``[N, d, h, w, C]``.

        One eager pass of ``x[:1]`` the first time for a sample shape; every wrapper is removed after.
        """
        shape = tuple(x.shape[1:])
        if shape not in self._default_layers:
            self._default_layers[shape] = self._find_default_layer(x)
        return self._default_layers[shape]

    def _find_default_layer(self, x: tf.Tensor) -> str:
        """:meth:`default_layer`, found by one eager pass."""
        finished: list[str] = []
        shapes: dict[str, tuple[int | None, ...]] = {}

        def logger(path: str, inner: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                out = inner(*args, **kwargs)
                finished.append(path)
                shapes[path] = tuple(out.shape) if tf.is_tensor(out) else ()
                return out

            return call

        with ExitStack() as scope:
            for path, layer in self.paths().items():
                if not isinstance(layer, keras.layers.InputLayer):
                    scope.enter_context(patched(layer, "call", logger(path, layer.call)))
            self.call(x[:1])
        for path in reversed(finished):
            shape = shapes[path]
            if finished.count(path) == 1 and len(shape) == x.shape.rank and np.prod([s or 0 for s in shape[1:-1]]) > 1:
                return path
        layout = {3: "[N, l, C]", 5: "[N, d, h, w, C]"}.get(x.shape.rank, "[N, h, w, C]")
        raise ConvscopeError(f"no layer of this Keras model outputs a feature map {layout} with more than one "
                             f"position (for an input of shape {x.shape.as_list()}), so there is no layer to choose",
                             "Pass layer='...' naming a convolutional layer (`convscope layers MODEL` lists them).")


def _call_open_batch(fn: Any, args: tuple[Any, ...]) -> Any:
    tensors = tf.nest.map_structure(tf.convert_to_tensor, args)
    specs = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]] if t.shape.rank else [], t.dtype),
                                  tensors)
    return fn.get_concrete_function(*specs)(*tensors)


_NETS: weakref.WeakKeyDictionary[keras.Model, KerasNet] = weakref.WeakKeyDictionary()


def keras_net(model: keras.Model) -> KerasNet:
    """The one :class:`KerasNet` of ``model`` (so compiled functions are shared by every method object)."""
    net = _NETS.get(model)
    if net is None:
        net = _NETS[model] = KerasNet(model)
    return net
