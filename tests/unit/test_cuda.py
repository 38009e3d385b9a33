"""CUDA runs of the attribution suite, the deconvnet and the batch knob, checked against the CPU.

Skipped (with the reason shown) where no CUDA device exists; a lent GPU machine runs them with
``python -m pytest tests/unit/test_cuda.py tests/unit/test_pooling.py``. The oracle is the same
computation on the CPU: every method's CUDA maps must equal its CPU maps, and ``max_batch="auto"``
must survive a real CUDA out-of-memory error by halving its chunks, giving the unchunked answer.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from nets import convnet_methods, make, sample
from torch import nn

from convscope.backends.torch import batching
from convscope.deconv import reconstruct
from convscope.errors import ConvscopeError
from convscope.methods import (
    RISE,
    AugSmooth,
    GradCAM,
    IntegratedGradients,
    Saliency,
    SmoothGrad,
    methods,
)
from convscope.methods.perturb import rise_masks
from convscope.targets import Channel, MaxNeuron

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")

LIGHT: dict[str, dict[str, int]] = {"rise": {"masks": 16}}
# ablation-CAM and occlusion subtract nearly equal scores, so kernel-level rounding differences between
# cuDNN and the CPU convolutions are amplified (as between batch sizes in test_lifecycle.py)
LOOSE = {"ablation_cam", "occlusion", "score_cam", "rise"}
# noise tunnels draw their noise on the input's device, and CUDA's generator is not the CPU's
ON_DEVICE_DRAWS = {"smooth_grad", "smooth_grad_squared", "var_grad"}


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    """Full float32 matmuls and convolutions on CUDA, so the CPU is a 1e-4 oracle."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("model_name, layer", [("tiny_vgg", "features.3"), ("tiny_residual", "layer1")])
@pytest.mark.parametrize("method_name", convnet_methods())
def test_every_method_gives_the_cpu_maps_on_cuda(method_name: str, model_name: str, layer: str) -> None:
    if method_name in ON_DEVICE_DRAWS:
        pytest.skip("draws its noise on the device: checked against a naive CUDA loop below")
    cpu_model, x = make(model_name).eval(), sample(model_name)
    gpu_model = make(model_name).eval().cuda()
    targets = [[0, 3, 1], Channel(layer, 1)]
    cls = methods()[method_name].cls
    on_cpu = cls(cpu_model, **LIGHT.get(method_name, {})).attribute(x, targets=targets)
    on_gpu = cls(gpu_model, **LIGHT.get(method_name, {})).attribute(x.cuda(), targets=targets)
    rtol, atol = (1e-3, 1e-4) if method_name in LOOSE else (1e-4, 1e-5)
    for want, got in zip(on_cpu, on_gpu, strict=True):
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=rtol, atol=atol * float(want.abs().max()))


@pytest.mark.parametrize("method_name", convnet_methods())
def test_class_targets_may_be_a_tensor_on_the_cpu_or_the_gpu(method_name: str) -> None:
    model, x = make("tiny_vgg").eval().cuda(), sample("tiny_vgg").cuda()
    cls, options = methods()[method_name].cls, LIGHT.get(method_name, {})
    maps = [cls(model, **options).attribute(x, target=labels)
            for labels in ([0, 3, 1], torch.tensor([0, 3, 1]), torch.tensor([0, 3, 1], device="cuda"))]
    assert all(m.shape == maps[0].shape and m.device.type == "cuda" for m in maps)
    rtol, atol = (1e-3, 1e-4) if method_name in LOOSE else (1e-4, 1e-5)
    for other in maps[1:] if method_name not in ON_DEVICE_DRAWS else []:  # those draw new noise per call
        torch.testing.assert_close(other, maps[0], rtol=rtol, atol=atol * float(maps[0].abs().max()))


@pytest.mark.parametrize("build", [lambda m: GradCAM(m, "features", eigen_smooth=True),
                                   lambda m: AugSmooth(GradCAM(m, "features", eigen_smooth=True)),
                                   lambda m: AugSmooth(Saliency(m), normalise=True)],
                         ids=["eigen_smooth", "aug_smooth_of_eigen_smooth", "aug_smooth_normalised"])
def test_cam_smoothing_on_cuda_gives_the_cpu_maps(build) -> None:
    cpu_model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    on_cpu = build(cpu_model).attribute(x, [0, 3, 1])
    on_gpu = build(make("tiny_vgg").eval().cuda()).attribute(x.cuda(), [0, 3, 1])
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5 * float(on_cpu.abs().max()))


def test_rise_masks_gathered_on_cuda_are_the_cpu_slices() -> None:
    draws = RISE(nn.Identity(), masks=50).draws((60, 50))
    on_cpu, on_gpu = rise_masks(draws[0], draws[1], (60, 50)), rise_masks(draws[0].cuda(), draws[1], (60, 50))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-6)


