"""Models with several inputs, extra forward arguments, integer inputs, data of any rank, and
Captum's conveniences (convergence deltas, multiply_by_inputs, stdevs, target=None, tuple
targets): Captum 0.9 as the oracle on the same tiny models (its random draws replaced by ours
where it draws), naive loops where it has no equivalent."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import captum.attr as ca
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from convscope.errors import ConvscopeError
from convscope.methods import (FeatureAblation, GradientSHAP, InputXGradient, IntegratedGradients, Occlusion,
                               Saliency, SmoothGrad, SmoothGradSquared)
from convscope.methods.draws import gaussian_draws

TOL = dict(atol=1e-5, rtol=1e-5)


class TwoInputs(nn.Module):
    """``head(tanh(a(u)) ++ tanh(conv(v)) * scale * mask)``: a table ``u [N, 6]`` and a signal ``v [N, 2, 5]``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.conv, self.head = nn.Linear(6, 4), nn.Conv1d(2, 3, 3), nn.Linear(4 + 9, 3)

    def forward(self, u: Tensor, v: Tensor, scale: float = 1.0, mask: Tensor | None = None) -> Tensor:
        z = torch.cat([torch.tanh(self.a(u)), torch.tanh(self.conv(v)).flatten(1)], 1) * scale
        return self.head(z if mask is None else z * mask)


class Tokens(nn.Module):
    """Token ids ``[N, L]`` -> embedding -> mean -> logits, with a float weight per token as a second input."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(12, 4), nn.Linear(4, 3)

    def forward(self, ids: Tensor, weight: Tensor | None = None) -> Tensor:
        e = torch.tanh(self.emb(ids))
        if weight is not None:
            e = e * weight[..., None]
        return self.head(e.mean(1))


def conv_net(rank: int) -> nn.Module:
    """A tiny net on ``[N, 2, *space]`` with ``rank`` spatial axes (``rank=0``: a table ``[N, 6]``)."""
    torch.manual_seed(rank)
    if rank == 0:
        return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
    return nn.Sequential(conv(2, 3, 2), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3)).eval()


SHAPES = {0: (6,), 1: (2, 7), 2: (2, 5, 4), 3: (2, 3, 4, 3)}


@pytest.fixture(scope="module")
def two() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    return TwoInputs().eval(), torch.randn(4, 6), torch.randn(4, 2, 5), torch.rand(4, 13)


def close(got: object, want: object) -> None:
    if isinstance(want, (tuple, list)):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            close(g, w)
        return
    assert isinstance(got, Tensor) and got.shape == want.shape, (getattr(got, "shape", got), want.shape)
    torch.testing.assert_close(got, want.detach(), **TOL)


@contextmanager
def captum_draws(picks: Tensor, alphas: Tensor, eps: list[Tensor] | None, n: int) -> Iterator[None]:
    """Captum's GradientShap / NoiseTunnel draws replaced by ours (the same for every sample):
    baseline picks, alphas (row ``s * K + k`` takes draw ``k``) and the noise of each input."""
    saved = np.random.choice, np.random.uniform, torch.normal
    noise = iter([] if eps is None else eps)
    np.random.choice = lambda m, size: np.tile(picks.numpy(), n)  # type: ignore[assignment]
    np.random.uniform = lambda lo, hi, size: np.tile(alphas.numpy(), n)  # type: ignore[assignment]
    torch.normal = lambda mean, std: std * next(noise).repeat(n, *[1] * (std.dim() - 1))  # type: ignore[assignment]
    try:
        yield
    finally:
        np.random.choice, np.random.uniform, torch.normal = saved


def our_draws(samples: int, bank: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """GradientSHAP's documented draws: ``randint(B, [K])`` then ``rand(K)`` from ``Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(bank, (samples,), generator=g), torch.rand(samples, generator=g, dtype=torch.float64).float()


# --- several inputs and forward arguments -------------------------------------------------------------------

@pytest.mark.parametrize("ours, theirs", [(Saliency, lambda m: ca.Saliency(m)), (InputXGradient, ca.InputXGradient)])
def test_gradient_methods_give_one_map_per_input(two, ours, theirs) -> None:
    model, u, v, mask = two
    got = ours(model, max_batch=3).attribute((u, v), [0, 2, 1, 1], forward_args=(2.0, mask))
    want = theirs(model).attribute((u, v), target=[0, 2, 1, 1], additional_forward_args=(2.0, mask),
                                   **({"abs": False} if ours is Saliency else {}))
    close(got, want)


