"""Yeh et al.'s metrics against Quantus 0.6: max-sensitivity equals ``quantus.MaxSensitivity`` fed the
same shifts; Quantus's ``Infidelity`` is shown to be another quantity (a deterministic, cumulative
raster removal of patches), which is why Captum is infidelity's oracle (tests/unit). Here because
importing quantus imports TensorFlow (tests/conftest.py has imported torchvision before it)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed: pip install 'convscope[tf]'")

import torch  # noqa: E402

quantus = pytest.importorskip("quantus")
from torch import nn  # noqa: E402

from convscope.evaluate.draws import keyed_draws  # noqa: E402
from convscope.evaluate.infidelity import infidelity  # noqa: E402
from convscope.evaluate.sensitivity import max_sensitivity  # noqa: E402
from convscope.methods.gradient import Saliency  # noqa: E402

K = 4


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                        nn.Linear(36, 3)).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return net, x, np.array([0, 2, 1])


def test_max_sensitivity_equals_quantus_with_the_same_shifts(case):
    net, x, y = case
    radius, seed = 0.1, 3
    samples = torch.arange(len(x)).repeat_interleave(K)
    shifts = radius * (2 * keyed_draws("uniform", seed, samples, torch.arange(K).repeat(len(x)), x.shape[1:], "cpu") - 1)
    shifts = shifts.view(len(x), K, -1).numpy()
    step = iter(range(K))

    def replay(arr: np.ndarray, indices: np.ndarray, **kwargs) -> np.ndarray:
        return arr + shifts[:, next(step)]  # Quantus asks for draw k of the whole batch at step k

    def explain(model, inputs, targets, **kwargs) -> np.ndarray:
        return Saliency(net).attribute(torch.as_tensor(inputs), torch.as_tensor(targets).tolist()).numpy()

    metric = quantus.MaxSensitivity(nr_samples=K, perturb_func=replay, normalise=False, abs=False,
                                    disable_warnings=True)
    want = metric(model=net, x_batch=x.numpy(), y_batch=y, a_batch=None, explain_func=explain, device="cpu",
                  batch_size=len(x))
    ours = max_sensitivity(Saliency(net), x, torch.tensor(y), radius=radius, n_perturb_samples=K, seed=seed)
    assert np.abs(ours.numpy() - np.array(want)).max() < 1e-5 * max(want)


def test_quantus_infidelity_repeats_one_deterministic_perturbation(case):
    """Quantus's ``n_perturb_samples`` repeats give the same value (its patches are removed in a fixed
    order, with a fixed baseline), so its "expectation" is over no randomness; convscope draws."""
    net, x, y = case
    maps = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    kwargs = dict(model=net, x_batch=x.numpy(), y_batch=y, a_batch=maps.numpy(), device="cpu")
    one = quantus.Infidelity(n_perturb_samples=1, perturb_patch_sizes=[4], disable_warnings=True)(**kwargs)
    three = quantus.Infidelity(n_perturb_samples=3, perturb_patch_sizes=[4], disable_warnings=True)(**kwargs)
    assert np.allclose(one, three)
    ours = [infidelity(net, x, y, maps, n_perturb_samples=3, seed=s) for s in (0, 1)]
    assert not torch.allclose(ours[0], ours[1])
