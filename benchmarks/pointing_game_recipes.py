"""Does any training recipe of shapes-vgg's architecture reach the issue's 90% Grad-CAM pointing game?

Trains :class:`convscope.zoo.architectures.ShapesVGG` under each recipe below (the zoo's loop:
AdamW, one-cycle schedule, batch 64; options: epochs, learning rate, weight decay, label
smoothing, horizontal flips, training-set size, widths, seed; and, outside the zoo's
architecture, a global-average-pool head) and prints one JSON line per recipe:
held-out accuracy (1,000 Shapes images, seed 2) and the strict pointing game of Grad-CAM at
``features.8`` (8x8, the default layer) and ``features.7`` (16x16) on 500 images of seeds 2 and 3.
Made for a GPU (a few minutes on an H200 for all recipes); on a CPU pass recipe names to run a few.

    python -m benchmarks.pointing_game_recipes [NAME ...]
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from multiprocessing import Pool
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope import zoo
from convscope.data import Shapes
from convscope.methods import GradCAM
from convscope.metrics import pointing_game
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
}
HEADS = ("flatten_mlp", "gap", "gap_mlp")


def with_head(model: ShapesVGG, head: str) -> ShapesVGG:
    """``model`` with its classifier swapped: the zoo's flatten + MLP, GAP + linear, or GAP + MLP."""
    width = model.features[-3].out_channels
    classes = model.classifier[-1].out_features
    if head == "gap":
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))
    elif head == "gap_mlp":
        model.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 128),
                                         nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(128, classes))
    elif head != "flatten_mlp":
        raise ValueError(f"unknown head {head!r}; one of {HEADS}")
    return model


def _shard(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, start, stop = args
    return Shapes(stop, seed=seed).arrays(start, stop)


def shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Normalised images, labels and masks of ``Shapes(n, seed)``, drawn in parallel."""
    with Pool(os.cpu_count()) as pool:
        parts = pool.map(_shard, [(seed, a, min(a + 1000, n)) for a in range(0, n, 1000)])
    images, masks, labels = (np.concatenate(p) for p in zip(*parts, strict=True))
    return zoo.preset("shapes-vgg").to_tensor(images), torch.from_numpy(labels), masks


def train(recipe: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """ShapesVGG trained as the zoo trains it, with ``recipe``'s changes."""
    torch.manual_seed(recipe.get("seed", 0))
    model = with_head(ShapesVGG(widths=recipe.get("widths", (16, 32, 64))), recipe.get("head", "flatten_mlp"))
    model = model.to(x.device)
    n, batch, epochs, lr = recipe.get("n", 10_000), recipe.get("batch", 64), recipe.get("epochs", 3), recipe.get("lr", 3e-3)
    steps = math.ceil(n / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.get("wd", 1e-4))
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.get("smoothing", 0.0))
    gen = torch.Generator(device=x.device).manual_seed(recipe.get("seed", 0))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen, device=x.device)
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            xb = x[idx]
            if recipe.get("flip"):
                flip = torch.rand(len(idx), device=x.device, generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = loss_fn(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    return model.eval()


def main(names: list[str]) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = {name: RECIPES[name] for name in names or RECIPES}
    x, y, _ = shapes(max(r.get("n", 10_000) for r in chosen.values()), 1)
    x, y = x.to(device), y.to(device)
    held_out = {seed: shapes(1000 if seed == 2 else 500, seed) for seed in (2, 3)}
    for name, recipe in chosen.items():
        start = time.perf_counter()
        model = train(recipe, x, y)
        xv, yv, _ = held_out[2]
        with torch.no_grad():
            accuracy = float((model(xv.to(device)).argmax(1).cpu() == yv).float().mean())
        row: dict[str, Any] = {"recipe": name, "accuracy": round(accuracy, 3),
                               "train_seconds": round(time.perf_counter() - start, 1)}
        for seed, (xs, ys, masks) in held_out.items():
            for layer in ("features.8", "features.7"):
                maps = GradCAM(model, layer, max_batch=100).attribute(xs[:500].to(device), ys[:500].to(device))
                row[f"pg_seed{seed}_{layer}"] = round(float(pointing_game(maps.cpu(), masks[:500]).float().mean()), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
