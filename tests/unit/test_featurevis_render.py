"""The optimize loop on a tiny network: the objective rises, the same seed gives the same image
bitwise, results do not depend on max_batch or on the other images, the user's model comes back
unchanged (also when its forward raises), nothing is written unless asked, bad input is a
ConvscopeError."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import Exploding, TinyVGG
from PIL import Image
from test_lifecycle import guarded, no_hooks_or_modes

from convscope.errors import ConvscopeError
from convscope.featurevis import Diversity, ImageParam, TotalVariation, channels, render
from convscope.featurevis.transforms import Jitter, Pad, compose
from convscope.images import Preprocess
from convscope.targets import Channel, Class

PRE = Preprocess(size=16, crop=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: a second thread only adds contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> TinyVGG:
    torch.manual_seed(0)
    return TinyVGG().eval()


def run(model: torch.nn.Module, objective, **kw):
    kw = {"steps": 30, "preprocess": PRE, "progress": False, **kw}
    return render(model, objective, **kw)


def test_objective_rises_on_average(model: TinyVGG) -> None:
    plain = run(model, channels("features.3", "0-3"), steps=60, transforms=None)
    blocks = plain.history.reshape(6, 10, 4).mean(1)  # 6 blocks of 10 steps, per image
    assert plain.history.shape == (60, 4)
    assert bool((blocks[1:] >= blocks[:-1]).all()), blocks  # block averages never fall
    robust = run(model, channels("features.3", "0-3"), steps=60)  # standard transforms: noisy, but rising
    blocks = robust.history.reshape(6, 10, 4).mean(1)
    assert bool((blocks[-1] > blocks[0]).all()) and float(blocks.mean(1).diff().gt(0).float().mean()) >= 0.8


def test_history_is_the_score_the_objective_gives(model: TinyVGG) -> None:
    # with no transforms and 1 step, history[0] is the objective at the starting image
    param = ImageParam((2, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    start = param().detach()
    result = run(model, Class([1, 4]), param=param, steps=1, transforms=None)
    with torch.no_grad():
        logits = model((start - torch.tensor(PRE.mean).view(1, 3, 1, 1)) / torch.tensor(PRE.std).view(1, 3, 1, 1))
    torch.testing.assert_close(result.history[0], logits[[0, 1], [1, 4]])


def test_same_seed_same_image_bitwise(model: TinyVGG) -> None:
    state = torch.get_rng_state()
    a = run(model, channels("features.0", "0-2"), seed=7)
    b = run(model, channels("features.0", "0-2"), seed=7)
    c = run(model, channels("features.0", "0-2"), seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never used


def test_results_do_not_depend_on_max_batch_or_other_images(model: TinyVGG) -> None:
    objective = channels("features.3", [0, 5, 2, 7, 1])
    whole = run(model, objective, seed=1)
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        chunked = run(model, objective, seed=1, max_batch=2)
    finally:
        handle.remove()
    assert sizes == [2, 2, 1] * 30  # max_batch honoured: 30 steps of chunks 2 + 2 + 1
    torch.testing.assert_close(chunked.images, whole.images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked.history, whole.history, rtol=1e-4, atol=1e-4)
    # image 2 alone (same start, same seed) comes out as it does within the batch
    start = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.05
    together = run(model, objective, param=ImageParam.from_image(start), seed=4)
    alone = run(model, objective[2], param=ImageParam.from_image(start[2:3]), seed=4)
    torch.testing.assert_close(alone.images[0], together.images[2], rtol=1e-4, atol=1e-5)


def test_one_objective_for_a_batch_with_diversity_and_penalties(model: TinyVGG) -> None:
    objective = Channel("features.3", 2) + 10.0 * Diversity("features.3") - 1e-3 * TotalVariation()
    result = run(model, objective, batch=3)
    assert result.images.shape == (3, 3, 16, 16) and result.history.shape == (30, 3)
    assert float(result.images.min()) >= 0 and float(result.images.max()) <= 1


def test_model_unchanged_also_when_the_forward_raises(model: TinyVGG) -> None:
    x = torch.zeros(1)
    with guarded(model, x):
        run(model, channels("features.3", "0-1"), steps=3, max_batch=1)
    exploding = Exploding(model)
    exploding.armed = True
    with guarded(exploding, x), pytest.raises(ConvscopeError, match="boom"):
        run(exploding, Channel("inner.features.3", 0), steps=3)
    with guarded(model, x), pytest.raises(ConvscopeError, match="out of range"):
        run(model, channels("features.3", [0, 99]), steps=3)  # fails in the target, after the forward
    assert no_hooks_or_modes(model)


def test_nothing_is_written_unless_asked(model: TinyVGG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(model, channels("features.0", "0-2"), steps=2)
    assert os.listdir(tmp_path) == []
    path = result.save(tmp_path / "out" / "grid.png", labels=["a", "b", "c"])
    sheet = np.asarray(Image.open(path))
    assert sheet.ndim == 3 and min(sheet.shape[:2]) > 2 * 128  # 2 x 2 tiles (three used) of >= 128 px
    assert result.pixels().shape == (3, 16, 16, 3) and result.pixels().dtype == np.uint8


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"objective": Channel("features.33", 0)}, "Did you mean"),
    ({"steps": 0}, "steps"), ({"steps": -3}, "steps"), ({"steps": 1.5}, "steps"), ({"steps": True}, "steps"),
    ({"lr": 0.0}, "lr"), ({"lr": "fast"}, "lr"), ({"seed": 1.0}, "seed"), ({"max_batch": 0}, "max_batch"),
    ({"batch": 0}, "batch"), ({"batch": 3}, "batch"), ({"transforms": "fancy"}, "transform"),
    ({"param": ImageParam((3, 3, 16, 16))}, "parameterization"),
    ({"param": ImageParam((2, 3, 16, 16)), "size": 8}, "size"),
    ({"preprocess": "imagenet"}, "mean and std"),
    ({"objective": Channel("features.3", 0) + Diversity("features.3"), "batch": 3, "max_batch": 2}, "max_batch"),
    ({"objective": [Diversity("features.3"), Channel("features.3", 0)]}, "Diversity"),
    ({"objective": Diversity("features.3")}, "batch"),
])
def test_bad_input_is_a_convscope_error(model: TinyVGG, kwargs: dict, match: str) -> None:
    kwargs = {"objective": channels("features.3", "0-1"), "steps": 2, **kwargs}
    with pytest.raises(ConvscopeError, match=match):
        run(model, **kwargs)
    with pytest.raises(ConvscopeError, match="nn.Module"):
        render("model", Class(0))  # type: ignore[arg-type]
    assert no_hooks_or_modes(model)


def test_custom_transform_and_pixel_param(model: TinyVGG) -> None:
    param = ImageParam((2, 3, 16, 16), fft=False, decorrelate=False, valid="clamp",
                       generator=torch.Generator().manual_seed(0))
    result = run(model, Class([0, 3]), param=param, transforms=compose(Pad(2), Jitter(4)), steps=10, lr=0.02)
    assert result.images.shape == (2, 3, 16, 16)
    assert bool((result.history[-1] > result.history[0]).all())


@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
def test_channel_lists_take_one_gather_with_the_same_scores_and_gradients(model: TinyVGG, reduce: str) -> None:
    from convscope.backends.torch.session import Session
    from convscope.featurevis.render import Objective

    picked = [3, 0, 7, 3]
    fast = Objective(channels("features.3", picked, reduce=reduce), None)
    plain = Objective([1.0 * t for t in channels("features.3", picked, reduce=reduce)], None)  # the general path
    assert fast.channels is not None and plain.channels is None
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with Session(model, layers=["features.3"]) as session:
        results = []
        for goal in (fast, plain):
            run = session.forward(x, slice(0, 4))
            score = goal.score(run.record, slice(0, 4))
            results.append((score, torch.autograd.grad(score.sum(), run.input)[0]))
        chunk = session.forward(x[2:], slice(2, 4)).record  # a later chunk picks its own channels
        torch.testing.assert_close(fast.score(chunk, slice(2, 4)), results[1][0][2:])
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_dream_and_invert_reject_bad_input_and_leave_the_model_alone(model: TinyVGG) -> None:
    from convscope.featurevis import dream, invert

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with guarded(model, x):
        for call, match in [(lambda: invert(model, x, "features.33", progress=False), "Did you mean"),
                            (lambda: invert(model, x, "features.1", steps=0, progress=False), "steps"),
                            (lambda: dream(model, x, "features.33", progress=False), "Did you mean"),
                            (lambda: dream(model, x, "features.1", octaves=0, progress=False), "octaves"),
                            (lambda: dream(model, x.numpy(), "features.1", progress=False), "numpy"),  # type: ignore[arg-type]
                            (lambda: dream(model, x[0, 0], "features.1", progress=False), "shape")]:
            with pytest.raises(ConvscopeError, match=match):
                call()
        result = invert(model, x, "features.1", steps=40, preprocess=PRE, progress=False)
    assert bool((result.distance < result.start_distance).all())