def test_integrated_gradients_on_several_inputs_with_arguments_and_delta(two) -> None:
    model, u, v, mask = two
    base = (torch.randn(6), torch.randn(4, 2, 5))  # one shared, one per sample
    for max_batch in (None, 7):  # 7 rows: chunks cut through samples, per-sample arguments follow
        got, delta = IntegratedGradients(model, steps=9, rule="riemann_trapezoid", baseline=base,
                                         max_batch=max_batch).attribute(
            (u, v), 1, forward_args=(0.5,), forward_kwargs={"mask": mask}, return_convergence_delta=True)
        want, want_delta = ca.IntegratedGradients(lambda a, b, s, m: model(a, b, s, mask=m)).attribute(
            (u, v), baselines=(base[0][None].expand(4, 6), base[1]), target=1, additional_forward_args=(0.5, mask),
            n_steps=9, method="riemann_trapezoid", return_convergence_delta=True)
        close(got, want)
        close(delta, want_delta)


def test_a_callable_baseline_gets_and_gives_the_inputs_as_given(two) -> None:
    model, u, v, _ = two
    seen = []

    def blur(inputs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        seen.append(inputs)
        return inputs[0] * 0.5, 0.0

    got = IntegratedGradients(model, steps=5, baseline=blur).attribute((u, v), 0)
    want = ca.IntegratedGradients(model).attribute((u, v), baselines=(u * 0.5, 0.0), target=0, n_steps=5,
                                                   method="gausslegendre")
    close(got, want)
    assert isinstance(seen[0], tuple) and torch.equal(seen[0][1], v)


def test_multiply_by_inputs_false(two) -> None:
    model, u, v, _ = two
    got = IntegratedGradients(model, steps=6, multiply_by_inputs=False, baseline=0.3).attribute((u, v), 2)
    want = ca.IntegratedGradients(model, multiply_by_inputs=False).attribute(
        (u, v), baselines=(0.3, 0.3), target=2, n_steps=6, method="gausslegendre")
    close(got, want)


@pytest.mark.parametrize("multiply", [True, False])
def test_gradient_shap_equals_captum_with_the_same_draws(two, multiply) -> None:
    model, u, v, mask = two
    bank = (torch.randn(3, 6), torch.randn(3, 2, 5))
    method = GradientSHAP(model, baselines=bank, samples=5, stdevs=(0.1, 0.3), seed=4, multiply_by_inputs=multiply)
    eps = gaussian_draws(5, (6 + 10,), seed=5, like=u)  # the packed sample: u's 6 values, then v's 10
    picks, alphas = our_draws(5, 3, seed=4)
    if multiply:
        got, delta = method.attribute((u, v), 1, forward_args=(1.0, mask), return_convergence_delta=True)
    else:
        got = method.attribute((u, v), 1, forward_args=(1.0, mask))
    with captum_draws(picks, alphas, [eps[:, :6], eps[:, 6:].reshape(5, 2, 5)], n=4):
        want = ca.GradientShap(model, multiply_by_inputs=multiply).attribute(
            (u, v), baselines=bank, n_samples=5, stdevs=(0.1, 0.3), target=1, additional_forward_args=(1.0, mask),
            return_convergence_delta=multiply)
    if multiply:
        want, want_delta = want
        close(delta, want_delta)  # one per sample and draw, row n * K + k
        assert delta.shape == (4 * 5,)
    close(got, want)


def test_noise_tunnel_around_integrated_gradients_with_delta(two) -> None:
    model, u, v, mask = two
    tunnel = SmoothGrad(IntegratedGradients(model, steps=4), samples=3, stdevs=0.2, seed=1)
    got, delta = tunnel.attribute((u, v), 0, forward_kwargs={"mask": mask}, return_convergence_delta=True)
    eps = gaussian_draws(3, (16,), seed=1, like=u)
    with captum_draws(torch.zeros(0), torch.zeros(0), [eps[:, :6], eps[:, 6:].reshape(3, 2, 5)], n=4):
        want, want_delta = ca.NoiseTunnel(ca.IntegratedGradients(lambda a, b, m: model(a, b, mask=m))).attribute(
            (u, v), nt_type="smoothgrad", nt_samples=3, stdevs=(0.2, 0.2), target=0, additional_forward_args=(mask,),
            n_steps=4, method="gausslegendre", return_convergence_delta=True)
    close(got, want)
    close(delta, want_delta)


def test_forward_arguments_that_are_not_per_sample_pass_as_they_are(two) -> None:
    model, u, v, _ = two
    shared = torch.rand(1, 13)  # broadcast over the batch: not indexed by sample
    got = Saliency(model).attribute((u, v), 0, forward_kwargs={"scale": 3.0, "mask": shared})
    want = ca.Saliency(model).attribute((u, v), target=0, additional_forward_args=(3.0, shared), abs=False)
    close(got, want)


def test_occlusion_slides_a_window_per_input(two) -> None:
    model, u, v, mask = two
    fill = torch.randn(4, 2, 5)  # one fill per sample for v
    got = Occlusion(model, window=((2,), (2, 3)), stride=((1,), (1, 2)), fill=(0.5, fill), max_batch=5).attribute(
        (u, v), 1, forward_args=(1.0, mask))
    want = ca.Occlusion(model).attribute((u, v), sliding_window_shapes=((2,), (2, 3)), strides=(1, (1, 2)),
                                         baselines=(0.5, fill), target=1, additional_forward_args=(1.0, mask))
    close(got, want)


def test_feature_ablation_groups_span_inputs(two) -> None:
    model, u, v, _ = two
    groups = (torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([[3, 3, 4, 4, 7], [5, 5, 5, 6, 6]]))
    got = FeatureAblation(model, feature_mask=groups, fill=(0.0, 0.3), max_batch=4).attribute((u, v), 2)
    want = ca.FeatureAblation(model).attribute((u, v), feature_mask=(groups[0][None], groups[1][None]),
                                               baselines=(0.0, 0.3), target=2)
    close(got, want)
    close(FeatureAblation(model).attribute((u, v), 0), ca.FeatureAblation(model).attribute((u, v), target=0))
    shared = (groups[0], torch.where(groups[1] == 7, 2, groups[1]))  # id 2 in both inputs: ablated together
    got = FeatureAblation(model, feature_mask=shared, fill=(0.0, 0.3)).attribute((u, v), 2)
    clean = model(u, v)[:, 2]
    for k in range(7):  # naive: each group's drop, on each of its elements
        a, b = shared[0] == k, shared[1] == k
        drop = clean - model(torch.where(a, 0.0, u), torch.where(b, 0.3, v))[:, 2]
        close(got[0][:, a], drop[:, None].expand(4, int(a.sum())))
        close(got[1][:, b], drop[:, None].expand(4, int(b.sum())))


def test_a_tuple_of_one_input_gives_a_tuple_of_one_map() -> None:
    model, x = conv_net(2), torch.randn(2, *SHAPES[2])
    model(x)
    (got,) = IntegratedGradients(model, steps=4).attribute((x,), 1, forward_kwargs={})
    close(got, IntegratedGradients(model, steps=4).attribute(x, 1))


# --- integer inputs at a layer ------------------------------------------------------------------------------

def test_token_ids_are_attributed_at_the_embedding() -> None:
    torch.manual_seed(1)
    model, ids, weight = Tokens().eval(), torch.randint(1, 12, (3, 5)), torch.rand(3, 5)
    pad = torch.zeros_like(ids)
    got, delta = IntegratedGradients(model, steps=7, baseline=(0, weight)).attribute(
        (ids, weight), 2, wrt="emb", return_convergence_delta=True)
    want, want_delta = ca.LayerIntegratedGradients(model, model.emb).attribute(
        (ids, weight), baselines=(pad, weight), target=2, n_steps=7, method="gausslegendre",
        return_convergence_delta=True)
    close(got, want)
    close(delta, want_delta)
    # Another baseline for the float input: the path moves the embedding only (the weight stays at
    # x's), so the gap is sum(maps) - (f(ids, w) - f(pad, w)); Captum's delta uses f(pad, 1) instead.
    got, delta = IntegratedGradients(model, steps=7, baseline=(0, 1.0)).attribute(
        (ids, weight), 2, wrt="emb", return_convergence_delta=True)
    close(got, want)
    score = lambda i: model(i, weight)[:, 2]  # noqa: E731
    close(delta, got.sum((1, 2)) - (score(ids) - score(pad)))
    _, theirs = ca.LayerIntegratedGradients(model, model.emb).attribute(
        (ids, weight), baselines=(pad, torch.ones_like(weight)), target=2, n_steps=7, method="gausslegendre",
        return_convergence_delta=True)
    assert (delta - theirs).abs().min() > 1e-2
    single = Saliency(model).attribute(ids, 1, wrt="emb", forward_args=(weight,))
    close(single, ca.LayerGradientXActivation(model, model.emb, multiply_by_inputs=False).attribute(
        ids, target=1, additional_forward_args=(weight,)))
    with pytest.raises(ConvscopeError, match="floating-point.*wrt='embedding'"):
        Saliency(model).attribute((ids, weight), 1)
    with pytest.raises(ConvscopeError, match="integer inputs.*cannot take noise"):
        SmoothGrad(IntegratedGradients(model), samples=2).attribute(ids, 1, wrt="emb")


# --- data of any rank ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_any_rank(rank: int) -> None:
    model = conv_net(rank)
    x = torch.randn(3, *SHAPES[rank])
    model(x)  # materialise the lazy layer
    close(Saliency(model).attribute(x, 1), ca.Saliency(model).attribute(x, target=1, abs=False))
    got, delta = IntegratedGradients(model, steps=5).attribute(x, 2, return_convergence_delta=True)
    want, want_delta = ca.IntegratedGradients(model).attribute(x, target=2, n_steps=5, method="gausslegendre",
                                                               return_convergence_delta=True)
    close(got, want)
    close(delta, want_delta)
    smooth = SmoothGradSquared(model, samples=4, stdevs=0.3, seed=2).attribute(x, 0)
    eps = gaussian_draws(4, x.shape[1:], seed=2, like=x)
    naive = torch.stack([ca.Saliency(model).attribute(x + 0.3 * e, target=0, abs=False) ** 2 for e in eps]).mean(0)
    close(smooth, naive)
    window = (2,) * len(SHAPES[rank])
    close(Occlusion(model, window=window, stride=1).attribute(x, 1),
          ca.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=1, target=1))
    picks, alphas = our_draws(3, 2)
    bank = torch.randn(2, *SHAPES[rank]).numpy()  # a numpy bank
    got = GradientSHAP(model, baselines=bank, samples=3).attribute(x, 1)
    with captum_draws(picks, alphas, [torch.zeros(3, *SHAPES[rank])], n=3):
        want = ca.GradientShap(model).attribute(x, baselines=torch.from_numpy(bank), n_samples=3, target=1)
    close(got, want)


