"""Train a zoo recipe on Shapes: deterministic (own generator, global RNG untouched), with a
progress bar, returning the state dict and its held-out accuracy.

Example::

    state, metrics = train(Recipe(arch="vgg"))
    metrics["val_accuracy"]  # e.g. 0.99
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from convscope.zoo.recipe import Recipe


def shapes_tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` Shapes images (normalised, float32 NCHW) and their labels."""
    from convscope.data import MEAN, STD, Shapes

    images, _masks, labels = Shapes(n, seed=seed).arrays(0, n)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.contiguous(), torch.from_numpy(labels).long()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode by the caller) on ``x``."""
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def train(recipe: Recipe, *, name: str = "", progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train ``recipe`` from scratch; AdamW + one-cycle schedule, cross-entropy loss."""
    start = time.perf_counter()
    x, y = shapes_tensors(recipe.n_train, recipe.train_seed)
    xv, yv = shapes_tensors(recipe.n_val, recipe.val_seed)
    with torch.random.fork_rng(devices=[]):  # never disturb the user's global RNG
        torch.manual_seed(recipe.seed)
        model = recipe.build().to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(recipe.seed)
        steps_per_epoch = math.ceil(recipe.n_train / recipe.batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
        loss_fn = nn.CrossEntropyLoss()
        bar = tqdm(total=recipe.epochs * steps_per_epoch, desc=f"training {name or recipe.arch}",
                   unit="step", disable=not progress, leave=False)
        model.train()
        for _epoch in range(recipe.epochs):
            order = torch.randperm(recipe.n_train, generator=gen)
            for i in range(steps_per_epoch):
                idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                xb = x[idx].contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        model.eval()
        val_acc = accuracy(model, xv, yv)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return state, {"val_accuracy": val_acc, "train_seconds": round(time.perf_counter() - start, 1)}
