"""Feature-visualization objectives against naive loops on tiny tensors, autograd identities and
the target algebra."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from convscope.errors import ConvscopeError
from convscope.featurevis.objectives import (
    L1,
    L2,
    Blur,
    DeepDream,
    Diversity,
    LogSumExp,
    Match,
    TotalVariation,
    box_blur,
    channels,
    parse_channels,
    parts,
)
from convscope.targets import Channel, Class, Record

G = torch.Generator().manual_seed(0)
X = torch.randn(2, 3, 4, 5, generator=G)
ACT = torch.randn(3, 4, 3, 3, generator=G)
OUT = torch.randn(2, 6, generator=G)


def record(x: torch.Tensor | None = X, act: torch.Tensor = ACT, out: torch.Tensor = OUT) -> Record:
    return Record(output=out, acts={"l": act}, rows=slice(0, act.shape[0]), input=x)


def naive_tv(x: torch.Tensor, beta: float) -> list[float]:
    n, c, h, w = x.shape
    totals = []
    for i in range(n):
        total = 0.0
        for ch, y, xx in itertools.product(range(c), range(h), range(w)):
            if y + 1 < h:
                total += abs(float(x[i, ch, y + 1, xx] - x[i, ch, y, xx])) ** beta
            if xx + 1 < w:
                total += abs(float(x[i, ch, y, xx + 1] - x[i, ch, y, xx])) ** beta
        totals.append(total)
    return totals


@pytest.mark.parametrize("beta", [1.0, 2.0, 1.5])
def test_total_variation_matches_a_loop(beta: float) -> None:
    got = TotalVariation(beta).score(record())
    torch.testing.assert_close(got, torch.tensor(naive_tv(X, beta)), rtol=1e-5, atol=1e-5)


def test_l1_l2_match_loops() -> None:
    ref = 0.3
    l1 = [sum(abs(float(v) - ref) for v in X[i].flatten()) for i in range(2)]
    l2 = [sum((float(v) - ref) ** 2 for v in X[i].flatten()) for i in range(2)]
    torch.testing.assert_close(L1(ref).score(record()), torch.tensor(l1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(L2(ref).score(record()), torch.tensor(l2), rtol=1e-5, atol=1e-5)


def naive_box_blur(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.empty_like(x)
    for i, ch, y, xx in itertools.product(range(n), range(c), range(h), range(w)):
        vals = [x[i, ch, min(max(y + dy, 0), h - 1), min(max(xx + dx, 0), w - 1)]
                for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        out[i, ch, y, xx] = sum(vals) / 9
    return out


def test_blur_penalty_gradient_pulls_pixels_to_their_blurred_neighbourhood() -> None:
    torch.testing.assert_close(box_blur(X), naive_box_blur(X), rtol=1e-5, atol=1e-6)
    x = X.clone().requires_grad_()
    Blur().score(record(x)).sum().backward()
    torch.testing.assert_close(x.grad, X - naive_box_blur(X), rtol=1e-5, atol=1e-6)


def test_deepdream_is_the_mean_square_activation() -> None:
    want = [float((ACT[i] ** 2).sum()) / ACT[i].numel() for i in range(3)]
    torch.testing.assert_close(DeepDream("l").score(record()), torch.tensor(want))


def test_diversity_matches_pairwise_gram_cosines() -> None:
    grams = [ACT[i].reshape(4, -1) @ ACT[i].reshape(4, -1).T / 9 for i in range(3)]
    want = [-sum(float(F.cosine_similarity(grams[i].flatten(), grams[j].flatten(), dim=0))
                 for j in range(3) if j != i) / 2 for i in range(3)]
    torch.testing.assert_close(Diversity("l").score(record()), torch.tensor(want), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConvscopeError, match="batch"):
        Diversity("l").check_batch(1)


def test_match_is_minus_the_relative_squared_distance() -> None:
    ref = torch.randn(3, 4, 3, 3, generator=G)
    want = [-float(((ACT[i] - ref[i]) ** 2).sum() / (ref[i] ** 2).sum()) for i in range(3)]
    torch.testing.assert_close(Match("l", ref).score(record()), torch.tensor(want))
    assert float(Match("l", ACT).score(record()).abs().max()) == 0.0
    chunk = Record(output=OUT, acts={"l": ACT[1:]}, rows=slice(1, 3), input=None)  # rows pick the references
    torch.testing.assert_close(Match("l", ref).score(chunk), torch.tensor(want[1:]))
    with pytest.raises(ConvscopeError, match="reference"):
        Match("l", ref[:, :2]).score(record())


def test_class_minus_logsumexp_is_the_log_probability_and_algebra_combines() -> None:
    torch.testing.assert_close((Class([3, 1]) - LogSumExp()).score(record()),
                               OUT.log_softmax(1)[torch.arange(2), torch.tensor([3, 1])])
    combined = 2.0 * Class(0) - 0.5 * TotalVariation() + L1()
    want = 2 * OUT[:, 0] - 0.5 * torch.tensor(naive_tv(X, 1.0)) + X.abs().reshape(2, -1).sum(1)
    torch.testing.assert_close(combined.score(record(act=ACT[:2])), want, rtol=1e-5, atol=1e-4)
    assert {type(p).__name__ for p in parts(combined)} >= {"Class", "TotalVariation", "L1"}


def test_input_penalties_need_the_input() -> None:
    with pytest.raises(ConvscopeError, match="input"):
        TotalVariation().score(record(None))
    with pytest.raises(ConvscopeError, match="beta"):
        TotalVariation(0.5)


def test_channel_lists() -> None:
    assert parse_channels("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_channels(" 5 ") == [5]
    targets = channels("features.3", "0-2", reduce="sum")
    assert [(t.layer, t.channel, t.reduce) for t in targets] == [("features.3", c, "sum") for c in range(3)]
    assert isinstance(channels("l", [4])[0], Channel)
    for bad in ("", "a", "3-1", "1-", "-2"):
        with pytest.raises(ConvscopeError, match="channels"):
            parse_channels(bad)
    with pytest.raises(ConvscopeError):
        channels("l", [])
