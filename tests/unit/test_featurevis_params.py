"""Image parameterizations against numpy oracles: the 1/f Fourier basis (numpy's own inverse
FFT and frequency grid), the colour square root (numpy's covariance), round trips of images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convscope.errors import ConvscopeError
from convscope.featurevis.params import (
    IMAGENET_COLOUR_SQRT,
    ImageParam,
    colour_sqrt,
    image,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _numpy_pixels(param: ImageParam) -> np.ndarray:
    """The image ``param`` should produce, computed with numpy from its raw tensor."""
    h, w = param.shape[2:]
    raw = param.tensor.detach().double().numpy()
    t = raw
    if param.fft:
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.fftfreq(w)[None, : w // 2 + 1]
        fx = np.abs(fx)  # numpy's fftfreq puts the Nyquist bin of even w at -0.5
        scale = 1.0 / np.maximum(np.sqrt(fx**2 + fy**2), 1.0 / max(h, w))
        t = np.fft.irfft2((raw[..., 0] + 1j * raw[..., 1]) * scale, s=(h, w), norm="ortho")
    if param.colour is not None:
        m = IMAGENET_COLOUR_SQRT.double().numpy()
        m = m / np.linalg.norm(m, axis=0).max()
        t = np.stack([sum(m[i, j] * t[:, j] for j in range(3)) for i in range(3)], axis=1)
    return 1 / (1 + np.exp(-t)) if param.valid == "sigmoid" else np.clip(t + 0.5, 0, 1)


@pytest.mark.parametrize("fft", [False, True])
@pytest.mark.parametrize("decorrelate", [False, True])
@pytest.mark.parametrize("valid", ["sigmoid", "clamp"])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_image_matches_numpy(fft: bool, decorrelate: bool, valid: str, size: tuple[int, int]) -> None:
    param = ImageParam((2, 3, *size), fft=fft, decorrelate=decorrelate, valid=valid, sd=0.5, generator=_generator())
    out = param()
    assert out.shape == (2, 3, *size) and out.dtype == torch.float32
    assert float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1
    np.testing.assert_allclose(out.detach().double().numpy(), _numpy_pixels(param), rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(2, 12), w=st.integers(2, 12), fft=st.booleans(), decorrelate=st.booleans(),
       valid=st.sampled_from(["sigmoid", "clamp"]), seed=st.integers(0, 1000))
def test_round_trip(h: int, w: int, fft: bool, decorrelate: bool, valid: str, seed: int) -> None:
    # pixels inside (0.01, 0.99): the sigmoid's inverse is finite there
    picture = torch.rand(2, 3, h, w, generator=_generator(seed)) * 0.98 + 0.01
    param = ImageParam.from_image(picture, fft=fft, decorrelate=decorrelate, valid=valid)
    torch.testing.assert_close(param(), picture, rtol=0, atol=2e-5)
    assert param.tensor.requires_grad and param.tensor.is_leaf


def test_fft_round_trip_of_a_real_image_and_its_gradient_reaches_every_coefficient() -> None:
    from convscope.data import Shapes

    picture = torch.stack([Shapes(2, seed=0)[i][0] for i in range(2)]).clamp(0.01, 0.99)
    param = ImageParam.from_image(picture, fft=True, decorrelate=True)
    torch.testing.assert_close(param(), picture, rtol=0, atol=2e-5)
    param().sum().backward()
    assert param.tensor.grad is not None and param.tensor.grad.shape == param.tensor.shape


def test_same_generator_same_tensor_and_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    a = image(3, 16, generator=_generator(5))
    b = image(3, 16, generator=_generator(5))
    c = image(3, 16, generator=_generator(6))
    assert torch.equal(a.tensor, b.tensor) and not torch.equal(a.tensor, c.tensor)
    ImageParam.from_image(torch.rand(1, 3, 4, 4, generator=_generator()))
    assert torch.equal(image(1, 4).tensor, image(1, 4, generator=_generator(0)).tensor)  # default: seed 0
    assert torch.equal(torch.get_rng_state(), state)


def test_colour_sqrt_is_a_square_root_of_the_covariance() -> None:
    g = _generator(1)
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.4], [0.0, 0.0, 0.6]])
    pixels = torch.einsum("ij,njhw->nihw", mix, torch.rand(8, 3, 6, 6, generator=g))
    m = colour_sqrt(pixels).double().numpy()
    cov = np.cov(pixels.double().numpy().transpose(1, 0, 2, 3).reshape(3, -1))  # the oracle
    np.testing.assert_allclose(m @ m.T, cov, rtol=1e-4, atol=1e-6)
    norms = np.linalg.norm(m, axis=0)
    assert np.all(np.diff(norms) <= 1e-7)  # columns by decreasing variance
    assert np.all(m[np.abs(m).argmax(0), range(3)] > 0)


def test_colour_sqrt_of_shapes_can_drive_a_parameterization() -> None:
    from convscope.data import Shapes

    batch = torch.stack([Shapes(16, seed=0)[i][0] for i in range(16)])
    param = ImageParam((1, 3, 8, 8), colour=colour_sqrt(batch), generator=_generator())
    assert param().shape == (1, 3, 8, 8)


@pytest.mark.parametrize("call", [
    lambda: ImageParam((1, 3, 8)),
    lambda: ImageParam((0, 3, 8, 8)),
    lambda: ImageParam((1, 3, 8, 8), valid="tanh"),  # type: ignore[arg-type]
    lambda: ImageParam((1, 1, 8, 8), decorrelate=True),
    lambda: ImageParam((1, 3, 8, 8), colour=torch.eye(2)),
    lambda: ImageParam((1, 3, 8, 8)).set_image(torch.rand(1, 3, 4, 4)),
    lambda: ImageParam.from_image(torch.rand(3, 8, 8)),
    lambda: colour_sqrt(torch.rand(3, 8, 8)),
])
def test_bad_input_is_a_convscope_error(call) -> None:
    with pytest.raises(ConvscopeError):
        call()
