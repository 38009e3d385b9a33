"""Lifecycle guarantees of every registered method on every test model (and the zoo models):
no hooks or modes left behind (also when the forward pass or the target raises), parameters
bit-identical with untouched ``.grad``, ``training`` and ``requires_grad`` restored, the input
tensor untouched, results independent of ``max_batch`` and of the other samples."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import Exploding, convnet_methods, make, sample
from torch import nn

from convscope.errors import ConvscopeError
from convscope.methods.cam import CAMMethod
from convscope.methods import GuidedBackprop, methods
from convscope.targets import Channel

METHODS = convnet_methods()
MODELS = {"tiny_vgg": "features.3", "tiny_residual": "layer1", "spelling:F.relu": "conv2",
          "spelling:shared_inplace": "conv2", "spelling:Tensor.relu_": "conv2"}
ZOO = {"shapes-vgg": "features.3", "shapes-resnet": "layer2"}


def get_model(name: str, request: pytest.FixtureRequest) -> tuple[nn.Module, torch.Tensor]:
    if name in ZOO:
        pytest.importorskip("convscope.zoo")
        return request.getfixturevalue(name.replace("-", "_")), torch.rand(
            3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return make(name), sample(name)


# RISE's default 512 masks cost 512 model calls per max_batch=2 chunk: the lifecycle needs only a few
LIGHT: dict[str, dict[str, int]] = {"rise": {"masks": 16}}


def no_hooks_or_modes(model: nn.Module) -> bool:
    from torch.nn.modules import module as module_globals

    local = all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
                for m in model.modules())
    global_hooks = not (module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks
                        or module_globals._global_backward_hooks)
    return local and global_hooks and torch._C._len_torch_function_stack() == 0


@contextmanager
def guarded(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Set up non-default flags, run the block, then check that nothing changed."""
    model.train()
    children = list(model.children())
    children[0].eval()  # mixed training flags must come back exactly
    params = list(model.parameters())
    params[0].requires_grad_(False)
    state = [(p.detach().clone(), p.requires_grad) for p in params]
    flags = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    x_copy, x_version = x.clone(), x._version
    try:
        yield
    finally:
        assert no_hooks_or_modes(model)
        assert [m.training for m in model.modules()] == flags
        assert all(torch.equal(p, v) and p.requires_grad == rg and p.grad is None for p, (v, rg) in zip(params, state))
        assert all(torch.equal(b, c) for b, c in zip(model.buffers(), buffers))  # batch-norm stats untouched
        assert torch.equal(x, x_copy) and x._version == x_version and not x.requires_grad and x.grad is None
        params[0].requires_grad_(True)
        model.eval()


@pytest.mark.parametrize("model_name", [*MODELS, *ZOO])
@pytest.mark.parametrize("method_name", METHODS)
def test_lifecycle(method_name: str, model_name: str, request: pytest.FixtureRequest) -> None:
    model, x = get_model(model_name, request)
    layer = {**MODELS, **ZOO}[model_name]
    light = LIGHT.get(method_name, {})
    method = methods()[method_name].cls(model, **light)
    classes = [i % 4 for i in range(len(x))]
    with guarded(model, x):
        maps = method.attribute(x, targets=[classes, Channel(layer, 1)])
        by_layer = method.attribute(x, 1, wrt=layer)
    if issubclass(methods()[method_name].cls, CAMMethod):  # one map per sample: [N, 1, H, W] / [N, 1, h, w]
        assert maps[0].shape == maps[1].shape == (x.shape[0], 1, *x.shape[2:])
        assert by_layer.shape == (x.shape[0], 1, *_output_shape(model, layer, x)[2:])
    else:
        assert maps[0].shape == x.shape and maps[1].shape == x.shape
        assert by_layer.shape == _output_shape(model, layer, x)

    with guarded(model, x):  # the same answers chunk by chunk, and sample by sample
        chunked = methods()[method_name].cls(model, max_batch=2, **light).attribute(x, classes)
        single = [method.attribute(x[i:i + 1], classes[i]) for i in range(len(x))]
    # ablation-CAM's (S - S_k) / S and occlusion's S - S_window subtract nearly equal float32 scores, so
    # the last-bit differences of convolutions at different batch sizes are amplified; so does LRP's division of
    # relevance by sums that nearly cancel (residual sums, stabilised by 1e-6: 3e-4 of the largest value on
    # shapes-resnet in float32, exactly 0 in float64); others agree to 1e-5.
    rtol, atol = {"ablation_cam": (1e-3, 1e-4), "occlusion": (1e-3, 1e-4), "lrp": (1e-3, 1e-3)}.get(method_name,
                                                                                                  (1e-5, 1e-6))
    scale = float(maps[0].abs().max())
    torch.testing.assert_close(chunked, maps[0], rtol=rtol, atol=atol * scale)
    torch.testing.assert_close(torch.cat(single), maps[0], rtol=rtol, atol=atol * scale)

    with guarded(model, x), pytest.raises(ConvscopeError, match="out of range"):
        method.attribute(x, 99)  # the target fails after the forward pass
    exploding = Exploding(model)
    exploding.armed = True
    with guarded(exploding, x), pytest.raises(ConvscopeError, match="boom"):
        methods()[method_name].cls(exploding, **light).attribute(x, targets=[1, Channel(f"inner.{layer}", 0)])


def _output_shape(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Size:
    """The shape of ``layer``'s output, recorded with a throwaway hook."""
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, args, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return seen[0]


RESIDUAL, RESIDUAL_X = make("tiny_residual").eval(), sample("tiny_residual", n=5)
RESIDUAL_CLASSES = torch.tensor([0, 3, 1, 4, 2])
RESIDUAL_FULL = GuidedBackprop(RESIDUAL).attribute(RESIDUAL_X, RESIDUAL_CLASSES)


@settings(max_examples=25, deadline=None)
@given(perm=st.permutations(range(5)), max_batch=st.one_of(st.none(), st.integers(1, 6)))
def test_results_follow_their_sample_whatever_the_batch(perm: list[int], max_batch: int | None) -> None:
    got = GuidedBackprop(RESIDUAL, max_batch=max_batch).attribute(RESIDUAL_X[perm], RESIDUAL_CLASSES[perm])
    torch.testing.assert_close(got, RESIDUAL_FULL[perm], rtol=1e-5, atol=1e-7)
