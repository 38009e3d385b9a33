"""Robustness transforms: naive slicing / numpy oracles, exact 90-degree rotations, and randomness
drawn only from the generator passed in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convscope.errors import ConvscopeError
from convscope.featurevis.transforms import (
    Jitter,
    Pad,
    RandomAffine,
    RandomRotate,
    RandomScale,
    Resize,
    compose,
    standard,
)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


X = torch.rand(2, 3, 9, 9, generator=_g(42))


def test_pad_constant_and_reflect_match_numpy() -> None:
    out = Pad(2, value=0.5)(X, _g())
    np.testing.assert_array_equal(out.numpy(), np.pad(X.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)),
                                                      constant_values=0.5))
    out = Pad(3, value=None)(X, _g())
    np.testing.assert_array_equal(out.numpy(), np.pad(X.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)), mode="reflect"))


def test_jitter_is_a_crop_at_an_offset_drawn_from_the_generator() -> None:
    seen = set()
    for seed in range(40):
        out = Jitter(3)(X, _g(seed))
        assert out.shape == (2, 3, 6, 6)
        dy, dx = torch.randint(4, (2,), generator=_g(seed)).tolist()  # the same draw, made here
        assert torch.equal(out, X[:, :, dy:dy + 6, dx:dx + 6])
        seen.add((dy, dx))
    assert len(seen) > 8  # offsets vary


def test_random_scale_sizes_and_identity() -> None:
    sizes = {RandomScale([0.5, 1.0, 2.0])(X, _g(s)).shape[-1] for s in range(30)}
    assert sizes == {4, 9, 18}  # round(9 * 0.5) = 4 (banker's rounding of 4.5)
    assert torch.equal(RandomScale([1.0])(X, _g()), X)


def test_rotation_by_90_degrees_is_rot90_counter_clockwise() -> None:
    out = RandomRotate([90])(X, _g())
    torch.testing.assert_close(out, torch.rot90(X, 1, dims=(2, 3)), rtol=0, atol=1e-5)
    assert torch.equal(RandomRotate([0])(X, _g()), X)
    wide = torch.rand(1, 1, 4, 6, generator=_g(1))
    half_turn = RandomRotate([180])(wide, _g())  # non-square: the aspect ratio is undone
    torch.testing.assert_close(half_turn, torch.rot90(wide, 2, dims=(2, 3)), rtol=0, atol=1e-5)


def test_random_affine_shifts_fill_and_rotates() -> None:
    value = 0.25
    for seed in range(10):  # a pure shift: the image moved by whole pixels, the gap filled with value
        out = RandomAffine(shift=3, value=value)(X, _g(seed))
        g = _g(seed)  # the same draws, made here: scale and angle (one choice each), then the shift
        torch.randint(1, (1,), generator=g), torch.randint(1, (1,), generator=g)
        dy, dx = (torch.randint(7, (2,), generator=g) - 3).tolist()
        padded = F.pad(X, (3, 3, 3, 3), value=value)
        torch.testing.assert_close(out, padded[:, :, 3 + dy:12 + dy, 3 + dx:12 + dx], rtol=0, atol=1e-5)
    torch.testing.assert_close(RandomAffine(degrees=[90])(X, _g()), RandomRotate([90])(X, _g()), rtol=0, atol=1e-5)
    zoomed_out = RandomAffine(scales=[0.5], value=value)(X, _g())
    assert torch.allclose(zoomed_out[:, :, 0, 0], torch.tensor(value))  # corners now lie outside the image
    centre = RandomAffine(scales=[3.0], degrees=[30])(X, _g())[:, :, 4, 4]
    torch.testing.assert_close(centre, X[:, :, 4, 4], rtol=0, atol=1e-5)  # the centre stays


def test_resize_and_standard_recipe_end_at_the_requested_size() -> None:
    assert Resize(5)(X, _g()).shape == (2, 3, 5, 5)
    assert Resize((9, 9))(X, _g()) is X
    t = standard(9)
    for seed in range(5):
        assert t(X, _g(seed)).shape == X.shape


def test_compose_applies_in_order_and_same_seed_gives_same_result() -> None:
    t = compose(Pad(2), Jitter(2), RandomScale([0.8, 1.2]), RandomRotate(range(-20, 21)))
    state = torch.get_rng_state()
    a, b, c = t(X, _g(1)), t(X, _g(1)), t(X, _g(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never used
    g = _g(3)
    manual = Jitter(2)(Pad(2)(X, g), g)
    assert torch.equal(compose(Pad(2), Jitter(2))(X, _g(3)), manual)


def test_transforms_are_differentiable() -> None:
    x = X.clone().requires_grad_()
    standard(9)(x, _g()).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("call", [
    lambda: Pad(-1), lambda: Jitter(1.5), lambda: RandomScale([]), lambda: RandomScale([0.0]),
    lambda: RandomRotate([]), lambda: Resize(0), lambda: RandomAffine(shift=-1), lambda: RandomAffine(degrees=[]), lambda: compose("jitter"),  # type: ignore[arg-type]
    lambda: Jitter(9)(X, _g()),
])
def test_bad_input_is_a_convscope_error(call) -> None:
    with pytest.raises(ConvscopeError):
        call()
