"""``convscope visualize`` and ``convscope dream``.

``convscope visualize MODEL --layer L --channels 0-15 --out DIR`` renders one image per channel
in one batch and writes ``DIR/L-grid.png`` (labelled) and ``DIR/L-cN.png`` per channel.
``convscope dream MODEL IMAGE --layer L --out FILE`` writes the DeepDream of IMAGE amplifying
layer L, on the whole picture resized as the model's preprocessing resizes it (shorter side to its
``size``). A model that takes that size (convolutions with adaptive pooling: most classifiers) is
dreamt on the whole picture (probed at the finest and the coarsest octave's size); a model with a
fixed input size is dreamt on its crop, each octave resized to that size, and the crop pasted back
where it lies in the picture. ``--crop`` dreams on the crop and writes only the crop.
Both take PyTorch and Keras models (a Keras model's forward and backward passes run in
TensorFlow); a TorchScript file is refused before any work, since its layers take no hooks.

Example::

    convscope visualize zoo:shapes-vgg --layer features.3 --channels 0-15 --out vis
    convscope dream zoo:shapes-vgg photo.png --layer features.4 --out dream.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from convscope.cliargs import add_max_batch
from convscope.errors import ConvscopeError


MODEL_HELP = ("zoo:NAME, torchvision:NAME[?weights=DEFAULT], a Keras .keras/.h5 file, or package.module:factory "
              "(a TorchScript file hides the layers these commands read)")


def _load(args: argparse.Namespace, verb: str) -> Any:  # noqa: ANN401
    """The model of ``args``; a TorchScript model is refused before any work."""
    from convscope.formats import check_layers_visible
    from convscope.models import load_model

    loaded = load_model(args.model, weights=args.weights)
    check_layers_visible(loaded.model, f"`convscope {verb}`")
    return loaded


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="a state-dict file to load into the model (weights_only=True); for a Keras "
                                     "model a .weights.h5 file")
    p.add_argument("--layer", required=True, help="qualified layer name (see `convscope layers MODEL`)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed gives the same image")
    add_max_batch(p, what="images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def configure_visualize(p: argparse.ArgumentParser) -> None:
    """Add the ``visualize`` arguments to ``p``."""
    p.add_argument("model", help=MODEL_HELP)
    _common(p)
    p.add_argument("--channels", default="0-15", help="channels to render, e.g. 0-15 or 0,3,5 (default 0-15)")
    p.add_argument("--out", required=True, help="output folder for the grid and the per-channel PNGs")
    p.add_argument("--steps", type=int, default=256, help="optimization steps (default 256)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    p.add_argument("--size", type=int, default=None, help="image size (default: the model's crop size)")
    p.add_argument("--no-transforms", action="store_true", help="optimize without the robustness transforms")


def visualize_command(args: argparse.Namespace) -> int:
    """Render the channels ``args`` names; print the paths written (grid first)."""
    from convscope import render as draw
    from convscope.featurevis.objectives import channels, parse_channels
    from convscope.featurevis.render import render

    index = parse_channels(args.channels)
    loaded = _load(args, "visualize")
    result = render(loaded.model, channels(args.layer, index), steps=args.steps, size=args.size, lr=args.lr,
                    seed=args.seed, max_batch=args.max_batch, preprocess=loaded.preprocess,
                    transforms=None if args.no_transforms else "standard", progress=not args.quiet)
    out = Path(args.out)
    stuck = result.stuck()
    for c, flat in zip(index, stuck):
        if flat:
            print(f"convscope: {args.layer} channel {c}: the optimization did not move (the channel never fired on "
                  "the starting images, so it gave no gradient): its picture is blank", file=sys.stderr)
    labels = [f"{args.layer} c{c}" + (": did not move" if flat else "") for c, flat in zip(index, stuck)]
    print(result.save(out / f"{args.layer}-grid.png", labels=labels))
    for c, pixels in zip(index, result.pixels()):
        print(draw.save_png(out / f"{args.layer}-c{c}.png", pixels))
    return 0


def configure_dream(p: argparse.ArgumentParser) -> None:
    """Add the ``dream`` arguments to ``p``."""
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("image", help="the image file to dream on")
    _common(p)
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--octaves", type=int, default=3, help="number of scales, coarse to fine (default 3)")
    p.add_argument("--octave-scale", type=float, default=1.4, help="size ratio between octaves (default 1.4)")
    p.add_argument("--steps", type=int, default=20, help="optimization steps per octave (default 20)")
    p.add_argument("--lr", type=float, default=0.004, help="Adam learning rate (default 0.004)")
    p.add_argument("--crop", action="store_true", help="dream on the model's crop of the image and write only "
                   "that, instead of the whole picture")


def dream_command(args: argparse.Namespace) -> int:
    """Dream on ``args.image``; print the path written (see the module doc for what is dreamt)."""
    import torch

    from convscope import render as draw
    from convscope.featurevis.dream import dream
    from convscope.images import load_images
    from convscope.picture import paste, resized_picture

    if not str(args.out).lower().endswith(".png"):
        raise ConvscopeError(f"--out {args.out!r} is not a .png file", "Write e.g. --out dream.png.")
    loaded = _load(args, "dream")
    batch = load_images([args.image], loaded.preprocess)
    whole, box = resized_picture(batch.files[0], loaded.preprocess)
    shrink = args.octave_scale ** max(args.octaves - 1, 0) if args.octave_scale >= 1 else 1.0  # coarsest octave
    sizes = {whole.shape[:2], tuple(max(1, round(n / shrink)) for n in whole.shape[:2])}
    on_whole = not args.crop and all(_takes(loaded.model, size) for size in sizes)
    pixels = whole if on_whole else batch.pixels[0]
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255)
    dreamt = dream(loaded.model, x, args.layer, octaves=args.octaves, octave_scale=args.octave_scale,
                   steps=args.steps, lr=args.lr, seed=args.seed, input_size=None if on_whole else loaded.preprocess.crop,
                   preprocess=loaded.preprocess, max_batch=args.max_batch, progress=not args.quiet)
    image = dreamt[0].mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    print(draw.save_png(args.out, image if on_whole or args.crop else paste(whole, box, image)))
    return 0


def _takes(model: Any, size: tuple[int, int]) -> bool:  # noqa: ANN401
    """Whether ``model`` runs on one image of ``size`` (h, w): convolutions with adaptive pooling
    take any size; a model with a fixed input size fails (a Keras model says so in its input shape)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        declared = tuple(model.input_shape[1:3])
        return all(d is None for d in declared) or declared == tuple(size)

    from convscope.backends.torch.forward import call_model, model_device
    from convscope.backends.torch.session import eval_mode

    try:
        with torch.no_grad(), eval_mode(model):
            call_model(model, torch.zeros(1, 3, *size, device=model_device(model)))
    except ConvscopeError:
        return False
    return True


__all__ = ["configure_dream", "configure_visualize", "dream_command", "visualize_command"]
