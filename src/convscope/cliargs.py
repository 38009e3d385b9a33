"""Command-line arguments shared by several verbs.

``--max-batch`` is the most samples per model evaluation: a positive int, or ``auto`` (sized from
free memory, see :mod:`convscope.backends.torch.batching`). Every verb that evaluates a model
takes it the same way.

Example::

    add_max_batch(parser)                      # --max-batch N|auto, default auto
    parse_max_batch("auto"), parse_max_batch("16")   # -> "auto", 16
"""

from __future__ import annotations

import argparse
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


__all__ = ["MaxBatchArg", "add_max_batch", "parse_max_batch"]
