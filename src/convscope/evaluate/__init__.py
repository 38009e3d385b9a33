"""Which map to trust: evaluation metrics for attribution maps, batched, per sample.

- faithfulness (:mod:`~convscope.evaluate.curves`): :func:`deletion`, :func:`insertion`,
  :func:`pixel_flipping`, :func:`region_perturbation`; :func:`road` (:mod:`~convscope.evaluate.road`);
  :func:`infidelity` (:mod:`~convscope.evaluate.infidelity`); :func:`max_sensitivity`
  (:mod:`~convscope.evaluate.sensitivity`);
- randomisation (:mod:`~convscope.evaluate.randomisation`): :func:`model_randomisation`
  (cascading or independent), :func:`random_logit`;
- localisation (:mod:`~convscope.evaluate.localisation`): :func:`pointing_game` (strict, or
  Zhang et al.'s tolerance), :func:`centre_maps` (its baseline), :func:`mass_inside`,
  :func:`rank_inside`, :func:`class_mean`;
- complexity (:mod:`~convscope.evaluate.complexity`): :func:`sparseness`, :func:`complexity`;
- similarity (:mod:`~convscope.evaluate.similarity`): :func:`ssim`, :func:`spearman`, :func:`pearson`;
  :func:`hog` and :func:`hog_similarity` (:mod:`~convscope.evaluate.hog`).

Metrics take channels-first torch tensors or, for a Keras model, its own channels-last arrays
(:mod:`~convscope.evaluate.maps`); results are torch tensors with one value per sample, the
same for every ``max_batch``.

Example::

    from convscope.evaluate import deletion, pointing_game
    maps = GradCAM(model).attribute(x, labels)
    deletion(model, x, labels, maps).auc()         # [N]
    pointing_game(maps, masks, tolerance="standard")
"""

from convscope.evaluate.complexity import complexity, sparseness
from convscope.evaluate.curves import Curve, deletion, insertion, pixel_flipping, region_perturbation
from convscope.evaluate.hog import hog, hog_similarity
from convscope.evaluate.infidelity import GaussianNoise, SquareRemoval, infidelity
from convscope.evaluate.localisation import (centre_maps, class_mean, mass_inside, pointing_game, rank_inside,
                                             standard_tolerance)
from convscope.evaluate.randomisation import Randomisation, model_randomisation, random_logit
from convscope.evaluate.road import road
from convscope.evaluate.sensitivity import max_sensitivity
from convscope.evaluate.similarity import pearson, spearman, ssim

__all__ = ["Curve", "Randomisation", "centre_maps", "class_mean", "complexity", "deletion", "insertion",
           "mass_inside", "model_randomisation", "pearson", "pixel_flipping", "pointing_game", "random_logit",
           "rank_inside", "region_perturbation", "sparseness", "spearman", "ssim", "standard_tolerance"]
__all__ += ["GaussianNoise", "SquareRemoval", "hog", "hog_similarity", "infidelity", "max_sensitivity", "road"]
