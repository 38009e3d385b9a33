"""A Keras model as a PyTorch module, for optimisation code written with PyTorch autograd
(feature visualization and DeepDream in :mod:`convscope.featurevis`).

``KerasModule(model, layers)`` takes ``[N, C, H, W]`` torch batches. Its forward pass runs the
Keras model on the channels-last copy (``training=False``, :meth:`KerasNet.run` recording
``layers``) under a ``tf.GradientTape`` and returns the output as a torch tensor. Each recorded
layer is a child module named like the layer (an identity *tap*) called with that layer's output
channels-first (``[N, C, h, w]``; other ranks as they are), so forward hooks on it read the
activation as they read a PyTorch layer's. Backward, the tape gives
``d/dx sum_t <g_t, t(x)>`` for the gradients ``g_t`` that torch sends to the output and to the
taps: the chain rule through TensorFlow, exact, transposed back to ``[N, C, H, W]``.

Example::

    module = KerasModule(keras_model, ["conv2"])
    with Session(module, layers=["conv2"]) as session:
        run = session.forward(x, slice(0, len(x)))    # run.record.acts["conv2"]: [N, C, h, w]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import torch
from torch import Tensor, nn

from convscope.backends.tf.model import KerasNet, keras_net
from convscope.errors import ConvscopeError


def _channels_first(t: tf.Tensor) -> Tensor:
    a = t.numpy()
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)) if a.ndim == 4 else a.copy())


def _channels_last(t: Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if a.ndim == 4 else a


class _KerasCall(torch.autograd.Function):
    """``(output, *acts) = keras(x)`` with the TensorFlow tape as its backward."""

    @staticmethod
    def forward(ctx: Any, net: KerasNet, paths: tuple[str, ...], x: Tensor) -> tuple[Tensor, ...]:  # noqa: ANN401
        xt = tf.convert_to_tensor(_channels_last(x))
        tape = tf.GradientTape()
        with tape:
            tape.watch(xt)
            record = net.run(xt, paths)
        outs = [record.output, *(record.acts[p] for p in paths)]
        ctx.tape, ctx.xt, ctx.outs = tape, xt, outs
        ctx.set_materialize_grads(False)
        return tuple(_channels_first(o).to(x.dtype) for o in outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[None, None, Tensor | None]:  # noqa: ANN401
        pairs = [(o, tf.convert_to_tensor(_channels_last(g), dtype=o.dtype)) for o, g in zip(ctx.outs, grads)
                 if g is not None]
        if not pairs:
            return None, None, None
        gx = ctx.tape.gradient([o for o, _ in pairs], ctx.xt, output_gradients=[g for _, g in pairs])
        ctx.tape = ctx.outs = None  # a tape answers once
        return None, None, None if gx is None else _channels_first(gx)


class _Tap(nn.Module):
    """The identity: a place where forward hooks see one recorded Keras layer output."""

    def forward(self, t: Tensor) -> Tensor:
        return t


class KerasModule(nn.Module):
    """A Keras model as a torch module that records ``layers`` (names or paths; see the module doc)."""

    def __init__(self, model: keras.Model, layers: Sequence[Any] = ()) -> None:
        super().__init__()
        self.net = keras_net(model)
        self.keys: list[str] = []
        paths = []
        for key in dict.fromkeys(layers):
            if not isinstance(key, str) or "." in key:
                raise ConvscopeError(f"a Keras layer is named here by its path without dots, got {key!r}",
                                     "Name the layer as `convscope layers MODEL` lists it, e.g. 'conv2' or 'block/conv'.")
            paths.append(self.net.channels_last(key))  # a clear error for an unknown name
            self.keys.append(key)
            self.add_module(key, _Tap())
        self.paths = tuple(paths)

    def forward(self, x: Tensor) -> Tensor:
        output, *acts = _KerasCall.apply(self.net, self.paths, x)
        for key, act in zip(self.keys, acts):
            self._modules[key](act)  # type: ignore[misc] - the tap: hooks read the activation here
        return output


__all__ = ["KerasModule"]
