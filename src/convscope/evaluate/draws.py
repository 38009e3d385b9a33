"""Random draws keyed by (seed, sample, draw): the same numbers whatever the chunking.

A metric that perturbs sample ``n`` for the ``k``-th time (ROAD's noise, infidelity's
perturbations, max-sensitivity's shifts) draws from a generator seeded with
``SeedSequence([seed, n, k])`` on the device that uses the numbers. So a sample's draws depend on
the seed, its index and the draw only: never on ``max_batch``, on the other samples in its
chunk, or on the global random state (which is left as it was). CPU and CUDA generators differ,
so draws on the two kinds of device do too.

Example::

    eps = keyed_draws("normal", 0, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]), (3, 8, 8), "cpu")
    # [3, 3, 8, 8]: sample 0 draws 0 and 1, sample 1 draw 0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from convscope.errors import ConvscopeError

Kind = Literal["normal", "uniform"]


def row_seed(seed: int, sample: int, draw: int) -> int:
    """A 63-bit generator seed from ``(seed, sample, draw)`` (numpy's ``SeedSequence`` mixing)."""
    return int(np.random.SeedSequence([seed, sample, draw]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def check_seed(seed: object) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConvscopeError(f"seed={seed!r} is not a non-negative int", "Pass an explicit seed, e.g. seed=0.")
    return int(seed)


def keyed_draws(kind: Kind, seed: int, samples: Tensor, draws: Tensor, shape: Sequence[int],
                device: torch.device | str) -> Tensor:
    """``[m, *shape]`` float32 draws, row ``i`` from the generator of ``(seed, samples[i], draws[i])``:
    standard normal (``"normal"``) or uniform on ``[0, 1)`` (``"uniform"``)."""
    device = torch.device(device)
    out = torch.empty(len(samples), *shape, device=device)
    for i, (n, k) in enumerate(zip(samples.tolist(), draws.tolist())):
        g = torch.Generator(device=device).manual_seed(row_seed(seed, n, k))
        (out[i].normal_ if kind == "normal" else out[i].uniform_)(generator=g)
    return out
