"""Time methods of the checkout on the import path, for before/after comparisons of two checkouts.

Run it from each checkout in turn (alternating, each in a fresh process), e.g.::

    git worktree add ../before <old commit>
    for i in 1 2; do
      (cd ../before && PYTHONPATH=src python -m benchmarks.ab_methods before)
      PYTHONPATH=src python -m benchmarks.ab_methods after
    done

Each line is the median CPU time of this process over 5 calls (after one warm-up call) of one
method on ResNet-18 (``weights=None``, one 224x224 image, class 3) or on the zoo's shapes-resnet
(8 Shapes images at 64x64, their labels). Both checkouts run the same calls, so the two columns
compare the code, not the machine; the machine's load still moves both (run them alternately).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def median_time(fn: Callable[[], Any], calls: int = 5) -> float:
    """Median CPU seconds of ``fn`` over ``calls`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(calls):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return sorted(times)[calls // 2]


def cases() -> list[tuple[str, Callable[[], Any]]]:
    import torchvision

    from convscope import zoo
    from convscope.data import Shapes
    from convscope.methods import GradCAM, IntegratedGradients, Occlusion, Saliency, ScoreCAM

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    shapes = zoo.load("shapes-resnet", progress=False)
    images, _, labels = Shapes(8, seed=2).arrays()
    sx, classes = zoo.preset("shapes-resnet").to_tensor(images), labels.tolist()
    return [
        ("resnet18 saliency", lambda: Saliency(resnet).attribute(x, 3)),
        ("resnet18 grad_cam layer4", lambda: GradCAM(resnet, "layer4").attribute(x, 3)),
        ("shapes-resnet score_cam layer3", lambda: ScoreCAM(shapes, "layer3", max_batch=64).attribute(sx, classes)),
        ("shapes-resnet occlusion 8/4", lambda: Occlusion(shapes, window=8, stride=4, max_batch=64).attribute(sx, classes)),
        ("shapes-resnet integrated_gradients 16", lambda: IntegratedGradients(shapes, steps=16, max_batch=64)
         .attribute(sx, classes)),
    ]


def main(label: str) -> None:
    torch.set_num_threads(2)
    for name, fn in cases():
        print(f"{label}\t{name}\t{median_time(fn) * 1000:.0f} ms", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "this checkout")
