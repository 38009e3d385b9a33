"""Feature visualization: synthesize the inputs that excite a unit, by optimization.

- :mod:`~convscope.featurevis.params`: pixel / Fourier (1/f) / decorrelated-colour image parameterizations;
- :mod:`~convscope.featurevis.transforms`: seeded pad, jitter, scale, rotate;
- :mod:`~convscope.featurevis.objectives`: DeepDream, Diversity, Match and input penalties (Targets);
- :func:`render` (the optimize loop), :func:`dream` (DeepDream with octaves), :func:`invert`
  (Mahendran-Vedaldi feature inversion), :func:`class_visualizations`.

Nothing here displays or writes files unless asked.

Example::

    from convscope import featurevis, zoo
    model = zoo.load("shapes-vgg")
    result = featurevis.render(model, featurevis.channels("features.3", "0-15"), steps=128,
                               preprocess=zoo.preset("shapes-vgg"))
"""

from __future__ import annotations

from convscope.featurevis.classes import class_visualizations
from convscope.featurevis.dream import dream
from convscope.featurevis.invert import Inversion, invert
from convscope.featurevis.objectives import (
    L1,
    L2,
    Blur,
    DeepDream,
    Diversity,
    Match,
    TotalVariation,
    channels,
    parse_channels,
)
from convscope.featurevis.params import (
    IMAGENET_COLOUR_SQRT,
    ImageParam,
    colour_sqrt,
    image,
)
from convscope.featurevis.render import Rendered, render
from convscope.featurevis.transforms import (
    Compose,
    Jitter,
    Pad,
    RandomRotate,
    RandomScale,
    compose,
    standard,
)

__all__ = ["IMAGENET_COLOUR_SQRT", "L1", "L2", "Blur", "Compose", "DeepDream", "Diversity", "ImageParam", "Inversion",
           "Jitter", "Match", "Pad", "RandomRotate", "RandomScale", "Rendered", "TotalVariation", "channels",
           "class_visualizations", "colour_sqrt", "compose", "dream", "image", "invert", "parse_channels",
           "render", "standard"]
