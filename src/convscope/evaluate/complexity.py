"""How concentrated a map is: sparseness (Gini index) and complexity (entropy), per sample.

With ``a = |map|`` flattened to ``P`` values per sample:

- :func:`sparseness` (Chalasani et al., ICML 2020): the Gini index of ``a`` sorted ascending,
  ``sum_i (2i - P - 1) a_(i) / (P sum_i a_i)``, in ``[0, 1)``: 0 when every value is equal, near 1
  when one value holds all the mass. Higher: sparser, easier to read.
- :func:`complexity` (Bhatt et al., IJCAI 2020): the entropy of the fractional contributions
  ``p_i = a_i / sum_j a_j``, ``-sum_i p_i log p_i``, in ``[0, log P]``. Lower: simpler.

Quantus's ``Sparseness`` adds ``1e-7`` to every value first (so an all-zero map scores 0, not
NaN) and its ``Complexity`` adds ``1e-12`` inside the logarithm; both do the same here, and equal
Quantus on maps it has normalised (``abs=True, normalise=True``: its defaults, which divide by the
largest value and leave both scores unchanged for positive maps).

Example::

    sparseness(maps)        # [N]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from convscope.evaluate.maps import as_array


def _magnitudes(maps: Any) -> Tensor:
    m = as_array(maps, "maps").float()
    return m.reshape(len(m), -1).abs()


def sparseness(maps: Any) -> Tensor:
    """``[N]``: the Gini index of each map's absolute values (see the module)."""
    a = torch.sort(_magnitudes(maps) + 1e-7, dim=1).values
    count = a.shape[1]
    i = torch.arange(1, count + 1, dtype=a.dtype, device=a.device)
    return ((2 * i - count - 1) * a).sum(1) / (count * a.sum(1))


def complexity(maps: Any) -> Tensor:
    """``[N]``: the entropy of each map's fractional absolute contributions (see the module)."""
    a = _magnitudes(maps)
    p = a / a.sum(1, keepdim=True)
    return -(p * torch.log(p + 1e-12)).sum(1)
