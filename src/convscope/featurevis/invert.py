"""Feature inversion (Mahendran and Vedaldi, 2015): an image whose representation at ``layer``
matches that of a given image, under a total-variation prior.

Find ``x`` maximizing ``-||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 - tv * TV_beta(x)`` (``phi`` the
layer's output, ``TV_beta`` :class:`~convscope.featurevis.objectives.TotalVariation` of the
normalized model input), starting from a random image: :func:`~convscope.featurevis.render.render`
with a :class:`~convscope.featurevis.objectives.Match` objective, no transforms by default.

Example::

    inv = invert(model, image, "features.1", steps=200, preprocess=zoo.preset("shapes-vgg"))
    inv.distance / inv.start_distance       # relative representation distance reached
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convscope.backends.torch.session import Session
from convscope.featurevis.objectives import Match, TotalVariation
from convscope.featurevis.params import ImageParam
from convscope.featurevis.render import Normalization, model_device, normalizer, render
from convscope.featurevis.transforms import Transform
from convscope.methods.base import check_input
from convscope.methods.batching import MaxBatch
from convscope.targets import LayerKey


@dataclass(frozen=True)
class Inversion:
    """``images`` ``[N, C, H, W]`` in ``[0, 1]``; ``history`` ``[steps, N]`` of the objective;
    ``start_distance`` and ``distance``: ``||phi(x) - phi(x0)|| / ||phi(x0)||`` per image, for the
    starting image and for the result."""

    images: Tensor
    history: Tensor
    start_distance: Tensor
    distance: Tensor


def representation_distance(model: nn.Module, layer: LayerKey, images: Tensor, reference: Tensor,
                            preprocess: Normalization | None = None) -> Tensor:
    """``||phi(x_n) - ref_n|| / ||ref_n||`` for each image ``x_n`` (pixels in ``[0, 1]``)."""
    with Session(model, layers=[layer]) as session:
        act = session.forward(normalizer(preprocess, images.device)(images), slice(0, len(images)),
                              grad=False).record.acts[layer]
    return Match(layer, reference).distance(act).sqrt()


def invert(model: nn.Module, image: Tensor, layer: LayerKey, *, steps: int = 200, tv: float = 1e-5,
           beta: float = 2.0, lr: float = 0.05, param: ImageParam | None = None, seed: int = 0,
           transforms: Transform | str | None = None, preprocess: Normalization | None = None,
           max_batch: MaxBatch = None, progress: bool = True) -> Inversion:
    """Invert the representation of ``image`` (``[N, C, H, W]`` pixels in ``[0, 1]``) at ``layer``.

    ``param`` defaults to an FFT, decorrelated-colour parameterization of the image's size;
    ``tv`` weighs the ``TV_beta`` prior (0 turns it off).
    """
    image = check_input(image).detach()
    device = model_device(model)
    with Session(model, layers=[layer]) as session:
        reference = session.forward(normalizer(preprocess, device)(image.to(device)), slice(0, len(image)),
                                    grad=False).record.acts[layer].detach()
    if param is None:
        param = ImageParam(tuple(image.shape), generator=torch.Generator().manual_seed(seed), device=device)
    start = param().detach()
    objective = Match(layer, reference) - tv * TotalVariation(beta) if tv else Match(layer, reference)
    result = render(model, objective, steps=steps, param=param, transforms=transforms, lr=lr, seed=seed,
                    max_batch=max_batch, preprocess=preprocess, progress=progress)
    return Inversion(images=result.images, history=result.history,
                     start_distance=representation_distance(model, layer, start, reference, preprocess),
                     distance=representation_distance(model, layer, result.images, reference, preprocess))


__all__ = ["Inversion", "invert", "representation_distance"]
