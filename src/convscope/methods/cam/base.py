"""The CAM family's template: ``map = relu(sum_k w_k * F_k)`` over the feature maps of one layer.

``A`` is the layer's output (``[n, K, h, w]`` on PyTorch, ``[n, h, w, K]`` on Keras; ``[n, K, l]``
and ``[n, K, d, h, w]`` for 1-D and 3-D networks on PyTorch), ``G = dS/dA``
the gradient of the target's score ``S`` (taken on the recorded tensor; no parameter's ``.grad``
is touched). The family is written once against the backend protocol
(:mod:`convscope.backends.protocol`): the gradient-weighted maps of a chunk come from one
compiled function on Keras. A method writes one step, :meth:`CAMMethod.weights`, returning either one weight per
channel ``[n, K]`` (Grad-CAM and friends) or one per unit ``[n, K, h, w]`` (HiResCAM, LayerCAM:
the elementwise variants). :meth:`CAMMethod.features` is the second hook point: what the weights
multiply (``A`` itself unless overridden, as Eigen-CAM does). Then, per layer::

    raw = sum_k w_k * F_k                      # [n, 1, h, w], at the layer's resolution
    raw = P1(w * F)   instead, if eigen_smooth=True (below)
    map = relu(raw)   if the method's ReLU is on (``relu=``; each method documents its default)
    map = bilinear(map, to the input's H x W)  if ``upsample=True`` (the default)

ReLU comes before upsampling, as in the papers and pytorch-grad-cam. Upsampling is bilinear with
half-pixel centres (``align_corners=False``, what ``cv2.resize`` and PIL do); on a signal
``[N, C, L]`` it is linear and on a volume ``[N, C, D, H, W]`` trilinear, the same interpolation
along each axis. The feature map must have as many spatial axes as the input.

``eigen_smooth=True`` (pytorch-grad-cam's option of that name, for every CAM method) replaces the
sum over channels by ``P1``, the projection of the weighted maps ``w_k F_k`` on their first
principal component (:func:`~convscope.methods.cam.projection.principal_projection`: centred over
positions, as pytorch-grad-cam does). That keeps the main pattern of the weighted maps and drops
the rest, which reads as less noise. The SVD leaves its sign open, and pytorch-grad-cam keeps
whatever sign its SVD returns, so its map is sometimes the negated projection, cut by the ReLU.
convscope takes the sign that agrees with the plain sum ``sum_k w_k F_k`` instead.

Layers. ``layer=None`` picks :func:`~convscope.methods.cam.layer.default_layer` (the last layer
with a spatial output); ``layer="layer4"`` or a module names one; ``layer=["layer3", "layer4"]``
gives one map per layer, stacked on dim 1 in that order (``[N, 2, H, W]``; with
``upsample=False`` the layers must share a resolution). On a vision transformer the default is
the last block's ``norm1`` and token outputs become maps by themselves
(:mod:`convscope.methods.cam.tokens`). After every call ``method.last_layers``
holds the qualified names of the layers used, whether chosen or given. ``wrt="layer3"`` means
"the map at layer3's resolution": that layer only, not upsampled (``[N, 1, h, w]``).

Example::

    cam = GradCAM(model)                         # layer chosen on the first call
    maps = cam.attribute(x, target=predicted)    # [N, 1, H, W]
    cam.last_layers                              # ('layer4',)
    GradCAM(model, ["layer3", "layer4"]).attribute(x, targets=[3, 5])   # 2 x [N, 2, H, W]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from convscope.backends.protocol import Engine, Ops, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Rows, numel
from convscope.methods.cam.projection import principal_projection
from convscope.methods.cam.tokens import Tokens, check_tokens, layer_views
from convscope.methods.options import check_flag
from convscope.ops import tensors
from convscope.targets import Target

LayerSpec = Any  # a layer name or object, a non-empty list of them, or None


def upsample(maps: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``[N, C, h, w]`` torch maps to ``size`` (half-pixel centres unless ``align_corners``);
    linear for ``[N, C, l]``, trilinear for ``[N, C, d, h, w]``.

    Example: ``upsample(raw, x.shape[2:])``.
    """
    return tensors.resize(maps, size, align_corners=align_corners)


