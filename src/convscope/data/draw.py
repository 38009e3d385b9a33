"""Vectorised drawing for the synthetic shapes: exact shape masks and textured backgrounds.

Coordinates are continuous pixels: the image spans ``[0, size]`` on both axes, ``x`` goes right,
``y`` goes down, and pixel ``(row r, col c)`` is sampled at its centre ``(c + 0.5, r + 0.5)``. A
pixel belongs to a shape when its centre lies inside it (no anti-aliasing), so a mask is exactly
the set of pixels painted with the shape colour.

Each shape is defined in unit coordinates ``(u, v)`` (``v`` points down) inside the unit circle,
its circumcircle, then scaled by ``R`` (the ``scale``, in pixels) and rotated by ``angle`` degrees
counter-clockwise as seen on screen. A local point maps to the image by::

    x = cx + R * ( u cos(a) + v sin(a))
    y = cy + R * (-u sin(a) + v cos(a))

The unit shapes (at ``angle = 0``):

- circle: ``u^2 + v^2 <= 1``
- square: ``max(|u|, |v|) <= 1/sqrt(2)`` (corners on the circumcircle)
- triangle: equilateral, one vertex at ``(0, -1)`` (pointing up), inradius ``1/2``
- cross: a plus sign, arms of half-width ``w = CROSS_HALF_WIDTH``, reaching ``sqrt(1 - w^2)``
- ring: ``RING_INNER^2 <= u^2 + v^2 <= 1``
- star: five points, tips at radius 1 (one at ``(0, -1)``), notches at radius ``STAR_INNER``

Example::

    masks = shape_masks(np.array([0, 4]), np.array([[32.0, 32.0], [20.0, 40.0]]),
                        np.array([12.0, 15.0]), np.array([0.0, 30.0]), size=64)
    masks.shape  # (2, 64, 64), bool
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from convscope.errors import ConvscopeError

CROSS_HALF_WIDTH = 0.3
RING_INNER = 0.55
STAR_INNER = 0.45
STAR_POINTS = 5  # the mirror fold in _star is written for five

_CROSS_REACH = float(np.sqrt(1.0 - CROSS_HALF_WIDTH**2))
_STAR_SECTOR = 2.0 * np.pi / STAR_POINTS


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= np.sqrt(0.5)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # three half-planes n . (u, v) <= 1/2, normals opposite the vertices
    side = np.sqrt(3.0) / 2.0
    return (v <= 0.5) & (side * u - 0.5 * v <= 0.5) & (-side * u - 0.5 * v <= 0.5)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    w, reach = CROSS_HALF_WIDTH, _CROSS_REACH
    return ((au <= w) & (av <= reach)) | ((av <= w) & (au <= reach))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= RING_INNER**2)


def _reflect(x: np.ndarray, y: np.ndarray, degrees: float) -> None:
    """Mirror, in place, the points beyond the line through 0 at ``degrees`` from +y (toward +x)."""
    nx, ny = np.cos(np.deg2rad(degrees)), -np.sin(np.deg2rad(degrees))
    beyond = np.maximum(x * nx + y * ny, 0.0)
    x -= 2.0 * beyond * nx
    y -= 2.0 * beyond * ny


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # fold the plane into one half-sector [0, 180/STAR_POINTS] degrees from "up" by mirrors
    # (no trigonometry per pixel), then test against the edge from the tip to the notch
    x, y = np.abs(u), -v  # y points up; mirror at 0 degrees
    _reflect(x, y, 72.0)
    np.abs(x, out=x)
    _reflect(x, y, 36.0)
    half = _STAR_SECTOR / 2.0
    nx, ny = STAR_INNER * np.sin(half), STAR_INNER * np.cos(half)  # notch; the tip is (0, 1)
    # inside iff p lies on the origin's side of the edge tip -> notch (cross product <= 0)
    return nx * (y - 1.0) - (ny - 1.0) * x <= 0.0


UNIT_SHAPES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _circle, _square, _triangle, _cross, _ring, _star)
"""Membership tests in unit coordinates, indexed by class label (see ``CLASSES``)."""

UNIT_AREAS = np.array([
    np.pi,
    2.0,
    3.0 * np.sqrt(3.0) / 4.0,
    8.0 * _CROSS_REACH * CROSS_HALF_WIDTH - 4.0 * CROSS_HALF_WIDTH**2,
    np.pi * (1.0 - RING_INNER**2),
    STAR_POINTS * STAR_INNER * np.sin(_STAR_SECTOR / 2.0),
])
"""Area of each unit shape (circumradius 1): a shape of scale ``R`` covers ``UNIT_AREAS * R^2``."""

INNER_RADII = np.array([
    1.0,
    np.sqrt(0.5),
    0.5,
    CROSS_HALF_WIDTH,
    (1.0 - RING_INNER) / 2.0,
    # distance from the centre to the tip-notch edge
    STAR_INNER * np.sin(_STAR_SECTOR / 2.0)
    / np.hypot(STAR_INNER * np.sin(_STAR_SECTOR / 2.0), 1.0 - STAR_INNER * np.cos(_STAR_SECTOR / 2.0)),
])
"""Radius of the largest disc inside each unit shape; a disc of radius >= sqrt(1/2) px always
contains a pixel centre, so ``R * INNER_RADII >= 1`` guarantees a non-empty mask."""


def shape_masks(labels: np.ndarray, centres: np.ndarray, scales: np.ndarray, angles: np.ndarray,
                size: int) -> np.ndarray:
    """Boolean masks ``[N, size, size]`` of shapes ``labels[n]`` at ``centres[n] = (cx, cy)``.

    Each pixel centre is mapped back to unit coordinates, ``(u, v) = rot(-angle)(p - c) / R``,
    and tested with ``UNIT_SHAPES[label]``. Geometry runs in float64, so only a pixel centre
    within ~1e-12 px of an edge could be classified differently by an exact re-implementation.
    """
    labels = np.asarray(labels, dtype=np.int64)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    scales = np.asarray(scales, dtype=np.float64)
    if labels.ndim != 1 or not len(labels) == len(centres) == len(scales) == len(np.atleast_1d(angles)):
        raise ConvscopeError("shape_masks needs one label, centre (x, y), scale and angle per shape",
                             "Pass arrays of shapes [N], [N, 2], [N] and [N].")
    if ((labels < 0) | (labels >= len(UNIT_SHAPES))).any() or not (scales > 0).all():
        raise ConvscopeError(f"shape labels must lie in 0..{len(UNIT_SHAPES) - 1} and scales be > 0",
                             "Use class indices from convscope.data.CLASSES and a positive radius in pixels.")
    theta = np.deg2rad(np.asarray(angles, dtype=np.float64))
    grid = np.arange(size, dtype=np.float64) + 0.5
    masks = np.empty((len(labels), size, size), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        dx = grid[None, None, :] - centres[rows, 0, None, None]
        dy = grid[None, :, None] - centres[rows, 1, None, None]
        cos = (np.cos(theta[rows]) / scales[rows])[:, None, None]
        sin = (np.sin(theta[rows]) / scales[rows])[:, None, None]
        masks[rows] = UNIT_SHAPES[label](dx * cos - dy * sin, dx * sin + dy * cos)
    return masks


@dataclass(frozen=True)
class Texture:
    """Background parameters for ``N`` images (intensities in 0..255 units, channels first).

    ``background = base + smooth(grid) + stripe_colour * sin(2 pi (f <x, d_s> + phase))
    + ramp_colour * (<x, d_r> - 1/2) + noise`` with ``x`` in image units (``[0, 1]``),
    ``d_s, d_r`` unit directions at angles ``stripe_angle``, ``ramp_angle`` (radians).
    """

    base: np.ndarray  # [N, 3]
    grid: np.ndarray  # [N, 3, G, G] low-frequency values, smoothly interpolated over the image
    stripe_freq: np.ndarray  # [N] cycles per image width
    stripe_angle: np.ndarray  # [N]
    stripe_phase: np.ndarray  # [N] radians
    stripe_colour: np.ndarray  # [N, 3]
    ramp_angle: np.ndarray  # [N]
    ramp_colour: np.ndarray  # [N, 3]
    noise: np.ndarray  # [N, 3, H, W] per-pixel noise


def _smooth_weights(size: int, nodes: int) -> np.ndarray:
    """Weights ``[nodes, size]`` of each grid node at each pixel: smoothstep between neighbours."""
    s = (np.arange(size) + 0.5) / size * (nodes - 1)
    left = np.minimum(np.floor(s).astype(np.int64), nodes - 2)
    f = s - left
    f = f * f * (3.0 - 2.0 * f)
    weights = np.zeros((nodes, size), dtype=np.float32)
    weights[left, np.arange(size)] = 1.0 - f
    weights[left + 1, np.arange(size)] = f
    return weights


def _smooth(grid: np.ndarray, size: int) -> np.ndarray:
    """Separable smoothstep interpolation of ``grid [N, C, G, G]`` to ``[N, C, size, size]``:
    ``out = w^T @ grid @ w`` with ``w = _smooth_weights(size, G)``, one product per image."""
    weights = _smooth_weights(size, grid.shape[-1])
    return weights.T @ grid @ weights


def _plane_wave(angle: np.ndarray, freq: np.ndarray, phase: np.ndarray, size: int) -> np.ndarray:
    """``sin(2 pi f (x cos a + y sin a) + phase)`` as ``[N, H, W]``, via sin(A + B)."""
    t = ((np.arange(size) + 0.5) / size).astype(np.float32)
    k = (2.0 * np.pi * freq).astype(np.float32)
    a = k[:, None] * np.cos(angle).astype(np.float32)[:, None] * t + phase.astype(np.float32)[:, None]
    b = k[:, None] * np.sin(angle).astype(np.float32)[:, None] * t
    return np.sin(b)[:, :, None] * np.cos(a)[:, None, :] + np.cos(b)[:, :, None] * np.sin(a)[:, None, :]


def _ramp(angle: np.ndarray, size: int) -> np.ndarray:
    """``x cos a + y sin a - 1/2`` (centred linear gradient) as ``[N, H, W]``."""
    t = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)
    cx, cy = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    return cy[:, None, None] * t[None, :, None] + cx[:, None, None] * t[None, None, :]


def texture(params: Texture, size: int) -> np.ndarray:
    """Backgrounds ``float32 [N, 3, size, size]`` in 0..255 units (not yet clipped)."""
    f32 = np.float32
    out = _smooth(params.grid.astype(f32), size)
    out += params.base.astype(f32)[:, :, None, None]
    stripes = _plane_wave(params.stripe_angle, params.stripe_freq, params.stripe_phase, size)
    out += stripes[:, None] * params.stripe_colour.astype(f32)[:, :, None, None]
    out += _ramp(params.ramp_angle, size)[:, None] * params.ramp_colour.astype(f32)[:, :, None, None]
    out += params.noise
    return out
