"""Class visualizations: one image per class that the model classifies as that class.

Example::

    images, probs = class_visualizations(zoo.load("shapes-vgg"), zoo.preset("shapes-vgg"), steps=128)
    probs.diagonal()          # each image's probability of its own class
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from convscope.backends.torch.session import Session
from convscope.featurevis.objectives import LogSumExp, TotalVariation
from convscope.featurevis.render import Normalization, model_device, normalizer, render
from convscope.featurevis.transforms import Transform
from convscope.targets import Class


def class_probabilities(model: nn.Module, images: Tensor, preprocess: Normalization | None) -> Tensor:
    """``softmax(model(normalize(images)))``, ``[N, classes]`` (eval mode, no gradients)."""
    device = model_device(model)
    with Session(model) as session, torch.no_grad():
        logits = session.forward(normalizer(preprocess, device)(images.to(device)), slice(0, len(images)),
                                 grad=False).record.output
    return logits.float().softmax(1).cpu()


def class_visualizations(model: nn.Module, preprocess: Normalization, *, classes: list[int] | None = None,
                         steps: int = 128, lr: float = 0.05, tv: float = 1e-4, size: int | None = None,
                         transforms: Transform | str | None = "standard", seed: int = 0,
                         progress: bool = True) -> tuple[Tensor, Tensor]:
    """Render ``log p(k) - tv * TotalVariation()`` (``Class(k) - LogSumExp() - ...``) for each class
    ``k`` (default: all) in one batch. The log-probability, not the logit, is maximized: a logit can
    grow while a rival logit grows faster.

    Returns the images ``[K, 3, H, W]`` in ``[0, 1]`` (``H = W = size``, default
    ``preprocess.crop``) and ``softmax(model(image))``, ``[K, classes]``, on the final,
    untransformed images: row ``i`` is the ``i``-th image's class probabilities.
    """
    side = size or getattr(preprocess, "crop", None) or 128
    if classes is None:
        probe = torch.full((1, 3, side, side), 0.5)
        classes = list(range(class_probabilities(model, probe, preprocess).shape[1]))
    objective = Class(classes) - LogSumExp()
    if tv:
        objective = objective - tv * TotalVariation()
    result = render(model, objective, batch=len(classes), steps=steps, size=side, lr=lr, transforms=transforms,
                    seed=seed, preprocess=preprocess, progress=progress)
    return result.images, class_probabilities(model, result.images, preprocess)


__all__ = ["class_probabilities", "class_visualizations"]