def _check_layers(layer: LayerSpec, kinds: tuple[type, ...]) -> tuple[Any, ...] | None:
    if layer is None:
        return None
    keys = (layer,) if isinstance(layer, kinds) else tuple(layer) if isinstance(layer, Sequence) else None
    if not keys or any(not isinstance(k, kinds) for k in keys):
        raise ConvscopeError(f"layer={layer!r} is not a layer name, a module, or a non-empty list of them",
                             "Write layer='layer4', layer=model.layer4 or layer=['layer3', 'layer4'].")
    if len(set(keys)) != len(keys):
        raise ConvscopeError(f"layer={list(keys)!r} names a layer twice", "List each layer once.")
    return keys


@dataclass(frozen=True)
class LayerStep:
    """What a weighting may use besides ``A`` and ``dS/dA``: the ``engine``, this chunk's input
    ``x`` (rows ``rows`` of the full batch), the target (``index`` among the call's targets), the
    ``layer`` and the target's ``score`` on ``x`` (detached, ``[n]``)."""

    engine: Engine
    x: Tensor
    rows: Rows
    index: int
    target: Target
    layer: Any
    score: Tensor
    view: Tokens | None = None  # how the layer's output is the feature map (transformers)
    output: Tensor | None = None  # the layer's output for this chunk, detached (where ``view`` is set)

    @property
    def ops(self) -> Ops:
        return self.engine.ops

    def batches(self) -> Any:
        """Splits expanded evaluations into chunks of at most ``max_batch`` samples."""
        return self.engine.batches()

    def evaluations(self, count: int) -> None:
        """Announce ``count`` masked or ablated evaluations of this chunk's inputs, so the engine
        decides once whether they run on a faster copy of the model."""
        self.engine.evaluations(count * numel(self.x))

    def score_of(self, inputs: Tensor, samples: Tensor, replace: tuple[Any, Tensor] | None = None) -> Tensor:
        """The target's score (no gradients) for ``inputs``, whose row j is a variant of this
        chunk's sample ``samples[j]`` (so per-sample targets pick that sample's class);
        ``replace=(layer, values)`` sets that layer's output."""
        rows = self.ops.take(self.rows, samples)
        if replace is not None and self.view is not None and self.output is not None:
            replace = (replace[0], self.view.to_layer(replace[1], self.ops.take(self.output, samples)))
        return self.engine.evaluate(inputs, rows, replace=replace, targets=[self.target])[0]

    def shared_score(self, one: Tensor) -> Tensor:
        """The target's score ``[n]`` when every sample of the chunk is replaced by the single
        input ``one`` ``[1, ...]``: one model evaluation, shared."""
        return self.engine.evaluate(one, self.rows, targets=[self.target], spread=True)[0]


