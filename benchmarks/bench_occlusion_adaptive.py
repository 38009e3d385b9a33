"""Adaptive occlusion against Captum's and convscope's exact occlusion, side by side in one process.

``--arch vgg16|resnet18``: torchvision's model (``weights=None``, seed 0, eval mode), one 224x224
image, window 16, stride 8 (729 windows), 64 windows per evaluation (Captum:
``perturbations_per_eval=64``), on the CPU. ``--arch shapes``: the trained zoo model
``shapes-vgg`` on ``--images`` Shapes images (seed 1) at its own 64 px, window 8, stride 4 (225
windows), 256 per evaluation (Captum: 8 images x 32 windows at once), each image's own label as
the target; there the notes also give the pointing game (:func:`convscope.evaluate.pointing_game`)
of the exact and adaptive maps.

Rows: Captum's ``Occlusion``; convscope's exact occlusion (``incremental="auto"``: the
incremental path where it pays); then adaptive settings (:class:`convscope.methods.Adaptive`):
the default, the default with the projective-field cap, a coarser one with the cap, and a finer one. Each runs once (its one-off
costs, the inference twin and the trace, are part of it); the table gives CPU time of this process.
The notes give each adaptive row's speed against Captum's, the share of windows it scored, its
multiply-adds against plain exact occlusion's, and the SSIM (:func:`convscope.ops.similarity.ssim`) of
its maps to the exact maps.

Targets (issue: adaptive occlusion): >= 15x faster than Captum with SSIM >= 0.95, and the pointing
game on shapes-vgg within 1 point of the exact maps'.

    python -m benchmarks.bench_occlusion_adaptive [--arch resnet18|vgg16|shapes] [--threads N] [--images 200]
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable

import torch

from benchmarks.harness import Row, Table
from convscope.methods import Adaptive

SETTINGS = {
    "adaptive, default": Adaptive(),
    "adaptive, default + tau 0.5": Adaptive(tau=0.5),
    "adaptive, fastest": Adaptive(keep=0.1, factor=4, tau=0.5),
    "adaptive, fine": Adaptive(keep=0.5, factor=2),
}


def _cpu(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def _setup(arch: str, quick: bool, images: int) -> tuple[torch.nn.Module, torch.Tensor, list[int], torch.Tensor | None,
                                                         int, int, int]:
    """The model, inputs, targets, masks (shapes only), window, stride and windows per evaluation."""
    if arch == "shapes":
        from convscope import zoo
        from convscope.data.shapes import Shapes

        model = zoo.load("shapes-vgg").eval()
        ds = Shapes(8 if quick else images, seed=1)
        x = torch.stack([ds[i][0] for i in range(ds.n)])
        masks = torch.stack([torch.as_tensor(ds.mask(i)) for i in range(ds.n)])
        return model, x, [int(ds[i][1]) for i in range(ds.n)], masks, 8, 4, 256
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    size = 64 if quick else 224
    return model, torch.randn(1, 3, size, size), [3], None, 16, 8, 64


def run(quick: bool = False, arch: str = "resnet18", threads: int | None = None, images: int = 200) -> list[Table]:
    import captum.attr as ca

    from convscope.methods import Occlusion
    from convscope.evaluate import pointing_game
    from convscope.ops.similarity import ssim

    warnings.filterwarnings("ignore", module="captum")
    if threads:
        torch.set_num_threads(threads)
    model, x, targets, masks, window, stride, batch = _setup(arch, quick, images)
    target = torch.tensor(targets)
    channels = int(x.shape[1])
    load = os.getloadavg()[0]
    per = max(1, min(len(x), batch // 32))  # Captum evaluates ``per`` images x ``batch // per`` windows at once

    def captum() -> torch.Tensor:
        return torch.cat([ca.Occlusion(model).attribute(
            x[i:i + per], sliding_window_shapes=(channels, window, window), strides=(channels, stride, stride),
            baselines=0.0, target=target[i:i + per], perturbations_per_eval=batch // per) for i in range(0, len(x), per)])

    runs: dict[str, Callable[[], torch.Tensor]] = {
        "captum": captum,
        "convscope, exact": lambda: Occlusion(model, window=window, stride=stride, max_batch=batch).attribute(x, target),
    }
    methods = {name: Occlusion(model, window=window, stride=stride, max_batch=batch, adaptive=s)
               for name, s in SETTINGS.items()}
    for name, occ in methods.items():
        runs[name] = lambda occ=occ: occ.attribute(x, target)
    seconds, maps = {}, {}
    for name, fn in runs.items():
        seconds[name], maps[name] = _cpu(fn)
        print(f"{name}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)
    size = x.shape[-1]
    windows = ((size - window) // stride + 1) ** 2
    what = f"shapes-vgg (trained), {len(x)} Shapes images" if arch == "shapes" else f"{arch} (weights=None), 1 image"
    table = Table(f"adaptive occlusion {window}/{stride} ({windows} windows), batch {batch}: {what} "
                  f"[{len(x)}, {channels}, {size}, {size}] on cpu, {torch.get_num_threads()} threads", "captum")
    for name in runs:
        table.rows.append(Row(name, seconds[name]))
    exact = maps["convscope, exact"]
    table.notes.append(f"exact: {seconds['captum'] / seconds['convscope, exact']:.2f}x faster than Captum; largest "
                       f"|difference| to Captum's map {float((exact - maps['captum']).abs().max() / maps['captum'].abs().max()):.1e} "
                       "of its largest value")
    hits = None if masks is None else {tol: float(pointing_game(exact.mean(1), masks, tolerance=tol).float().mean())
                                       for tol in (0, 4)}
    if hits is not None:
        table.notes.append(f"pointing game of the exact maps: {hits[0]:.1%} (tolerance 4 px: {hits[4]:.1%})")
    for name, occ in methods.items():
        report = occ.last_report
        values = ssim(maps[name], exact)
        speed = seconds["captum"] / seconds[name]
        macs = report.mac_share()
        line = (f"{name} ({occ.adaptive}): {speed:.1f}x faster than Captum, {seconds['convscope, exact'] / seconds[name]:.1f}x "
                f"than exact; scored {1 - report.passes_saved():.1%} of the windows"
                + (f", multiply-adds {macs:.1%} of plain exact occlusion's" if macs is not None else "")
                + f" (path {report.path}); SSIM to the exact map {values.mean():.3f}"
                + (f" (median {values.median():.3f}, lowest {values.min():.3f})" if len(values) > 1 else "")
                + f"; targets >= 15x {'met' if speed >= 15 else 'NOT met'}, SSIM >= 0.95 "
                + ("met" if float(values.mean()) >= 0.95 else "NOT met"))
        if hits is not None:
            got = {tol: float(pointing_game(maps[name].mean(1), masks, tolerance=tol).float().mean()) for tol in (0, 4)}
            gap = abs(got[0] - hits[0]) * 100
            line += (f"; pointing game {got[0]:.1%} (tolerance 4 px: {got[4]:.1%}), {gap:.1f} points from exact "
                     f"(target <= 1: {'met' if gap <= 1 else 'NOT met'})")
        table.notes.append(line)
    table.notes.append(f"CPU time of this process, one run each; load average {load:.1f} before the run, "
                       f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores (a shared machine)")
    return [table]


if __name__ == "__main__":
    def option(name: str, default: str) -> str:
        return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default

    for t in run(quick="--quick" in sys.argv, arch=option("--arch", "resnet18"),
                 threads=int(option("--threads", "0")) or None, images=int(option("--images", "200"))):
        print(t.markdown())
