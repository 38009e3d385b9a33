"""Colour maps: a few anchor colours, linearly interpolated into a 256-entry lookup table.

Built in (no matplotlib needed): ``viridis``, ``inferno``, ``gray`` (sequential, input in
``[0, 1]``) and ``coolwarm``, ``bwr`` (diverging, input in ``[-1, 1]`` with 0 at the centre
colour). A ``_r`` suffix reverses any map. Other names are looked up in matplotlib when it is
installed (imported only then). The viridis/inferno/coolwarm anchors are those maps sampled at
0, 0.1, ..., 1; between anchors the maps are linear in RGB.

A LUT entry is ``round(interp(t, positions, colours))`` per channel. Sequential maps: entry
``i`` holds ``t = i / 255`` and :func:`apply_colormap` picks entry ``round(255 * x)``.
Diverging maps hold ``t = j / 254`` at entry ``j`` for ``j <= 127`` and at entry ``j + 1`` for
``j >= 127`` (the centre colour fills entries 127 and 128), and ``x`` picks
``j = round(127 * (x + 1))``: so -1, 0 and 1 give the first, centre and last anchor exactly.

Example::

    rgb = apply_colormap(normalize(cam), "inferno")        # H x W x 3 uint8
    rgb = apply_colormap(normalize(ig, mode="signed"), "coolwarm")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convscope.errors import ConvscopeError, did_you_mean
from convscope.render.image import to_numpy

_TENTHS = tuple(i / 10 for i in range(11))


@dataclass(frozen=True)
class Colormap:
    """A named 256-entry colour table; ``diverging`` maps are indexed by ``[-1, 1]``.

    Build one from anchors with :meth:`from_anchors`, or pass any ``(256, 3)`` uint8 ``lut``.
    """

    name: str
    lut: np.ndarray = field(repr=False)
    diverging: bool = False

    @classmethod
    def from_anchors(
        cls, name: str, colours: list[str], positions: tuple[float, ...] | None = None,
        diverging: bool = False,
    ) -> Colormap:
        """Linear interpolation between ``#rrggbb`` anchors at ``positions`` (default: evenly
        spaced over ``[0, 1]``). Example: ``Colormap.from_anchors("red", ["#000000", "#ff0000"])``.
        """
        rgb = np.array([_hex_to_rgb(c) for c in colours], dtype=np.float64)
        pos = np.linspace(0.0, 1.0, len(colours)) if positions is None else np.asarray(positions)
        t = _lut_positions(diverging)
        lut = np.stack([np.interp(t, pos, rgb[:, k]) for k in range(3)], axis=-1)
        return cls(name, np.rint(lut).astype(np.uint8), diverging)

    def reversed(self) -> Colormap:
        """The same map run backwards, named ``<name>_r``."""
        name = self.name[:-2] if self.name.endswith("_r") else self.name + "_r"
        return Colormap(name, self.lut[::-1].copy(), self.diverging)


def _lut_positions(diverging: bool) -> np.ndarray:
    """The ``t`` in ``[0, 1]`` that each of the 256 LUT entries holds (module docstring)."""
    if not diverging:
        return np.arange(256) / 255.0
    j = np.arange(255) / 254.0
    return np.concatenate([j[:128], j[127:]])


def _lut_index(t: np.ndarray, diverging: bool) -> np.ndarray:
    """LUT entries for ``x`` already clipped to the map's domain."""
    if not diverging:
        return np.rint(t * 255.0).astype(np.intp)
    j = np.rint((t + 1.0) * 127.0).astype(np.intp)
    return j + (j > 127)


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    h = colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


