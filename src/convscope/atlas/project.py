"""Projections of given single activations back to input space, many (image, unit) pairs per pass.

The atlas's fast path beside :func:`convscope.projection.project`, the one entry point for
"project a unit to pixels" (the ``top`` strongest units of chosen channels, PyTorch and Keras).
Here the units are given - thousands, each with its own image and channel, found by the mining
pass, which ranks units as ``project`` does - and projected with the same seed and the same rule
table (:func:`convscope.projection.rule_map`), on PyTorch models, by a faster algorithm: one row
per pair, the forward pass cut at the layer, exact crops.

For a pair ``(image n, unit u = (c, y, x))`` of layer ``L`` with activation ``a = act_L[n, u]``
the score is ``a**2 / 2``, so the seed planted in ``L`` is ``a`` at ``u`` and zero elsewhere -
the Zeiler-Fergus "one activation, others zeroed" - and the projection is its signal at the
input under a backward rule: ``deconvnet`` (DeconvReLU), ``guided`` (GuidedReLU) or
``gradient`` (plain autograd). Pairs are stacked as rows of one batch (an image may repeat),
each row selecting its own unit, so one forward and one backward serve ``max_batch`` pairs;
rows never interact, so results do not depend on ``max_batch``.

**Crops.** When ``layer`` sits on a plain conv/pool chain (its receptive field is read from the
graph), each row is not the whole image but the unit's exact crop (:mod:`convscope.atlas.crop`:
aligned to the chain's stride grid, keeping the image border where the chain pads): nothing
outside it reaches the unit, so the projection computed on the crop and pasted into a zero
image is the full one, at a fraction of the cost. Otherwise (measured fields, normalisations
over the whole map, fields as large as the image) rows are whole images. When ``layer`` is a
plain convolution, the forward pass stops at its input and only the selected units are
evaluated (one dot product each), not the whole map.

Example::

    maps = project_units(model, "features.3", images, channels, coords, method="deconvnet", max_batch=64)
    # maps[i] is the input-space projection of unit (channels[i], *coords[i]) of image images[i]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.atlas.crop import windows
from convscope.atlas.receptive import Field, receptive_field
from convscope.backends.torch.rule_mode import apply_rules
from convscope.backends.torch.session import eval_mode
from convscope.errors import ConvscopeError
from convscope.layers import resolve_layer
from convscope.methods.base import check_max_batch
from convscope.methods.batching import Batches, MaxBatch
from convscope.projection import rule_map
from convscope.rules import RuleMap


def project_units(model: nn.Module, layer: str | nn.Module, images: Tensor, channels: Sequence[int] | Tensor,
                  coords: Sequence[Sequence[int]] | Tensor | np.ndarray, *, method: str = "deconvnet",
                  max_batch: MaxBatch = 64, crop: bool = True, field: Field | None = None) -> Tensor:
    """Row ``i``: the projection of unit ``(channels[i], *coords[i])`` of ``layer`` for input ``images[i]``.

    ``images`` is ``[P, C, H, W]`` (one row per pair), ``coords`` ``[P, spatial dims]``.
    Returns ``[P, C, H, W]``. The forward pass stops at ``layer``: later layers cannot change
    the projection, and an in-place op after the layer cannot touch the recorded output.
    ``crop=False`` runs whole images (see module doc); ``field`` is the layer's
    :func:`~convscope.atlas.receptive.receptive_field` for these images, if already known.
    """
    rules = rule_map(method, option="method")
    max_batch = check_max_batch(max_batch)
    channels = torch.as_tensor(np.asarray(channels), dtype=torch.long).reshape(-1)
    coords = torch.as_tensor(np.asarray(coords), dtype=torch.long).reshape(len(channels), -1)
    if images.shape[0] != len(channels):
        raise ConvscopeError(f"{images.shape[0]} images for {len(channels)} units", "Give one image row per unit.")
    module = resolve_layer(model, layer)
    win = _crop_windows(model, module, images, coords, field) if crop else None
    out = torch.zeros_like(images, dtype=torch.float32)
    with _projector(model, module, layer, rules) as project:
        def run(rows: slice) -> None:
            if win is None:
                out[rows] = project(images[rows], channels[rows], coords[rows])
            else:  # each row cut to its unit's window, projected, pasted back
                inside = torch.from_numpy(win[rows, 2 * coords.shape[1]:])  # the unit's place in its window
                (cut, index), (paste, _) = _window_view(images, win, rows), _window_view(out, win, rows)
                paste[index] = project(cut[index], channels[rows], inside)

        for _ in Batches(max_batch, images.device).map(images.shape[0], run):
            pass
    return out


def _window_view(t: Tensor, win: np.ndarray, rows: slice) -> tuple[Tensor, tuple]:
    """A strided view of ``t`` [N, C, *space] as every window of ``win``'s size and the index
    that picks each row's own window: ``view[index]`` is ``[rows, C, *window]`` (no copy until
    indexed; writable). ``win`` rows ``[a_0, b_0, a_1, b_1, ...]`` share one size."""
    part = win[rows]
    view, index = t, [torch.arange(rows.start, rows.stop), slice(None)]
    for d in range(win.shape[1] // 3):
        starts = part[:, 2 * d]
        step = max(int(np.gcd.reduce(win[:, 2 * d])), 1)
        view = view.unfold(2 + d, int(win[0, 2 * d + 1] - win[0, 2 * d]), step)
        index.append(torch.from_numpy(starts // step))
    return view, tuple(index)


def _crop_windows(model: nn.Module, module: nn.Module, images: Tensor, coords: Tensor,
                  field: Field | None) -> np.ndarray | None:
    """:func:`convscope.atlas.crop.windows` of the units, or None where cropping is not exact or saves nothing."""
    if any(_global_norm(m) for m in model.modules()):
        return None  # it normalises over the whole map (or batch): a crop changes its statistics
    if field is None:
        field = receptive_field(model, module, images.shape[1:])
    if len(field.size) != coords.shape[1] or tuple(field.size) != tuple(images.shape[2:]):
        return None
    return windows(field, coords.numpy())


def _global_norm(module: nn.Module) -> bool:
    """Instance norm, or batch norm without running statistics: not a per-position map."""
    return isinstance(module, nn.modules.instancenorm._InstanceNorm) or \
        (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is None)


class _Reached(BaseException):
    """Raised by the layer's hook to end the forward pass there (nothing after it matters)."""