def test_smooth_grad_on_cuda_is_the_mean_over_its_cuda_draws() -> None:
    model, x = make("tiny_vgg").eval().cuda(), sample("tiny_vgg").cuda()
    got = SmoothGrad(model, samples=6, noise=0.2, seed=4, max_batch=4).attribute(x, [0, 3, 1])
    eps = torch.randn(6, *x.shape[1:], generator=torch.Generator("cuda").manual_seed(4), device="cuda")
    expected = torch.zeros_like(x)
    for n, cls in enumerate([0, 3, 1]):
        sigma = 0.2 * (x[n].max() - x[n].min())
        for k in range(6):
            point = (x[n:n + 1] + sigma * eps[k]).requires_grad_()
            expected[n] += torch.autograd.grad(model(point)[0, cls], point)[0][0] / 6
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_explicit_deconvnet_on_cuda_equals_cpu() -> None:
    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    want = reconstruct(model, x, MaxNeuron("features.3", 2)).detach()
    got = reconstruct(model.cuda(), x.cuda(), MaxNeuron("features.3", 2))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


class Wide(nn.Module):
    """A net whose activations are ~40 MB per 96x96 sample: a few dozen samples fill a small cap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 256, 3, padding=1)
        self.head = nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def test_auto_batch_backs_off_after_a_real_cuda_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = Wide().eval()
    x = torch.randn(1, 3, 96, 96)
    want = IntegratedGradients(model.cuda(), steps=64, max_batch=8).attribute(x.cuda(), 1)
    # an estimate far too optimistic: "auto" first tries every step at once, which cannot fit under the cap
    monkeypatch.setattr(batching, "memory_budget", lambda device: 1 << 40)
    torch.cuda.empty_cache()
    cap = 0.6 * 2 ** 30 / torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        method = IntegratedGradients(model, steps=64, max_batch="auto")
        got = method.attribute(x.cuda(), 1)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConvscopeError, match="ran out of memory"):  # the cap is real: all steps at once do not fit
        torch.cuda.set_per_process_memory_fraction(cap)
        try:
            IntegratedGradients(model, steps=64, max_batch=None).attribute(x.cuda(), 1)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)


def test_feature_visualization_on_cuda_rises_and_repeats_without_transforms() -> None:
    from convscope import featurevis

    model = make("tiny_vgg").eval().cuda()
    objective = featurevis.channels("features.3", "0-3")
    first = featurevis.render(model, objective, steps=24, size=16, transforms=None, seed=1, progress=False)
    again = featurevis.render(model, objective, steps=24, size=16, transforms=None, seed=1, progress=False)
    assert first.images.device.type == "cuda" and first.images.shape == (4, 3, 16, 16)
    assert torch.equal(first.images, again.images)  # no transforms: no order-dependent grid_sample backward
    history = first.history.cpu()
    assert bool((history[-4:].mean(0) > history[:4].mean(0)).all())  # every channel's objective rose
    jittered = featurevis.render(model, objective, steps=4, size=16, seed=1, progress=False)
    assert bool(torch.isfinite(jittered.images).all())


def test_atlas_projections_on_cuda_equal_cpu() -> None:
    from convscope.atlas.project import project_units

    model, x = make("tiny_vgg").eval(), sample("tiny_vgg", n=4)
    channels, coords = [0, 3, 5, 7], [(0, 0), (1, 2), (3, 3), (2, 1)]
    want = project_units(model, "features.3", x, channels, coords, max_batch=3)
    got = project_units(model.cuda(), "features.3", x.cuda(), channels, coords, max_batch=3)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_cuda_evaluations_run_on_the_model_and_a_direct_twin_still_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA the model itself evaluates perturbed inputs (no twin); an InferenceSession made
    directly on CUDA still folds, keeps the model's memory format and computes its function."""
    from convscope.backends.torch import Session
    from convscope.backends.torch import session as session_module
    from convscope.backends.torch.inference import InferenceSession

    monkeypatch.setattr(session_module, "TWIN_MIN_WORK", 0)  # any job would be large enough
    model, x = make("tiny_residual").eval().cuda(), sample("tiny_residual", n=3).cuda()
    with Session(model, layers=["layer1"]) as session:
        assert session.inference() is session
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = InferenceSession(model, ["layer1"], x.device)
    assert fast.folded and not fast.channels_last and fast.twin.conv1.weight.is_contiguous()
    with fast.probes:  # the hooks on the twin's layer1, as a session enters them
        got = fast.forward(x, slice(0, 3)).record
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(got.output, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_forward_passes_that_stop_early_on_cuda_skip_the_head_and_agree() -> None:
    """A layer target on CUDA: after one whole pass the head stops running, and the saliency map
    is the CPU's (where the whole model runs every time)."""
    from convscope.methods import IntegratedGradients

    model, x = make("tiny_vgg").eval(), sample("tiny_vgg")
    head_calls: list[int] = []
    handle = model.classifier.register_forward_hook(lambda *_: head_calls.append(1))
    try:
        target = Channel("features.3", 2) - 0.5 * Channel("features.0", 1)
        want = IntegratedGradients(model, steps=6, max_batch=4).attribute(x, target)
        on_cpu = len(head_calls)
        got = IntegratedGradients(model.cuda(), steps=6, max_batch=4).attribute(x.cuda(), target)
    finally:
        handle.remove()
    assert on_cpu == 1 and len(head_calls) == 2  # one whole pass each; the later chunks stopped early
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
