"""Perturbation methods: change parts of the input, watch the score. No gradients, no rules.

:class:`Occlusion` (Zeiler & Fergus 2014) slides a window over each image and replaces what it
covers by a fill (a value, a tensor, or a Gaussian blur of the image). With ``s`` the target's
score and ``x_w`` the image with window ``w`` filled::

    Occlusion(x)[p] = mean over the windows w covering p of (s(x) - s(x_w))

Windows start at ``0, stride, 2 stride, ...`` until one reaches the far edge (the last may be
cut off there), so every position is covered: Captum's convention.

:class:`RISE` (Petsiuk et al. 2018) scores ``M`` random soft masks: a coarse ``cells x cells``
grid of Bernoulli(``p``) cells, bilinearly upsampled and randomly shifted by less than a cell::

    RISE(x) = 1 / (M p) * sum_m s(x * mask_m + fill * (1 - mask_m)) * mask_m

Both work on image batches (``[N, C, H, W]``; Keras: ``[N, H, W, C]``): the input, or a layer's
output with ``wrt=layer``. Windows and masks are planned channels-first, once for both backends.

Example::

    maps = Occlusion(model, window=16, stride=8, fill="blur", max_batch=64).attribute(x, 3)
    maps = RISE(model, masks=1000, seed=0).attribute(x, targets=[3, 5])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor as TorchTensor

from convscope.backends.protocol import Chunk, Engine, Ops, Tensor
from convscope.backends.torch.batching import MaxBatch
from convscope.errors import ConvscopeError
from convscope.methods.ablation import (Ablating, Fill, ablation_maps, axis_sizes, channels_first, check_sizes,
                                       fill_values, fills, per_input, placed)
from convscope.methods.adaptive import Adaptive, AdaptiveReport, Grid, as_adaptive
from convscope.methods.base import Method, Rows, numel
from convscope.methods.registry import register_method
from convscope.ops import tensors
from convscope.targets import Target

Size = int | Sequence[int]


def check_image(value: Tensor, method: str, ops: Ops, layout: str) -> None:
    """A clear error unless ``value`` is a batch of images."""
    if ops.rank(value) != 4:
        raise ConvscopeError(f"{method} needs {layout} tensors, got {list(value.shape)}",
                             "Attribute to an image input or to a convolutional layer (wrt='...').")


def gaussian_blur(x: TorchTensor, sigma: float) -> TorchTensor:
    """Each channel of ``x`` [N, C, H, W] blurred by a Gaussian of std ``sigma`` (reflected edges)."""
    return tensors.gaussian_blur(x, sigma)


def _per_dim(size: Size | None, dims: int, name: str) -> tuple[int, ...] | None:
    if size is None:
        return None
    found = (size,) * dims if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(found) not in (dims, dims + 1) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                 for v in found):
        raise ConvscopeError(f"{name}={size!r} must be a positive int, (height, width) or (channels, height, width)",
                             f"For example {name}=8 or {name}=(8, 8).")
    return found


def axis_windows(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> list[list[slice]]:
    """Per dimension, the intervals the occlusion windows cover (window size ``w``, stride ``s``).

    Example: ``axis_windows([1, 4, 4], [1, 2, 2], [1, 2, 2])`` -> ``[[0:1], [0:2, 2:4], [0:2, 2:4]]``.
    """
    axes = []
    for size, w, s in zip(shape, window, stride):
        if w > size:
            raise ConvscopeError(f"the occlusion window {list(window)} is larger than the tensor {list(shape)}",
                                 "Use a smaller window.")
        if s > w and w < size:
            raise ConvscopeError(f"stride {list(stride)} is larger than the window {list(window)}: positions would "
                                 "be skipped", "Use a stride no larger than the window.")
        axes.append([slice(k * s, min(k * s + w, size)) for k in range(math.ceil((size - w) / s) + 1)])
    return axes


def windows(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> list[tuple[slice, ...]]:
    """The occlusion windows over a sample of ``shape``, as slices, first dimension slowest.

    Example: ``windows([1, 4, 4], [1, 2, 2], [1, 2, 2])`` -> four 2x2 windows.
    """
    grid: list[tuple[slice, ...]] = [()]
    for dim in axis_windows(shape, window, stride):
        grid = [g + (d,) for g in grid for d in dim]
    return grid


def window_masks(shape: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> TorchTensor:
    """``[W, *shape]`` bool: the sliding windows over a sample of ``shape`` (first axis slowest;
    starts ``0, s, 2s, ...`` until one reaches the far edge, the last maybe cut off there:
    Captum's convention, :func:`windows`) as masks.

    Example: ``window_masks([4], [2], [2])`` -> ``[[1, 1, 0, 0], [0, 0, 1, 1]]``."""
    found = windows(shape, window, stride)
    masks = torch.zeros(len(found), *shape, dtype=torch.bool)
    for i, w in enumerate(found):
        masks[(i, *w)] = True
    return masks


def occlusion_masks(engine: Engine, value: Tensor, window: Any, stride: Any) -> TorchTensor:
    """The sliding windows of :class:`~convscope.methods.Occlusion` on any sample, per input."""
    inputs = engine.inputs
    several = inputs is not None and engine.wrt is None and len(inputs.shapes) > 1
    shapes = list(inputs.shapes) if several else [channels_first(engine, value)]
    parts = []
    for shape, w, s in zip(shapes, per_input(window, len(shapes)), per_input(stride, len(shapes))):
        rank = len(shape)
        default = (1,) if rank == 1 else (shape[0], *(max(1, round(d / 8)) for d in shape[1:]))
        found = axis_sizes(w, shape, "window", default)
        steps = axis_sizes(s, shape, "stride", (found[0], *(max(1, v // 2) for v in found[1:])) if rank > 1 else
                           (max(1, found[0] // 2),))
        parts.append(window_masks(shape, found, steps))
    return placed(parts, inputs.sizes) if several else parts[0]


def interval_masks(intervals: list[slice]) -> np.ndarray:
    """``[len(intervals), size]`` bool: row ``i`` is True on interval ``i``."""
    size = max(s.stop for s in intervals)
    mask = np.zeros((len(intervals), size), bool)
    for i, interval in enumerate(intervals):
        mask[i, interval] = True
    return mask


class WindowMasks:
    """The occlusion windows as masks, made on the device a batch at a time.

    Window ``k`` (in :func:`windows` order) covers ``A[k0] x B[k1] x C[k2]`` with ``(k0, k1, k2)``
    its row-major index over the per-dimension intervals (channels, rows, columns), so its mask is
    the outer product of three interval masks (:meth:`~convscope.backends.protocol.Ops.outer`): one
    broadcast product per batch instead of one slice write per window.

    Example::

        masks = WindowMasks(axis_windows([3, 8, 8], [3, 4, 4], [3, 2, 2]), ops, like=x)
        masks(torch.arange(5))  # [5, 3, 8, 8] bool, window k's cells True
    """

    def __init__(self, axes: list[list[slice]], ops: Ops, like: Tensor) -> None:
        self.ops = ops
        self.counts = [len(dim) for dim in axes]
        self.tables = [interval_masks(dim) for dim in axes]
        self.axes = [ops.constant(t, like=like) for t in self.tables]

    def __len__(self) -> int:
        return math.prod(self.counts)

    def split(self, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Window ``k``'s index along each axis."""
        _, h_count, w_count = self.counts
        return k // (h_count * w_count), (k // w_count) % h_count, k % w_count

    def __call__(self, k: Tensor) -> Tensor:
        """The masks of windows ``k``, a batch of the tensor's shape."""
        a, b, c = self.axes
        ka, kb, kc = self.split(k)
        return self.ops.outer(self.ops.take(a, ka), self.ops.take(b, kb), self.ops.take(c, kc))

    def coverage(self, like: Tensor) -> Tensor:
        """How many windows cover each position, shaped like one sample (float64 counts cast)."""
        a, b, c = (t.astype(np.float64).sum(0)[None] for t in self.tables)
        ops = self.ops
        return ops.outer(ops.constant(a, like), ops.constant(b, like), ops.constant(c, like))[0]


@register_method("occlusion", "occlusion: score drop when a sliding window is filled")
class Occlusion(Ablating):
    """``mean over windows covering p of (s(x) - s(x_w))``: see the module docstring.

    ``window``/``stride``: an int, ``(h, w)`` (every channel at once) or ``(c, h, w)``. Defaults:
    a window of 1/8 of the height and width (at least 1 px) and a stride of half the window.
    Inputs of any other rank (tables ``[N, F]``, signals ``[N, C, L]``, volumes ``[N, C, D, H, W]``)
    and tuples of inputs take the same forms (one size per axis, or per axis after the channels;
    with several inputs a tuple of them, one per input, as Captum's ``sliding_window_shapes``)
    and run as ablations (:mod:`convscope.methods.ablation`): a window changes one input at a time.
    ``fill``: a number (default 0), a tensor broadcastable to one sample or to the whole batch
    (one fill per sample), or ``"blur"`` (a
    Gaussian blur with std ``sigma``, default a quarter of the window).

    ``incremental`` (PyTorch, attribution to the input): ``"auto"`` (default), True or False. A
    window changes only a cone of each layer's activations (its projective field), so the
    incremental path (:mod:`convscope.backends.torch.incremental`) runs the clean image once,
    keeps every layer's output, and recomputes each layer of an occluded copy only on the region
    the window can have changed, copying the rest: the same maps up to float32 rounding, at a
    fraction of the cost where windows are small against the image (VGG-16, 224 px, window 16:
    about 16% of the multiply-adds). It needs a model ``torch.fx`` can trace, without forward
    hooks; layers it has no local rule for (and all after them) run on whole maps. ``"auto"``
    takes it on the CPU where a window is predicted to cost at most 60% of a full pass and the
    work pays for the trace; True takes it wherever it applies; False never. Where it does not
    apply, the plain path runs. ``last_report`` tells which path the last call took, why, and
    per layer how it ran (None on Keras).

    ``adaptive`` (approximate, off by default): True or an :class:`~convscope.methods.adaptive.Adaptive`
    scores a coarse grid of the windows, then every window only in the cells of that grid where
    the score drop is highest, and interpolates the rest (:mod:`convscope.methods.adaptive`); its
    ``tau`` also caps how far a window's change spreads in each layer on the incremental path.
    ``last_report`` is then an :class:`~convscope.methods.adaptive.AdaptiveReport` (windows and
    multiply-adds saved; ``compare`` gives the SSIM to an exact map).
    Example: ``Occlusion(model, window=(3, 16, 16), stride=8).attribute(x, 3)``.
    """

    options = frozenset({"adaptive"})  # `convscope explain --adaptive`

    def __init__(self, model: Any, *, window: Size | None = None, stride: Size | None = None,
                 fill: Fill = 0.0, sigma: float | None = None, max_batch: MaxBatch = None,
                 incremental: bool | Literal["auto"] = "auto", adaptive: bool | Adaptive | None = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.window, self.stride = check_sizes(window, "window"), check_sizes(stride, "stride")
        if isinstance(fill, str) and fill != "blur":
            raise ConvscopeError(f"fill={fill!r} is not supported", "Use a number, a tensor or 'blur'.")
        if not (incremental is True or incremental is False or incremental == "auto"):
            raise ConvscopeError(f"incremental={incremental!r} is not supported",
                                 "Use incremental=True, False or 'auto' (the default).")
        self.fill, self.sigma, self.incremental = fill, sigma, incremental
        self.adaptive = as_adaptive(adaptive)
        self.last_report: Any = None

    def plan(self, shape: Sequence[int]) -> list[list[slice]]:
        """Per dimension of one sample of ``shape`` (C, H, W), the intervals the windows cover."""
        c, h, w = shape
        window = _per_dim(self.window, 2, "window") or (max(1, round(h / 8)), max(1, round(w / 8)))
        window = window if len(window) == 3 else (c, *window)
        stride = _per_dim(self.stride, 2, "stride") or tuple(max(1, v // 2) for v in window[1:])
        stride = stride if len(stride) == 3 else (window[0], *stride)
        return axis_windows(shape, window, stride)

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        ops = engine.ops
        value = engine.values(x, rows)
        inputs = engine.inputs
        if wrt is None and (ops.rank(value) != 4 or inputs is not None and len(inputs.shapes) > 1):
            return self._ablated(engine, x, rows, value)  # inputs of any rank, several inputs
        check_image(value, "Occlusion", ops, self.backend.image_layout)
        plan = self.plan((int(value.shape[ops.channel_axis]), *ops.spatial_shape(value)))
        sigma = self.sigma or max(max(s.stop - s.start for s in (plan[1][0], plan[2][0])) / 4, 0.5)
        fill = fill_values(self.fill, value, sigma, ops)
        masks = WindowMasks(plan, ops, like=value)
        n_windows, adaptive = len(masks), self.adaptive
        grid = None if adaptive is None else Grid(tuple(masks.counts), adaptive.factor)  # type: ignore[arg-type]
        scored = n_windows if grid is None else int(grid.coarse().sum() + adaptive.keep * n_windows)
        engine.evaluations(int(x.shape[0]) * (scored + 1) * numel(x))
        clean = engine.scores(x, rows, value)
        local = None
        self.last_report = None
        if self.incremental is not False:
            window = (max(s.stop - s.start for s in plan[1]), max(s.stop - s.start for s in plan[2]))
            local, self.last_report = engine.local(value, window, self.incremental,
                                                   None if adaptive is None else adaptive.tau)
        spans = [(np.array([s.start for s in axis]), np.array([s.stop for s in axis])) for axis in plan[1:]]

        def inputs(c: Chunk) -> tuple[Any, ...]:
            """The model's arguments for chunk ``c``: sample, value, fill, window axes, rows."""
            ka, kb, kc = masks.split(c.k)
            a, b, cc = masks.axes
            return (ops.take(x, c.sample), ops.take(value, c.sample), ops.take(fill, c.sample),
                    ops.take(a, ka), ops.take(b, kb), ops.take(cc, kc), engine.take_rows(rows, c))

        def box(c: Chunk) -> tuple[np.ndarray, ...]:
            _, hb, hc = masks.split(c.host_k)
            return spans[0][0][hb], spans[0][1][hb], spans[1][0][hc], spans[1][1][hc]

        if grid is not None:
            return self._adaptive(engine, grid, masks, value, clean, local, inputs, box)
        drops = engine.compiled(("occlusion",), self._drops)

        def evaluate(c: Chunk) -> list[Tensor]:
            args = (*inputs(c), [ops.take(s, c.sample) for s in clean])
            if local is None:
                return drops(*args)
            return self._local_drops(engine, local, c.host, box(c), *args)

        sums = engine.accumulate(int(x.shape[0]), n_windows, evaluate, like=value)
        coverage = masks.coverage(value)
        return [total / coverage for total in sums]

    def _ablated(self, engine: Engine, x: Tensor, rows: Rows, value: Tensor) -> list[Tensor]:
        """Occlusion of any rank or of several inputs, as ablations (:mod:`convscope.methods.ablation`)."""
        if self.adaptive is not None:
            raise ConvscopeError("adaptive occlusion needs one batch of images [N, C, H, W]",
                                 "Leave adaptive out for other inputs.")
        self.last_report = None
        return ablation_maps(self, engine, x, rows, value, occlusion_masks(engine, value, self.window, self.stride),
                             fills(self.fill, engine, value))

    def _adaptive(self, engine: Engine, grid: Grid, masks: WindowMasks, value: Tensor, clean: list[Tensor],
                  local: Any, inputs: Any, box: Any) -> list[Tensor]:
        """The adaptive maps (:mod:`convscope.methods.adaptive`): anchors scored, cells picked per
        sample and target, their windows scored, the rest interpolated, the maps assembled."""
        ops, settings = engine.ops, self.adaptive
        assert settings is not None
        n, per = int(value.shape[0]), grid.size
        scores = engine.compiled(("occlusion-scores",), self._scores)

        def drops(samples: np.ndarray, ks: np.ndarray) -> list[np.ndarray]:
            """Per target, the drop ``s(x) - s(x_w)`` of sample ``samples[i]`` under window ``ks[i]``."""
            if not len(ks):
                return [np.zeros(0, np.float32) for _ in clean]
            on_device = ops.constant(samples, like=value), ops.constant(ks, like=value)

            def run(c: Chunk) -> list[Tensor]:  # c's "samples" are pairs: one evaluation each
                pair = Chunk(ops.take(on_device[0], c.sample), ops.take(on_device[1], c.sample), samples[c.host],
                             ks[c.host])
                args = inputs(pair)
                if local is None:
                    got = scores(*args)
                else:
                    _, value_, fill_, a, b, cc, rows_ = args
                    got = local.scores(pair.host, _occluded(ops, value_, fill_, a, b, cc)[1], *box(pair), rows_)
                return [ops.stack([ops.detach(s)], axis=1) for s in got]

            found = engine.accumulate(len(ks), 1, run, like=value)
            return [ops.numpy(s)[samples] - ops.numpy(t)[:, 0] for s, t in zip(clean, found)]

        coarse = grid.coarse()
        anchor_ids = np.flatnonzero(coarse.ravel())
        samples = np.repeat(np.arange(n), len(anchor_ids))
        exact = [np.full((n, per), np.nan) for _ in clean]
        for t, d in enumerate(drops(samples, np.tile(anchor_ids, n))):
            exact[t][samples, np.tile(anchor_ids, n)] = d
        shape = (n, *grid.counts)
        anchor_shape = (grid.counts[0], len(grid.rows), len(grid.cols))
        chosen = [[grid.refined(e.reshape(shape)[i][coarse].reshape(anchor_shape), settings.keep) for i in range(n)]
                  for e in exact]
        wanted = np.stack([np.any([c[i] for c in chosen], 0) & ~coarse for i in range(n)]).reshape(n, per)
        samples, ks = np.nonzero(wanted)
        for t, d in enumerate(drops(samples, ks)):
            exact[t][samples, ks] = d
        maps = []
        for t, e in enumerate(exact):
            grids = e.reshape(shape)
            full = np.stack([np.where(chosen[t][i] | coarse, grids[i],
                                      grid.interpolated(grids[i][coarse].reshape(anchor_shape))) for i in range(n)])
            maps.append(engine.plan(torch.from_numpy(_assemble(full, masks.tables).astype(np.float32)), like=value))
        self.last_report = AdaptiveReport(
            settings, per, int(coarse.sum()), [int(coarse.sum() + wanted[i].sum()) for i in range(n)],
            len(grid.cells()), math.ceil(settings.keep * len(grid.cells())), incremental=self.last_report)
        return maps

    def _scores(self, engine: Engine, x: Tensor, value: Tensor, fill: Tensor, a: Tensor, b: Tensor, c: Tensor,
                rows: Rows) -> list[Tensor]:
        """Per target the scores ``s(x_w)`` of the occluded inputs of one chunk."""
        occluded = _occluded(engine.ops, value, fill, a, b, c)[1]
        return engine.forward(x, rows, replace=(engine.wrt, occluded), fast=True).scores

    def _drops(self, engine: Engine, x: Tensor, value: Tensor, fill: Tensor, a: Tensor, b: Tensor, c: Tensor,
               rows: Rows, clean: list[Tensor]) -> list[Tensor]:
        """Per target ``(s(x) - s(x_w)) * mask_w`` for the occluded inputs of one chunk."""
        covered, occluded = _occluded(engine.ops, value, fill, a, b, c)
        scores = engine.forward(x, rows, replace=(engine.wrt, occluded), fast=True).scores
        return _drop_maps(engine.ops, covered, value, clean, scores)

    def _local_drops(self, engine: Engine, local: Any, samples: np.ndarray, box: tuple[np.ndarray, ...],
                     x: Tensor, value: Tensor, fill: Tensor, a: Tensor, b: Tensor, c: Tensor, rows: Rows,
                     clean: list[Tensor]) -> list[Tensor]:
        """:meth:`_drops`, with the scores evaluated incrementally: each occluded input differs from
        its sample only inside its window's ``box`` (tops, bottoms, lefts, rights)."""
        covered, occluded = _occluded(engine.ops, value, fill, a, b, c)
        return _drop_maps(engine.ops, covered, value, clean, local.scores(samples, occluded, *box, rows))


def _occluded(ops: Ops, value: Tensor, fill: Tensor, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The windows' masks (outer products of their axes' intervals) and the occluded values."""
    covered = ops.outer(a, b, c)
    return covered, ops.where(covered, fill, value)


def _assemble(drops: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
    """Occlusion's maps from every window's drop (``drops [N, n_a, n_r, n_c]``, the windows'
    interval masks per axis ``tables``): per position the mean of the drops of the windows
    covering it, ``[N, C, H, W]`` (float64)."""
    a, b, c = (t.astype(np.float64) for t in tables)
    total = np.einsum("nabe,ac,bh,ew->nchw", drops, a, b, c, optimize=True)
    return total / np.einsum("ac,bh,ew->chw", a, b, c, optimize=True)


def _drop_maps(ops: Ops, covered: Tensor, value: Tensor, clean: list[Tensor], scores: list[Tensor]) -> list[Tensor]:
    """Per target the score drop ``clean - score`` of each row, on the row's covered positions."""
    return [ops.where(covered, ops.per_row(base - ops.detach(s), value), 0.0) for base, s in zip(clean, scores)]


def rise_masks(grid: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
    """Soft masks ``[b, 1, H, W]``: each coarse ``grid`` [b, 1, s, s] upsampled bilinearly to
    ``(s + 1)`` cells of ``ceil(H / s)`` px and cropped at its ``shifts`` [b, 2] (host) offset.

    The crops are slices on the CPU and one gather elsewhere (the faster of the two on each:
    BENCHMARKS.md, "RISE mask crops"); both copy the same values."""
    s = grid.shape[-1]
    cell_h, cell_w = math.ceil(size[0] / s), math.ceil(size[1] / s)
    up = F.interpolate(grid, size=((s + 1) * cell_h, (s + 1) * cell_w), mode="bilinear", align_corners=False)
    if up.device.type != "cpu":
        return gathered_crops(up, shifts, size)
    return torch.stack([up[i, :, dy:dy + size[0], dx:dx + size[1]] for i, (dy, dx) in enumerate(shifts.tolist())])


def gathered_crops(images: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
    """``images[i, :, dy_i:dy_i + H, dx_i:dx_i + W]`` for every ``i``, as one advanced-indexing
    gather (one kernel, no host loop): ``[b, C, Hi, Wi]``, ``shifts [b, 2]`` -> ``[b, C, H, W]``."""
    shifts = shifts.to(images.device)
    rows = (shifts[:, :1] + torch.arange(size[0], device=images.device))[:, None, :, None]
    cols = (shifts[:, 1:] + torch.arange(size[1], device=images.device))[:, None, None, :]
    batch = torch.arange(len(images), device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channels, rows, cols]


@register_method("rise", "RISE: score-weighted average of random soft masks")
class RISE(Method):
    """``1 / (M p) * sum_m s(x * mask_m + fill (1 - mask_m)) * mask_m``: see the module docstring.

    Defaults: 512 masks from a 7x7 grid with ``p = 0.5``, fill 0. The masks come from
    ``torch.Generator().manual_seed(seed)``: ``grid = rand(M, 1, cells, cells) < p``, then the
    shifts ``randint(cell, [M, 2])`` (y then x, ``cell = ceil(H / cells)``); every sample sees
    the same masks. The map holds the same value in every channel.
    Example: ``RISE(model, masks=1000, cells=8, max_batch=100).attribute(x, 3)``.
    """

    expands = True
    display = "relative"  # E[score | pixel kept]: near the mean score everywhere, only differences show

    def __init__(self, model: Any, *, masks: int = 512, cells: int = 7, p: float = 0.5, fill: float = 0.0,
                 seed: int = 0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        for name, v in (("masks", masks), ("cells", cells)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConvscopeError(f"{name}={v!r} must be a positive int", "For example masks=512, cells=7.")
        if not 0 < p <= 1:
            raise ConvscopeError(f"p={p!r} must be in (0, 1]", "p is the chance that a cell is kept, e.g. 0.5.")
        self.masks, self.cells, self.p, self.fill, self.seed = masks, cells, p, fill, seed

    def draws(self, size: tuple[int, int]) -> tuple[TorchTensor, TorchTensor]:
        """The coarse grids ``[M, 1, cells, cells]`` and shifts ``[M, 2]`` for images of ``size``."""
        g = torch.Generator().manual_seed(self.seed)
        grid = (torch.rand(self.masks, 1, self.cells, self.cells, generator=g) < self.p).float()
        cell = (math.ceil(size[0] / self.cells), math.ceil(size[1] / self.cells))
        shifts = torch.stack([torch.randint(cell[0], (self.masks,), generator=g),
                              torch.randint(cell[1], (self.masks,), generator=g)], 1)
        return grid, shifts

    def _compute(self, engine: Engine, x: Tensor, rows: Rows, targets: list[Target], wrt: Any) -> list[Tensor]:
        ops = engine.ops
        value = engine.values(x, rows)
        check_image(value, "RISE", ops, self.backend.image_layout)
        engine.evaluations(int(x.shape[0]) * self.masks * numel(x))
        size = ops.spatial_shape(value)
        grid, shifts = self.draws(size)
        grid = grid.to(engine.plan_device)
        count = self.masks
        weighted = engine.compiled(("rise",), self._weighted)

        def evaluate(c: Chunk) -> list[Tensor]:
            k = torch.from_numpy(c.host_k)
            mask = engine.plan(rise_masks(grid[k.to(grid.device)], shifts[k], size), like=value)
            return weighted(ops.take(x, c.sample), ops.take(value, c.sample), mask, engine.take_rows(rows, c))

        sums = engine.accumulate(int(x.shape[0]), count, evaluate, like=value)
        return [total / (count * self.p) + ops.zeros_like(value) for total in sums]

    def _weighted(self, engine: Engine, x: Tensor, value: Tensor, mask: Tensor, rows: Rows) -> list[Tensor]:
        """Per target ``s(fill + (value - fill) * mask) * mask`` for one chunk of masks."""
        ops = engine.ops
        masked = self.fill + (value - self.fill) * mask
        scores = engine.forward(x, rows, replace=(engine.wrt, masked), fast=True).scores
        return [ops.per_row(ops.detach(s), mask) * mask for s in scores]