Project = Callable[[Tensor, Tensor, Tensor], Tensor]


def _at_units(act: Tensor, channels: Tensor, coords: Tensor) -> Tensor:
    """``act[i, channels[i], *coords[i]]`` for every row ``i``."""
    return act[(torch.arange(act.shape[0], device=act.device), channels.to(act.device),
                *coords.to(act.device).unbind(1))]


def _plain_conv(module: nn.Module) -> nn.modules.conv._ConvNd | None:
    """``module`` if it is a plain convolution (zero or no padding, one group), which
    :func:`_conv_at` can stand in for; else None."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1 \
            and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return module
    return None


def _conv_at(conv: nn.modules.conv._ConvNd, z: Tensor, channels: Tensor, coords: Tensor) -> Tensor:
    """``conv(z)[i, channels[i], *coords[i]]`` for every row ``i``, without the rest of the map:

        a_i = b[c] + sum over (cin, j) of W[c, cin, j] * pad(z)[i, cin, stride*u + dilation*j]

    (``c = channels[i]``, ``u = coords[i]``, per spatial axis). The same value up to rounding;
    the projection then skips the layer's whole forward map and its transposed convolution.
    """
    dims, rows = z.dim() - 2, len(z)
    coords = coords.to(z.device)
    padded = F.pad(z, [p for q in reversed(conv.padding) for p in (q, q)])
    ones = [1] * dims
    index = [torch.arange(rows, device=z.device).view(rows, 1, *ones),
             torch.arange(z.shape[1], device=z.device).view(1, -1, *ones)]
    for e, (k, stride, dilation) in enumerate(zip(conv.kernel_size, conv.stride, conv.dilation)):
        at = coords[:, e, None] * stride + dilation * torch.arange(k, device=z.device)  # [rows, k]
        index.append(at.view(rows, 1, *[k if f == e else 1 for f in range(dims)]))
    channels = channels.to(z.device)
    a = (padded[tuple(index)] * conv.weight[channels]).flatten(1).sum(1)
    return a if conv.bias is None else a + conv.bias[channels]


@contextmanager
def _projector(model: nn.Module, module: nn.Module, layer: str | nn.Module, rules: RuleMap) -> Iterator[Project]:
    """Within the block, ``project(images, channels, coords)`` projects one unit per row (eval
    mode, the backward rules and a hook ending each forward pass at the layer; all undone on exit).

    A plain convolution layer is not run at all: the forward pass stops at its input and only
    the selected units are evaluated (:func:`_conv_at`); other layers stop after their output.
    """
    found: list[object] = []
    conv = _plain_conv(module)

    def reached(_module: nn.Module, inputs: tuple, *output: object) -> None:
        found.append(inputs[0] if conv is not None else output[0])
        raise _Reached

    def project(images: Tensor, channels: Tensor, coords: Tensor) -> Tensor:
        # channels-last: the layout CPU convolutions and max-pools are fastest in (same values)
        layout = torch.channels_last if images.dim() == 4 else torch.contiguous_format
        leaf = images.detach().clone(memory_format=layout).requires_grad_()
        found.clear()
        try:
            model(leaf)
        except _Reached:
            pass
        seen = found[0] if found else None
        if not isinstance(seen, Tensor):
            raise ConvscopeError(f"layer {layer!r} did not produce a tensor in the forward pass",
                                 "Pick a convolutional layer the model's forward calls.")
        a = _conv_at(conv, seen, channels, coords) if conv is not None else _at_units(seen, channels, coords)
        (grad,) = torch.autograd.grad((0.5 * a * a).sum(), leaf)
        return grad.detach()

    with ExitStack() as stack:
        hook = module.register_forward_pre_hook(reached) if conv is not None else module.register_forward_hook(reached)
        stack.callback(hook.remove)
        stack.enter_context(eval_mode(model))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        if not rules.is_gradient:
            stack.enter_context(apply_rules(model, rules))
        yield project
