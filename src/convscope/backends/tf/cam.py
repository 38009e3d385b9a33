"""The CAM family on Keras models: ``map = relu(sum_k w_k A_k)`` over channels-last feature maps.

Same formulas, options and defaults as :mod:`convscope.methods.cam` (``layer``, ``upsample``,
``relu``, ``eigen_smooth``, ``max_batch``; ``last_layers`` after each call), laid out NHWC: ``A`` is
``[n, h, w, K]``, weights are ``[n, K]`` or ``[n, h, w, K]``, and maps are ``[N, H, W, L]`` with
one channel per layer (``L = 1`` for one layer). ReLU comes before the bilinear upsampling with
half-pixel centres (``align_corners=False``, as in torch). Everything but Score-CAM's masked
evaluations runs in one compiled function per chunk.

Example::

    cams = GradCAM(keras_model, "block5_conv3").attribute(x_nhwc, target=3)   # [N, 224, 224, 1]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import keras
import tensorflow as tf

from convscope.backends.tf.batching import Batches
from convscope.backends.tf.method import KerasMethod, Wrt, as_input, concat, implements, rows_of
from convscope.backends.tf.model import KerasNet, LayerKey
from convscope.backends.tf.projection import principal_projection
from convscope.backends.tf.targets import Scorer, score_all
from convscope.errors import ConvscopeError
from convscope.methods.batching import MaxBatch
from convscope.methods.cam import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from convscope.methods.options import check_flag
from convscope.targets import TargetLike

SPACE = (1, 2)
LayerSpec = LayerKey | Sequence[LayerKey] | None


def resize(maps: tf.Tensor, size: Sequence[int], *, align_corners: bool = False) -> tf.Tensor:
    """Bilinear resize of ``[N, h, w, C]`` maps to ``size`` (half-pixel centres unless ``align_corners``)."""
    if tuple(maps.shape[1:3]) == tuple(size):
        return maps
    return tf.raw_ops.ResizeBilinear(images=maps, size=tf.constant(list(size), tf.int32),
                                     align_corners=align_corners, half_pixel_centers=not align_corners)


def divide(num: tf.Tensor, den: tf.Tensor) -> tf.Tensor:
    """``num / den`` where ``den != 0``, else 0."""
    nonzero = tf.not_equal(den, 0)
    safe = tf.where(nonzero, den, tf.ones_like(den))
    return tf.where(nonzero, num / safe, tf.zeros_like(num * safe))


def relu(t: tf.Tensor) -> tf.Tensor:
    """``max(t, 0)`` (not ``tf.nn.relu``, which rules may patch while a model runs)."""
    return tf.maximum(t, tf.constant(0, t.dtype))


def _check_layers(layer: LayerSpec) -> tuple[LayerKey, ...] | None:
    if layer is None:
        return None
    keys = (layer,) if isinstance(layer, (str, keras.Layer)) else tuple(layer) if isinstance(layer, Sequence) else ()
    if not keys or any(not isinstance(k, (str, keras.Layer)) for k in keys):
        raise ConvscopeError(f"layer={layer!r} is not a layer name, a layer, or a non-empty list of them",
                             "Write layer='block5_conv3' or layer=['block4_conv3', 'block5_conv3'].")
    if len(set(keys)) != len(keys):
        raise ConvscopeError(f"layer={list(keys)!r} names a layer twice", "List each layer once.")
    return keys


def feature_map(act: tf.Tensor, name: str) -> tf.Tensor:
    """``act`` if it is ``[N, h, w, K]``, else a clear error."""
    if act.shape.rank != 4:
        raise ConvscopeError(f"layer {name!r} outputs shape {act.shape.as_list()}, not a feature map [N, h, w, C]",
                             "Class activation maps weight the channels of a convolutional layer; pick one "
                             "(or leave layer=None to use the last layer with a spatial output).")
    return act


def finish(maps: list[tf.Tensor], names: Sequence[str], size: Sequence[int] | None, use_relu: bool) -> tf.Tensor:
    """ReLU (if on), upsampling to ``size`` (if given), then the layers' maps stacked on the last axis."""
    done = [relu(m) if use_relu else m for m in maps]
    if size is not None:
        done = [resize(m, size) for m in done]
    if len({tuple(m.shape[1:3]) for m in done}) > 1:
        shapes = ", ".join(f"{n}: {m.shape[1:3].as_list()}" for n, m in zip(names, done))
        raise ConvscopeError(f"the layers' maps have different resolutions ({shapes}) and upsample=False",
                             "Use upsample=True to stack them at the input's size, or one method per layer.")
    return done[0] if len(done) == 1 else tf.concat(done, axis=-1)


