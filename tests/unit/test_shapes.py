"""Tests for the synthetic dataset ``convscope.data.Shapes``.

The geometry oracles below are written from the shape definitions in the docstring of
``convscope.data.draw`` (pixel centres at ``(c + 0.5, r + 0.5)``, counter-clockwise rotation on
screen): circles and rings by explicit distances, the polygons by even-odd ray casting, all in
plain Python loops. Only the shape constants (arm width, notch and hole radii) are imported.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convscope.data import CLASSES, MEAN, STD, Shapes
from convscope.data.draw import CROSS_HALF_WIDTH, RING_INNER, STAR_INNER, shape_masks
from convscope.data.shapes import AREA_RANGE, MIN_CONTRAST
from convscope.errors import ConvscopeError

# ---------------------------------------------------------------- independent geometry oracles


def unit_polygon(name: str) -> list[tuple[float, float]]:
    """Vertices in unit coordinates (circumradius 1, v down, angle 0)."""
    if name == "square":
        s = math.sqrt(0.5)
        return [(s, s), (-s, s), (-s, -s), (s, -s)]
    if name == "triangle":
        return [(math.sin(2 * math.pi * k / 3), -math.cos(2 * math.pi * k / 3)) for k in range(3)]
    if name == "star":
        radii = [1.0 if k % 2 == 0 else STAR_INNER for k in range(10)]
        return [(r * math.sin(math.pi * k / 5), -r * math.cos(math.pi * k / 5)) for k, r in enumerate(radii)]
    if name == "cross":
        w, reach = CROSS_HALF_WIDTH, math.sqrt(1 - CROSS_HALF_WIDTH**2)
        quarter = [(w, -reach), (w, -w), (reach, -w)]  # one arm's corner run, then rotate by 90 deg
        return [(x, y) if q == 0 else (-y, x) if q == 1 else (-x, -y) if q == 2 else (y, -x)
                for q in range(4) for x, y in quarter]
    raise ValueError(name)


def inside_polygon(x: float, y: float, poly: list[tuple[float, float]]) -> bool:
    """Even-odd rule: count crossings of a ray from (x, y) towards +x."""
    inside = False
    for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def naive_mask(name: str, centre: tuple[float, float], scale: float, angle: float, size: int) -> np.ndarray:
    cx, cy = centre
    a = math.radians(angle)
    mask = np.zeros((size, size), dtype=bool)
    poly = None
    if name not in ("circle", "ring"):
        poly = [(cx + scale * (u * math.cos(a) + v * math.sin(a)), cy + scale * (-u * math.sin(a) + v * math.cos(a)))
                for u, v in unit_polygon(name)]
    for r in range(size):
        for c in range(size):
            x, y = c + 0.5, r + 0.5
            if poly is not None:
                mask[r, c] = inside_polygon(x, y, poly)
            else:
                d = math.hypot(x - cx, y - cy)
                mask[r, c] = d <= scale and (name == "circle" or d >= RING_INNER * scale)
    return mask


def area_formula(name: str, scale: float) -> float:
    w = CROSS_HALF_WIDTH
    unit = {
        "circle": math.pi,
        "square": 2.0,  # side sqrt(2)
        "triangle": 3 * math.sqrt(3) / 4,
        "cross": 2 * (2 * w) * 2 * math.sqrt(1 - w * w) - (2 * w) ** 2,  # two bars minus overlap
        "ring": math.pi * (1 - RING_INNER**2),
        "star": 10 * 0.5 * STAR_INNER * math.sin(math.pi / 5),  # ten (tip, notch, centre) triangles
    }[name]
    return unit * scale * scale


def samples_per_class(ds: Shapes, per_class: int) -> dict[str, list]:
    found: dict[str, list] = {name: [] for name in CLASSES}
    for i in range(len(ds)):
        s = ds.sample(i)
        if len(found[s.name]) < per_class:
            found[s.name].append(s)
        if all(len(v) == per_class for v in found.values()):
            return found
    raise AssertionError("dataset too small to find every class")


# ---------------------------------------------------------------- determinism


def test_same_seed_and_index_give_identical_bytes() -> None:
    a, b = Shapes(30, seed=5), Shapes(1000, seed=5)  # n does not matter
    for i in (0, 1, 7, 29):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.image.tobytes() == sb.image.tobytes()
        assert sa.mask.tobytes() == sb.mask.tobytes()
        params = ("label", "centre", "scale", "angle", "colour")
        assert [getattr(sa, p) for p in params] == [getattr(sb, p) for p in params]
        assert torch.equal(a[i][0], b[i][0])


def test_different_seeds_and_indices_differ() -> None:
    a, b = Shapes(10, seed=0), Shapes(10, seed=1)
    images = [a.sample(i).image for i in range(5)] + [b.sample(i).image for i in range(5)]
    for j in range(len(images)):
        for k in range(j + 1, len(images)):
            assert not np.array_equal(images[j], images[k])


def test_arrays_equal_stacked_samples_and_shards() -> None:
    ds = Shapes(200, seed=3)
    images, masks, labels = ds.arrays(3, 75)  # crosses an internal chunk boundary
    assert images.dtype == np.uint8 and images.shape == (72, 64, 64, 3)
    assert masks.dtype == bool and masks.shape == (72, 64, 64)
    assert labels.dtype == np.int64 and labels.shape == (72,)
    for k, i in enumerate(range(3, 75)):
        s = ds.sample(i)
        assert np.array_equal(images[k], s.image) and np.array_equal(masks[k], s.mask) and labels[k] == s.label
    # any shard of a longer range is the same pictures
    shard_images, shard_masks, shard_labels = ds.arrays(40, 50)
    assert np.array_equal(shard_images, images[37:47]) and np.array_equal(shard_masks, masks[37:47])
    assert np.array_equal(shard_labels, labels[37:47])
    full = ds.arrays()
    assert full[0].shape[0] == 200 and np.array_equal(full[0][3:75], images)


# ---------------------------------------------------------------- masks and labels


def test_masks_nonempty_inside_and_sized() -> None:
    _, masks, _ = Shapes(600, seed=11).arrays()
    counts = masks.sum(axis=(1, 2))
    assert counts.min() > 0
    border = masks[:, 0].any() or masks[:, -1].any() or masks[:, :, 0].any() or masks[:, :, -1].any()
    assert not border, "a shape touches the image edge, so it may be clipped"
    fraction = counts / (64 * 64)
    assert fraction.min() >= AREA_RANGE[0] - 0.02 and fraction.max() <= AREA_RANGE[1] + 0.02
    assert 0.03 <= AREA_RANGE[0] and AREA_RANGE[1] <= 0.35


def test_every_class_appears_uniformly() -> None:
    _, _, labels = Shapes(1200, seed=2).arrays()
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert len(counts) == len(CLASSES) == 6
    expected = len(labels) / len(CLASSES)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, f"class counts {counts} are far from uniform (chi2={chi2:.1f}, df=5, p<0.001)"


def test_masks_match_naive_geometry() -> None:
    ds = Shapes(300, seed=7, size=32)
    for name, samples in samples_per_class(ds, 3).items():
        for s in samples:
            expected = naive_mask(name, s.centre, s.scale, s.angle, 32)
            assert np.array_equal(s.mask, expected), f"{name} mask differs at {np.argwhere(s.mask != expected)}"


def test_painted_pixels_are_the_mask_and_contrast_with_the_background() -> None:
    ds = Shapes(40, seed=4)
    for i in range(len(ds)):
        s = ds.sample(i)
        colour = np.array(s.colour, dtype=np.uint8)
        assert (s.image[s.mask] == colour).all(), "every mask pixel has the shape colour"
        assert np.array_equal(s.image[~s.mask], s.background[~s.mask]), "every other pixel is background"
        under = s.background[s.mask].astype(np.float64)
        assert np.linalg.norm(under.mean(axis=0) - colour) >= MIN_CONTRAST
        assert (s.background.reshape(-1, 3).std(axis=0) > 2.0).all(), "the background is textured"
        assert (under != colour).any(axis=1).mean() > 0.9, "the background goes on under the shape"


def test_areas_match_formulas() -> None:
    ds = Shapes(200, seed=9, size=128)
    for name, samples in samples_per_class(ds, 3).items():
        for s in samples:
            assert s.mask.sum() == pytest.approx(area_formula(name, s.scale), rel=0.04), name


CENTRE, R, SIZE = (32.0, 32.0), 20.0, 64  # centre on a pixel corner: rot90/flips map pixels to pixels


def drawn(name: str, angle: float = 0.0) -> np.ndarray:
    return shape_masks(np.array([CLASSES.index(name)]), np.array([CENTRE]), np.array([R]), np.array([angle]), SIZE)[0]


def pixel(dx: float, dy: float) -> tuple[int, int]:
    """(row, col) of the pixel containing the point CENTRE + (dx, dy)."""
    return int(math.floor(CENTRE[1] + dy)), int(math.floor(CENTRE[0] + dx))


def polar(name: str, radius: float, degrees: float) -> bool:
    """Mask value at ``radius * R`` from the centre, ``degrees`` clockwise from up (angle 0)."""
    t = math.radians(degrees)
    return bool(drawn(name)[pixel(radius * R * math.sin(t), -radius * R * math.cos(t))])


def test_circle_and_ring_geometry() -> None:
    for name in ("circle", "ring"):
        m = drawn(name)
        assert np.array_equal(m, np.rot90(m)) and np.array_equal(m, m.T) and np.array_equal(m, np.fliplr(m))
        assert np.array_equal(m, drawn(name, 37.0)), "rotation does not change a round shape"
        assert all(polar(name, 0.8, d) for d in range(0, 360, 10))
        assert not any(polar(name, 1.05, d) for d in range(0, 360, 10))
    assert all(polar("circle", 0.3, d) for d in range(0, 360, 10))
    assert not any(polar("ring", r, d) for r in (0.0, 0.3, 0.5) for d in range(0, 360, 10)), "the ring has a hole"
    assert not drawn("ring")[31:33, 31:33].any(), "the centre pixels of a ring are empty"


def test_square_geometry() -> None:
    m = drawn("square")
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    assert m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all(), "at angle 0 the square fills its bounding box"
    assert abs(len(rows) - math.sqrt(2) * R) <= 1 and len(rows) == len(cols)
    assert np.array_equal(m, np.rot90(m))
    diamond, tip, corner = drawn("square", 45.0), pixel(0, -0.95 * R), pixel(0.68 * R, -0.68 * R)
    assert m[corner] and not m[tip]
    assert diamond[tip] and not diamond[corner], "at 45 degrees a corner points up"


def test_triangle_geometry() -> None:
    m = drawn("triangle")
    assert np.array_equal(m, np.fliplr(m)) and not np.array_equal(m, np.flipud(m))
    rows = np.flatnonzero(m.any(axis=1))
    widths = m[rows].sum(axis=1)
    assert (np.diff(widths) >= 0).all(), "at angle 0 the apex points up: rows widen downwards"
    assert abs(rows[0] + 0.5 - (CENTRE[1] - R)) <= 2 and abs(rows[-1] + 0.5 - (CENTRE[1] + R / 2)) <= 1
    assert np.array_equal(drawn("triangle", 90.0), np.rot90(m)), "positive angles turn counter-clockwise"


def test_cross_geometry() -> None:
    m = drawn("cross")
    assert np.array_equal(m, np.rot90(m)) and np.array_equal(m, np.fliplr(m))
    assert all(polar("cross", 0.9, d) for d in (0, 90, 180, 270)), "arms reach out along the axes"
    assert not any(polar("cross", 0.6, d) for d in (45, 135, 225, 315)), "the corners between arms are empty"
    assert polar("cross", 0.0, 0)
    assert not np.array_equal(drawn("cross", 45.0), m)


def test_star_geometry() -> None:
    m = drawn("star")
    assert np.array_equal(m, np.fliplr(m)) and not np.array_equal(m, np.rot90(m))
    assert all(polar("star", 0.8, 72 * k) for k in range(5)), "five tips, one pointing up"
    assert not any(polar("star", 0.7, 36 + 72 * k) for k in range(5)), "notches between the tips"
    assert all(polar("star", 0.3, d) for d in range(0, 360, 10))
    assert np.array_equal(drawn("star", 90.0), np.rot90(m))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), index=st.integers(0, 10**6), size=st.integers(24, 80))
def test_any_sample_is_consistent(seed: int, index: int, size: int) -> None:
    ds = Shapes(index + 1, seed=seed, size=size)
    s = ds.sample(index)
    assert s.image.shape == (size, size, 3) and s.mask.shape == (size, size)
    assert s.mask.any() and not (s.mask[0].any() or s.mask[-1].any() or s.mask[:, 0].any() or s.mask[:, -1].any())
    assert (s.image[s.mask] == np.array(s.colour, dtype=np.uint8)).all()
    assert np.array_equal(s.image[~s.mask], s.background[~s.mask])
    assert CLASSES[s.label] == s.name and 0.0 <= s.angle < 360.0 and s.scale > 0
    images, masks, labels = ds.arrays(index, index + 1)
    assert np.array_equal(images[0], s.image) and np.array_equal(masks[0], ds.mask(index)) and labels[0] == s.label


# ---------------------------------------------------------------- dataset interface


def test_torch_dataset_interface_and_dataloader() -> None:
    ds = Shapes(20, seed=1)
    assert len(ds) == 20 and ds.class_names == CLASSES
    x, y = ds[3]
    s = ds.sample(3)
    assert x.dtype == torch.float32 and x.shape == (3, 64, 64) and isinstance(y, int) and y == s.label
    assert torch.equal(x, torch.from_numpy(s.image).permute(2, 0, 1).float() / 255)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(ds[-1][0], ds[19][0]) and np.array_equal(ds.mask(3), s.mask)
    with pytest.raises(IndexError):
        ds[20]
    with pytest.raises(ConvscopeError, match="out of range"):
        ds.sample(-21)
    assert len(list(iter(Shapes(4)))) == 4  # iteration stops at the IndexError

    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)
    xb, yb = next(iter(loader))
    images, _, labels = ds.arrays(0, 8)
    assert xb.shape == (8, 3, 64, 64) and yb.dtype == torch.int64
    assert torch.equal(yb, torch.from_numpy(labels))
    assert torch.equal(xb, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    tx, ty = ds.tensors(0, 8)
    assert torch.equal(tx, xb) and torch.equal(ty, yb)


def test_bad_arguments_raise_clear_errors() -> None:
    for kwargs, words in [({"n": -1}, ">= 0"), ({"n": 2.5}, "integer"), ({"n": 5, "size": 8}, "size"),
                          ({"n": 5, "seed": -3}, "seed")]:
        with pytest.raises(ConvscopeError, match=words) as info:
            Shapes(**kwargs)
        assert info.value.hint
    ds = Shapes(10)
    for start, stop in [(5, 2), (0, 11), (-1, 3)]:
        with pytest.raises(ConvscopeError, match="range"):
            ds.arrays(start, stop)
    with pytest.raises(ConvscopeError, match="integer"):
        ds["0"]


def test_mean_and_std_constants_match_the_data() -> None:
    images, _, _ = Shapes(2000, seed=1).arrays()  # another seed than the one they were computed on
    levels = np.arange(256) / 255
    for c in range(3):  # exact moments from each channel's histogram of the 256 levels
        p = np.bincount(images[..., c].ravel(), minlength=256) / images[..., c].size
        mean = float(p @ levels)
        std = math.sqrt(float(p @ (levels - mean) ** 2))
        assert mean == pytest.approx(MEAN[c], abs=0.02) and std == pytest.approx(STD[c], abs=0.02)


def test_import_does_not_load_torch() -> None:
    code = "import sys, convscope.data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_speed_sanity() -> None:
    """Loose guard only (the measured throughput is reported elsewhere): >= 300 images/s."""
    ds = Shapes(600)
    start = time.perf_counter()
    ds.arrays()
    assert 600 / (time.perf_counter() - start) >= 300
