"""The CAM family over one template (:class:`CAMMethod`): each method writes its weighting only.

==================  =====================================================  =============
method              weights of the feature maps ``A`` (``G = dS/dA``)      ReLU default
==================  =====================================================  =============
``CAM``             ``sum_ij G`` (= the linear head's weights)              off
``GradCAM``         ``mean_ij G``                                          on
``GradCAMPlusPlus`` ``sum_ij relu(G) * alpha``                             on
``XGradCAM``        ``sum_ij G A / sum_ij A``                              on
``HiResCAM``        ``G`` (elementwise)                                    on
``LayerCAM``        ``relu(G)`` (elementwise)                              on
``ScoreCAM``        ``softmax_k S(x * mask_k)``                            on
``AblationCAM``     ``(S - S_without_k) / S``                              on
``EigenCAM``        first principal direction of the centred maps          on
==================  =====================================================  =============

``GuidedGradCAM`` composes :class:`~convscope.methods.GuidedBackprop` and ``GradCAM``.
Outputs are ``[N, 1, H, W]`` (upsampled to the input) or ``[N, 1, h, w]`` with ``upsample=False``;
one channel per layer when several layers are given. See :mod:`convscope.methods.cam.base`.
Vision transformers need no reshape code: token outputs become maps (:mod:`convscope.methods.cam.tokens`).

Example::

    from convscope.methods.cam import GradCAM
    maps = GradCAM(model).attribute(x, target=3)
"""

from convscope.methods.cam.ablation import AblationCAM
from convscope.methods.cam.base import CAMMethod, LayerStep, upsample
from convscope.methods.cam.eigen import EigenCAM
from convscope.methods.cam.gradient import CAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from convscope.methods.cam.guided import GuidedGradCAM
from convscope.methods.cam.layer import default_layer
from convscope.methods.cam.score import ScoreCAM
from convscope.methods.cam.tokens import Tokens

__all__ = ["CAM", "AblationCAM", "CAMMethod", "EigenCAM", "GradCAM", "GradCAMPlusPlus", "GuidedGradCAM", "HiResCAM",
           "LayerCAM", "LayerStep", "ScoreCAM", "Tokens", "XGradCAM", "default_layer", "upsample"]
