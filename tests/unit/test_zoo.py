"""The model zoo: accuracy bar, deterministic training, cache keys, corrupt-cache rebuild."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from convscope import cache, zoo
from convscope.errors import ConvscopeError
from convscope.zoo.recipe import Recipe
from convscope.zoo.train import accuracy, shapes_tensors, train


@pytest.mark.parametrize("name", ["shapes-vgg", "shapes-resnet"])
def test_zoo_models_reach_the_accuracy_bar_on_unseen_images(name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(name.replace("-", "_"))
    # seed 3 is neither the training (1) nor the validation (2) seed of the recipe
    x, y = shapes_tensors(600, seed=3)
    assert accuracy(model, x, y) >= 0.95
    meta = zoo.info(name)
    assert meta is not None and meta["val_accuracy"] >= 0.95


def test_zoo_model_has_the_advertised_structure(shapes_vgg: torch.nn.Module, shapes_resnet: torch.nn.Module) -> None:
    kinds = [type(m).__name__ for m in shapes_vgg.features]
    assert kinds[:3] == ["Conv2d", "ReLU", "MaxPool2d"] and kinds.count("MaxPool2d") == 3
    relu_calls = []
    handle = shapes_resnet.layer1.relu.register_forward_hook(lambda *a: relu_calls.append(1))
    try:
        shapes_resnet(torch.zeros(1, 3, 64, 64))
    finally:
        handle.remove()
    assert shapes_resnet.layer1.relu.inplace and len(relu_calls) == 2  # one in-place ReLU module used twice


def test_loading_again_reads_the_cache_without_training(shapes_vgg: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("convscope.zoo.train.train", lambda *a, **k: pytest.fail("retrained a cached model"))
    again = zoo.load("shapes-vgg")
    for a, b in zip(again.state_dict().values(), shapes_vgg.state_dict().values()):
        assert torch.equal(a, b)


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    tiny = Recipe(arch="vgg", n_train=128, n_val=64, epochs=1, batch_size=64)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    s1, _ = train(tiny, progress=False)
    after = torch.rand(1)
    s2, _ = train(tiny, progress=False)
    assert torch.equal(before, after), "training consumed the user's global RNG"
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.parametrize("field", ["n_train", "epochs", "lr", "seed", "train_seed", "batch_size"])
def test_cache_key_changes_with_every_recipe_field(field: str) -> None:
    base = Recipe(arch="vgg")
    value = getattr(base, field)
    changed = dataclasses.replace(base, **{field: value * 2 if value else 1})
    assert changed.key() != base.key()
    assert Recipe(arch="vgg").key() == base.key()


def test_cache_key_covers_the_architecture_source(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from convscope.zoo import architectures

    before = Recipe(arch="vgg").key()
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda obj: real(obj) + ("# edited" if obj is architectures else ""))
    assert Recipe(arch="vgg").key() != before


def _fake_train(calls: list[str]):
    def fake(recipe: Recipe, **_kw: object):
        calls.append(recipe.arch)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            state = recipe.build().state_dict()
        return state, {"val_accuracy": 0.0, "train_seconds": 0.0}

    return fake


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop-manifest", "garbage-manifest"])
def test_corrupt_or_partial_cache_is_rebuilt_not_loaded(
    damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr("convscope.zoo.train.train", _fake_train(calls))
    zoo.load("shapes-vgg", progress=False)
    assert calls == ["vgg"]
    path = zoo.cache_path("shapes-vgg")
    manifest = path.with_name(path.name + ".json")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "drop-manifest":
        manifest.unlink()
    else:
        manifest.write_text("{not json")
    zoo.load("shapes-vgg", progress=False)
    assert calls == ["vgg", "vgg"], "a damaged cache entry was loaded instead of rebuilt"
    if damage != "drop-manifest":  # a missing manifest is simply 'not cached'; the others are reported
        assert "retraining" in capsys.readouterr().err
    assert not isinstance(cache.read_checked(path), str)


def test_unknown_zoo_name_lists_close_names() -> None:
    with pytest.raises(ConvscopeError, match="shapes-vgg"):
        zoo.load("shape-vgg")
