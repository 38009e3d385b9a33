"""The CAM family's template: ``map = relu(sum_k w_k * F_k)`` over the feature maps of one layer.

``A`` is the layer's output ``[n, K, h, w]``, ``G = dS/dA`` the gradient of the target's score
``S`` (taken with ``torch.autograd.grad`` on the recorded tensor; no parameter's ``.grad`` is
touched). A method writes one step, :meth:`CAMMethod.weights`, returning either one weight per
channel ``[n, K]`` (Grad-CAM and friends) or one per unit ``[n, K, h, w]`` (HiResCAM, LayerCAM:
the elementwise variants). :meth:`CAMMethod.features` is the second hook point: what the weights
multiply (``A`` itself unless overridden, as Eigen-CAM does). Then, per layer::

    raw = sum_k w_k * F_k                      # [n, 1, h, w], at the layer's resolution
    raw = P1(w * F)   instead, if eigen_smooth=True (below)
    map = relu(raw)   if the method's ReLU is on (``relu=``; each method documents its default)
    map = bilinear(map, to the input's H x W)  if ``upsample=True`` (the default)

ReLU comes before upsampling, as in the papers and pytorch-grad-cam. Upsampling is bilinear with
half-pixel centres (``align_corners=False``, what ``cv2.resize`` and PIL do).

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
``upsample=False`` the layers must share a resolution). After every call ``method.last_layers``
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
from typing import ClassVar, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.backends.torch.probes import LayerKey, key_name
from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.methods.base import Method, Wrt, check_input
from convscope.methods.batching import Batches, MaxBatch
from convscope.methods.cam.layer import default_layer
from convscope.methods.cam.projection import principal_projection
from convscope.methods.options import check_flag
from convscope.targets import Record, Target, TargetLike, as_targets

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None


def upsample(maps: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``[N, C, h, w]`` maps to ``size`` (half-pixel centres unless ``align_corners``).

    Example: ``upsample(raw, x.shape[-2:])``.
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=align_corners)


def _check_layers(layer: LayerSpec) -> tuple[LayerKey, ...] | None:
    if layer is None:
        return None
    keys = (layer,) if isinstance(layer, (str, nn.Module)) else tuple(layer) if isinstance(layer, Sequence) else None
    if not keys or any(not isinstance(k, (str, nn.Module)) for k in keys):
        raise ConvscopeError(f"layer={layer!r} is not a layer name, a module, or a non-empty list of them",
                             "Write layer='layer4', layer=model.layer4 or layer=['layer3', 'layer4'].")
    if len(set(keys)) != len(keys):
        raise ConvscopeError(f"layer={list(keys)!r} names a layer twice", "List each layer once.")
    return keys


def _feature_map(act: Tensor, name: str) -> Tensor:
    if act.dim() != 4:
        raise ConvscopeError(f"layer {name!r} outputs shape {list(act.shape)}, not a feature map [N, C, h, w]",
                             "Class activation maps weight the channels of a convolutional layer; pick one "
                             "(or leave layer=None to use the last layer with a spatial output).")
    return act


@dataclass(frozen=True)
class LayerStep:
    """What a weighting may use besides ``A`` and ``dS/dA``: the open session, this chunk's input
    ``x`` (rows ``rows`` of the full batch), the ``target``, the ``layer``, the target's ``score``
    on ``x`` (detached, ``[n]``) and ``max_batch`` (the most samples per model evaluation)."""

    session: Session
    x: Tensor
    rows: slice
    target: Target
    layer: LayerKey
    score: Tensor
    max_batch: MaxBatch

    def batches(self) -> Batches:
        """Splits expanded evaluations into chunks of at most ``max_batch`` samples."""
        return Batches(self.max_batch, self.x.device)

    def evaluations(self, count: int) -> None:
        """Announce ``count`` masked or ablated evaluations of this chunk's inputs, so the session
        decides once whether they run on its inference twin (see ``Session.inference``)."""
        self.session.inference(work=count * self.x[0].numel())

    def score_of(self, inputs: Tensor, samples: Tensor) -> Tensor:
        """The target's score (no gradients) for ``inputs``, whose row j is a variant of this
        chunk's sample ``samples[j]`` (so per-sample targets pick that sample's class); evaluated
        on the session's inference twin."""
        run = self.session.inference().forward(inputs, self.rows, grad=False)
        rows = torch.arange(self.rows.start, self.rows.stop)[samples.cpu()]
        return self.target.score(Record(run.record.output, run.record.acts, rows=rows)).detach()  # type: ignore[arg-type]

    def shared_score(self, one: Tensor) -> Tensor:
        """The target's score ``[n]`` when every sample of the chunk is replaced by the single
        input ``one`` ``[1, ...]``: one model evaluation, shared."""
        run = self.session.inference().forward(one, self.rows, grad=False)
        n = self.x.shape[0]

        def spread(t: Tensor) -> Tensor:
            return t.expand(n, *t.shape[1:])

        record = Record(spread(run.record.output), {k: spread(v) for k, v in run.record.acts.items()}, self.rows)
        return self.target.score(record).detach()


