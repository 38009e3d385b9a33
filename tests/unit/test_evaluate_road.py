"""ROAD (Rong et al. 2022) against a per-sample scipy.sparse solve and a naive loop over samples
and percentages (Quantus's ROAD: tests/tf/test_evaluate_quantus.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

from convscope.errors import ConvscopeError
from convscope.evaluate.draws import keyed_draws
from convscope.evaluate.road import linear_imputation, noisy_linear_imputation, road


def scipy_imputation(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """One sample ``[C, H, W]``: each removed pixel the weighted mean of its neighbours inside the
    image (direct 1/6, diagonal 1/12), all removed pixels solved together with scipy."""
    c, h, w = x.shape
    idx = np.flatnonzero(removed.ravel())
    var = -np.ones(h * w, dtype=int)
    var[idx] = np.arange(len(idx))
    entries, b = [], np.zeros((len(idx), c))
    for row, i in enumerate(idx):
        r0, c0 = divmod(int(i), w)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r0 + dr, c0 + dc
                if (dr, dc) == (0, 0) or not (0 <= rr < h and 0 <= cc < w):
                    continue
                weight = 1 / 12 if dr and dc else 1 / 6
                entries.append((row, row, weight))
                if var[rr * w + cc] >= 0:
                    entries.append((row, var[rr * w + cc], -weight))
                else:
                    b[row] += weight * x[:, rr, cc]
    out = x.reshape(c, -1).copy()
    if len(idx):
        rows, cols, values = zip(*entries)
        a = coo_matrix((values, (rows, cols)), shape=(len(idx), len(idx))).tocsc()  # duplicates add up
        out[:, idx] = spsolve(a, b).reshape(len(idx), c).T
    return out.reshape(c, h, w)


@pytest.mark.parametrize("size,fraction", [((9, 11), 0.3), ((9, 11), 0.97), ((20, 16), 0.9), ((5, 5), 0.0)])
def test_linear_imputation_equals_a_scipy_sparse_solve_per_sample(size, fraction):
    g = np.random.default_rng(0)
    x = g.random((3, 2, *size))
    removed = g.random((3, *size)) < fraction
    ours = linear_imputation(torch.tensor(x), torch.tensor(removed)).numpy()
    want = np.stack([scipy_imputation(a, r) for a, r in zip(x, removed)])
    assert np.abs(ours - want).max() < 1e-8
    assert np.array_equal(ours[~np.broadcast_to(removed[:, None], x.shape)], x[~np.broadcast_to(removed[:, None], x.shape)])


def test_imputation_of_a_smooth_image_is_exact_and_noise_is_seeded():
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    plane = (0.1 * yy + 0.05 * xx)[None, None].double()  # linear: every weighted mean of neighbours is exact
    removed = torch.zeros(1, 8, 8, dtype=torch.bool)
    removed[0, 2:6, 1:5] = True
    assert torch.allclose(linear_imputation(plane, removed), plane, atol=1e-9)
    a = noisy_linear_imputation(plane.float(), removed, noise=0.01, seed=3)
    b = noisy_linear_imputation(plane.float(), removed, noise=0.01, seed=3)
    assert torch.equal(a, b)
    noise = (a - plane.float())[0, 0]
    assert float(noise[~removed[0]].abs().max()) == 0.0
    assert 0.003 < float(noise[removed[0]].std()) < 0.03
    assert not torch.equal(a, noisy_linear_imputation(plane.float(), removed, noise=0.01, seed=4))


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                  nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = SmallNet().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 10, 12, generator=g)
    maps = torch.rand(3, 1, 10, 12, generator=g)  # distinct values: no ties to break
    labels = torch.tensor([0, 2, 1])
    return net, x, labels, maps


def naive_road(net, x, labels, maps, percentages, order, noise, seed, output):
    values = np.zeros((len(x), len(percentages)))
    for n in range(len(x)):
        flat = maps[n, 0].flatten().numpy()
        ranking = np.argsort(-flat if order == "morf" else flat, kind="stable")
        for s, p in enumerate(percentages):
            removed = np.zeros(flat.size, dtype=bool)
            removed[ranking[:int(flat.size * p / 100)]] = True
            removed = removed.reshape(maps.shape[2:])
            filled = torch.tensor(scipy_imputation(x[n].double().numpy(), removed)).float()
            eps = keyed_draws("normal", seed, torch.tensor([n]), torch.tensor([s]), x.shape[1:], "cpu")[0]
            filled = filled + noise * eps * torch.tensor(removed)
            with torch.no_grad():
                out = net(filled[None])[0]
            values[n, s] = {"probability": out.softmax(0)[labels[n]], "logit": out[labels[n]],
                            "accuracy": float(out.argmax() == labels[n])}[output]
    return values


@pytest.mark.parametrize("order,noise,output", [("morf", 0.01, "probability"), ("lerf", 0.0, "logit"),
                                                ("morf", 0.05, "accuracy")])
def test_road_equals_a_naive_loop_for_every_max_batch(case, order, noise, output):
    net, x, labels, maps = case
    percentages = [0, 10, 35, 70, 95]
    want = naive_road(net, x, labels, maps, percentages, order, noise, 7, output)
    for max_batch in (None, 4) if output != "logit" else (None, 1):
        curve = road(net, x, labels, maps, percentages=percentages, order=order, noise=noise, seed=7,
                     max_batch=max_batch, output=output)
        assert np.abs(curve.values.numpy() - want).max() < 1e-5
    assert curve.values.shape == (3, 5) and curve.evaluations == 15
    assert torch.allclose(curve.fractions, torch.tensor([0, 0.1, 0.35, 0.7, 0.95]))


def test_road_leaves_inputs_and_model_alone_and_rejects_bad_input(case):
    net, x, labels, maps = case
    before, weights = x.clone(), [p.clone() for p in net.parameters()]
    net.train()
    road(net, x, labels, maps, percentages=[50])
    assert torch.equal(x, before) and all(torch.equal(a, b) for a, b in zip(weights, net.parameters()))
    assert net.training
    net.eval()
    with pytest.raises(ConvscopeError, match="percentages"):
        road(net, x, labels, maps, percentages=[100])
    with pytest.raises(ConvscopeError, match="do not fit"):
        road(net, x, labels, maps[:, :, :5])
    with pytest.raises(ConvscopeError, match="noise"):
        road(net, x, labels, maps, noise=-1)
    with pytest.raises(ConvscopeError, match="seed"):
        road(net, x, labels, maps, seed=-2)
    with pytest.raises(ConvscopeError, match="order"):
        road(net, x, labels, maps, order="sideways")


def test_road_ranks_a_faithful_map_on_the_zoo_model(shapes_vgg):
    """|saliency| of the trained shapes-vgg: removing its top pixels (MoRF) costs the class more
    probability than removing its bottom pixels (LeRF), for every sample; a random map does not."""
    from convscope.data import Shapes
    from convscope.methods import Saliency
    from convscope.zoo import preset

    x = preset("shapes-vgg").to_tensor(Shapes(4, seed=1).arrays()[0])
    y = shapes_vgg(x).argmax(1).tolist()
    maps = Saliency(shapes_vgg).attribute(x, y).abs().sum(1, keepdim=True)
    morf = road(shapes_vgg, x, y, maps, percentages=[50], order="morf", seed=0).values[:, 0]
    lerf = road(shapes_vgg, x, y, maps, percentages=[50], order="lerf", seed=0).values[:, 0]
    assert bool((morf + 0.2 < lerf).all()), (morf, lerf)
