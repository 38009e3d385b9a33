"""Occlusion at the issue's size on the CPU: ResNet-18 or VGG-16 (``weights=None``), one 224x224 image,
window 16, stride 8 (729 windows), 64 windows per evaluation, beside Captum's ``Occlusion`` with
``perturbations_per_eval=64``. Here convscope's perturbed evaluations run on its inference twin
(batch norms folded, channels-last); bench_attribution's quick 64x64 case is too small to build
one. VGG-16 (``--arch vgg16``) takes about 15 minutes on a 2-core CPU, so ``benchmarks/run.py``
runs ResNet-18 only.

    python -m benchmarks.bench_occlusion [--arch resnet18|vgg16]
"""

from __future__ import annotations

import sys
import time
import warnings

import torch

from benchmarks.bench_attribution import _occlusion
from benchmarks.harness import Table


def run(quick: bool = False, arch: str = "resnet18") -> list[Table]:
    import torchvision

    warnings.filterwarnings("ignore", module="captum")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    table = _occlusion(model, arch, x, torch.device("cpu"), 64, 2, time.process_time)
    table.notes.append("CPU time of this process (2 threads); the difference comes from float32 rounding in the "
                       "twin's folded, channels-last convolutions, magnified by occlusion's score differences")
    return [table]


if __name__ == "__main__":
    arch = sys.argv[sys.argv.index("--arch") + 1] if "--arch" in sys.argv else "resnet18"
    for t in run(quick="--quick" in sys.argv, arch=arch):
        print(t.markdown())