class CAMMethod(Method):
    """A class activation map: ``relu(sum_k w_k F_k)`` at one or more layers (see the module doc).

    ``CAMMethod(model, layer=None, *, upsample=True, relu=None, eigen_smooth=False, max_batch=None)``;
    ``relu=None`` takes the method's documented default (``default_relu``).
    """

    default_relu: ClassVar[bool] = True
    #: False where the map is a principal projection already (Eigen-CAM): ``eigen_smooth`` changes nothing
    eigen_smooth_applies: ClassVar[bool] = True
    #: whether :meth:`weights` reads ``dS/dA`` (if not, the forward pass runs without autograd)
    uses_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, layer: LayerSpec = None, *, upsample: bool = True,
                 relu: bool | None = None, eigen_smooth: bool = False, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        check_flag("upsample", upsample), check_flag("relu", relu), check_flag("eigen_smooth", eigen_smooth)
        self.layers = _check_layers(layer)
        self.upsample = upsample
        self.relu = self.default_relu if relu is None else relu
        self.eigen_smooth = bool(eigen_smooth)
        self.last_layers: tuple[str, ...] = ()  # the layers of the latest call, chosen or given

    def weights(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        """The weights ``[n, K]`` (per channel) or ``[n, K, h, w]`` (per unit) of ``features(acts)``.

        ``acts`` is ``A`` detached; ``grads`` is ``dS/dA`` (None when ``uses_gradients`` is False).
        """
        raise NotImplementedError

    def features(self, acts: Tensor) -> Tensor:
        """What the weights multiply: ``A`` itself (Eigen-CAM centres it)."""
        return acts

    @overload
    def attribute(self, x: Tensor, target: TargetLike, wrt: Wrt = None) -> Tensor: ...

    @overload
    def attribute(self, x: Tensor, target: None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike]) -> list[Tensor]: ...

    def attribute(self, x: Tensor, target: TargetLike | None = None, wrt: Wrt = None, *,
                  targets: Sequence[TargetLike] | None = None) -> Tensor | list[Tensor]:
        """Maps ``[N, L, H, W]`` (one channel per layer; ``L = 1`` for one layer) for ``target``,
        or a list of them for ``targets=[...]``. ``wrt=layer``: that layer's raw-resolution map."""
        x = check_input(x)
        if x.dim() != 4:
            raise ConvscopeError(f"class activation maps need an image batch [N, C, H, W], got shape {list(x.shape)}",
                                 "Pass images with a batch dimension, e.g. x.unsqueeze(0) for one image.")
        found, many = as_targets(target, targets, x.shape[0])
        keys = self._layer_keys(x, wrt)
        with Session(self.model, layers=[*keys, *(k for t in found for k in t.layers())]) as session:
            self.last_layers = tuple(key_name(self.model, k) for k in keys)
            batches = Batches(self.max_batch, x.device)
            parts = [part for _, part in batches.map(x.shape[0], lambda r: self._maps(session, x[r], r, found, keys))]
        size = x.shape[-2:] if self.upsample and wrt in (None, "input") else None
        maps = [self._finish([torch.cat([p[t][i] for p in parts]) for i in range(len(keys))], size)
                for t in range(len(found))]
        return maps if many else maps[0]

    def _layer_keys(self, x: Tensor, wrt: Wrt) -> list[LayerKey]:
        if wrt is not None and wrt != "input":
            return [wrt]
        return list(self.layers) if self.layers is not None else [default_layer(self.model, x)]

    def _maps(self, session: Session, x: Tensor, rows: slice, targets: list[Target],
              keys: list[LayerKey]) -> list[list[Tensor]]:
        """Raw maps ``[n, 1, h, w]`` (before ReLU and upsampling), per target, per layer."""
        run = session.forward(x, rows, grad=self.uses_gradients)
        acts = [_feature_map(run.record.acts[k], key_name(self.model, k)) for k in keys]
        out = []
        for i, target in enumerate(targets):
            score = target.score(run.record)
            grads = self._gradients(score, acts, keep_graph=i < len(targets) - 1)
            steps = [LayerStep(session, x, rows, target, k, score.detach(), self.max_batch) for k in keys]
            out.append([self._combine(a.detach(), g, s) for a, g, s in zip(acts, grads, steps)])
        return out

    def _gradients(self, score: Tensor, acts: list[Tensor], keep_graph: bool) -> list[Tensor | None]:
        if not self.uses_gradients:
            return [None] * len(acts)
        if not score.requires_grad:  # the score does not depend on these layers
            return [torch.zeros_like(a) for a in acts]
        grads = torch.autograd.grad(score.sum(), acts, retain_graph=keep_graph, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads)]

    def _combine(self, acts: Tensor, grads: Tensor | None, step: LayerStep) -> Tensor:
        w = self.weights(acts, grads, step)
        if w.dim() == 2:
            w = w[:, :, None, None]
        weighted = w * self.features(acts)
        raw = weighted.sum(1, keepdim=True)
        return principal_projection(weighted, like=raw) if self.eigen_smooth and self.eigen_smooth_applies else raw

    def _finish(self, layer_maps: list[Tensor], size: Sequence[int] | None) -> Tensor:
        done = [torch.relu(m) if self.relu else m for m in layer_maps]
        if size is not None:
            done = [upsample(m, size) for m in done]
        if len({tuple(m.shape) for m in done}) > 1:
            shapes = ", ".join(f"{n}: {list(m.shape[-2:])}" for n, m in zip(self.last_layers, done))
            raise ConvscopeError(f"the layers' maps have different resolutions ({shapes}) and upsample=False",
                                 "Use upsample=True to stack them at the input's size, or one method per layer.")
        return torch.cat(done, dim=1)

    def _compute(self, session: Session, x: Tensor, rows: slice, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        """Method's single-layer contract: the raw maps of the recorded layer ``wrt`` for one chunk
        (``attribute`` itself calls :meth:`_maps` with every layer of the call)."""
        if wrt is None:
            raise ConvscopeError("a CAM method needs a layer", "Pass wrt='layer4' (a layer the session records).")
        return [m[0] for m in self._maps(session, x, rows, targets, [wrt])]

    def __repr__(self) -> str:
        layers = None if self.layers is None else [key_name(self.model, k) for k in self.layers]
        smooth = ", eigen_smooth=True" if self.eigen_smooth else ""
        return (f"{type(self).__name__}({type(self.model).__name__}, layer={layers}, upsample={self.upsample}, "
                f"relu={self.relu}{smooth}, max_batch={self.max_batch})")