def cam_fn(net: KerasNet, weigh: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], scorers: list[Scorer],
           keys: list[str], size: Sequence[int] | None, use_relu: bool,
           eigen_smooth: bool = False) -> Callable[..., list[tf.Tensor]]:
    """``f(x, rows, feeds)`` -> per target the finished maps ``[n, H, W, L]`` (gradient-weighted CAMs)."""
    layers = tuple(dict.fromkeys([*keys, *(layer for s in scorers for layer in s.layers)]))

    def fn(x: tf.Tensor, rows: tf.Tensor, feeds: tuple[tf.Tensor, ...]) -> list[tf.Tensor]:
        with tf.GradientTape(persistent=len(scorers) > 1) as tape:
            record = net.run(x, layers)
            scores = [tf.reduce_sum(s) for s in score_all(scorers, record, rows, feeds)]
        acts = [feature_map(record.acts[k], k) for k in keys]
        out = []
        for score in scores:
            grads = tape.gradient(score, acts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            out.append(finish([combine(weigh(a, g), a, eigen_smooth) for a, g in zip(acts, grads)], keys, size,
                              use_relu))
        return out

    return fn


def acts_fn(net: KerasNet, keys: list[str]) -> Callable[..., list[tf.Tensor]]:
    """``f(x, feeds)`` -> the feature maps of ``keys`` (no gradients)."""
    return lambda x, feeds: [feature_map(net.run(x, keys).acts[k], k) for k in keys]


def combine(weights: tf.Tensor, acts: tf.Tensor, eigen_smooth: bool = False) -> tf.Tensor:
    """``sum_k w_k A_k`` as ``[n, h, w, 1]`` (weights per channel ``[n, K]`` or per unit ``[n, h, w, K]``),
    or with ``eigen_smooth`` the first-principal-component projection of the ``w_k A_k``."""
    if weights.shape.rank == 2:
        weights = weights[:, None, None, :]
    weighted = weights * acts
    plain = tf.reduce_sum(weighted, axis=-1, keepdims=True)
    return principal_projection(weighted, like=plain) if eigen_smooth else plain


class KerasCAMMethod(KerasMethod):
    """A class activation map on a Keras model (see :class:`convscope.methods.cam.CAMMethod`)."""

    default_relu: ClassVar[bool] = True
    eigen_smooth_applies: ClassVar[bool] = True  # False for Eigen-CAM, a projection already

    def __init__(self, model: keras.Model, layer: LayerSpec = None, *, upsample: bool = True,
                 relu: bool | None = None, eigen_smooth: bool = False, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        check_flag("upsample", upsample), check_flag("relu", relu), check_flag("eigen_smooth", eigen_smooth)
        self.layers = _check_layers(layer)
        self.upsample = upsample
        self.relu = self.default_relu if relu is None else relu
        self.eigen_smooth = bool(eigen_smooth)
        self.last_layers: tuple[str, ...] = ()

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """The weights ``[n, K]`` or ``[n, h, w, K]`` from ``A`` and ``dS/dA`` (traced in the graph)."""
        raise NotImplementedError

    def attribute(self, x: Any, target: TargetLike | None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike] | None = None) -> tf.Tensor | list[tf.Tensor]:
        """Maps ``[N, H, W, L]`` for ``target`` (a list of them for ``targets=[...]``);
        ``wrt=layer``: that layer's map at its own resolution."""
        x = as_input(x)
        if x.shape.rank != 4:
            raise ConvscopeError(f"class activation maps need an image batch [N, H, W, C], got shape "
                                 f"{x.shape.as_list()}", "Pass images with a batch dimension, e.g. x[None].")

        def body(x: tf.Tensor, scorers: list[Scorer], layer: str | None) -> list[tf.Tensor]:
            net = self.net
            keys = [layer] if layer is not None else [net.path(k) for k in self.layers] if self.layers is not None \
                else [net.default_layer(x)]
            keys = [net.channels_last(k) for k in keys]
            self.last_layers = tuple(keys)
            size = tuple(x.shape[1:3]) if self.upsample and layer is None else None
            parts = [p for _, p in Batches(self.max_batch).map(
                int(x.shape[0]), lambda r: self._maps(x[r.start:r.stop], rows_of(r), scorers, keys, size))]
            return concat(parts, len(scorers))

        return self._run(x, target, wrt, targets, body)

    def _maps(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], keys: list[str],
              size: tuple[int, ...] | None) -> list[tf.Tensor]:
        """Finished maps per target for one chunk."""
        weigh = self._detached().weights
        net, use_relu, smooth = self.net, self.relu, self._smooths()
        key = ("cam", self._config(), tuple(keys), size, use_relu, smooth)
        return self.compiled(key, lambda: cam_fn(net, weigh, scorers, keys, size, use_relu, smooth), scorers, x, rows)

    def _smooths(self) -> bool:
        """Whether the weighted maps are reduced by their principal projection (``eigen_smooth``)."""
        return self.eigen_smooth and self.eigen_smooth_applies

    def _config(self) -> tuple[Any, ...]:
        """What the weighting depends on besides the class (for the compiled-function key)."""
        return ()

    def _detached(self) -> KerasCAMMethod:
        """A copy without the model, for closures cached with the model's compiled functions."""
        twin = copy.copy(self)
        twin.model = None  # type: ignore[assignment]
        return twin

    def _compute(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], wrt: str | None) -> list[tf.Tensor]:
        if wrt is None:
            raise ConvscopeError("a CAM method needs a layer", "Pass wrt='block5_conv3'.")
        return self._maps(x, rows, scorers, [wrt], None)

    def __repr__(self) -> str:
        smooth = ", eigen_smooth=True" if self.eigen_smooth else ""
        return (f"{type(self).__name__}({self.model.name!r}, layer={self.layers}, upsample={self.upsample}, "
                f"relu={self.relu}{smooth}, max_batch={self.max_batch})")


