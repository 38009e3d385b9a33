"""Does any training recipe of shapes-vgg's architecture reach the issue's 90% Grad-CAM pointing game?

Trains :class:`convscope.zoo.architectures.ShapesVGG` under each recipe below (the zoo's loop:
AdamW, one-cycle schedule, batch 64; options: epochs, learning rate, weight decay, label
smoothing, horizontal flips, training-set size, widths, seed) and, outside the zoo's
architecture, VGG-style variants of it: other heads (global average pool + linear or MLP,
global max pool + MLP), other kernel sizes, batch norm after each conv (VGG-BN), two conv-relu
pairs per block (VGG's own block), an
extra conv (after the last max-pool, or instead of it as in CAM's VGG-GAP, a 16x16 map), Hide-and-Seek (random input patches set to the mean while training), dropout of
whole cells of the last map, outlier exposure (shapeless backgrounds trained towards the
uniform output) and CutMix. Prints one JSON line per recipe: held-out accuracy (1,000 Shapes
images, seed 2) and the strict pointing game of Grad-CAM at the default layer (the last layer of
``features``: ``features.8``, 8x8, in the zoo's architecture) and at the last ReLU (``features.7``,
16x16) on 500 images of seeds 2 and 3, and the default layer's hits per class (seed 2).
Made for a GPU (a few minutes on an H200 for all recipes; several processes can share it, each
given some of the names); on a CPU pass recipe names to run a few.

    python -m benchmarks.pointing_game_recipes [NAME ...]
    python -m benchmarks.pointing_game_recipes --bound   # how many images a perfect 8x8 or 16x16 map could hit
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from multiprocessing import Pool
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope import zoo
from convscope.data import Shapes
from convscope.methods import GradCAM
from convscope.methods.cam.base import upsample
from convscope.evaluate import pointing_game
from convscope.zoo.architectures import ShapesVGG

RECIPES: dict[str, dict[str, Any]] = {
    "zoo": {}, "zoo_seed1": {"seed": 1}, "zoo_seed2": {"seed": 2},
    "e6": {"epochs": 6}, "e12": {"epochs": 12}, "e6_n20k": {"epochs": 6, "n": 20_000},
    "e12_n40k": {"epochs": 12, "n": 40_000}, "wide": {"widths": (32, 64, 128)},
    "wide_e6": {"widths": (32, 64, 128), "epochs": 6}, "wd5e-2_e6": {"wd": 5e-2, "epochs": 6},
    "smooth0.1_e6": {"smoothing": 0.1, "epochs": 6}, "flip_e6": {"flip": True, "epochs": 6},
    "wide_e12_n20k": {"widths": (32, 64, 128), "epochs": 12, "n": 20_000},
    "flip_e12_n20k": {"flip": True, "epochs": 12, "n": 20_000}, "bs128_e6": {"batch": 128, "epochs": 6},
    "e6_seed1": {"epochs": 6, "seed": 1}, "e12_seed1": {"epochs": 12, "seed": 1},
    **{f"lr{lr:g}_e{e}": {"lr": lr, "epochs": e} for lr in (3e-4, 5e-4, 1e-3) for e in (3, 6, 10)},
    **{f"lr0.001_e6_seed{k}": {"lr": 1e-3, "epochs": 6, "seed": k} for k in (1, 2)},
    # the same features under a global-average-pool head (a different architecture: CAM's VGG-GAP)
    "gap_e10": {"head": "gap", "epochs": 10}, "gap_mlp_e3": {"head": "gap_mlp"},
    "gap_mlp_e10": {"head": "gap_mlp", "epochs": 10}, "gap_mlp_e15": {"head": "gap_mlp", "epochs": 15},
    "gap_mlp_e10_seed1": {"head": "gap_mlp", "epochs": 10, "seed": 1},
    "gap_mlp_lr0.001_e10": {"head": "gap_mlp", "epochs": 10, "lr": 1e-3},
    # larger or smaller receptive fields at the 8x8 map (36, 30 and 12 pixels against the zoo's 22)
    "k555": {"kernels": (5, 5, 5)}, "k335": {"kernels": (3, 3, 5)}, "k331": {"kernels": (3, 3, 1)},
    # CAM's VGG-GAP: no last max-pool, one more 3x3 conv, a 16x16 map, global average pool
    "vgg_gap16_e6": {"pools": 2, "extra_conv": True, "head": "gap", "epochs": 6},
    "vgg_gap16_e10": {"pools": 2, "extra_conv": True, "head": "gap", "epochs": 10},
    "vgg_gap16_mlp_e6": {"pools": 2, "extra_conv": True, "head": "gap_mlp", "epochs": 6},
    # regularisers meant to spread the evidence over the whole object
    "hide8": {"hide": 8}, "hide16": {"hide": 16}, "cell_drop0.3": {"cell_drop": 0.3}, "cell_drop0.5": {"cell_drop": 0.5},
    # outlier exposure: each batch also holds backgrounds without a shape, trained towards the uniform output
    "outliers16": {"outliers": 16}, "outliers32_w1": {"outliers": 32, "outlier_weight": 1.0},
    "outliers16_e6": {"outliers": 16, "epochs": 6},
    # CutMix: a random box of another image pasted in, the labels mixed by its area
    "cutmix": {"cutmix": True}, "cutmix_e6": {"cutmix": True, "epochs": 6},
    # VGG's own block: two 3x3 conv-relu pairs before each max-pool (receptive field 40 px at 8x8)
    "vgg2": {"convs": 2}, "vgg2_e6": {"convs": 2, "epochs": 6}, "vgg2_seed1": {"convs": 2, "seed": 1},
    **{f"vgg2_lr0.001_e{e}": {"convs": 2, "lr": 1e-3, "epochs": e} for e in (3, 6)},
    **{f"vgg2_gap_mlp_e{e}": {"convs": 2, "head": "gap_mlp", "epochs": e} for e in (6, 10)},
    "vgg2_gap_mlp_lr0.001_e10": {"convs": 2, "head": "gap_mlp", "lr": 1e-3, "epochs": 10},
    # one more 3x3 conv-relu at 8x8, after the last max-pool (receptive field 38 px)
    "extra8": {"extra_conv": True}, "extra8_gap_mlp_e10": {"extra_conv": True, "head": "gap_mlp", "epochs": 10},
    # the averaging head: longer, other learning rates and seeds, more images, a max-pooling head
    **{f"gap_mlp_lr{lr:g}_e{e}{s}": {"head": "gap_mlp", "lr": lr, "epochs": e, "seed": k}
       for lr in (1e-3, 2e-3) for e in (15, 20) for k, s in ((0, ""), (1, "_seed1"))},
    # how much of the averaging head's localisation is the training seed's: eight seeds per learning rate
    **{f"gap_mlp_lr{lr:g}_e15_seed{k}": {"head": "gap_mlp", "lr": lr, "epochs": 15, "seed": k}
       for lr in (1.5e-3, 2e-3, 3e-3) for k in range(2, 8)},
    **{f"gap_mlp_lr{lr:g}_e15{s}": {"head": "gap_mlp", "lr": lr, "epochs": 15, "seed": k}
       for lr in (1.5e-3, 3e-3) for k, s in ((0, ""), (1, "_seed1"))},
    "gap_mlp_e10_seed2": {"head": "gap_mlp", "epochs": 10, "seed": 2},
    **{f"gap_mlp_lr0.001_e10_seed{k}": {"head": "gap_mlp", "epochs": 10, "lr": 1e-3, "seed": k} for k in (1, 2)},
    "gap_mlp_n20k_e6": {"head": "gap_mlp", "epochs": 6, "n": 20_000},
    "gap_mlp_n20k_lr0.001_e6": {"head": "gap_mlp", "epochs": 6, "n": 20_000, "lr": 1e-3},
    "gap_mlp_cell_drop0.5_e10": {"head": "gap_mlp", "epochs": 10, "cell_drop": 0.5},
    "wide_gap_mlp_e10": {"head": "gap_mlp", "epochs": 10, "widths": (32, 64, 128)},
    **{f"gmp_mlp_e{e}": {"head": "gmp_mlp", "epochs": e} for e in (3, 10)},
    # within the zoo's budget (3 epochs): batch norm after each conv (VGG-BN), which trains faster,
    # with the zoo's head or the averaging head, and the averaging head alone at higher learning rates
    **{f"bn{h}_lr{lr:g}{s}": {"bn": True, "head": head, "lr": lr, "seed": k}
       for h, head in (("", "flatten_mlp"), ("_gap_mlp", "gap_mlp")) for lr in (3e-3, 1e-2)
       for k, s in ((0, ""), (1, "_seed1"), (2, "_seed2"))},
    **{f"gap_mlp_lr{lr:g}_e3{s}": {"head": "gap_mlp", "lr": lr, "seed": k}
       for lr in (6e-3, 1e-2) for k, s in ((0, ""), (1, "_seed1"))},
    # beyond the zoo's budget: the batch-normed averaging head trained longer, over four seeds
    **{f"bn_gap_mlp_e{e}_seed{k}": {"bn": True, "head": "gap_mlp", "epochs": e, "seed": k}
       for e in (6, 10) for k in range(4)},
}
HEADS = ("flatten_mlp", "gap", "gap_mlp", "gmp_mlp")


def variant(recipe: dict[str, Any]) -> ShapesVGG:
    """ShapesVGG (``widths``) with the recipe's ``kernels`` (one odd size per block), ``convs``
    (conv-relu pairs per block), ``bn`` (a batch norm after each of those convs, as in VGG-BN),
    ``pools`` (max-pools after the first ``pools`` blocks), ``extra_conv`` (a last 3x3 conv-relu)
    and ``head``."""
    widths = recipe.get("widths", (16, 32, 64))
    model = ShapesVGG(widths=widths)
    kernels, pools, convs = recipe.get("kernels", (3, 3, 3)), recipe.get("pools", 3), recipe.get("convs", 1)
    if kernels != (3, 3, 3) or pools != 3 or convs != 1 or recipe.get("extra_conv") or recipe.get("bn"):
        layers: list[nn.Module] = []
        cin = 3
        for block, (k, w) in enumerate(zip(kernels, widths, strict=True)):
            for _ in range(convs):
                norm = [nn.BatchNorm2d(w)] if recipe.get("bn") else []
                layers += [nn.Conv2d(cin, w, k, padding=k // 2), *norm, nn.ReLU(inplace=True)]
                cin = w
            layers += [nn.MaxPool2d(2)] if block < pools else []
        if recipe.get("extra_conv"):
            layers += [nn.Conv2d(cin, cin, 3, padding=1), nn.ReLU(inplace=True)]
        model.features = nn.Sequential(*layers)
    return with_head(model, recipe.get("head", "flatten_mlp"), side=64 >> pools)


def with_head(model: ShapesVGG, head: str, side: int = 8) -> ShapesVGG:
    """``model`` with its classifier swapped: the zoo's flatten + MLP (over a ``side`` x ``side``
    map), GAP + linear, GAP + MLP, or global max pool + MLP."""
    width = [m for m in model.features if isinstance(m, nn.Conv2d)][-1].out_channels
    classes = model.classifier[-1].out_features

    def mlp(inputs: int) -> list[nn.Module]:  # built only when used: building draws from the global RNG
        return [nn.Linear(inputs, 128), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(128, classes)]

    if head == "gap":
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))
    elif head == "gap_mlp":
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *mlp(width))
    elif head == "gmp_mlp":
        model.classifier = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), *mlp(width))
    elif head == "flatten_mlp":
        if side != 8:
            model.classifier = nn.Sequential(nn.Flatten(), *mlp(width * side * side))
    else:
        raise ValueError(f"unknown head {head!r}; one of {HEADS}")
    return model


def hide_patches(xb: torch.Tensor, patch: int, gen: torch.Generator) -> torch.Tensor:
    """Hide-and-Seek (Singh and Lee, 2017): each ``patch`` x ``patch`` cell of each image is set to
    the dataset mean (0 after normalisation) with probability 1/2."""
    side = xb.shape[-1] // patch
    keep = torch.rand(len(xb), 1, side, side, device=xb.device, generator=gen) >= 0.5
    return xb * keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def cut_mix(xb: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al., 2019): one box, of area ``1 - lam`` with ``lam ~ U(0, 1)``, cut from the
    batch rolled by one and pasted in; returns the images, the partner rows and ``lam`` (the area
    share of the original image, after clipping the box to the image)."""
    h, w = xb.shape[-2:]
    lam = float(torch.rand((), generator=gen))
    bh, bw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = (int(torch.randint(n, (), generator=gen)) for n in (h, w))
    y0, y1, x0, x1 = max(cy - bh // 2, 0), min(cy + bh // 2, h), max(cx - bw // 2, 0), min(cx + bw // 2, w)
    partner = torch.roll(torch.arange(len(xb), device=xb.device), 1)
    mixed = xb.clone()
    mixed[:, :, y0:y1, x0:x1] = xb[partner][:, :, y0:y1, x0:x1]
    return mixed, partner, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def drop_cells(model: nn.Module, p: float, gen: torch.Generator) -> None:
    """While training, zero each cell (all channels at one position) of ``model.features``'s
    output with probability ``p`` and scale the rest by ``1 / (1 - p)``; eval mode is untouched."""
    def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        if not model.training:
            return out
        keep = torch.rand(out.shape[0], 1, *out.shape[2:], device=out.device, generator=gen) >= p
        return out * keep / (1 - p)
    model.features.register_forward_hook(hook)


def _shard(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, start, stop = args
    return Shapes(stop, seed=seed).arrays(start, stop)


def _background_shard(args: tuple[int, int, int]) -> np.ndarray:
    seed, start, stop = args
    data = Shapes(stop, seed=seed)
    return np.stack([data.sample(i).background for i in range(start, stop)])


def _in_parallel(shard: Callable[[tuple[int, int, int]], Any], n: int, seed: int) -> list[Any]:
    """``shard((seed, start, stop))`` over ``Shapes(n, seed)`` in slices of 1,000, one process per core."""
    with Pool(os.cpu_count()) as pool:
        return pool.map(shard, [(seed, a, min(a + 1000, n)) for a in range(0, n, 1000)])


def backgrounds(n: int, seed: int) -> torch.Tensor:
    """The normalised backgrounds (each image without its shape) of ``Shapes(n, seed)``."""
    return zoo.preset("shapes-vgg").to_tensor(np.concatenate(_in_parallel(_background_shard, n, seed)))


def shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Normalised images, labels and masks of ``Shapes(n, seed)``, drawn in parallel."""
    parts = _in_parallel(_shard, n, seed)
    images, masks, labels = (np.concatenate(p) for p in zip(*parts, strict=True))
    return zoo.preset("shapes-vgg").to_tensor(images), torch.from_numpy(labels), masks


def train(recipe: dict[str, Any], x: torch.Tensor, y: torch.Tensor, shapeless: torch.Tensor | None = None) -> nn.Module:
    """ShapesVGG trained as the zoo trains it, with ``recipe``'s changes; ``outliers`` recipes
    draw that many of ``shapeless`` (backgrounds) into each batch, with a cross-entropy to the
    uniform distribution weighted by ``outlier_weight`` (Hendrycks et al.'s outlier exposure)."""
    torch.manual_seed(recipe.get("seed", 0))
    model = variant(recipe).to(x.device)
    n, batch, epochs, lr = recipe.get("n", 10_000), recipe.get("batch", 64), recipe.get("epochs", 3), recipe.get("lr", 3e-3)
    steps = math.ceil(n / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.get("wd", 1e-4))
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.get("smoothing", 0.0))
    gen = torch.Generator(device=x.device).manual_seed(recipe.get("seed", 0))
    if recipe.get("cell_drop"):
        drop_cells(model, recipe["cell_drop"], gen)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen, device=x.device)
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            xb = x[idx]
            if recipe.get("flip"):
                flip = torch.rand(len(idx), device=x.device, generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            if recipe.get("hide"):
                xb = hide_patches(xb, recipe["hide"], gen)
            if recipe.get("cutmix"):
                mixed, partner, lam = cut_mix(xb, gen)
                out = model(mixed)
                loss = lam * loss_fn(out, y[idx]) + (1 - lam) * loss_fn(out, y[idx][partner])
            elif recipe.get("outliers"):
                extra = shapeless[torch.randint(len(shapeless), (recipe["outliers"],), generator=gen, device=x.device)]
                out = model(torch.cat([xb, extra]))
                loss = loss_fn(out[:len(idx)], y[idx]) - recipe.get("outlier_weight", 0.5) * \
                    out[len(idx):].log_softmax(1).mean()
            else:
                loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    return model.eval()


def cell_bound(cells: int, n: int = 500) -> int:
    """How many of ``n`` held-out images (seed 2) have a cell of a ``cells`` x ``cells`` map whose
    peak, upsampled as Grad-CAM upsamples, the strict pointing game counts as a hit."""
    _, masks, _ = Shapes(n, seed=2).arrays()
    reachable = torch.zeros(n, dtype=torch.bool)
    for cell in range(cells * cells):
        one_hot = torch.zeros(n, 1, cells * cells)
        one_hot[..., cell] = 1.0
        reachable |= pointing_game(upsample(one_hot.view(n, 1, cells, cells), masks.shape[1:]), masks)
    return int(reachable.sum())


def main(names: list[str]) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = {name: RECIPES[name] for name in names or RECIPES}
    x, y, _ = shapes(max(r.get("n", 10_000) for r in chosen.values()), 1)
    x, y = x.to(device), y.to(device)
    shapeless = backgrounds(len(x), 1).to(device) if any(r.get("outliers") for r in chosen.values()) else None
    held_out = {seed: shapes(1000 if seed == 2 else 500, seed) for seed in (2, 3)}
    for name, recipe in chosen.items():
        start = time.perf_counter()
        model = train(recipe, x, y, shapeless)
        xv, yv, _ = held_out[2]
        with torch.no_grad():
            accuracy = float((model(xv.to(device)).argmax(1).cpu() == yv).float().mean())
        row: dict[str, Any] = {"recipe": name, "accuracy": round(accuracy, 3),
                               "train_seconds": round(time.perf_counter() - start, 1)}
        relus = [i for i, m in enumerate(model.features[:-1]) if isinstance(m, nn.ReLU)]
        default, last_relu = f"features.{len(model.features) - 1}", f"features.{relus[-1]}"
        for seed, (xs, ys, masks) in held_out.items():
            for layer in (default, last_relu):
                maps = GradCAM(model, layer, max_batch=100).attribute(xs[:500].to(device), ys[:500].to(device))
                hits = pointing_game(maps.cpu(), masks[:500])
                row[f"pg_seed{seed}_{layer}"] = round(float(hits.float().mean()), 3)
                if seed == 2 and layer == default:
                    row["per_class_seed2"] = {name: round(float(hits[ys[:500] == c].float().mean()), 2)
                                              for c, name in enumerate(Shapes.class_names)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--bound"]:
        for cells in (8, 16):
            print(f"{cells}x{cells} map: {cell_bound(cells)} of 500 images have a cell whose peak is inside the mask")
    else:
        main(sys.argv[1:])