# --- targets ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [True, False])
def test_target_none_scores_a_model_with_one_output(keep: bool) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 1), nn.Flatten(0) if not keep else nn.Identity()).eval()
    x = torch.randn(4, 6)
    close(IntegratedGradients(net, steps=4).attribute(x),
          ca.IntegratedGradients(net).attribute(x, n_steps=4, method="gausslegendre"))
    with pytest.raises(ConvscopeError, match="target=None needs a model with one output"):
        Saliency(conv_net(0)).attribute(x)


def test_a_tuple_target_indexes_a_multidimensional_output() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 20), nn.Unflatten(1, (4, 5))).eval()
    x = torch.randn(2, 6)
    close(Saliency(net).attribute(x, (2, 3)), ca.Saliency(net).attribute(x, target=(2, 3), abs=False))
    with pytest.raises(ConvscopeError, match=r"does not index an output of shape \[2, 4, 5\]"):
        Saliency(net).attribute(x, (2, 3, 1))


# --- untouched, and clear errors ----------------------------------------------------------------------------

def test_the_model_and_the_tensors_stay_untouched(two) -> None:
    model, u, v, mask = two
    state, copies = copy.deepcopy(model.state_dict()), [t.clone() for t in (u, v, mask)]
    model.train()
    GradientSHAP(model, samples=2, stdevs=0.1).attribute((u, v), 0, forward_args=(1.0, mask))
    with pytest.raises(ConvscopeError, match="forward pass failed"):
        Saliency(model).attribute((u, v), 0, forward_args=(1.0, torch.rand(4, 7)))  # the model fails on the mask
    assert model.training and all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(state.values(), model.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip((u, v, mask), copies)) and not u.requires_grad
    model.eval()


