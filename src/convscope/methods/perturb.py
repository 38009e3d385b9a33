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

Both work on ``[N, C, H, W]`` tensors: the input, or a layer's output with ``wrt=layer``.

Example::

    maps = Occlusion(model, window=16, stride=8, fill="blur", max_batch=64).attribute(x, 3)
    maps = RISE(model, masks=1000, seed=0).attribute(x, targets=[3, 5])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.backends.torch.probes import LayerKey
from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.methods.base import Attributed, MaxBatch, Method, Rows, row_index
from convscope.methods.batching import Batches, expansion_rows
from convscope.methods.registry import register_method
from convscope.targets import Target

Fill = float | Tensor | Literal["blur"]
Size = int | Sequence[int]


def check_image(value: Tensor, method: str) -> None:
    """A clear error unless ``value`` is ``[N, C, H, W]``."""
    if value.dim() != 4:
        raise ConvscopeError(f"{method} needs [N, C, H, W] tensors, got {list(value.shape)}",
                             "Attribute to an image input or to a convolutional layer (wrt='...').")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Each channel of ``x`` [N, C, H, W] blurred by a Gaussian of std ``sigma`` (reflected edges)."""
    radius = max(1, min(math.ceil(3 * sigma), min(x.shape[2:]) - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def fill_values(fill: Fill, value: Tensor, sigma: float) -> Tensor:
    """What replaces the occluded parts, broadcastable to ``value`` [N, C, H, W]."""
    if isinstance(fill, str):
        if fill != "blur":
            raise ConvscopeError(f"fill={fill!r} is not supported", "Use a number, a tensor or 'blur'.")
        return gaussian_blur(value, sigma)
    if isinstance(fill, Tensor):
        f = fill.to(value.device, value.dtype)
        try:
            torch.broadcast_shapes(f.shape, value.shape[1:])
        except RuntimeError:
            raise ConvscopeError(f"the fill {list(f.shape)} does not broadcast to one sample {list(value.shape[1:])}",
                                 "Give a number or a tensor shaped like one sample (or broadcastable).") from None
        return f.unsqueeze(0)
    return torch.tensor(float(fill), dtype=value.dtype, device=value.device).reshape(1, 1, 1, 1)


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


class WindowMasks:
    """The occlusion windows as boolean masks, made on the device a batch at a time.

    Window ``k`` (in :func:`windows` order) covers ``A[k0] x B[k1] x C[k2]`` with ``(k0, k1, k2)``
    its row-major index over the per-dimension intervals, so its mask is the outer product of
    three interval masks: one broadcast ``&`` per batch instead of one slice write per window.

    Example::

        masks = WindowMasks(axis_windows([3, 8, 8], [3, 4, 4], [3, 2, 2]), x.device)
        masks(torch.arange(5))  # [5, 3, 8, 8] bool, window k's cells True
    """

    def __init__(self, axes: list[list[slice]], device: torch.device) -> None:
        sizes = [max(s.stop for s in dim) for dim in axes]
        self.counts = [len(dim) for dim in axes]
        self.axes = []
        for dim, size in zip(axes, sizes, strict=True):
            mask = torch.zeros(len(dim), size, dtype=torch.bool)
            for i, interval in enumerate(dim):
                mask[i, interval] = True
            self.axes.append(mask.to(device))

    def __len__(self) -> int:
        return math.prod(self.counts)

    def __call__(self, k: Tensor) -> Tensor:
        """``[len(k), C, H, W]``: the masks of windows ``k``."""
        c_count, h_count, w_count = self.counts
        k = k.to(self.axes[0].device)
        a, b, c = self.axes
        return (a[k // (h_count * w_count)][:, :, None, None] & b[(k // w_count) % h_count][:, None, :, None]
                & c[k % w_count][:, None, None, :])

    def coverage(self) -> Tensor:
        """``[C, H, W]``: how many windows cover each position."""
        a, b, c = (m.to(torch.float64).sum(0) for m in self.axes)  # per axis: windows covering each index
        return a[:, None, None] * b[None, :, None] * c[None, None, :]


@register_method("occlusion", "occlusion: score drop when a sliding window is filled")
class Occlusion(Method):
    """``mean over windows covering p of (s(x) - s(x_w))``: see the module docstring.

    ``window``/``stride``: an int, ``(h, w)`` (every channel at once) or ``(c, h, w)``. Defaults:
    a window of 1/8 of the height and width (at least 1 px) and a stride of half the window.
    ``fill``: a number (default 0), a tensor broadcastable to one sample, or ``"blur"`` (a
    Gaussian blur with std ``sigma``, default a quarter of the window).
    Example: ``Occlusion(model, window=(3, 16, 16), stride=8).attribute(x, 3)``.
    """

    expands = True

    def __init__(self, model: nn.Module, *, window: Size | None = None, stride: Size | None = None,
                 fill: Fill = 0.0, sigma: float | None = None, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        self.window, self.stride = _per_dim(window, 2, "window"), _per_dim(stride, 2, "stride")
        if isinstance(fill, str) and fill != "blur":
            raise ConvscopeError(f"fill={fill!r} is not supported", "Use a number, a tensor or 'blur'.")
        self.fill, self.sigma = fill, sigma

    def plan(self, shape: Sequence[int]) -> list[list[slice]]:
        """Per dimension of one sample of ``shape`` (C, H, W), the intervals the windows cover."""
        c, h, w = shape
        window = self.window or (max(1, round(h / 8)), max(1, round(w / 8)))
        window = window if len(window) == 3 else (c, *window)
        stride = self.stride or tuple(max(1, v // 2) for v in window[1:])
        stride = stride if len(stride) == 3 else (window[0], *stride)
        return axis_windows(shape, window, stride)

    def _compute(self, session: Session, x: Tensor, rows: Rows, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        space, batches, glob = Attributed(session, wrt), Batches(self.max_batch, x.device), row_index(rows, len(x))
        value = space.values(x, glob, batches)
        check_image(value, "Occlusion")
        plan = self.plan(value.shape[1:])
        sigma = self.sigma or max(max(s.stop - s.start for s in (plan[1][0], plan[2][0])) / 4, 0.5)
        fill = fill_values(self.fill, value, sigma).expand_as(value)
        masks = WindowMasks(plan, value.device)
        n_windows = len(masks)
        space.evaluate_on_twin(len(x) * (n_windows + 1) * x[0].numel())
        clean = space.scores(x, glob, value, targets, batches)
        sums = [torch.zeros_like(value) for _ in targets]

        def evaluate(items: slice) -> tuple[Tensor, Tensor, list[Tensor]]:
            host, on, window = expansion_rows(items, n_windows, value.device)
            covered = masks(window)
            occluded = torch.where(covered, fill[on], value[on])
            record = space.forward(x[on], glob[host], occluded, grad=False).record
            return on, covered, [t.score(record).detach() for t in targets]

        clean = [c.to(value.device, value.dtype) for c in clean]
        for _, (on, covered, scores) in batches.map(len(x) * n_windows, evaluate):
            for total, base, score in zip(sums, clean, scores):
                drop = base[on] - score.to(value.device, value.dtype)
                total.index_add_(0, on, drop.reshape(-1, 1, 1, 1) * covered)
        return [total / masks.coverage().to(value) for total in sums]


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

    def __init__(self, model: nn.Module, *, masks: int = 512, cells: int = 7, p: float = 0.5, fill: float = 0.0,
                 seed: int = 0, max_batch: MaxBatch = None) -> None:
        super().__init__(model, max_batch=max_batch)
        for name, v in (("masks", masks), ("cells", cells)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConvscopeError(f"{name}={v!r} must be a positive int", "For example masks=512, cells=7.")
        if not 0 < p <= 1:
            raise ConvscopeError(f"p={p!r} must be in (0, 1]", "p is the chance that a cell is kept, e.g. 0.5.")
        self.masks, self.cells, self.p, self.fill, self.seed = masks, cells, p, fill, seed

    def draws(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The coarse grids ``[M, 1, cells, cells]`` and shifts ``[M, 2]`` for images of ``size``."""
        g = torch.Generator().manual_seed(self.seed)
        grid = (torch.rand(self.masks, 1, self.cells, self.cells, generator=g) < self.p).float()
        cell = (math.ceil(size[0] / self.cells), math.ceil(size[1] / self.cells))
        shifts = torch.stack([torch.randint(cell[0], (self.masks,), generator=g),
                              torch.randint(cell[1], (self.masks,), generator=g)], 1)
        return grid, shifts

    def _compute(self, session: Session, x: Tensor, rows: Rows, targets: list[Target],
                 wrt: LayerKey | None) -> list[Tensor]:
        space, batches, glob = Attributed(session, wrt), Batches(self.max_batch, x.device), row_index(rows, len(x))
        value = space.values(x, glob, batches)
        check_image(value, "RISE")
        space.evaluate_on_twin(len(x) * self.masks * x[0].numel())
        size = (value.shape[2], value.shape[3])
        grid, shifts = self.draws(size)
        grid = grid.to(value)
        sums = [torch.zeros(len(x), 1, *size, dtype=value.dtype, device=value.device) for _ in targets]
        count = self.masks

        def evaluate(items: slice) -> tuple[Tensor, Tensor, list[Tensor]]:
            idx = torch.arange(items.start, items.stop)
            sample, m = idx // count, idx % count
            mask = rise_masks(grid[m.to(grid.device)], shifts[m], size)
            masked = self.fill + (value[sample] - self.fill) * mask
            record = space.forward(x[sample], glob[sample], masked, grad=False).record
            return sample, mask, [t.score(record).detach() for t in targets]

        for _, (sample, mask, scores) in batches.map(len(x) * count, evaluate):
            for total, score in zip(sums, scores):
                total.index_add_(0, sample.to(total.device), score.reshape(-1, 1, 1, 1).to(mask) * mask)
        return [(total / (count * self.p)).expand_as(value).clone() for total in sums]
