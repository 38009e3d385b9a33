"""Path, noise and perturbation methods side by side with Captum, plus the memory of ``"auto"``.

Same model, input, target and settings for both libraries, timed interleaved in one process
(CPU: this process's CPU time; CUDA: wall time); the ratio is convscope's time over Captum's.

- IntegratedGradients, 50 Gauss-Legendre steps, all steps in one batch (Captum
  ``internal_batch_size=None``, ours ``max_batch=None``).
- SmoothGrad around the gradient, 50 samples in one batch. The results are compared with
  Captum's ``torch.normal`` handed our noise; timing uses Captum as it is.
- Occlusion, window 16 and stride 8 (quick: 64x64 input), ``perturbations_per_eval`` =
  ``max_batch`` = 64 (quick: 16), on ResNet-18 and VGG-16 (``weights=None``); the
  ``exact_forward()`` row evaluates every window on the model itself instead of the inference twin.
- Peak resident memory of IntegratedGradients (200 steps; quick: 20) on ResNet-50 at 224x224
  with ``max_batch="auto"``, measured in a fresh subprocess (``ru_maxrss``).

    python -m benchmarks.bench_attribution [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import Row, Table, full_float32, interleaved, synced

ROOT = Path(__file__).resolve().parent.parent


def _noise_like_captum(x: torch.Tensor, samples: int, noise: float, seed: int) -> torch.Tensor:
    """SmoothGrad's documented noise (drawn on x's device), laid out sample-major like Captum's batch."""
    from convscope.methods.draws import gaussian_draws

    eps = gaussian_draws(samples, x.shape[1:], seed, like=x)
    span = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).reshape(-1, 1, 1, 1, 1)
    return (noise * span * eps.unsqueeze(0)).reshape(-1, *x.shape[1:])


def _compare(table: Table, theirs: Callable[[], torch.Tensor], ours: Callable[[], torch.Tensor],
             device: torch.device, rounds: int, clock: Callable[[], float], agree: float,
             more: dict[str, Callable[[], torch.Tensor]] | None = None) -> Table:
    calls = {"captum": theirs, "convscope": ours, **(more or {})}
    interleaved(table, {name: synced(call, device) for name, call in calls.items()}, rounds, clock)
    table.notes.append(f"convscope / captum = {table.ratio('convscope'):.2f}; max |difference| = {agree:.2e} "
                       f"(relative to the largest value)")
    return table


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _path_and_noise(model: torch.nn.Module, arch: str, x: torch.Tensor, device: torch.device, rounds: int,
                    clock: Callable[[], float]) -> list[Table]:
    import captum.attr as ca

    from convscope.methods import IntegratedGradients, SmoothGrad

    shape = ", ".join(map(str, x.shape))
    ig_theirs = lambda: ca.IntegratedGradients(model).attribute(x, target=3, n_steps=50)  # noqa: E731
    ig_ours = lambda: IntegratedGradients(model, steps=50).attribute(x, 3)  # noqa: E731
    ig = _compare(Table(f"integrated gradients, 50 steps: {arch} [{shape}] on {device.type}", "captum"),
                  ig_theirs, ig_ours, device, rounds, clock, _relative(ig_ours(), ig_theirs()))

    noise = _noise_like_captum(x, 50, 0.15, 0)
    sg_theirs = lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(  # noqa: E731
        x, nt_type="smoothgrad", nt_samples=50, stdevs=0.15, target=3, abs=False)
    normal = torch.normal
    torch.normal = lambda mean, std: noise.clone()  # type: ignore[assignment]  # Captum gets our draws
    try:
        same_noise = sg_theirs()
    finally:
        torch.normal = normal  # type: ignore[assignment]
    sg_ours = lambda: SmoothGrad(model, samples=50, noise=0.15).attribute(x, 3)  # noqa: E731
    sg = _compare(Table(f"smooth grad, 50 samples: {arch} [{shape}] on {device.type}", "captum"),
                  sg_theirs, sg_ours, device, rounds, clock, _relative(sg_ours(), same_noise))
    return [ig, sg]


def _occlusion(model: torch.nn.Module, arch: str, x: torch.Tensor, device: torch.device, batch: int, rounds: int,
               clock: Callable[[], float]) -> Table:
    import captum.attr as ca

    from convscope import exact_forward
    from convscope.methods import Occlusion

    theirs = lambda: ca.Occlusion(model).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),  # noqa
                                                   baselines=0.0, target=3, perturbations_per_eval=batch)
    ours = lambda: Occlusion(model, window=16, stride=8, max_batch=batch).attribute(x, 3)  # noqa: E731

    def exact() -> torch.Tensor:
        with exact_forward():
            return ours()

    title = f"occlusion 16/8, batch {batch}: {arch} [{', '.join(map(str, x.shape))}] on {device.type}"
    return _compare(Table(title, "captum"), theirs, ours, device, rounds, clock, _relative(ours(), theirs()),
                    {"convscope, exact_forward()": exact})


MEMORY_CHILD = """
import json, resource, sys, time, torch, torchvision
from convscope.methods import IntegratedGradients, batching
torch.manual_seed(0)
device = torch.device(sys.argv[2])
model = torchvision.models.resnet50(weights=None).eval().to(device)
x = torch.randn(1, 3, 224, 224, device=device)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sizes = []
original = batching.Batches._measured
def spy(self, fn, rows):
    out = original(self, fn, rows); sizes.append(self.size); return out
batching.Batches._measured = spy
start = time.perf_counter()
IntegratedGradients(model, steps=int(sys.argv[1]), max_batch="auto").attribute(x, 3)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "before_kb": before, "max_batch": sizes[-1] if sizes else None,
                  "cuda_peak": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}))
"""


def _memory(steps: int, device: torch.device) -> Table:
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(steps), device.type], cwd=ROOT,
                          capture_output=True, text=True)
    table = Table(f"integrated gradients, {steps} steps, max_batch='auto': resnet50 [1, 3, 224, 224] on "
                  f"{device.type}", "convscope")
    if proc.returncode != 0:
        table.add_failure("convscope", RuntimeError(proc.stderr.strip()[-300:]))
        return table
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_gb = got["peak_kb"] / 2 ** 20
    note = (f"peak RSS {peak_gb:.2f} GB (after building the model: {got['before_kb'] / 2 ** 20:.2f} GB); "
            f"auto chose max_batch={got['max_batch']}")
    if got["cuda_peak"] is not None:
        note += f"; peak CUDA memory {got['cuda_peak'] / 2 ** 30:.2f} GB"
    table.rows.append(Row("convscope", got["seconds"], note=note))
    table.notes.append(f"target: peak RSS under 4 GB -> {'met' if peak_gb < 4 else 'NOT met'}; one run in a fresh "
                       "subprocess, ru_maxrss of that process")
    return table


def run(quick: bool) -> list[Table]:
    import torchvision

    warnings.filterwarnings("ignore", module="captum")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full_float32(device)
    size = 64 if quick else 224
    rounds = 3 if quick or device.type == "cpu" else 10
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    tables = []
    for arch in ("resnet18", "vgg16"):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
        x = torch.randn(1, 3, size, size, device=device)
        if arch == "resnet18":
            tables += _path_and_noise(model, arch, x, device, rounds, clock)
        tables.append(_occlusion(model, arch, x, device, 16 if quick else 64, rounds, clock))
    tables.append(_memory(20 if quick else 200, device))
    return tables


if __name__ == "__main__":
    for t in run(quick="--quick" in sys.argv):
        print(t.markdown())