def test_bad_combinations_are_clear_errors(two) -> None:
    model, u, v, _ = two
    cases = [
        (lambda: Saliency(model).attribute((u, v[:3]), 0), "different numbers of samples"),
        (lambda: Saliency(model).attribute((u, v.numpy()), 0), "input 1 of the tuple is a ndarray"),
        (lambda: Saliency(model).attribute((), 0), "empty tuple"),
        (lambda: Saliency(model).attribute((u, v), 0, forward_kwargs=[1]), "forward_kwargs must be a dict"),
        (lambda: Saliency(model).attribute((u, v), 0, return_convergence_delta=True), "Saliency has no convergence"),
        (lambda: IntegratedGradients(model, multiply_by_inputs=False).attribute((u, v), 0, return_convergence_delta=True),
         "multiply_by_inputs=False.*no convergence delta"),
        (lambda: SmoothGradSquared(IntegratedGradients(model)).attribute((u, v), 0, return_convergence_delta=True),
         "squares"),
        (lambda: SmoothGrad(GradientSHAP(model)).attribute((u, v), 0, return_convergence_delta=True),
         "around GradientSHAP has no convergence delta"),
        (lambda: SmoothGrad(model, noise=0.1, stdevs=0.1), "both noise"),
        (lambda: SmoothGrad(model, stdevs=-1.0), "stdevs=-1.0 must be"),
        (lambda: SmoothGrad(model, stdevs=(0.1, 0.2, 0.3)).attribute((u, v), 0), "the stdevs is a tuple"),
        (lambda: IntegratedGradients(model, baseline=(0.0,)).attribute((u, v), 0), "not one value per input"),
        (lambda: IntegratedGradients(model, baseline=(0.0, torch.zeros(3))).attribute((u, v), 0),
         r"baseline for input 1 has shape \[3\]"),
        (lambda: IntegratedGradients(model, baseline=(0.0, torch.zeros(3, 2, 5))).attribute((u, v), 0),
         "holds 3 rows for 4 samples"),
        (lambda: GradientSHAP(model, baselines=np.array(["a", "b"])).attribute(u[:, :1].expand(4, 2), 0),
         "baselines of shape"),
        (lambda: GradientSHAP(model, baselines=lambda x: "zero").attribute(u, 0), "baselines of shape"),
        (lambda: Occlusion(model, window=((2, 2), (1, 3))).attribute((u, v), 0), r"window=\(2, 2\) does not fit"),
        (lambda: Occlusion(model, window=(0,)), "window=\\(0,\\) must be a positive int"),
        (lambda: Occlusion(model, fill="blur").attribute((u, v), 0), "needs a batch of images"),
        (lambda: Occlusion(model, adaptive=True).attribute((u, v), 0), "adaptive occlusion needs"),
        (lambda: FeatureAblation(model, feature_mask=torch.zeros(6, dtype=torch.long)).attribute((u, v), 0),
         "1 masks for 2 inputs"),
        (lambda: FeatureAblation(model, feature_mask=(torch.zeros(6), torch.zeros(2, 5))).attribute((u, v), 0),
         "feature_mask 0 has dtype torch.float32"),
        (lambda: FeatureAblation(model, feature_mask=(torch.zeros(4, 6, dtype=torch.long), torch.zeros(2, 5).long()))
         .attribute((u, v), 0), "one mask per sample is not supported"),
    ]
    for call, message in cases:
        with pytest.raises(ConvscopeError, match=message):
            call()
    bank = (torch.randn(2, 6), torch.randn(2, 2, 5))  # a callable bank gets the inputs as given
    close(GradientSHAP(model, baselines=lambda given: (bank[0], bank[1].numpy()), samples=2).attribute((u, v), 0),
          GradientSHAP(model, baselines=bank, samples=2).attribute((u, v), 0))


def test_the_readme_example_runs() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Models with several inputs"):]
    block = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python"))]
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_inputs"})
