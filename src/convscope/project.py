"""Project a channel's strongest activations back to pixel space, Zeiler-Fergus style.

For each image, the ``top`` strongest units ``a_k`` of feature map ``channel`` of ``layer`` are
found (ties in row-major order); projection ``k`` seeds the layer with ``a_k`` at that unit and
zero everywhere else (``MaxNeuron(layer, channel, rank=k)``) and sends it down by ``rule``:

- ``"deconvnet"``: the deconvnet rule at every ReLU (:class:`~convscope.methods.DeconvNet`)
- ``"guided"``: guided backprop (:class:`~convscope.methods.GuidedBackprop`)
- ``"gradient"``: the plain gradient (:class:`~convscope.methods.Saliency`)

All ``top`` projections share one forward pass per chunk of ``max_batch`` images.
Behind ``convscope project MODEL IMAGE --layer L --channel C [--rule R] [--top N]``.

Example::

    p = project(model, x, "features.12", 7, top=3)
    p.maps.shape       # [N, 3, C, H, W]
    p.positions[0, 0]  # (row, column) of image 0's strongest unit
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convscope.backends.torch.session import Session
from convscope.errors import ConvscopeError
from convscope.methods.base import check_input, chunks
from convscope.methods.gradient import DeconvNet, GradientMethod, GuidedBackprop, Saliency
from convscope.targets import MaxNeuron, strongest

RULES: dict[str, type[GradientMethod]] = {"deconvnet": DeconvNet, "guided": GuidedBackprop, "gradient": Saliency}


@dataclass(frozen=True)
class Projection:
    """``maps[n, k]``: the projection of image ``n``'s ``k``-th strongest unit (shaped like the
    image); ``values[n, k]`` its activation; ``positions[n, k]`` its spatial coordinates."""

    maps: Tensor
    values: Tensor
    positions: Tensor
    layer: str
    channel: int
    rule: str


def project(model: nn.Module, x: Tensor, layer: str, channel: int, rule: str = "deconvnet", top: int = 1,
            *, max_batch: int | None = None) -> Projection:
    """The pixel-space projections of the ``top`` strongest units of ``layer``'s feature map ``channel``."""
    if rule not in RULES:
        raise ConvscopeError(f"rule={rule!r} is not a projection rule", f"Use one of {', '.join(map(repr, RULES))}.")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConvscopeError(f"top={top!r} must be a positive int", "top=1 projects the strongest unit only.")
    x = check_input(x)
    targets = [MaxNeuron(layer, channel, rank=k) for k in range(top)]
    method = RULES[rule](model, max_batch=max_batch)
    values, flat, space = _strongest_units(model, x, targets[0], top, max_batch)
    maps = method.attribute(x, targets=targets)
    return Projection(maps=torch.stack(maps, 1), values=values, positions=_unravel(flat, space),
                      layer=layer, channel=channel, rule=rule)


def _strongest_units(model: nn.Module, x: Tensor, target: MaxNeuron, top: int,
                     max_batch: int | None) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """The ``top`` strongest values of the feature map, their flat positions and the spatial shape."""
    values, flat = [], []
    space: tuple[int, ...] = ()
    with Session(model, layers=[target.layer]) as session, torch.no_grad():
        for rows in chunks(x.shape[0], max_batch):
            record = session.forward(x[rows], rows, grad=False).record
            space = tuple(record.acts[target.layer].shape[2:])
            v, i = strongest(target.feature_map(record), top)
            values.append(v)
            flat.append(i)
    return torch.cat(values), torch.cat(flat), space


def _unravel(flat: Tensor, space: tuple[int, ...]) -> Tensor:
    """Flat row-major positions -> coordinates, shape ``[*flat.shape, len(space)]``."""
    coords = []
    for size in reversed(space):
        coords.append(flat % size)
        flat = torch.div(flat, size, rounding_mode="floor")
    return torch.stack(coords[::-1], -1) if coords else flat.new_zeros(*flat.shape, 0)
