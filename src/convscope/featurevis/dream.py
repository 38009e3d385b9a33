"""DeepDream (Mordvintsev et al., 2015) with octaves, on a given image.

The image is processed from coarse to fine: at octave ``k`` (of ``octaves``) it is resized by
``octave_scale ** -(octaves - 1 - k)``, the *detail* found so far is upsampled and added, and
``steps`` of :func:`~convscope.featurevis.render.render` maximize the objective (default
:class:`~convscope.featurevis.objectives.DeepDream`, the mean squared activation of ``layer``)
on a pixel parameterization started at that image; the new detail is the result minus the
resized original. Coarse octaves grow large patterns, fine ones add texture.

With ``input_size`` set, each octave's image is resized to it before the model sees it (for
models with a fixed input size, such as the zoo's ``shapes-vgg``); otherwise the model sees
each octave at its own size.

Example::

    dreamt = dream(model, image, "features.4", octaves=3, steps=20, preprocess=zoo.preset("shapes-vgg"),
                   input_size=64)
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from convscope.errors import ConvscopeError
from convscope.featurevis.objectives import DeepDream
from convscope.featurevis.params import ImageParam
from convscope.featurevis.render import Normalization, as_module, model_device, render
from convscope.featurevis.transforms import Jitter, Pad, Resize, compose
from convscope.methods.base import check_input
from convscope.methods.batching import MaxBatch
from convscope.targets import LayerKey, Target


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def dream(model: Any, image: Tensor, layer: LayerKey | Target, *, octaves: int = 3, octave_scale: float = 1.4,
          steps: int = 20, lr: float = 0.004, jitter: int = 2, seed: int = 0, input_size: int | None = None,
          preprocess: Normalization | None = None, max_batch: MaxBatch = None, progress: bool = True) -> Tensor:
    """The dreamt image(s), same shape as ``image`` (``[N, C, H, W]`` or ``[C, H, W]`` pixels in
    ``[0, 1]``, never modified), for a torch module or a Keras ``model``. ``layer`` names the layer to amplify, or is any objective.
    ``jitter``: each step sees a random shift by up to ``jitter`` pixels (reflect-padded).
    """
    single = isinstance(image, Tensor) and image.dim() == 3
    x = check_input(image[None] if single else image).detach()
    if x.dim() != 4:
        raise ConvscopeError(f"dream needs images [N, C, H, W] or [C, H, W], got shape {list(x.shape)}",
                             "Pass one image [3, H, W] or a batch.")
    if isinstance(octaves, bool) or not isinstance(octaves, int) or octaves < 1 or not octave_scale >= 1:
        raise ConvscopeError(f"octaves={octaves!r} and octave_scale={octave_scale!r} must be >= 1",
                             "Write e.g. octaves=3, octave_scale=1.4.")
    objective = layer if isinstance(layer, Target) else DeepDream(layer)
    x = x.to(model_device(as_module(model)))  # a Keras model: the CPU
    h, w = x.shape[-2:]
    sizes = [(max(1, round(h / octave_scale ** k)), max(1, round(w / octave_scale ** k)))
             for k in reversed(range(octaves))]
    steps_t = [Pad(jitter, value=None), Jitter(2 * jitter)] if jitter else []
    detail = x.new_zeros(x.shape[0], x.shape[1], *sizes[0])
    result = x
    for k, size in enumerate(sizes):
        base = _resize(x, size)
        start = (base + _resize(detail, size)).clamp(0, 1)
        param = ImageParam.from_image(start, fft=False, decorrelate=False, valid="clamp")
        transforms = compose(*steps_t, *([Resize(input_size)] if input_size else []))
        result = render(model, objective, steps=steps, param=param, transforms=transforms, lr=lr, seed=seed + k,
                        max_batch=max_batch, preprocess=preprocess, progress=progress).images
        detail = result - base
    return result[0] if single else result


__all__ = ["dream"]