class KerasActivationCAM(KerasCAMMethod):
    """A CAM weighting the feature maps without their gradients (Score-, Ablation-, Eigen-CAM): the
    maps come from one compiled forward pass per chunk, the weights from :meth:`layer_weights`."""

    def _maps(self, x: tf.Tensor, rows: tf.Tensor, scorers: list[Scorer], keys: list[str],
              size: tuple[int, ...] | None) -> list[tf.Tensor]:
        net = self.net
        acts = self.compiled(("acts", tuple(keys)), lambda: acts_fn(net, keys), [], x)
        return [finish([combine(self.layer_weights(x, rows, s, k, a), self.features(a), self._smooths())
                        for k, a in zip(keys, acts)], keys, size, self.relu) for s in scorers]

    def features(self, acts: tf.Tensor) -> tf.Tensor:
        """What the weights multiply: ``A`` itself (Eigen-CAM centres it)."""
        return acts

    def layer_weights(self, x: tf.Tensor, rows: tf.Tensor, target: Scorer, layer: str, acts: tf.Tensor) -> tf.Tensor:
        """The weights ``[n, K]`` of layer ``layer``'s maps ``acts`` for one target (run eagerly; may
        evaluate the model)."""
        raise NotImplementedError


@implements(CAM)
class KerasCAM(KerasCAMMethod):
    """``w_k = sum_ij dS/dA_ijk``; no ReLU by default."""

    default_relu = False

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(grads, SPACE)


@implements(GradCAM)
class KerasGradCAM(KerasCAMMethod):
    """``w_k = mean_ij dS/dA_ijk``. Example: ``GradCAM(keras_model, "block5_conv3").attribute(x, 3)``."""

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(grads, SPACE)


@implements(GradCAMPlusPlus)
class KerasGradCAMPlusPlus(KerasCAMMethod):
    """``w_k = sum_ij relu(G) a``, ``a = G^2 / (2 G^2 + sum_ij(A_k) G^3 + eps)`` (0 where G is 0)."""

    def __init__(self, model: keras.Model, layer: LayerSpec = None, *, upsample: bool = True,
                 relu: bool | None = None, eigen_smooth: bool = False, eps: float = 0.0,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, layer, upsample=upsample, relu=relu, eigen_smooth=eigen_smooth, max_batch=max_batch)
        self.eps = float(eps)

    def _config(self) -> tuple[Any, ...]:
        return (self.eps,)

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        g2 = grads * grads
        den = 2 * g2 + tf.reduce_sum(acts, SPACE, keepdims=True) * g2 * grads + self.eps
        alpha = tf.where(tf.not_equal(grads, 0), divide(g2, den), tf.zeros_like(g2))
        return tf.reduce_sum(relu(grads) * alpha, SPACE)


@implements(XGradCAM)
class KerasXGradCAM(KerasCAMMethod):
    """``w_k = sum_ij G A / sum_ij A`` (0 where the sum is 0)."""

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        return divide(tf.reduce_sum(grads * acts, SPACE), tf.reduce_sum(acts, SPACE))


@implements(HiResCAM)
class KerasHiResCAM(KerasCAMMethod):
    """Elementwise ``w = G``."""

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        return grads


@implements(LayerCAM)
class KerasLayerCAM(KerasCAMMethod):
    """Elementwise ``w = relu(G)``.

    Example: ``LayerCAM(keras_model, ["block3_conv3", "block4_conv3"]).attribute(x, 3)``.
    """

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        return relu(grads)
