"""``convscope check MODEL DATA --methods a,b,... [--metrics ...] --out DIR [--resume]``.

Runs the methods over DATA (an image folder, or ``shapes:N``: the built-in Shapes dataset with
its object masks), scores every map with the metrics (default: all that apply) and writes
``DIR/results.json`` and ``DIR/report.html`` (prints the report's path). A killed run continues
with ``--resume``.

Example::

    convscope check zoo:shapes-vgg shapes:64 --methods saliency,guided_backprop,grad_cam --out check
"""

from __future__ import annotations

import argparse

from convscope.check.metrics import DEFAULT, METRICS
from convscope.cliargs import add_max_batch


def _listed(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def configure(p: argparse.ArgumentParser) -> None:
    """Add the ``check`` arguments to ``p``."""
    p.add_argument("model", help="zoo:NAME, torchvision:NAME[?weights=DEFAULT], package.module:factory, "
                                 "a TorchScript file or a Keras file")
    p.add_argument("data", help="an image folder, or shapes:N (the built-in Shapes dataset: N images with object masks)")
    p.add_argument("--weights", help="a state-dict file to load into the model (weights_only=True)")
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. saliency,guided_backprop,grad_cam "
                                                    "(`convscope methods` lists them)")
    p.add_argument("--metrics", help=f"comma-separated metrics (default: all that apply): {', '.join(METRICS)}")
    p.add_argument("--out", required=True, help="output folder for results.json and report.html")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch and per checkpoint (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    add_max_batch(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the check described by ``args``; prints the report's path."""
    from convscope.check.run import check
    from convscope.models import load_model

    methods = _listed(args.methods) or []
    metrics = _listed(args.metrics)
    if metrics is not None and not metrics:
        metrics = list(DEFAULT)
    from convscope.check.run import validate

    validate(methods, metrics)  # before the model loads: a typo costs nothing
    loaded = load_model(args.model, weights=args.weights)
    path = check(loaded, args.data, methods, metrics, args.out, batch_size=args.batch_size, max_batch=args.max_batch,
                 seed=args.seed, resume=args.resume, progress=not args.quiet)
    print(path.parent / "report.html")
    return 0
