"""Command-line arguments shared by several verbs.

``--max-batch`` is the most samples per model evaluation: a positive int, or ``auto`` (sized from
free memory, see :mod:`convscope.backends.torch.batching`). Every verb that evaluates a model
takes it the same way.

``--box x0,y0,x1,y1`` and ``--region x0,y0,x1,y1|MASK.png`` (``explain``) name a detection's box
or a segmentation region in pixels of the picture files.

Example::

    add_max_batch(parser)                      # --max-batch N|auto, default auto
    parse_max_batch("auto"), parse_max_batch("16")   # -> "auto", 16
    parse_box("10,20,60,90")                   # -> (10.0, 20.0, 60.0, 90.0)
    parse_region("mask.png")                   # -> Path("mask.png") (an existing file)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Literal

MaxBatchArg = int | Literal["auto"]


def parse_max_batch(text: str) -> MaxBatchArg:
    """``"auto"`` or a positive int, from the command line (argparse reports anything else)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive whole number nor 'auto' "
                                         "(write e.g. --max-batch 16, or --max-batch auto)")
    return value


def add_max_batch(p: argparse.ArgumentParser, default: MaxBatchArg = "auto", what: str = "samples") -> None:
    """Add ``--max-batch N|auto`` to ``p``; ``what`` names the samples of one model evaluation."""
    p.add_argument("--max-batch", type=parse_max_batch, default=default, metavar="N|auto",
                   help=f"most {what} per model evaluation, or 'auto' to size it from free memory "
                        f"(default {default}); results do not depend on it, peak memory does")


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``x0,y0,x1,y1`` (pixels, ``x0 < x1``, ``y0 < y1``) from the command line."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a box x0,y0,x1,y1 (four numbers, pixels of the image "
                                         "file; write e.g. --box 10,20,60,90)")
    if values[2] <= values[0] or values[3] <= values[1]:
        raise argparse.ArgumentTypeError(f"the box {text!r} is empty: it needs x0 < x1 and y0 < y1 (the top-left "
                                         "corner first)")
    return values[0], values[1], values[2], values[3]


def parse_region(text: str) -> tuple[float, float, float, float] | Path:
    """A box ``x0,y0,x1,y1`` or an existing mask image file, from the command line."""
    if Path(text).is_file():
        return Path(text)
    if text.count(",") == 3:
        return parse_box(text)
    raise argparse.ArgumentTypeError(f"{text!r} is neither a box x0,y0,x1,y1 nor an existing mask file "
                                     "(write e.g. --region 10,20,60,90 or --region mask.png)")


__all__ = ["MaxBatchArg", "add_max_batch", "parse_box", "parse_max_batch", "parse_region"]
