"""Peak memory of ``convscope explain`` against the number of images, as the child process's peak RSS.

Each row runs ``python -m convscope.cli explain ...`` in a fresh subprocess and reads that child's
own peak resident set size from ``os.wait4`` (``ru_maxrss``), so rows never share a maximum.
Images: the first N of ``Shapes(N_max, seed=0)`` written as PNGs; photos: four synthetic
non-square JPEGs (640x480 to 1024x768, smooth random colours).

    python -m benchmarks.bench_explain_memory                         # occlusion 10/100/300/1000
    python -m benchmarks.bench_explain_memory --counts 10,100 --resnet  # and resnet18 --method all
    python -m benchmarks.bench_explain_memory --quick                 # 10 and 30 images
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class MemoryTable:
    """Rows of (what, images, peak RSS, seconds), printed as markdown like the timing tables."""

    title: str
    rows: list[tuple[str, int, float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| run | images | peak RSS (GB) | wall time (s) |", "|---|---:|---:|---:|"]
        lines += [f"| {what} | {n} | {peak / 1e9:.2f} | {seconds:.0f} |" for what, n, peak, seconds in self.rows]
        return "\n".join(lines + [""] + [f"- {note}" for note in self.notes]) + "\n"


def peak_rss(argv: list[str]) -> tuple[float, float]:
    """Run ``argv`` in a child process; its peak RSS in bytes and its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child never blocks
        start = time.perf_counter()
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv[:6])} ... failed: {err.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024.0, seconds  # ru_maxrss is in KiB on Linux


def explain_argv(model: str, files: list[Path], method: str, out: Path, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "convscope.cli", "explain", model, *map(str, files), "--method", method,
            "--out", str(out), *extra]


def shapes_pngs(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    from convscope.data import Shapes

    data = Shapes(n, seed=0)
    paths = [folder / f"shape{i:04d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        if not path.exists():
            Image.fromarray(data.sample(i).image).save(path)
    return paths


def photos(folder: Path) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(640, 480), (480, 640), (800, 600), (1024, 768)]):
        coarse = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
        paths.append(folder / f"photo{i}.jpg")
        Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(paths[-1], quality=90)
    return paths


def occlusion(counts: list[int], work: Path, extra: list[str] = ()) -> MemoryTable:
    files = shapes_pngs(work, max(counts))
    table = MemoryTable(f"explain zoo:shapes-vgg --method occlusion{' ' + ' '.join(extra) if extra else ''}: "
                        "peak RSS of the child against the number of Shapes images")
    for n in counts:
        peak, seconds = peak_rss(explain_argv("zoo:shapes-vgg", files[:n], "occlusion", work / f"out{n}", list(extra)))
        table.rows.append(("occlusion", n, peak, seconds))
    return table


def resnet_all(work: Path) -> MemoryTable:
    files = photos(work)
    table = MemoryTable("explain torchvision:resnet18 (random weights) --method all: 4 photos (640x480 to 1024x768)")
    peak, seconds = peak_rss(explain_argv("torchvision:resnet18", files, "all", work / "r18"))
    table.rows.append(("all 21 methods", len(files), peak, seconds))
    return table


def run(quick: bool) -> list[MemoryTable]:
    with tempfile.TemporaryDirectory() as tmp:
        return [occlusion([10, 30] if quick else [10, 100, 300, 1000], Path(tmp))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10,100,300,1000", help="image counts for the occlusion rows")
    parser.add_argument("--max-batch", default=None, help="pass --max-batch to explain (default: its own, auto)")
    parser.add_argument("--resnet", action="store_true", help="also resnet18 --method all on 4 photos")
    parser.add_argument("--quick", action="store_true", help="10 and 30 images only")
    args = parser.parse_args()
    counts = [10, 30] if args.quick else [int(c) for c in args.counts.split(",") if c]
    extra = ["--max-batch", args.max_batch] if args.max_batch else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tables = [occlusion(counts, work, extra)] if counts else []
        if args.resnet:
            tables.append(resnet_all(work))
    print("\n".join(t.markdown() for t in tables))


if __name__ == "__main__":
    main()
