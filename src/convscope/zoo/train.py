"""Train a zoo recipe: deterministic (own generator, global RNG untouched), with a progress bar,
returning the state dict and its held-out scores (see :mod:`convscope.zoo.tasks`).

Example::

    state, metrics = train(Recipe(arch="vgg"))
    metrics["val_accuracy"]  # e.g. 0.99
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from convscope.zoo.recipe import Recipe
from convscope.zoo.tasks import TASKS, accuracy, shapes_tensors, take

__all__ = ["accuracy", "shapes_tensors", "train"]


def train(recipe: Recipe, *, name: str = "", progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train ``recipe`` from scratch; AdamW + one-cycle schedule, the task's loss."""
    start = time.perf_counter()
    task = TASKS[recipe.task]
    x, y = task.data(recipe, recipe.n_train, recipe.train_seed)
    xv, yv = task.data(recipe, recipe.n_val, recipe.val_seed)
    images = x.dim() == 4 and recipe.task != "detect"
    with torch.random.fork_rng(devices=[]):  # never disturb the user's global RNG
        torch.manual_seed(recipe.seed)
        model = recipe.build()
        if images:
            model = model.to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(recipe.seed)
        steps_per_epoch = math.ceil(recipe.n_train / recipe.batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
        bar = tqdm(total=recipe.epochs * steps_per_epoch, desc=f"training {name or recipe.arch}",
                   unit="step", disable=not progress, leave=False)
        model.train()
        for _epoch in range(recipe.epochs):
            order = torch.randperm(recipe.n_train, generator=gen)
            for i in range(steps_per_epoch):
                idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                xb = x[idx].contiguous(memory_format=torch.channels_last) if images else x[idx]
                loss = task.loss(model, xb, take(y, idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        model.eval()
        scores = task.scores(model, xv, yv)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return state, {**scores, "train_seconds": round(time.perf_counter() - start, 1)}
