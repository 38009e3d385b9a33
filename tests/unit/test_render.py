"""convscope.render: exact pixels on tiny arrays, hand-computed values, round trips.

Every expected value here is written out by hand (or follows from a stated identity), never
produced by the code under test.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFont

from convscope import render
from convscope.errors import ConvscopeError

SRC = Path(__file__).resolve().parents[2] / "src"
A = np.array([[-2.0, 1.0], [0.5, 4.0]])


# --------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("absolute", [[0.5, 0.25], [0.125, 1.0]]),  # |a| / 4
        ("positive", [[0.0, 0.25], [0.125, 1.0]]),  # max(a, 0) / 4
        ("signed", [[-0.5, 0.25], [0.125, 1.0]]),  # a / 4
        ("minmax", [[0.0, 0.5], [2.5 / 6, 1.0]]),  # (a + 2) / 6
    ],
)
def test_normalize_modes_on_a_2x2_map(mode: str, expected: list[list[float]]) -> None:
    np.testing.assert_allclose(render.normalize(A, mode=mode), expected, rtol=0, atol=1e-12)


def test_percentile_clipping_hand_computed() -> None:
    # sorted |a| = 1, 2, 3, 4, 100; rank 0.8 * 4 = 3.2 -> 4 + 0.2 * (100 - 4) = 23.2
    a = np.array([[1.0, 2.0, 3.0, 4.0, 100.0]])
    expected = [[1 / 23.2, 2 / 23.2, 3 / 23.2, 4 / 23.2, 1.0]]
    np.testing.assert_allclose(render.normalize(a, percentile=80), expected, atol=1e-12)
    signed = render.normalize(-a, mode="signed", percentile=80)
    np.testing.assert_allclose(signed, -np.array(expected), atol=1e-12)
    # minmax at p=75 on 0, 1, 2, 3, 100: lo = P25 = 1, hi = P75 = 3
    b = np.array([[0.0, 1.0, 2.0, 3.0, 100.0]])
    np.testing.assert_allclose(
        render.normalize(b, mode="minmax", percentile=75), [[0, 0, 0.5, 1, 1]], atol=1e-12
    )


def test_sparse_map_falls_back_to_the_maximum() -> None:
    a = np.zeros((10, 10))
    a[2, 3], a[5, 5] = 5.0, -7.0  # the 50th percentile of max(a, 0) is 0
    out = render.normalize(a, mode="positive", percentile=50)
    expected = np.zeros((10, 10))
    expected[2, 3] = 1.0
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode", ["absolute", "positive", "signed", "minmax"])
@pytest.mark.parametrize("shape", [(3, 3), (3, 4, 4), (1, 1, 5, 5)])
def test_zero_maps_give_zeros_not_nan(mode: str, shape: tuple[int, ...]) -> None:
    out = render.normalize(np.zeros(shape), mode=mode, percentile=99.5)
    assert out.shape == shape[-2:]
    assert np.all(out == 0.0)


def test_constant_map_minmax_is_zero_and_positive_of_negative_map_is_zero() -> None:
    assert np.all(render.normalize(np.full((2, 3), 7.0), mode="minmax") == 0.0)
    assert np.all(render.normalize(-np.ones((2, 3)), mode="positive") == 0.0)


# channels at pixel (0, 0): (1, -3, 2); at pixel (0, 1): (-2, 4, 2)
CHW = np.array([[[1.0, -2.0]], [[-3.0, 4.0]], [[2.0, 2.0]]])


@pytest.mark.parametrize(
    ("reduce", "expected"),
    [
        ("sum", [[0.0, 4.0]]),
        ("abs-sum", [[6.0, 8.0]]),
        ("max-abs", [[3.0, 4.0]]),
        ("norm", [[np.sqrt(14.0), np.sqrt(24.0)]]),
    ],
)
def test_channel_reductions_chw_and_hwc(reduce: str, expected: list[list[float]]) -> None:
    np.testing.assert_allclose(render.reduce_channels(CHW, reduce), expected, atol=1e-12)
    hwc = np.transpose(CHW, (1, 2, 0))
    got = render.reduce_channels(hwc, reduce, channel_axis=-1)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # normalize reduces first: "absolute" of the reduced map divides by its largest |value|
    peak = np.max(np.abs(expected))
    np.testing.assert_allclose(
        render.normalize(CHW, reduce=reduce), np.abs(expected) / peak, atol=1e-12
    )


def test_hidden_layer_attribution_needs_channel_axis() -> None:
    attr = np.ones((16, 5, 5))
    np.testing.assert_array_equal(render.reduce_channels(attr, "sum", channel_axis=0), 16.0)
    with pytest.raises(ConvscopeError, match="channel_axis"):
        render.reduce_channels(attr, "sum")


def test_normalize_rejects_bad_input_with_a_hint() -> None:
    with pytest.raises(ConvscopeError, match="NaN"):
        render.normalize(np.array([[np.nan, 1.0]]))
    with pytest.raises(ConvscopeError, match="'absolute'"):
        render.normalize(A, mode="absolut")
    with pytest.raises(ConvscopeError, match="'max-abs'"):
        render.normalize(CHW, reduce="maxabs")
    with pytest.raises(ConvscopeError, match="percentile"):
        render.normalize(A, percentile=0)
    with pytest.raises(ConvscopeError, match="percentile"):
        render.normalize(A, mode="minmax", percentile=30)


def test_torch_tensors_are_accepted_and_left_untouched() -> None:
    t = torch.tensor(CHW, requires_grad=True)
    before = t.detach().clone()
    got = render.normalize(t * 1.0, mode="signed", reduce="sum")
    np.testing.assert_allclose(got, [[0.0, 1.0]], atol=1e-12)
    assert torch.equal(t.detach(), before)
    bf16 = torch.tensor([[0.5, -1.0]], dtype=torch.bfloat16)
    np.testing.assert_allclose(render.normalize(bf16), [[0.5, 1.0]])


_magnitudes = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))


@settings(max_examples=50, deadline=None)
@given(
    a=arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=_magnitudes),
    mode=st.sampled_from(["absolute", "positive", "signed", "minmax"]),
    percentile=st.floats(50.0, 100.0),
    scale=st.floats(1e-2, 1e2),
)
def test_normalize_range_and_scale_invariance(
    a: np.ndarray, mode: str, percentile: float, scale: float
) -> None:
    out = render.normalize(a, mode=mode, percentile=percentile)
    assert np.all(np.isfinite(out))
    low = -1.0 if mode == "signed" else 0.0
    assert out.min() >= low and out.max() <= 1.0
    # a positive rescaling of the attribution must not change the picture
    np.testing.assert_allclose(
        render.normalize(a * scale, mode=mode, percentile=percentile), out, atol=1e-9
    )
    if mode == "signed":  # the sign of every pixel survives
        assert np.all(np.sign(out) == np.sign(a))


# --------------------------------------------------------------------------- colour maps


@pytest.mark.parametrize(
    ("cmap", "values", "colours"),
    [
        ("viridis", [0.0, 1.0], [(68, 1, 84), (253, 231, 37)]),
        ("inferno", [0.0, 1.0], [(0, 0, 4), (252, 255, 164)]),
        ("gray", [0.0, 1.0], [(0, 0, 0), (255, 255, 255)]),
        ("coolwarm", [-1.0, 0.0, 1.0], [(59, 76, 192), (221, 220, 220), (180, 4, 38)]),
        ("bwr", [-1.0, 0.0, 1.0], [(0, 0, 255), (255, 255, 255), (255, 0, 0)]),
        ("viridis_r", [0.0, 1.0], [(253, 231, 37), (68, 1, 84)]),
    ],
)
def test_colormap_ends_are_the_anchor_colours(
    cmap: str, values: list[float], colours: list[tuple[int, int, int]]
) -> None:
    got = render.apply_colormap(np.array([values]), cmap)
    assert got.dtype == np.uint8 and got.shape == (1, len(values), 3)
    np.testing.assert_array_equal(got[0], colours)


def test_gray_is_the_identity_ramp_and_luts_have_256_entries() -> None:
    levels = np.arange(256)
    got = render.apply_colormap((levels / 255.0)[None, :], "gray")
    np.testing.assert_array_equal(got[0], np.stack([levels] * 3, axis=-1))
    for name in render.BUILTIN_COLORMAPS:
        assert render.get_colormap(name).lut.shape == (256, 3)


def test_bwr_is_mirror_symmetric_about_zero() -> None:
    x = np.linspace(-1.0, 1.0, 101)[None, :]
    pos, neg = render.apply_colormap(x, "bwr"), render.apply_colormap(-x, "bwr")
    np.testing.assert_array_equal(pos, neg[..., ::-1])  # red <-> blue


def test_builtin_maps_track_matplotlib() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    for name in ("viridis", "inferno", "coolwarm"):
        ours = render.get_colormap(name)
        u = np.linspace(0.0, 1.0, 256)  # position along the map
        x = 2.0 * u - 1.0 if ours.diverging else u  # the value that lands there
        got = render.apply_colormap(x[None, :], name)[0].astype(float)
        ref = np.asarray(matplotlib.colormaps[name](u))
        diff = np.abs(got - np.rint(ref[:, :3] * 255))
        assert diff.mean() < 2.0 and diff.max() <= 16, name
    magma = render.apply_colormap(np.array([[0.0, 1.0]]), "magma")[0]
    expected = np.rint(np.asarray(matplotlib.colormaps["magma"]([0.0, 1.0]))[:, :3] * 255)
    np.testing.assert_array_equal(magma, expected)


def test_apply_colormap_rejects_unnormalised_or_unknown() -> None:
    with pytest.raises(ConvscopeError, match="normalize"):
        render.apply_colormap(np.array([[0.0, 2.0]]), "viridis")
    with pytest.raises(ConvscopeError, match="normalize"):
        render.apply_colormap(np.array([[-0.5, 0.5]]), "inferno")  # signed into sequential
    with pytest.raises(ConvscopeError, match="NaN"):
        render.apply_colormap(np.array([[np.nan]]), "gray")
    with pytest.raises(ConvscopeError, match="'viridis'"):
        render.apply_colormap(np.zeros((2, 2)), "viridsi")


# --------------------------------------------------------------------------- images, resize


def test_layout_rule_and_explicit_channel_axis() -> None:
    hwc = np.random.default_rng(0).random((4, 5, 3))
    expected = np.rint(hwc * 255).astype(np.uint8)
    np.testing.assert_array_equal(render.to_rgb_uint8(hwc), expected)
    np.testing.assert_array_equal(render.to_rgb_uint8(np.transpose(hwc, (2, 0, 1))), expected)
    np.testing.assert_array_equal(render.to_rgb_uint8(torch.tensor(hwc).permute(2, 0, 1)), expected)
    np.testing.assert_array_equal(render.to_rgb_uint8(np.transpose(hwc, (2, 0, 1))[None]), expected)
    gray = np.array([[0.2, 1.0]])  # 0.2 * 255 = 51
    np.testing.assert_array_equal(render.to_rgb_uint8(gray), [[[51] * 3, [255] * 3]])
    np.testing.assert_array_equal(render.to_rgb_uint8(gray[None]), [[[51] * 3, [255] * 3]])
    assert render.channels_last(np.zeros((3, 4, 4))).shape == (4, 4, 3)  # CHW by the rule
    ambiguous = np.zeros((3, 5, 3))  # last dim 3: HWC by the rule; channel_axis=0 overrides
    assert render.channels_last(ambiguous).shape == (3, 5, 3)
    assert render.channels_last(ambiguous, channel_axis=0).shape == (5, 3, 3)
    with pytest.raises(ConvscopeError, match="channel_axis"):
        render.to_rgb_uint8(np.zeros((4, 5, 6)))


def test_image_values_are_checked() -> None:
    u8 = np.array([[[1, 2, 3]]], dtype=np.uint8)
    np.testing.assert_array_equal(render.to_rgb_uint8(u8), u8)
    with pytest.raises(ConvscopeError, match=r"\[0, 1\]"):
        render.to_rgb_uint8(np.array([[-0.4, 1.2]]))  # e.g. a mean/std-normalised image
    with pytest.raises(ConvscopeError, match="255"):
        render.to_rgb_uint8(np.array([[0, 300]]))


def test_resize_hand_computed() -> None:
    # centres of 4 outputs over 2 inputs sit at -0.25, 0.25, 0.75, 1.25 (clamped)
    up = render.resize(np.array([[0.0, 1.0]]), (1, 4))
    np.testing.assert_allclose(up, [[0.0, 0.25, 0.75, 1.0]], atol=1e-12)
    block = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    near = render.resize(block, (4, 4), "nearest")
    assert near.dtype == np.uint8
    np.testing.assert_array_equal(near, np.kron(block, np.ones((2, 2), dtype=np.uint8)))
    # shrinking by 2: triangle of half-width 2 around centres 0.5 and 2.5, renormalised
    down = render.resize(np.array([[1.0, 2.0, 3.0, 4.0]]), (1, 2))
    expected = [[(0.75 * 1 + 0.75 * 2 + 0.25 * 3) / 1.75, (0.25 * 2 + 0.75 * 3 + 0.75 * 4) / 1.75]]
    np.testing.assert_allclose(down, expected, atol=1e-12)


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize(("src", "dst"), [((7, 5), (23, 11)), ((7, 5), (3, 2)), ((16, 9), (5, 27))])
def test_resize_matches_pillow(method: str, src: tuple[int, int], dst: tuple[int, int]) -> None:
    # an independent implementation: PIL's float ("F") resampling, anti-aliased when shrinking
    a = np.random.default_rng(sum(src + dst)).random(src).astype(np.float32)
    resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    ref = np.asarray(Image.fromarray(a).resize(dst[::-1], resample[method]))
    np.testing.assert_allclose(render.resize(a, dst, method), ref, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    a=arrays(np.float64, st.tuples(st.integers(1, 7), st.integers(1, 7)),
             elements=st.floats(0.0, 1.0)),
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    method=st.sampled_from(["bilinear", "nearest"]),
)
def test_resize_is_a_convex_combination(a: np.ndarray, size: tuple[int, int], method: str) -> None:
    out = render.resize(a, size, method)
    assert out.shape == size
    assert out.min() >= a.min() - 1e-12 and out.max() <= a.max() + 1e-12
    np.testing.assert_allclose(render.resize(np.full_like(a, 0.3), size, method), 0.3)


# --------------------------------------------------------------------------- overlay


def test_overlay_alpha_extremes() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    heat = np.array([[0.0, 0.25], [0.75, 1.0]])
    np.testing.assert_array_equal(render.overlay(image, heat, alpha=0.0), image)
    coloured = render.apply_colormap(heat, "viridis")  # nearest x2 = each pixel as a 2x2 block
    expected = np.repeat(np.repeat(coloured, 2, axis=0), 2, axis=1)
    got = render.overlay(image, heat, alpha=1.0, cmap="viridis", interpolation="nearest")
    np.testing.assert_array_equal(got, expected)


def test_overlay_blend_hand_computed() -> None:
    image = np.full((1, 3), 100, dtype=np.uint8)  # gray, expanded to RGB
    heat = np.array([[0.0, 0.2, 1.0]])  # gray map colours: 0, 51, 255
    # constant alpha 0.25: 0.75 * 100 + 0.25 * colour
    got = render.overlay(image, heat, alpha=0.25, cmap="gray")
    np.testing.assert_array_equal(got[0, :, 0], [75, 88, 139])  # 75, 87.75, 138.75
    # alpha 0.25 * heat: weights 0, 0.05, 0.25
    got = render.overlay(image, heat, alpha=0.25, cmap="gray", alpha_from_heat=True)
    np.testing.assert_array_equal(got[0, :, 0], [100, 98, 139])  # 100, 97.55, 138.75
    float_image = np.full((3, 1, 3), 100 / 255)  # CHW float gives the same blend
    got = render.overlay(
        float_image, heat, alpha=0.25, cmap="gray", alpha_from_heat=True, channel_axis=0
    )
    np.testing.assert_array_equal(got[0, :, 0], [100, 98, 139])


def test_overlay_rejects_bad_heat_or_alpha() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ConvscopeError, match="2-D"):
        render.overlay(image, np.zeros((3, 2, 2)))
    with pytest.raises(ConvscopeError, match="alpha"):
        render.overlay(image, np.zeros((2, 2)), alpha=1.5)
    with pytest.raises(ConvscopeError, match="normalize"):
        render.overlay(image, np.full((2, 2), 5.0))


# --------------------------------------------------------------------------- grid

T1 = np.array([[10, 20], [30, 40]], dtype=np.uint8)
T2 = np.array([[50, 60], [70, 80]], dtype=np.uint8)


def test_grid_of_two_tiles_exact() -> None:
    got = render.grid([T1, T2], ncols=2, pad=1)
    w = 255
    expected = np.array(
        [
            [w, w, w, w, w, w, w],
            [w, 10, 20, w, 50, 60, w],
            [w, 30, 40, w, 70, 80, w],
            [w, w, w, w, w, w, w],
        ],
        dtype=np.uint8,
    )
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.stack([expected] * 3, axis=-1))


def test_grid_rows_background_and_batches() -> None:
    got = render.grid([T1, T2, T1], ncols=2, pad=1, background=0)
    assert got.shape == (7, 7, 3)  # 2 rows: 2 * 2 + 3 pads
    np.testing.assert_array_equal(got[4:6, 1:3, 0], T1)
    assert np.all(got[4:6, 4:6] == 0)  # the empty slot is background
    batch = torch.stack([torch.tensor(T1), torch.tensor(T2)])[:, None]  # N x 1 x H x W
    np.testing.assert_array_equal(render.grid(batch, ncols=2, pad=1), render.grid([T1, T2], pad=1))


def test_grid_resizes_tiles_to_a_common_size() -> None:
    big = np.full((4, 4), 99, dtype=np.uint8)
    got = render.grid([T1, big], ncols=2, pad=1, interpolation="nearest")
    assert got.shape == (6, 11, 3)
    np.testing.assert_array_equal(got[1:5, 1:5, 0], np.kron(T1, np.ones((2, 2), np.uint8)))
    np.testing.assert_array_equal(got[1:5, 6:10, 0], big)


@pytest.mark.parametrize("position", ["below", "above"])
def test_grid_labels_are_drawn_in_their_band(position: str) -> None:
    tiles = [np.zeros((20, 40), np.uint8), np.zeros((20, 40), np.uint8)]
    got = render.grid(tiles, labels=["a", "b"], ncols=2, pad=1, label_height=14,
                      label_position=position)
    assert got.shape == (1 + 20 + 14 + 1, 1 + 40 + 1 + 40 + 1, 3)
    tile_rows = slice(1, 21) if position == "below" else slice(15, 35)
    band_rows = slice(21, 35) if position == "below" else slice(1, 15)
    assert np.all(got[tile_rows, 1:41] == 0)  # the tile is untouched by the text
    for left in (1, 42):
        band = got[band_rows, left : left + 40]
        assert (band < 200).any(), "no ink in the label band"
    assert np.all(got[0] == 255) and np.all(got[-1] == 255)


def test_grid_row_labels_add_a_column_and_counts_are_checked() -> None:
    plain = render.grid([T1, T2], ncols=1, pad=1)
    labelled = render.grid([T1, T2], ncols=1, pad=1, row_labels=["first", "second"])
    assert labelled.shape[0] == plain.shape[0] and labelled.shape[1] > plain.shape[1]
    np.testing.assert_array_equal(labelled[1:3, -3:-1, 0], T1)
    with pytest.raises(ConvscopeError, match="labels"):
        render.grid([T1, T2], labels=["only one"])
    with pytest.raises(ConvscopeError, match="no images"):
        render.grid([])


# --------------------------------------------------------------------------- png


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_round_trip(tmp_path: Path, channels: int) -> None:
    shape = (5, 7, channels) if channels > 1 else (5, 7)
    image = np.random.default_rng(channels).integers(0, 256, shape, dtype=np.uint8)
    path = render.save_png(tmp_path / "a" / "b" / "img.png", image)
    with Image.open(path) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), image)
    with Image.open(io.BytesIO(render.to_png_bytes(image))) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), image)
    assert os.listdir(path.parent) == ["img.png"]  # no temporary file left behind


def test_save_png_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "img.png"
    render.save_png(path, np.zeros((2, 2), np.uint8))
    old = path.read_bytes()
    render.save_png(path, np.full((2, 2), 0.2))  # float in [0, 1]: round(0.2 * 255) = 51
    with Image.open(path) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), np.full((2, 2), 51))

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    current = path.read_bytes()
    assert current != old
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        render.save_png(path, np.full((2, 2), 255, np.uint8))
    assert path.read_bytes() == current  # the old file is intact
    assert os.listdir(tmp_path) == ["img.png"]  # and the temporary file is gone


# --------------------------------------------------------------------------- html


def test_html_page_embeds_pngs_and_escapes_text(tmp_path: Path) -> None:
    image = np.random.default_rng(3).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    page = render.html_page(
        "<script>alert('t')</script>",
        {
            "A & B": [
                ("cap <i>", image),
                "note <b>bold</b>",
                render.figure(image, "wide", wide=True),
            ],
            "Raw": [render.Html("<p id='trusted'>ok</p>")],
        },
        subtitle="x < y",
    )
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "A &amp; B" in page and "cap &lt;i&gt;" in page and "note &lt;b&gt;bold" in page
    assert "x &lt; y" in page and "<p id='trusted'>ok</p>" in page
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2
    for data in uris:
        with Image.open(io.BytesIO(base64.b64decode(data))) as decoded:
            np.testing.assert_array_equal(np.asarray(decoded), image)
    assert page.startswith("<!DOCTYPE html>") and page.count("<section>") == 2
    assert 'class="pixelated"' in page  # a 6x4 image is shown with crisp pixels
    path = render.save_html(tmp_path / "r" / "page.html", page)
    assert path.read_text(encoding="utf-8") == page


def test_img_tag_attributes() -> None:
    tag = render.img_tag(np.zeros((300, 200)), alt='"q"')
    assert 'width="200" height="300"' in tag and 'alt="&quot;q&quot;"' in tag
    assert "pixelated" not in tag


# --------------------------------------------------------------------------- display kinds


def test_heat_magnitude_sums_absolute_values_over_channels() -> None:
    a = np.array([[[1.0, -2.0], [0.0, 4.0]], [[-1.0, 1.0], [1.0, 1.0]]])  # C x H x W, C = 2
    # m = |a_0| + |a_1| = [[2, 3], [1, 5]]; P_99.5 of (1, 2, 3, 5): r = 2.985 -> 3 + 0.985 * 2 = 4.97
    expected = [[2 / 4.97, 3 / 4.97], [1 / 4.97, 1.0]]
    np.testing.assert_allclose(render.heat(a, "magnitude"), expected, rtol=1e-12)


def test_heat_positive_keeps_the_positive_part_of_the_channel_sum() -> None:
    a = np.array([[[1.0, -2.0], [0.0, 4.0]], [[-1.0, 1.0], [1.0, 1.0]]])
    # s = a_0 + a_1 = [[0, -1], [1, 5]] -> max(s, 0) = [[0, 0], [1, 5]]; P_99.5 of (0, 0, 1, 5) = 1 + 0.985 * 4 = 4.94
    np.testing.assert_allclose(render.heat(a, "positive"), [[0.0, 0.0], [1 / 4.94, 1.0]], rtol=1e-12)
    cam = torch.tensor([[[0.0, 2.0], [1.0, 4.0]]])  # a CAM as methods return it: 1 x H x W, a tensor
    np.testing.assert_allclose(render.heat(cam, "positive"), [[0.0, 2 / 3.97], [1 / 3.97, 1.0]], rtol=1e-6)


def test_heat_relative_spans_the_maps_own_range() -> None:
    np.testing.assert_allclose(render.heat(np.array([[1.0, 2.0], [3.0, 5.0]]), "relative"), [[0.0, 0.25], [0.5, 1.0]])
    # a RISE-like map: the same value in every channel, all near one level (the mean score)
    level = np.array([[10.0, 10.5], [11.0, 10.0]])
    rise = np.stack([level] * 3)
    # s = 3 * level = [[30, 31.5], [33, 30]] -> (s - 30) / 3
    np.testing.assert_allclose(render.heat(rise, "relative"), [[0.0, 0.5], [1.0, 0.0]])
    assert render.heat(rise, "magnitude").min() > 0.9  # scaled from 0, the same map is near-uniform
    np.testing.assert_array_equal(render.heat(np.full((2, 2), 7.0), "relative"), np.zeros((2, 2)))  # no spread: zeros


def test_every_display_kind_has_labels_and_unknown_kinds_are_refused() -> None:
    assert set(render.DISPLAY_KINDS) == {"magnitude", "positive", "relative"}
    for kind in render.DISPLAY_KINDS:
        d = render.get_display(kind)
        assert d.kind == kind and d.low and d.high and d.meaning
    with pytest.raises(ConvscopeError, match="unknown display kind 'magnitudes'.*magnitude"):
        render.heat(np.ones((2, 2)), "magnitudes")


# --------------------------------------------------------------------------- colour bar

_FONT_12 = ImageFont.load_default(size=12)
_LH = int(np.ceil(_FONT_12.getbbox("Ag")[3] - _FONT_12.getbbox("Ag")[1])) + 4  # line height + 4


def _hex(colour: str) -> list[int]:
    return [int(colour[i : i + 2], 16) for i in (1, 3, 5)]


def test_colorbar_geometry_and_end_colours() -> None:
    pad, thickness = 4, 10
    bar = render.colorbar("inferno", "a", "b", length=200, thickness=thickness, pad=pad)
    assert bar.shape == (2 * pad + thickness + _LH, 2 * pad + 200, 3) and bar.dtype == np.uint8
    strip = bar[pad : pad + thickness, pad : pad + 200]
    assert np.all(strip == strip[:1])  # every row of the bar is the same ramp
    np.testing.assert_array_equal(strip[0, 0], _hex("#000004"))  # inferno's first anchor
    np.testing.assert_array_equal(strip[0, -1], _hex("#fcffa4"))  # and its last
    assert np.all(bar[:pad] == 255) and np.all(bar[pad : pad + thickness, :pad] == 255)  # the frame is background
    labels = bar[pad + thickness :]
    assert (labels[:, : pad + 20] < 128).any() and (labels[:, -pad - 20 :] < 128).any()  # "a" left, "b" right
    assert np.all(labels[:, 60:140] == 255)  # nothing between them


def test_colorbar_of_a_diverging_map_is_centred_on_its_middle_colour() -> None:
    bar = render.colorbar("bwr", "-1", "1", length=201, thickness=4, pad=0)
    ramp = bar[0]
    np.testing.assert_array_equal(ramp[0], [0, 0, 255])
    np.testing.assert_array_equal(ramp[100], [255, 255, 255])  # column 100 of 201 holds t = 0
    np.testing.assert_array_equal(ramp[200], [255, 0, 0])


def test_colorbar_grows_to_fit_long_labels_and_puts_the_title_above() -> None:
    low, high = "the lowest value of all", "the highest value of all"
    need = int(np.ceil(_FONT_12.getlength(low))) + int(np.ceil(_FONT_12.getlength(high))) + 24
    bar = render.colorbar("gray", low, high, title="what", length=50, thickness=6, pad=2)
    assert need > 50 and bar.shape == (2 * 2 + _LH + 6 + _LH, 2 * 2 + need, 3)
    ramp = bar[2 + _LH, 2 : 2 + need, 0]  # the bar starts under the title band
    assert ramp[0] == 0 and ramp[-1] == 255 and np.all(np.diff(ramp.astype(int)) >= 0)
    assert (bar[2 : 2 + _LH] < 128).any()  # the title is drawn
    with pytest.raises(ConvscopeError, match="colour bar geometry"):
        render.colorbar("gray", "0", "1", length=1)


def test_stack_centres_images_one_under_another() -> None:
    top = np.full((1, 4), 10, np.uint8)
    bottom = np.full((2, 2), 20, np.uint8)
    w = 255
    expected = np.array([[10, 10, 10, 10], [w, w, w, w], [w, 20, 20, w], [w, 20, 20, w]], np.uint8)
    np.testing.assert_array_equal(render.stack([top, bottom], gap=1), np.stack([expected] * 3, axis=-1))


# --------------------------------------------------------------------------- links


def test_link_is_relative_escaped_and_a_page_item() -> None:
    tag = render.link("a <b> & c", Path("atlas dir") / "pages" / "index.html", before="see ", after=" <now>")
    assert tag == '<p class="note">see <a href="atlas%20dir/pages/index.html">a &lt;b&gt; &amp; c</a> &lt;now&gt;</p>'
    assert render.link("x", "page.html?a=1&b=2#top") == '<p class="note"><a href="page.html?a=1&amp;b=2#top">x</a></p>'
    page = render.html_page("t", {"S": [tag]})
    assert tag in page  # inserted as markup, not escaped again


@pytest.mark.parametrize("href", ["/abs/index.html", "https://example.com/x", "javascript:alert(1)", "//host/x", ""])
def test_link_refuses_targets_that_are_not_relative(href: str) -> None:
    with pytest.raises(ConvscopeError, match="not relative"):
        render.link("x", href)


# --------------------------------------------------------------------------- imports


def test_import_does_not_pull_in_matplotlib_or_torch() -> None:
    code = (
        "import convscope.render, sys; "
        "heavy = [m for m in ('matplotlib', 'torch', 'tensorflow') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bar_chart_bars_are_proportional_and_nan_draws_none() -> None:
    from convscope.render.bars import bar_chart

    picture = bar_chart(["a", "b", "c", "d"], [1.0, 0.5, float("nan"), -0.25], reference=1.0, title="t")
    blue = (picture == np.array([31, 119, 180], dtype=np.uint8)).all(2)
    red = (picture == np.array([214, 39, 40], dtype=np.uint8)).all(2)
    rows = blue.sum(1) + red.sum(1)
    bars = [r for r in np.split(np.arange(len(rows)), np.where(np.diff((rows > 0).astype(int)) != 0)[0] + 1)
            if rows[r[0]] > 0]
    widths = [int(rows[r].max()) for r in bars]
    assert len(bars) == 3  # a, b and d; the NaN row has none
    assert widths[0] == pytest.approx(2 * widths[1], abs=2) and widths[0] == pytest.approx(4 * widths[2], abs=2)
    assert red.any() and red[:, :].sum() == pytest.approx(widths[2] * len(bars[2]), rel=0.1)
    with pytest.raises(ConvscopeError, match="one label per value"):
        bar_chart(["a"], [1.0, 2.0])
