"""Exact input crops for single-unit projections: a small window that reproduces a unit.

Along a conv/pool chain (a :class:`~convscope.atlas.receptive.Field` read from the graph), unit
``i`` of an axis reads the unclipped input range ``lo = scale*i + start .. hi = scale*i + stop``
(``scale`` is the product of the strides). Running the same chain on the crop ``[a, b)`` of an
axis (``0 <= a < b <= size``) gives the unit - and every value below it that it depends on -
exactly the inputs it has in the full image, at position ``i - a // scale`` of the cropped
layer, when

    a % scale == 0  and  a <= max(lo, 0)       and       b >= min(hi + 1, size)

Why: every layer's stride divides ``scale``, so the crop starts on a grid point of every layer.
A value the unit depends on has its own range inside ``[lo, hi]``, so it never needs an input
before ``a`` or from ``b`` on; where the full chain reads zero padding, the range crosses the
image border (``lo < 0`` or ``hi >= size``) and the crop keeps that border, so the cropped
chain pads there too. Outside ``[lo, hi]`` a projection of the unit is zero, so pasting the
crop's projection into a zero image gives the full one. (This needs every layer of the chain
to be local: :func:`convscope.atlas.project.project_units` does not crop models that normalise
over a whole map, such as instance norm.)

:func:`windows` gives every unit a crop of one common size ``T`` per axis (so all pairs batch
together): ``T`` is the smallest size ``>= max(b_min - a_max)`` with ``size - T`` a multiple of
``scale``, and ``a = min(a_max, size - T)``, ``b = a + T``, where ``a_max = scale*floor(max(lo,
0)/scale)`` and ``b_min = min(hi + 1, size)``; both conditions above hold.

Example::

    field = receptive_field(model, "features.6", (3, 64, 64))
    win = windows(field, [(5, 7)])      # [[y0, y1, x0, x1, row in crop, column in crop]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convscope.atlas.receptive import Field


def windows(field: Field, units: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray | None:
    """Per unit ``[a_0, b_0, a_1, b_1, ..., u_0, u_1, ...]``: its exact crop window ``[a, b)`` on
    each axis, the same size for every unit (see module doc), and its position in the cropped
    layer. None when no crop saves anything (the windows are the whole image) or the field was
    measured rather than read from the graph (no exact crop is known)."""
    if field.empirical is not None or not field.axes:
        return None
    units = np.asarray(units, dtype=np.int64).reshape(-1, len(field.axes))
    if len(units) == 0:
        return None
    bounds, inside = [], []
    for d, (axis, size) in enumerate(zip(field.axes, field.size)):
        i = units[:, d]
        lo, hi = axis.scale * i + axis.start, axis.scale * i + axis.stop
        a_max = (np.maximum(lo, 0) // axis.scale) * axis.scale
        b_min = np.minimum(hi + 1, size)
        need = int((b_min - a_max).max())
        common = size - ((size - need) // axis.scale) * axis.scale
        a = np.minimum(a_max, size - common)
        bounds += [a, a + common]
        inside.append(i - a // axis.scale)
    if all(b[0] - a[0] == size for a, b, size in zip(bounds[::2], bounds[1::2], field.size)):
        return None
    return np.stack(bounds + inside, axis=1)
