"""``convscope atlas MODEL DATA --layers L1,L2 --k 9 --out DIR [--resume] [--max-batch N|auto]``.

Mines the top-k activations of every channel of the layers over DATA, projects them, and
writes the store and its HTML pages (``DIR/pages/index.html``). DATA is an image folder or
``shapes:N`` (the built-in Shapes dataset: N images, seed 0). A progress bar shows images/s
and the ETA; Ctrl-C or a crash loses at most the last checkpoint interval: run the same
command with ``--resume`` to finish.

Example::

    convscope atlas zoo:shapes-vgg shapes:2000 --layers features.0,features.3 --k 9 --out atlas
"""

from __future__ import annotations

import argparse
import sys

from convscope.cliargs import add_max_batch
from convscope.errors import ConvscopeError


def configure(p: argparse.ArgumentParser) -> None:
    """Add the ``atlas`` arguments to ``p``."""
    p.add_argument("model", help="zoo:NAME, torchvision:NAME[?weights=DEFAULT], or package.module:factory (a "
                                 "PyTorch model whose layers can be hooked: not a TorchScript or Keras file)")
    p.add_argument("data", help="an image folder, or shapes:N (the built-in Shapes dataset, N images, seed 0)")
    p.add_argument("--weights", help="a state-dict file to load into the model (weights_only=True)")
    p.add_argument("--layers", required=True, help="comma-separated layer names, e.g. features.0,features.3")
    p.add_argument("--k", type=int, default=9, help="top activations kept per channel (default 9), each from "
                   "a different image")
    p.add_argument("--all-positions", action="store_true",
                   help="keep the k strongest units of a channel even when several lie in one image")
    p.add_argument("--out", required=True, help="output folder for the store and pages")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_max_batch(p, what="(image, unit) pairs")
    p.add_argument("--batch-size", type=int, default=64, help="images per mining batch (default 64)")
    p.add_argument("--methods", default="deconvnet",
                   help="projections to compute: deconvnet, guided, gradient (comma-separated; default deconvnet)")
    p.add_argument("--no-pages", action="store_true", help="skip writing the HTML pages")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Build the atlas described by ``args``; prints the path of the index page (or the store)."""
    from convscope.atlas.build import build_atlas
    from convscope.atlas.pages import write_pages
    from convscope.models import load_model

    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if not layers:
        raise ConvscopeError("--layers names no layer", "Write e.g. --layers features.0,features.3.")
    if args.k < 1 or args.batch_size < 1:
        raise ConvscopeError("--k and --batch-size must be positive", "Use e.g. --k 9 --batch-size 64.")
    loaded = load_model(args.model, weights=args.weights)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    atlas = build_atlas(loaded.model, args.data, layers, args.out, k=args.k, batch_size=args.batch_size,
                        max_batch=args.max_batch, methods=methods, resume=args.resume,
                        preprocess=loaded.preprocess, progress=not args.quiet, model_name=loaded.name,
                        per_image=not args.all_positions)
    skipped = atlas.manifest.get("skipped", [])
    for _index, name, reason in skipped:
        print(f"convscope: skipped unreadable image {name}: {reason}", file=sys.stderr)
    path = atlas.path if args.no_pages else write_pages(atlas, methods[0], weights=loaded.weights)
    print(path)
    return 0
