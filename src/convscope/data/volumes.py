"""``Volumes``: procedural 3-D volumes ``[1, D, H, W]``, each holding one solid of four classes.

Each volume is smooth noise (a 4x4x4 lattice of values in [-0.6, 0.6], smoothstep-interpolated)
plus voxel noise (standard deviation 0.15), with one flat-valued solid (value ``+-`` 1.5..2.5)
painted over it. Voxel ``(d, h, w)`` is sampled at its centre ``(w + 1/2, h + 1/2, d + 1/2)``
and belongs to the solid when that point, mapped to unit coordinates
``p = rot^T (point - centre) / R`` (a uniformly random rotation, circumradius ``R`` voxels), is
inside the unit solid (``CLASSES``):

- ball: ``|p| <= 1``
- cube: ``max_i |p_i| <= 1/sqrt(3)`` (corners on the unit sphere)
- shell: ``SHELL_INNER <= |p| <= 1``
- cross: a 3-D plus, three bars ``|p_a| <= CROSS_REACH`` with the other two ``|p_b| <= CROSS_HALF_WIDTH``

The ``mask`` (the painted voxels) is the ground truth for localisation.

Example::

    ds = Volumes(200, seed=0)
    x, y = ds[0]                        # float32 tensor [1, 16, 16, 16], int label
    a = ds.arrays(0, 10)                # a['x'] [10, 1, 16, 16, 16], a['mask'] bool [10, 16, 16, 16]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.data.procedural import Procedural, smooth_noise
from convscope.data.shapes import _check_int

CLASSES: tuple[str, ...] = ("ball", "cube", "shell", "cross")
SHELL_INNER = 0.55
CROSS_HALF_WIDTH = 0.3
CROSS_REACH = float(np.sqrt(1.0 - 2.0 * CROSS_HALF_WIDTH**2))  # bar corners on the unit sphere
RADIUS = (0.28, 0.44)  # circumradius as a fraction of the size
MIN_SIZE = 12


def unit_solid(label: int, p: np.ndarray) -> np.ndarray:
    """Membership of the points ``p [..., 3]`` (unit coordinates) in unit solid ``label``."""
    r = np.linalg.norm(p, axis=-1)
    a = np.abs(p)
    if label == 0:
        return r <= 1.0
    if label == 1:
        return a.max(axis=-1) <= 1.0 / np.sqrt(3.0)
    if label == 2:
        return (r <= 1.0) & (r >= SHELL_INNER)
    inside = np.zeros(p.shape[:-1], dtype=bool)
    for axis in range(3):
        others = [b for b in range(3) if b != axis]
        inside |= (a[..., axis] <= CROSS_REACH) & (a[..., others] <= CROSS_HALF_WIDTH).all(axis=-1)
    return inside


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class Volumes(Procedural):
    """``n`` volumes of ``size^3`` voxels drawn from ``seed``.

    ``sample(i)`` holds ``x`` (float32 ``[1, D, H, W]``), ``label``, ``mask`` (bool ``[D, H, W]``),
    ``centre`` (x, y, z in voxels), ``radius``, ``rotation`` and ``value``.
    """

    class_names = CLASSES

    def __init__(self, n: int, seed: int = 0, size: int = 16) -> None:
        super().__init__(n, seed)
        self.size = _check_int(size, "size", MIN_SIZE, f"Volumes smaller than {MIN_SIZE} voxels cannot show every "
                                                     f"solid; use size >= {MIN_SIZE}.")

    def __repr__(self) -> str:
        return f"Volumes(n={self.n}, seed={self.seed}, size={self.size})"

    def _one(self, rng: np.random.Generator) -> dict[str, Any]:
        s = self.size
        label = int(rng.integers(len(CLASSES)))
        radius = s * (RADIUS[0] + (RADIUS[1] - RADIUS[0]) * rng.random())
        centre = radius + 0.5 + rng.random(3) * (s - 2.0 * radius - 1.0)  # (x, y, z), half a voxel margin
        rotation = random_rotation(rng)
        value = (1.5 + rng.random()) * (1.0 if rng.random() < 0.5 else -1.0)
        background = smooth_noise(rng, 4, s, 3, 0.6) + 0.15 * rng.standard_normal((s, s, s))
        d, h, w = np.meshgrid(*(np.arange(s) + 0.5,) * 3, indexing="ij")
        points = np.stack([w, h, d], axis=-1) - centre  # (x, y, z) of each voxel centre
        mask = unit_solid(label, points @ rotation / radius)  # rows: rotation^T (point - centre)
        x = np.where(mask, value, background)[None].astype(np.float32)
        return {"x": x, "label": np.int64(label), "mask": mask, "centre": centre, "radius": radius,
                "rotation": rotation, "value": value}
