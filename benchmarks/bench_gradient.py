"""Gradient methods side by side with Captum: Saliency, GuidedBackprop, DeconvNet.

torchvision resnet18 and vgg16 (``weights=None``, eval mode) on a batch of 8x3x224x224
(``quick``: 2x3x64x64), target class 3. Each table times Captum and convscope in the same run;
the ratio is convscope's time over Captum's (lower is faster). Runs on CUDA when available (wall
time); on CPU it times this process's CPU time, calls interleaved, so a busy machine skews less.

    python -m benchmarks.bench_gradient [--quick]
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable

import torch

from benchmarks.harness import Table, full_float32, interleaved, synced

KINDS = ("saliency", "guided_backprop", "deconvnet")


def _pairs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Per method: (Captum call, convscope call), each returning the attribution."""
    import captum.attr as ca

    from convscope.methods import DeconvNet, GuidedBackprop, Saliency

    captum = {"saliency": lambda: ca.Saliency(model).attribute(x, target=3, abs=False),
              "guided_backprop": lambda: ca.GuidedBackprop(model).attribute(x, target=3),
              "deconvnet": lambda: ca.Deconvolution(model).attribute(x, target=3)}
    ours = {"saliency": lambda: Saliency(model).attribute(x, 3),
            "guided_backprop": lambda: GuidedBackprop(model).attribute(x, 3),
            "deconvnet": lambda: DeconvNet(model).attribute(x, 3)}
    return {k: (captum[k], ours[k]) for k in KINDS}


def run(quick: bool) -> list[Table]:
    import torchvision

    warnings.filterwarnings("ignore", module="captum")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    full_float32(device)
    shape = (2, 3, 64, 64) if quick else (8, 3, 224, 224)
    rounds = 5 if quick or device.type == "cpu" else 15
    # CPU: this process's CPU time, which other processes on a shared machine barely disturb
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    tables = []
    for arch in ("resnet18", "vgg16"):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval().to(device)
        x = torch.randn(*shape, device=device)
        for kind, (theirs, ours) in _pairs(model, x).items():
            agree = (theirs() - ours()).abs().max().item()  # type: ignore[operator]
            table = Table(f"{kind}: {arch} [{', '.join(map(str, shape))}] on {device.type}", reference="captum")
            interleaved(table, {"captum": synced(theirs, device), "convscope": synced(ours, device)}, rounds,
                         clock)
            table.notes.append(f"convscope / captum = {table.ratio('convscope'):.2f}; max |difference| = {agree:.2e}; "
                               f"{'CPU time of this process' if device.type == 'cpu' else 'wall time'}")
            tables.append(table)
    return tables


if __name__ == "__main__":
    for t in run(quick="--quick" in sys.argv):
        print(t.markdown())
