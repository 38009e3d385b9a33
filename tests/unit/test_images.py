"""Images in: exact preprocessing on small images, and a clear error for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope.errors import ConvscopeError
from convscope.images import Preprocess, load_images


def _write(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_crop_and_normalise_exact(tmp_path: Path) -> None:
    arr = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    _write(tmp_path / "a.png", arr)
    pre = Preprocess(size=4, crop=4, mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 1.0))
    batch = load_images(tmp_path / "a.png", pre)
    assert np.array_equal(batch.pixels[0], arr[:, 1:5])  # centre crop of the 6 columns, no resize
    expected = (arr[:, 1:5].astype(np.float32) / 255 - np.array([0.5, 0.25, 0.0])) / np.array([0.5, 0.5, 1.0])
    np.testing.assert_allclose(batch.tensor[0].permute(1, 2, 0).numpy(), expected, rtol=0, atol=1e-6)
    assert np.array_equal(pre.to_pixels(batch.tensor)[0], arr[:, 1:5])


def test_resize_shorter_side_then_crop(tmp_path: Path) -> None:
    _write(tmp_path / "b.png", np.full((20, 40, 3), 77, np.uint8))
    batch = load_images([tmp_path], Preprocess(size=10, crop=8))
    assert batch.pixels.shape == (1, 8, 8, 3) and (batch.pixels == 77).all() and batch.names == ["b.png"]


def test_bad_inputs(tmp_path: Path) -> None:
    pre = Preprocess(size=8, crop=8)
    with pytest.raises(ConvscopeError, match="no such image file"):
        load_images(tmp_path / "missing.png", pre)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvscopeError, match="contains no images"):
        load_images(tmp_path / "empty", pre)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ConvscopeError, match="cannot read .*bad.png"):
        load_images(tmp_path / "bad.png", pre)


def test_skip_bad_lists_what_was_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "zbad.jpg").write_bytes(b"garbage")
    batch = load_images(tmp_path, Preprocess(size=8, crop=8), skip_bad=True)
    assert batch.names == ["good.png"] and [Path(p).name for p, _ in batch.skipped] == ["zbad.jpg"]
