"""Run every ``benchmarks/bench_*.py`` and write BENCHMARKS.md.

Each module's ``run(quick)`` returns :class:`benchmarks.harness.Table` objects whose rows were
timed side by side in one process. TensorFlow benchmarks run in their own process (importing
torchvision after TensorFlow can crash), so every module runs in a fresh interpreter.

    python -m benchmarks.run            # full sizes, writes BENCHMARKS.md
    python -m benchmarks.run --quick    # small sizes (sections are marked as such)
    python -m benchmarks.run --only unpool_torch
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(only: list[str] | None) -> list[str]:
    names = sorted(p.stem[len("bench_"):] for p in (ROOT / "benchmarks").glob("bench_*.py"))
    return [n for n in names if not only or n in only]


def run_one(name: str, quick: bool) -> str:
    """Run one benchmark module in a fresh interpreter and return its markdown."""
    code = ("import sys; from benchmarks import bench_{0} as b; "
            "print('\\n'.join(t.markdown() for t in b.run(quick={1})))").format(name, quick)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"### {name}\n\nfailed to run:\n\n```\n{proc.stderr.strip()[-2000:]}\n```\n"
    return proc.stdout


def machine() -> str:
    import numpy
    import torch

    parts = [f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
             f"Python {platform.python_version()}", f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
             f"numpy {numpy.__version__}"]
    try:
        from importlib.metadata import version

        parts.append(f"tensorflow {version('tensorflow-cpu')}")
    except Exception:  # noqa: BLE001 - optional
        pass
    return "; ".join(parts)


HEADER = (
    "# Benchmarks\n\n"
    "Every table was timed side by side in one process, so compare the ratios (lower is faster), "
    "not absolute times across tables: these machines are shared and noisy. Each section says the "
    "command, date and machine that produced it; `python -m benchmarks.run` redoes them all.\n"
)


def update_sections(text: str, sections: dict[str, str]) -> str:
    """Replace (or append) the ``<!-- bench:NAME -->`` section of each module run now."""
    body = text if text.startswith("# Benchmarks") else HEADER
    for name, md in sections.items():
        begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        block = f"{begin}\n{md.strip()}\n{end}"
        if begin in body and end in body:
            body = body[: body.index(begin)] + block + body[body.index(end) + len(end):]
        else:
            body = body.rstrip() + "\n\n" + block + "\n"
    return body


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (the sections say so)")
    parser.add_argument("--only", nargs="*", help="module names without the bench_ prefix")
    args = parser.parse_args(argv)
    sections = {}
    for name in modules(args.only):
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        tables = run_one(name, args.quick)
        print(tables, flush=True)
        quick = " --quick" if args.quick else ""
        sections[name] = (f"## bench_{name}{' (quick sizes)' if args.quick else ''}\n\n"
                          f"- Command: `python -m benchmarks.run{quick} --only {name}`\n"
                          f"- Date: {time.strftime('%Y-%m-%d')}\n- Machine: {machine()}\n\n{tables}")
    path = ROOT / "BENCHMARKS.md"
    path.write_text(update_sections(path.read_text() if path.exists() else "", sections))
    print(f"updated {path.name}: {', '.join(sections)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
