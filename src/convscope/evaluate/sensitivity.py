"""Max-sensitivity: how much can a map change when the input moves a little?

Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019:

``SENS_max(Phi, x) = max_{||d||_inf <= r} ||Phi(x + d) - Phi(x)||``

estimated per sample by the maximum over ``n_perturb_samples`` shifts ``d_k`` drawn uniformly from
the L-infinity ball of radius ``radius``, the maps recomputed by the method at each ``x + d_k``
(lower is better). ``relative=True`` (default) divides by ``||Phi(x)||`` (a zero map's norm
counts as 1), as Captum's ``sensitivity_max`` and Quantus's ``MaxSensitivity`` do;
``relative=False`` is Yeh et al.'s absolute form. Norms are Frobenius over all of a map's
values (channels and positions), the maps as the method returns them.

The shifts are keyed by ``(seed, sample, draw)`` (:mod:`~convscope.evaluate.draws`); the perturbed
copies go to the method at most ``max_batch`` per call (``None``: all at once; the method's own
``max_batch`` splits them further), so results do not depend on ``max_batch``.

Given the same shifts, Captum's ``sensitivity_max`` and Quantus 0.6's ``MaxSensitivity`` (with
``normalise=False, abs=False``) give these values (the tests replay the draws into both). Their
defaults differ: Captum ``radius=0.02``, 10 draws (this function's defaults); Quantus
``lower_bound=0.2``, 200 draws, from unseeded numpy.

Cost: ``n_perturb_samples + 1`` maps per image, each costing what the method costs (one forward
and one backward pass for a gradient; many for SmoothGrad or occlusion).

Example::

    max_sensitivity(Saliency(model), x, labels, radius=0.02, n_perturb_samples=10, seed=0)   # [N]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from convscope.backends.torch.batching import MaxBatch, check_max_batch
from convscope.errors import ConvscopeError
from convscope.evaluate.draws import check_seed, keyed_draws
from convscope.evaluate.maps import as_classes, as_inputs, attribute
from convscope.methods.base import Method, chunks


def max_sensitivity(method: Method, x: Any, targets: Any, *, radius: float = 0.02, n_perturb_samples: int = 10,
                    relative: bool = True, seed: int = 0, max_batch: MaxBatch = None) -> Tensor:
    """``[N]``: the largest (relative) change of each sample's map over seeded shifts (see the module)."""
    if not isinstance(method, Method):
        raise ConvscopeError(f"max-sensitivity recomputes maps with a convscope method, not a {type(method).__name__}",
                             "Pass a method instance, e.g. Saliency(model).")
    if not isinstance(radius, (int, float)) or radius < 0:
        raise ConvscopeError(f"radius={radius!r} must be a number >= 0", "Use e.g. radius=0.02.")
    if not isinstance(n_perturb_samples, int) or isinstance(n_perturb_samples, bool) or n_perturb_samples < 1:
        raise ConvscopeError(f"n_perturb_samples={n_perturb_samples!r} must be a positive int",
                             "Use e.g. n_perturb_samples=10.")
    seed, limit = check_seed(seed), check_max_batch(max_batch)
    inputs = as_inputs(x, method.model)
    classes = as_classes(targets, len(inputs))
    original = attribute(method, inputs, classes)
    norms = original.flatten(1).double().norm(dim=1)
    norms = torch.where(norms == 0, 1.0, norms) if relative else torch.ones_like(norms)
    n, count = len(inputs), n_perturb_samples
    changes = torch.zeros(n * count, dtype=torch.float64)
    for rows in chunks(n * count, None if limit == "auto" else limit):
        index = torch.arange(rows.start, rows.stop)
        sample, draw = index // count, index % count
        shift = radius * (2 * keyed_draws("uniform", seed, sample, draw, inputs.shape[1:], inputs.device) - 1)
        after = attribute(method, inputs[sample] + shift.to(inputs.dtype), classes[sample])
        delta = (after - original[sample]).flatten(1).double().norm(dim=1)
        changes[rows] = delta / norms[sample]
    return changes.view(n, count).amax(1).float()