_BUILTIN: dict[str, Colormap] = {
    cmap.name: cmap
    for cmap in (
        Colormap.from_anchors(
            "viridis",
            ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c",
             "#22a884", "#44bf70", "#7ad151", "#bddf26", "#fde725"],
            _TENTHS,
        ),
        Colormap.from_anchors(
            "inferno",
            ["#000004", "#160b39", "#420a68", "#6a176e", "#932667", "#bc3754",
             "#dd513a", "#f37819", "#fca50a", "#f6d746", "#fcffa4"],
            _TENTHS,
        ),
        Colormap.from_anchors("gray", ["#000000", "#ffffff"]),
        Colormap.from_anchors(
            "coolwarm",
            ["#3b4cc0", "#5977e3", "#7b9ff9", "#9ebeff", "#c0d4f5", "#dddcdc",
             "#f2cbb7", "#f7ac8e", "#ee8468", "#d65244", "#b40426"],
            _TENTHS,
            diverging=True,
        ),
        Colormap.from_anchors("bwr", ["#0000ff", "#ffffff", "#ff0000"], diverging=True),
    )
}
BUILTIN_COLORMAPS: tuple[str, ...] = tuple(_BUILTIN)

# matplotlib maps that are diverging (indexed by [-1, 1] when looked up by name)
_MPL_DIVERGING = frozenset(
    "bwr seismic coolwarm RdBu RdGy PiYG PRGn BrBG PuOr RdYlBu RdYlGn Spectral "
    "berlin managua vanimo".split()
)


def get_colormap(cmap: str | Colormap) -> Colormap:
    """The :class:`Colormap` called ``cmap``: built-ins first, then matplotlib's (if installed).

    Example: ``get_colormap("viridis_r").lut[0]`` is viridis's top colour ``(253, 231, 37)``.
    """
    if isinstance(cmap, Colormap):
        return cmap
    base = cmap[:-2] if cmap.endswith("_r") else cmap
    if base in _BUILTIN:
        return _BUILTIN[base].reversed() if base != cmap else _BUILTIN[base]
    return _from_matplotlib(cmap, base)


def _from_matplotlib(name: str, base: str) -> Colormap:
    try:
        import matplotlib  # optional: only for names we do not define
    except ImportError:
        raise ConvscopeError(
            f"unknown colour map {name!r} (matplotlib is not installed to look it up)",
            did_you_mean(name, BUILTIN_COLORMAPS, "colour map"),
        ) from None
    try:
        mpl_cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ConvscopeError(
            f"unknown colour map {name!r}",
            did_you_mean(name, [*BUILTIN_COLORMAPS, *matplotlib.colormaps], "colour map"),
        ) from None
    diverging = base in _MPL_DIVERGING
    rgba = np.asarray(mpl_cmap(_lut_positions(diverging)))
    lut = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    return Colormap(name, lut, diverging)


def apply_colormap(x: Any, cmap: str | Colormap = "viridis") -> np.ndarray:
    """Colour a 2-D map: ``x`` in ``[0, 1]`` (or ``[-1, 1]`` for diverging maps) -> ``H x W x 3``
    uint8 looked up in the map's LUT (indexing in the module docstring).

    Values may stray outside the domain by 1e-6 (clipped); anything further raises, since
    it means the map was not normalised (use :func:`convscope.render.normalize`).
    Example: ``apply_colormap(np.array([[0.0, 1.0]]), "gray")`` is ``[[[0, 0, 0], [255]*3]]``.
    """
    colormap = get_colormap(cmap)
    a = to_numpy(x).astype(np.float64)
    lo = -1.0 if colormap.diverging else 0.0
    if a.ndim != 2:
        raise ConvscopeError(
            f"apply_colormap expects a 2-D map, got shape {tuple(a.shape)}",
            "reduce the channels first (convscope.render.normalize(attr, reduce='sum'))",
        )
    if not np.all(np.isfinite(a)):
        raise ConvscopeError("map contains NaN or infinite values", "check the computation")
    if a.size and (a.min() < lo - 1e-6 or a.max() > 1.0 + 1e-6):
        kind = "diverging" if colormap.diverging else "sequential"
        raise ConvscopeError(
            f"values span [{a.min():.4g}, {a.max():.4g}], outside [{lo:g}, 1] expected by "
            f"the {kind} map {colormap.name!r}",
            "scale the map first with convscope.render.normalize (mode='signed' for a "
            "diverging map, 'absolute', 'positive' or 'minmax' for a sequential one)",
        )
    return colormap.lut[_lut_index(np.clip(a, lo, 1.0), colormap.diverging)]
