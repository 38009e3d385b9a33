"""Perturbation curves (deletion, insertion, pixel flipping, region perturbation) against a naive
per-sample, per-step loop written here: Python's ``sorted`` ranks the pixels, each changed copy is
built pixel by pixel and scored by its own forward pass. Quantus's curves are compared in
tests/tf/test_quantus_anchor.py (importing Quantus imports TensorFlow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.evaluate import deletion, insertion, pixel_flipping, region_perturbation
from convscope.ops.tensors import gaussian_blur


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(5 * 5 * 4, 6)).eval()


@pytest.fixture(scope="module")
def case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 11, 9, generator=g)
    maps = torch.randn(3, 1, 11, 9, generator=g)
    return _net(), x, torch.tensor([0, 4, 2]), maps


def _score(model: nn.Module, image: torch.Tensor, y: int) -> float:
    with torch.no_grad():
        return float(model(image[None]).softmax(1)[0, y])


def _order(values: list[float], most_first: bool = True) -> list[int]:
    """Positions sorted by value (highest first), ties by position: Python's stable sort."""
    return sorted(range(len(values)), key=lambda i: (-values[i] if most_first else values[i], i))


def _naive(model: nn.Module, start: torch.Tensor, end: torch.Tensor, maps: torch.Tensor, y: torch.Tensor,
           counts: list[int], most_first: bool = True) -> np.ndarray:
    rows = []
    for n in range(len(start)):
        order = _order(maps[n].sum(0).flatten().tolist(), most_first)
        width = start.shape[-1]
        row = []
        for k in counts:
            image = start[n].clone()
            for p in order[:k]:
                image[:, p // width, p % width] = end[n][:, p // width, p % width]
            row.append(_score(model, image, int(y[n])))
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_deletion_equals_a_loop_of_single_passes(case, order: str) -> None:  # noqa: ANN001
    model, x, y, maps = case
    curve = deletion(model, x, y, maps, steps=6, order=order, max_batch=4)
    pixels = 11 * 9
    counts = [round(pixels * s / 6) for s in range(7)]
    expected = _naive(model, x, torch.zeros_like(x), maps, y, counts, most_first=order == "morf")
    np.testing.assert_allclose(curve.values.numpy(), expected, atol=1e-5)
    assert torch.allclose(curve.fractions, torch.linspace(0, 1, 7))
    assert curve.evaluations == 3 * 7
    np.testing.assert_allclose(curve.auc().numpy(), np.trapezoid(expected, np.linspace(0, 1, 7), axis=1), atol=1e-5)


def test_insertion_starts_blurred_and_ends_at_the_prediction(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    curve = insertion(model, x, y, maps, steps=5)
    blurred = gaussian_blur(x, 5.0)
    counts = [round(99 * s / 5) for s in range(6)]
    np.testing.assert_allclose(curve.values.numpy(), _naive(model, blurred, x, maps, y, counts), atol=1e-5)
    assert curve.values[1, -1] == pytest.approx(_score(model, x[1], 4), abs=1e-6)


def test_pixel_flipping_counts_whole_steps(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    curve = pixel_flipping(model, x, y, maps, pixels_in_step=20, baseline=-1.0)
    counts = [20, 40, 60, 80, 99]  # ceil(99 / 20) = 5 points, the last one clipped to all pixels
    np.testing.assert_allclose(curve.values.numpy(), _naive(model, x, torch.full_like(x, -1.0), maps, y, counts),
                               atol=1e-5)


def _cells(height: int, width: int, patch: int) -> list[list[tuple[int, int]]]:
    """A grid of ``patch`` cells centred on the image (padding split, the extra pixel after)."""
    top, left = (-height % patch) // 2, (-width % patch) // 2
    cells = []
    for r0 in range(-top, height, patch):
        for c0 in range(-left, width, patch):
            cells.append([(r, c) for r in range(max(r0, 0), min(r0 + patch, height))
                          for c in range(max(c0, 0), min(c0 + patch, width))])
    return cells


def test_region_perturbation_removes_the_most_relevant_cells_first(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    curve, reference = region_perturbation(model, x, y, maps, patch=4, regions=5, max_batch=7)
    cells = _cells(11, 9, 4)
    assert len(cells) == 9
    for n in range(3):
        sums = [sum(float(maps[n, 0, r, c]) for r, c in cell) for cell in cells]
        order = _order(sums)
        image = x[n].clone()
        assert reference[n] == pytest.approx(_score(model, x[n], int(y[n])), abs=1e-6)
        for k in range(5):
            for r, c in cells[order[k]]:
                image[:, r, c] = 0.0
            assert curve.values[n, k] == pytest.approx(_score(model, image, int(y[n])), abs=1e-5)
    aopc = (reference[:, None] - curve.values).sum(1) / 6
    assert torch.allclose(curve.aopc(reference), aopc)


def test_results_do_not_depend_on_max_batch(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    runs = [deletion(model, x, y, maps, steps=4, max_batch=b).values for b in (1, 5, None)]
    # equal up to float rounding: the convolution kernels may sum in another order per batch size
    assert torch.allclose(runs[0], runs[1], atol=1e-6) and torch.allclose(runs[1], runs[2], atol=1e-6)


def test_the_model_and_inputs_are_untouched(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x0, maps0 = x.clone(), maps.clone()
    try:
        deletion(model, x, y, maps, steps=3)
        assert model.training and all(m.training for m in model.modules())
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert torch.equal(x, x0) and torch.equal(maps, maps0)
    finally:
        model.eval()


def test_logits_on_request(case) -> None:  # noqa: ANN001
    model, x, y, maps = case
    curve = deletion(model, x, y, maps, steps=1, output="logit")
    with torch.no_grad():
        assert torch.allclose(curve.values[:, 0], model(x)[torch.arange(3), y], atol=1e-6)


@pytest.mark.parametrize(("call", "message"), [
    (lambda m, x, y, a: deletion(m, x, y, a[:, :, :5]), "do not fit inputs"),
    (lambda m, x, y, a: deletion(m, x, y, a * math.nan), "NaN"),
    (lambda m, x, y, a: deletion(m, x, [1, 2], a), "are not 3 class indices"),
    (lambda m, x, y, a: deletion(m, x, y, a, steps=0), "steps=0"),
    (lambda m, x, y, a: deletion(m, x, y, a, order="best"), "order='best'"),
    (lambda m, x, y, a: deletion(m, x, y, a, baseline="mean"), "baseline='mean'"),
    (lambda m, x, y, a: deletion(m, x, y, a, output="probs"), "output='probs'"),
    (lambda m, x, y, a: region_perturbation(m, x, y, a, patch=0), "patch=0"),
])
def test_bad_input_gets_a_clear_error(case, call, message: str) -> None:  # noqa: ANN001
    model, x, y, maps = case
    with pytest.raises(ConvscopeError, match=message):
        call(model, x, y, maps)


def test_many_evaluations_run_on_the_inference_twin_with_the_same_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above TWIN_MIN_WORK input elements the scores come from the folded, channels-last copy: equal
    to the model's own up to float rounding (and the model keeps its batch norm)."""
    from convscope.backends.torch.inference import TWIN_MIN_WORK, InferenceSession, exact_forward

    built = []
    real_build = InferenceSession.build.__func__
    monkeypatch.setattr(InferenceSession, "build", classmethod(lambda cls, *a, **k: built.append(1) or real_build(cls, *a, **k)))

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    g = torch.Generator().manual_seed(0)
    x, maps = torch.randn(2, 3, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g)
    assert 2 * 201 * x[0].numel() > TWIN_MIN_WORK
    fast = deletion(model, x, [0, 2], maps, steps=200, max_batch=64).values
    with exact_forward():
        exact = deletion(model, x, [0, 2], maps, steps=200, max_batch=64).values
    assert torch.allclose(fast, exact, atol=1e-5)
    assert built == [1] and isinstance(model[1], nn.BatchNorm2d)
