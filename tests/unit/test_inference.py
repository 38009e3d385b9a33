"""The inference twin: folded batch norms and channels-last, on a copy, for no-grad evaluations.

Oracles: the user's own model (the twin must compute the same function, to float32 rounding),
the list of conv/batch-norm pairs worked out by hand for the test nets, and ``exact_forward``
(every evaluation on the model itself)."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import TinyResidual, TinyVGG, make, sample
from torch import Tensor, nn

import convscope
from convscope.backends.torch import Session
from convscope.backends.torch import inference as twin_module
from convscope.backends.torch import session as session_module
from convscope.backends.torch.inference import (
    InferenceSession,
    conv_norm_pairs,
    fold_batchnorms,
)
from convscope.methods import RISE, AblationCAM, Occlusion, Saliency, ScoreCAM

X = sample("tiny_residual", n=4)


@pytest.fixture(autouse=True)
def twin_for_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny test jobs would not pay for a twin: build it whatever the work (one test checks the rule)."""
    monkeypatch.setattr(session_module, "TWIN_MIN_WORK", 0)


def close(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    return bool(((a - b).abs().max() <= tol * b.abs().max().clamp_min(1e-12)).item())


def test_pairs_of_a_residual_net_are_the_hand_listed_ones() -> None:
    pairs = conv_norm_pairs(TinyResidual())
    assert sorted(pairs) == sorted([
        ("conv1", "bn1"),
        ("layer1.conv1", "layer1.bn1"), ("layer1.conv2", "layer1.bn2"),
        ("layer2.conv1", "layer2.bn1"), ("layer2.conv2", "layer2.bn2"),
        ("layer2.downsample.0", "layer2.downsample.1"),
    ])


class _Shared(nn.Module):
    """A conv whose output feeds a batch norm AND a skip; a conv-bn pair run twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.b, self.bn_b = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c, self.bn_c = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        y = self.bn_a(y) + y                    # conv output read twice: no fold
        y = self.bn_b(self.b(self.bn_b(self.b(y))))  # modules run twice: no fold
        return self.bn_c(self.c(y)).flatten(1)  # no running statistics: no fold


def test_no_fold_where_it_would_change_the_function() -> None:
    model = _Shared().eval()
    assert conv_norm_pairs(model) == [("c", "bn_c")]  # a structural pair, but...
    twin = copy.deepcopy(model)
    assert fold_batchnorms(twin) == []  # ...batch statistics cannot be folded
    assert torch.equal(twin(X), model(X))


def test_an_untraceable_model_is_copied_unfolded() -> None:
    class Branchy(TinyResidual):
        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return super().forward(x)

    assert conv_norm_pairs(Branchy()) == []


@pytest.mark.parametrize("keep", [(), ("layer1.conv2",)])
def test_twin_computes_the_models_function_and_leaves_the_model_alone(keep: tuple[str, ...]) -> None:
    model = make("tiny_residual").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = copy.deepcopy(model).eval()
    folded = fold_batchnorms(twin, keep=keep)
    assert set(folded) == {c for c, _ in conv_norm_pairs(model)} - set(keep)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in twin.modules()) == len(keep)  # the kept conv's norm stays
    with torch.no_grad():
        assert close(twin(X), model(X))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6  # stem 1 + block 2 + block 3


def test_probed_layers_record_what_the_model_records() -> None:
    model = make("tiny_residual")
    layers = ["layer1.conv2", "layer1.bn2", "conv1", "layer2"]
    with Session(model, layers=layers) as session:
        plain = session.forward(X, slice(0, 4), grad=False).record
        fast = session.inference()
        assert isinstance(fast, InferenceSession)
        assert "layer1.conv2" not in fast.folded and "conv1" not in fast.folded and "layer2.conv1" in fast.folded
        session.probes.reset()
        got = fast.forward(X, slice(0, 4)).record
        assert session.probes.calls == {}  # the session's own hooks did not come along to the twin
    for key in layers:
        assert got.acts[key].is_contiguous()
        assert close(got.acts[key], plain.acts[key])
    assert close(got.output, plain.output)
    assert not any(m._forward_hooks for m in model.modules())


def test_twin_channels_last_only_on_cpu_and_grad_refused() -> None:
    model = make("tiny_residual")
    fast = InferenceSession(model, [], torch.device("cpu"))
    assert fast.twin.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.twin.fc.weight is model.fc.weight  # read-only tensors are shared, not copied
    assert fast.twin.layer1.conv1.weight is not model.layer1.conv1.weight
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no-grad"):
        fast.forward(X, slice(0, 4), grad=True)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Grows by one entry each time an inference twin is built."""
    calls: list[int] = []
    real = twin_module.InferenceSession.__init__

    def counting(self: InferenceSession, *args: object, **kwargs: object) -> None:
        calls.append(1)
        real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(twin_module.InferenceSession, "__init__", counting)
    return calls


METHODS = {
    "score_cam": lambda m: ScoreCAM(m, "layer1", max_batch=7),
    "ablation_cam": lambda m: AblationCAM(m, "layer1", max_batch=7),
    "occlusion": lambda m: Occlusion(m, window=4, stride=3, max_batch=7),
    "occlusion_layer": lambda m: Occlusion(m, window=2, stride=2, max_batch=7),
    "rise": lambda m: RISE(m, masks=20, cells=4, seed=0, max_batch=7),
}


@pytest.mark.parametrize("name", METHODS)
def test_perturbation_methods_agree_with_exact_forward(name: str) -> None:
    model = make("tiny_residual")
    method = METHODS[name](model)
    wrt = "layer1" if name == "occlusion_layer" else None
    fast = method.attribute(X, 2, wrt) if wrt else method.attribute(X, 2)
    with convscope.exact_forward():
        exact = method.attribute(X, 2, wrt) if wrt else method.attribute(X, 2)
    assert close(fast, exact, 1e-4)
    assert not any(m._forward_hooks for m in model.modules())


def test_gradient_methods_and_exact_forward_build_no_twin(built: list[int]) -> None:
    model = make("tiny_residual")
    Saliency(model).attribute(X, 1)
    with convscope.exact_forward():
        ScoreCAM(model, "layer1").attribute(X, 1)
    assert built == []
    ScoreCAM(model, "layer1", max_batch=5).attribute(X, 1)
    assert built == [1]  # one twin per call, however many batches


def test_twin_follows_a_train_mode_model_in_eval_and_restores_flags() -> None:
    model = TinyVGG().train()
    flags = [m.training for m in model.modules()]
    fast = ScoreCAM(model, "features.3").attribute(sample("tiny_vgg", 2), 0)
    with convscope.exact_forward():
        exact = ScoreCAM(model, "features.3").attribute(sample("tiny_vgg", 2), 0)
    assert close(fast, exact, 1e-4)
    assert [m.training for m in model.modules()] == flags


def test_error_in_the_twin_leaves_no_hooks() -> None:
    class Fails(TinyResidual):
        def forward(self, x: Tensor) -> Tensor:
            if x.shape[0] == 1:  # the shared zero-image evaluation
                raise RuntimeError("boom")
            return super().forward(x)

    torch.manual_seed(0)
    model = Fails()
    x = X.clone()
    x[:, :, :, :] = 0  # constant layer maps: score-CAM's shared evaluation of one input
    with pytest.raises(Exception, match="boom"):
        ScoreCAM(model, "layer1").attribute(x, 1)
    assert not any(m._forward_hooks for m in model.modules())


def test_a_model_that_cannot_be_copied_is_evaluated_itself() -> None:
    import threading

    model = make("tiny_residual")
    model.lock = threading.Lock()  # deepcopy cannot copy a lock
    with pytest.raises(TypeError):
        copy.deepcopy(model)
    fast = ScoreCAM(model, "layer1").attribute(X, 1)
    with convscope.exact_forward():
        exact = ScoreCAM(model, "layer1").attribute(X, 1)
    assert torch.equal(fast, exact)


@pytest.mark.parametrize("name", ["score_cam", "occlusion", "rise"])
def test_small_jobs_skip_the_twin_and_large_ones_build_it(name: str, built: list[int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model = make("tiny_residual")
    monkeypatch.setattr(session_module, "TWIN_MIN_WORK", 10**12)
    METHODS[name](model).attribute(X, 2)
    assert built == []
    monkeypatch.setattr(session_module, "TWIN_MIN_WORK", X[0].numel())  # one input's worth: any job is large
    METHODS[name](model).attribute(X, 2)
    assert built == [1]


def test_off_the_cpu_no_twin_is_built() -> None:
    """Off the CPU (no channels-last there, and cuDNN gains little from folding) the model serves."""
    cuda = torch.device("cuda")  # only the rule is checked: build() returns before touching a tensor
    assert InferenceSession.build(make("tiny_residual"), [], cuda) is None
    assert InferenceSession.build(make("tiny_residual"), [], torch.device("cpu")) is not None


def test_the_trace_is_remembered_until_the_module_tree_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    traces: list[int] = []
    real = twin_module.conv_norm_pairs
    monkeypatch.setattr(twin_module, "conv_norm_pairs", lambda m: traces.append(1) or real(m))
    model = make("tiny_residual").eval()
    first = InferenceSession(model, [], torch.device("cpu"))
    again = InferenceSession(model, [], torch.device("cpu"))
    assert len(traces) == 1 and again.folded == first.folded
    model.layer1.bn2 = nn.Identity()  # the tree changed: layer1.conv2 has no norm to fold any more
    changed = InferenceSession(model, [], torch.device("cpu"))
    assert len(traces) == 2 and set(first.folded) - set(changed.folded) == {"layer1.conv2"}
    with torch.no_grad():
        assert close(changed.forward(X, slice(0, 4)).record.output, model(X))


def test_the_remembered_trace_does_not_keep_the_model_alive() -> None:
    import gc
    import types
    import weakref

    model = make("tiny_residual").eval()
    model.forward = types.MethodType(type(model).forward, model)  # a per-instance forward, bound to the model
    InferenceSession(model, [], torch.device("cpu"))
    assert model in twin_module._TRACED
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
