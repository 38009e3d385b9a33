"""convscope.evaluate against Quantus 0.6, side by side in one process: the same model (ResNet-18,
``weights=None``, seed 0, eval mode), the same images (random 224 x 224), the same maps (absolute
saliency) and targets, the same protocol settings, on the CPU.

Rows per table: Quantus (the reference), then convscope. Perturbation metrics cost the same
model passes in both (the notes count them), so their ratio shows the per-step work around the
passes; model-parameter randomisation recomputes the same maps in both (convscope's Saliency as
Quantus's ``explain_func``), so its ratio shows the work around the explanations (copies,
normalisation, per-sample SSIM). The cheap map-only metrics run on 64 maps.

    python -m benchmarks.bench_evaluate [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from benchmarks.harness import Table


def _pair(table: Table, theirs: Callable[[], object], ours: Callable[[], object], rounds: int) -> None:
    """Time Quantus's and convscope's call in alternation (so a change of the machine's load hits
    both), ``rounds`` times each, and add each one's best time as a row."""
    from benchmarks.harness import Row

    best = {"Quantus": float("inf"), "convscope": float("inf")}
    for _ in range(rounds):
        for name, fn in (("Quantus", theirs), ("convscope", ours)):
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    table.rows += [Row(name, seconds) for name, seconds in best.items()]


def run(quick: bool = False, rounds: int = 1) -> list[Table]:
    return list(tables(quick, rounds))


def tables(quick: bool = False, rounds: int = 1) -> Iterator[Table]:
    """Each table as soon as it is measured."""
    import torchvision

    import quantus
    from convscope import evaluate
    from convscope.evaluate.randomisation import randomisable_layers
    from convscope.methods import Saliency

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    size = 64 if quick else 224
    model = torchvision.models.resnet18(weights=None).eval()
    g = torch.Generator().manual_seed(1)
    n = 4 if quick else 8
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 1000, (n,), generator=g)
    maps = Saliency(model).attribute(x, y.tolist()).abs().sum(1, keepdim=True)
    xs, ys, ms = x.numpy(), y.numpy(), maps.numpy()
    common = {"abs": False, "normalise": False, "disable_warnings": True}

    # Quantus flips channel elements and wants its step to divide H x W (never a multiple of 3 at 224 px):
    # convscope flips whole pixels, as many per step as give the same number of steps
    features = size * 16
    steps = 3 * size * size // features
    pixels_in_step = -(-size * size // steps)
    t = Table(f"pixel flipping, ResNet-18, {n} images {size}x{size}, {steps} steps", reference="Quantus")
    q = quantus.PixelFlipping(features_in_step=features, perturb_baseline=0.0, **common)
    _pair(t, lambda: q(model=model, x_batch=xs, y_batch=ys, a_batch=ms, device="cpu", batch_size=n),
          lambda: evaluate.pixel_flipping(model, x, y, maps, pixels_in_step=pixels_in_step,
                                                         max_batch=n), rounds)
    t.notes.append(f"both: {steps} model passes per image, {n} images per pass (Quantus: {features} channel "
                   f"elements per step; convscope: {pixels_in_step} pixels)")
    yield t

    # one image, many steps (the case of Quantus's issue #96): Quantus runs one pass per step, convscope
    # puts up to max_batch steps of the curve in one pass
    features = size * 4
    steps = 3 * size * size // features
    pixels_in_step = -(-size * size // steps)
    t = Table(f"pixel flipping, ResNet-18, one image {size}x{size}, {steps} steps", reference="Quantus")
    q = quantus.PixelFlipping(features_in_step=features, perturb_baseline=0.0, **common)
    _pair(t, lambda: q(model=model, x_batch=xs[:1], y_batch=ys[:1], a_batch=ms[:1], device="cpu"),
          lambda: evaluate.pixel_flipping(model, x[:1], y[:1], maps[:1], pixels_in_step=pixels_in_step,
                                                         max_batch=32), rounds)
    t.notes.append(f"both: {steps} model passes of the image; Quantus one per call, convscope 32 per call")
    yield t

    patch, regions = 16, (8 if quick else 20)
    t = Table(f"region perturbation, ResNet-18, {n} images {size}x{size}, {regions} patches of {patch}x{patch}",
              reference="Quantus")
    q = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, perturb_baseline=0.0, **common)
    _pair(t, lambda: q(model=model, x_batch=xs, y_batch=ys, a_batch=ms, device="cpu", batch_size=n),
          lambda: evaluate.region_perturbation(model, x, y, maps, patch=patch, regions=regions,
                                                              max_batch=n), rounds)
    t.notes.append(f"Quantus: {regions + 1} passes per image; convscope: {regions + 1} (the unperturbed one included)")
    yield t

    k = 2
    layers = randomisable_layers(model)

    def explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
        return Saliency(model).attribute(torch.as_tensor(inputs), torch.as_tensor(targets).tolist()).abs().sum(
            1, keepdim=True).numpy()

    t = Table(f"model-parameter randomisation (cascading, Spearman of absolute maps), ResNet-18, {k} images "
              f"{size}x{size}, {len(layers)} layers, saliency", reference="Quantus")
    # Quantus's MPRT with its SSIM fails (a list where it expects an array) and would compare maps
    # flattened to 1-D: its default, Spearman's rank correlation, is the shared quantity
    q = quantus.MPRT(layer_order="top_down", **common)
    _pair(t, lambda: q(model=model, x_batch=xs[:k], y_batch=ys[:k], a_batch=ms[:k], explain_func=explain, device="cpu",
                       batch_size=k),
          lambda: evaluate.model_randomisation(Saliency(model), x[:k], y[:k], similarities=("spearman_abs",)), rounds)
    t.notes.append(f"both: {len(layers)} + 1 saliency maps per image (one per randomised layer and the trained model's)")
    yield t

    many = torch.rand(64, 1, size, size, generator=g)
    masks = torch.rand(64, 1, size, size, generator=g) > 0.7
    xm, ym = torch.zeros(64, 3, size, size), np.zeros(64, dtype=np.int64)
    for title, ours, theirs, needs_mask in [
        ("sparseness", lambda: evaluate.sparseness(many), quantus.Sparseness(**common), False),
        ("complexity", lambda: evaluate.complexity(many), quantus.Complexity(**common), False),
        ("relevance mass", lambda: evaluate.mass_inside(many, masks), quantus.RelevanceMassAccuracy(**common), True),
        ("relevance rank", lambda: evaluate.rank_inside(many, masks), quantus.RelevanceRankAccuracy(**common), True),
        ("pointing game", lambda: evaluate.pointing_game(many, masks), quantus.PointingGame(**common), True),
    ]:
        t = Table(f"{title}, 64 maps {size}x{size}", reference="Quantus")
        s = masks.numpy() if needs_mask else None
        _pair(t, lambda theirs=theirs, s=s: theirs(model=None, x_batch=xm.numpy(), y_batch=ym, a_batch=many.numpy(),
                                                   s_batch=s, batch_size=64), ours, 3)
        yield t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for table in tables(args.quick, args.rounds):
        print(table.markdown(), flush=True)
        print(flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
