"""What every metric checks at its edge: inputs, maps and classes, as channels-first torch tensors.

Metrics compute on torch tensors ``[N, C, *space]`` whatever the model's framework: a Keras
model's inputs and maps (channels-last, numpy or tf) are moved to channels-first here, once, and
:class:`~convscope.evaluate.scoring.ClassScores` moves inputs back inside its calls.

- :func:`as_inputs`: ``x`` as float ``[N, C, *space]``;
- :func:`as_maps`: maps with one channel or ``C`` channels and ``x``'s spatial size (else a clear
  error naming both shapes);
- :func:`as_classes`: an int, a sequence or a tensor of class indices as ``[N]`` int64;
- :func:`attribute`: a method's maps of a channels-first batch, channels-first;
- :func:`one_channel`: ``[N, 1, *space]``, the channels summed (``absolute=True``: their absolute
  values summed, Adebayo et al.'s "absolute" maps).

Example::

    x = as_inputs(images, model)
    maps = as_maps(GradCAM(model).attribute(x, 3), x, model)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from convscope.backends.dispatch import framework_of
from convscope.errors import ConvscopeError


def as_array(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
    except (TypeError, ValueError) as error:
        raise ConvscopeError(f"the {what} are a {type(value).__name__}, not an array",
                             f"Pass the {what} as a torch tensor or a numpy array.") from error


def _first(t: Tensor, model: Any) -> Tensor:
    """Channels-first ``t`` (a Keras model's arrays are channels-last)."""
    if framework_of(model) == "tf" and t.dim() >= 3:
        return t.movedim(-1, 1)
    return t


def as_inputs(x: Any, model: Any) -> Tensor:
    """``x`` as a float ``[N, C, *space]`` torch tensor (channels-first for either framework)."""
    t = _first(as_array(x, "inputs"), model)
    if t.dim() < 2 or t.shape[0] == 0:
        raise ConvscopeError(f"the inputs have shape {list(t.shape)}; a metric needs a batch of samples",
                             "Give at least one sample with its batch dimension, e.g. x.unsqueeze(0).")
    return t if t.is_floating_point() else t.float()


def as_maps(maps: Any, x: Tensor, model: Any) -> Tensor:
    """``maps`` as float ``[N, 1 or C, *space]`` matching ``x`` (channels-first), else a clear error."""
    m = _first(as_array(maps, "maps"), model)
    if m.dim() == x.dim() - 1:
        m = m.unsqueeze(1)
    fits = m.dim() == x.dim() and m.shape[0] == x.shape[0] and m.shape[2:] == x.shape[2:] \
        and m.shape[1] in (1, x.shape[1])
    if not fits:
        raise ConvscopeError(f"maps of shape {list(m.shape)} do not fit inputs of shape {list(x.shape)}",
                             "Give one map per input sample at the input's size, with one channel or the "
                             "input's channels (CAM maps come at the input size from convscope's methods).")
    m = m.float()
    if not bool(torch.isfinite(m).all()):
        raise ConvscopeError("the maps contain NaN or infinite values", "Check the attribution that made them.")
    return m.to(x.device)


def as_classes(targets: Any, n: int) -> Tensor:
    """Class indices for ``n`` samples as int64 ``[n]`` (one int is every sample's class)."""
    t = torch.as_tensor(targets.detach().cpu() if isinstance(targets, Tensor) else np.asarray(targets))
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or len(t) != n or t.is_floating_point() or t.dtype == torch.bool:
        raise ConvscopeError(f"the targets {t.tolist() if t.numel() <= 8 else list(t.shape)} are not {n} class indices",
                             f"Give one int, or {n} class indices (one per sample), e.g. model(x).argmax(1).")
    if bool((t < 0).any()):
        raise ConvscopeError("a target class index is negative", "Give class indices >= 0.")
    return t.long()


def attribute(method: Any, x: Tensor, classes: Tensor) -> Tensor:
    """``method``'s maps of the channels-first batch ``x`` for ``classes``, channels-first on the CPU
    (a Keras model gets ``x`` channels-last and its maps come back transposed)."""
    given = x if framework_of(method.model) != "tf" else np.ascontiguousarray(x.movedim(1, -1).cpu().numpy())
    return as_maps(method.attribute(given, classes.tolist()), x, method.model).cpu()


def one_channel(maps: Tensor, absolute: bool = False) -> Tensor:
    """``[N, 1, *space]``: the channels of ``maps`` summed (``absolute``: ``sum_c |m_c|``)."""
    return (maps.abs() if absolute else maps).sum(1, keepdim=True)