class CAMMethod(Method):
    """A class activation map: ``relu(sum_k w_k F_k)`` at one or more layers (see the module doc).

    ``CAMMethod(model, layer=None, *, upsample=True, relu=None, eigen_smooth=False, tokens=None, max_batch=None)``;
    ``relu=None`` takes the method's documented default (``default_relu``); ``tokens``: the layout of
    a transformer layer's tokens where the model does not tell it (:mod:`convscope.methods.cam.tokens`).
    """

    options = frozenset({"layer", "eigen_smooth"})
    #: layers inside the model: not on a TorchScript model (:mod:`convscope.formats`)
    frameworks = ("torch", "tf")
    display = "positive"  # a CAM shows where the evidence for the class is (a ReLU'd map, or its positive part)
    maps_like_input = False  # [N, L, H, W], one map per layer
    default_relu: ClassVar[bool] = True
    #: False where the map is a principal projection already (Eigen-CAM): ``eigen_smooth`` changes nothing
    eigen_smooth_applies: ClassVar[bool] = True
    #: whether :meth:`weights` reads ``dS/dA`` (if not, the forward pass runs without gradients)
    uses_gradients: ClassVar[bool] = True
    scores_input = True  # the score-weighted CAMs, which score masked copies, say False

    def __init__(self, model: Any, layer: LayerSpec = None, *, upsample: bool = True,
                 relu: bool | None = None, eigen_smooth: bool = False, tokens: Tokens | None = None,
                 max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.tokens = check_tokens(tokens)
        check_flag("upsample", upsample), check_flag("relu", relu), check_flag("eigen_smooth", eigen_smooth)
        self.layers = _check_layers(layer, self.backend.layer_types)
        self.upsample = upsample
        self.relu = self.default_relu if relu is None else relu
        self.eigen_smooth = bool(eigen_smooth)
        self.last_layers: tuple[str, ...] = ()  # the layers of the latest call, chosen or given
        self._keys: tuple[Any, ...] = ()
        self._rank = 4  # the latest input's rank: feature maps must match it
        self._views: dict[Any, Tokens | None] = {}

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        """The weights ``[n, K]`` (per channel) or shaped like ``acts`` (per unit) of ``features(acts)``.

        ``acts`` is ``A`` detached; ``grads`` is ``dS/dA`` (None when ``uses_gradients`` is False).
        """
        raise NotImplementedError

    def features(self, acts: Tensor, ops: Ops) -> Tensor:
        """What the weights multiply: ``A`` itself (Eigen-CAM centres it)."""
        return acts

    def _config(self) -> tuple[Any, ...]:
        """What the weighting depends on besides the class (part of the compiled function's key)."""
        return ()

    def _prepare(self, x: Tensor, wrt: Any) -> None:
        backend = self.backend
        if len(x.shape) not in backend.cam_ranks:
            raise ConvscopeError(f"class activation maps need a batch of {backend.cam_layouts}, got shape "
                                 f"{list(x.shape)}", "Pass inputs with a batch dimension, e.g. one image with a "
                                 "leading axis of size 1.")
        self._rank = len(x.shape)
        if wrt is not None:
            keys = [wrt]
        elif self.layers is not None:
            keys = list(self.layers)
        else:
            keys = [backend.default_layer(self.model, x)]
        self._keys = tuple(backend.feature_key(self.model, k) for k in keys)
        self.last_layers = tuple(backend.layer_name(self.model, k) for k in self._keys)
        self._views = dict(zip(self._keys, layer_views(self, x, self._keys, self.tokens)))

    def _layers(self) -> tuple[Any, ...]:
        return self._keys

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        """Maps ``[n, L, H, W]`` (Keras: ``[n, H, W, L]``), one channel per layer, per target;
        ``wrt=layer``: that layer's map at its own resolution."""
        if self.uses_gradients:
            key = ("cam", self._config(), self._keys, self.upsample, self.relu, self._smooths())
            return engine.compiled(key, self._gradient_maps)(x, rows)
        return self._activation_maps(engine, x, rows, targets)

    def _size(self, engine: Engine, x: Tensor) -> tuple[int, ...] | None:
        return engine.ops.spatial_shape(x) if self.upsample and engine.wrt is None else None

    def _gradient_maps(self, engine: Engine, x: Tensor, rows: Rows) -> list[Tensor]:
        """Finished maps per target for one chunk, from one forward pass and one backward pass per target."""
        ops = engine.ops
        run = engine.forward(x, rows, grad=True)
        outputs = [run.act(k) for k in self._keys]
        acts = [self._feature_map(ops, a, k) for a, k in zip(outputs, self._keys)]
        out = []
        for i in range(len(run.scores)):
            grads = [self._as_map(g, k) for g, k in zip(run.gradients(i, outputs), self._keys)]
            steps = [LayerStep(engine, x, rows, i, None, k, ops.detach(run.scores[i])) for k in self._keys]  # type: ignore[arg-type]
            out.append(self._finish(ops, [self._combine(ops.detach(a), g, s) for a, g, s in zip(acts, grads, steps)],
                                    self._size(engine, x)))
        return out

    def _acts(self, engine: Engine, x: Tensor, rows: Rows) -> tuple[list[Tensor], list[Tensor]]:
        """The outputs of the layers and the targets' scores (no gradients)."""
        ops = engine.ops
        run = engine.forward(x, rows)
        return [ops.detach(run.act(k)) for k in self._keys], [ops.detach(s) for s in run.scores]

    def _activation_maps(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target]) -> list[Tensor]:
        """Finished maps per target, the weights computed outside the compiled forward pass (they
        may evaluate the model)."""
        outputs, scores = engine.compiled(("acts", self._keys), self._acts)(x, rows)
        acts = [self._feature_map(engine.ops, a, k) for a, k in zip(outputs, self._keys)]
        size = self._size(engine, x)
        return [self._finish(engine.ops, [self._combine(a, None, LayerStep(engine, x, rows, i, t, k, scores[i],
                                                                           self._views.get(k), o))
                                          for k, a, o in zip(self._keys, acts, outputs)], size)
                for i, t in enumerate(targets)]

    def _as_map(self, t: Tensor, key: Any) -> Tensor:
        """A layer's output (or its gradient) as a feature map: transformer tokens reshaped."""
        view = self._views.get(key)
        return t if view is None else view.to_map(t)

    def _feature_map(self, ops: Ops, act: Tensor, key: Any) -> Tensor:
        act = self._as_map(act, key)
        if ops.rank(act) != self._rank:
            layout = self.backend.feature_layouts.get(self._rank, self.backend.feature_layout)
            raise ConvscopeError(f"layer {self.backend.layer_name(self.model, key)!r} outputs shape "
                                 f"{list(act.shape)}, not a feature map {layout} with as many spatial axes as "
                                 "the input", "Class activation maps weight the channels of a convolutional layer; "
                                 "pick one (or leave layer=None to use the last layer with a spatial output; for "
                                 "transformer tokens pass tokens=Tokens(prefix=..., grid=(h, w))).")
        return act

    def _smooths(self) -> bool:
        """Whether the weighted maps are reduced by their principal projection (``eigen_smooth``)."""
        return self.eigen_smooth and self.eigen_smooth_applies

    def _combine(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        ops = step.ops
        w = self.weights(acts, grads, step)
        if ops.rank(w) == 2:
            w = ops.per_channel(w, acts)
        weighted = w * self.features(acts, ops)
        raw = ops.sum(weighted, ops.channel_axis, keepdims=True)
        return principal_projection(ops, weighted, like=raw) if self._smooths() else raw

    def _finish(self, ops: Ops, layer_maps: list[Tensor], size: Sequence[int] | None) -> Tensor:
        done = [ops.relu(m) if self.relu else m for m in layer_maps]
        if size is not None:
            done = [ops.resize(m, size) for m in done]
        if len({tuple(m.shape) for m in done}) > 1:
            shapes = ", ".join(f"{n}: {list(ops.spatial_shape(m))}" for n, m in zip(self.last_layers, done))
            raise ConvscopeError(f"the layers' maps have different resolutions ({shapes}) and upsample=False",
                                 "Use upsample=True to stack them at the input's size, or one method per layer.")
        return ops.cat(done, ops.channel_axis)

    def __repr__(self) -> str:
        layers = None if self.layers is None else [self.backend.layer_name(self.model, k) for k in self.layers]
        smooth = ", eigen_smooth=True" if self.eigen_smooth else ""
        return (f"{type(self).__name__}({self._model_name()}, layer={layers}, upsample={self.upsample}, "
                f"relu={self.relu}{smooth}, max_batch={self.max_batch})")
