"""Attribution methods over one template (:class:`Method`), found by name in a registry.

Each method is written once and runs on PyTorch and Keras models (:mod:`convscope.backends.protocol`).
A method registered with :func:`register_method` (yours too) is also an attribute here and at the
top level (``convscope.MyMethod``), an option of ``convscope explain --method`` and a row of the
demo's methods sheet: see ``docs/adding-a-method.md``.

Example::

    from convscope.methods import GuidedBackprop, get_method
    maps = GuidedBackprop(model).attribute(x, 3)             # shaped like x
    maps = get_method("deconvnet")(model).attribute(x, targets=[3, 5])
"""

from convscope.methods.base import Method, display_kind
from convscope.methods.gradient import DeconvNet, GradientMethod, GuidedBackprop, InputXGradient, Saliency
from convscope.methods.registry import MethodInfo, by_class_name, get_method, methods, register_method

__all__ = ["DeconvNet", "GradientMethod", "GuidedBackprop", "InputXGradient", "Method", "MethodInfo", "Saliency",
           "display_kind", "get_method", "methods", "register_method"]

from convscope.methods.path import GradientSHAP, IntegratedGradients  # noqa: E402
from convscope.methods.adaptive import Adaptive  # noqa: E402
from convscope.methods.perturb import RISE, Occlusion  # noqa: E402
from convscope.methods.ablation import FeatureAblation  # noqa: E402
from convscope.methods.smooth import NoiseTunnel, SmoothGrad, SmoothGradSquared, VarGrad  # noqa: E402

__all__ += ["Adaptive", "FeatureAblation", "GradientSHAP", "IntegratedGradients", "NoiseTunnel", "Occlusion", "RISE", "SmoothGrad",
            "SmoothGradSquared", "VarGrad"]

from convscope.methods.cam import (  # noqa: E402
    CAM, AblationCAM, CAMMethod, EigenCAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM, LayerCAM, ScoreCAM,
    XGradCAM)

__all__ += ["CAM", "AblationCAM", "CAMMethod", "EigenCAM", "GradCAM", "GradCAMPlusPlus", "GuidedGradCAM", "HiResCAM",
            "LayerCAM", "ScoreCAM", "XGradCAM"]

from convscope.methods.augment import AugSmooth  # noqa: E402
from convscope.methods.rollout import AttentionRollout, GradRollout  # noqa: E402

__all__ += ["AttentionRollout", "AugSmooth", "GradRollout"]

from convscope.methods import lrp  # noqa: E402
from convscope.methods.lrp import LRP  # noqa: E402

__all__ += ["LRP", "lrp"]


def __getattr__(name: str) -> type[Method]:
    """A method registered outside this package, by its class name."""
    found = by_class_name(name)
    if found is None:
        raise AttributeError(f"module 'convscope.methods' has no attribute {name!r}")
    return found
