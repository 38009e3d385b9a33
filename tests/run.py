"""Run the whole test suite: the PyTorch tests, then the TensorFlow tests in their own process
(the browser tests of ``convscope serve`` on a Keras model in one more), then the import contracts. First, the browser tests of ``convscope serve`` get their browser:
``tests/browser/ensure_chromium.py`` installs Debian's chromium and chromium-driver with apt-get
when they are missing and it can (as root); without them those tests skip and say why.

Importing torchvision (or pytorch-grad-cam) after TensorFlow in one process can segfault, so
the two halves never share an interpreter. Both halves share one zoo cache, so the small
models are trained once per run. "No tests ran" (pytest exit 5) counts as a failure. Last,
``lint-imports`` (import-linter, from this interpreter's environment) checks the contracts in
``pyproject.toml``: the layering of ``convscope`` and no import cycles.

    python tests/run.py [extra pytest args]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE_KERAS = "tests/tf/test_serve_keras.py"
HALVES = [
    ("torch", ["tests", "--ignore=tests/tf"]),
    ("tensorflow", ["tests/tf", f"--ignore={SERVE_KERAS}"]),
    # `convscope serve` on a Keras model, in a fresh process as the command runs: after some other
    # Keras tests in one process its Grad-CAM request fails with "layer 'relu2' ran 2 times in one
    # forward pass" (an open bug of the Keras recorder, not yet understood; see the README's Tests)
    ("tensorflow serve", [SERVE_KERAS]),
]


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    env.setdefault("CONVSCOPE_CACHE", tempfile.mkdtemp(prefix="convscope-test-cache-"))
    failed = []
    subprocess.call([sys.executable, str(ROOT / "tests" / "browser" / "ensure_chromium.py")], cwd=ROOT, env=env)
    for name, paths in HALVES:
        start = time.perf_counter()
        print(f"\n=== {name} tests ===", flush=True)
        rc = subprocess.call([sys.executable, "-m", "pytest", *paths, *argv], cwd=ROOT, env=env)
        print(f"=== {name} tests: exit {rc} in {time.perf_counter() - start:.0f}s ===", flush=True)
        if rc != 0:  # 5 = no tests collected: never a silent pass
            failed.append(f"{name} (exit {rc})")
    print("\n=== import contracts ===", flush=True)
    rc = lint_imports(env)
    print(f"=== import contracts: exit {rc} ===", flush=True)
    if rc != 0:
        failed.append(f"import contracts (exit {rc})")
    if failed:
        print("FAILED steps: " + ", ".join(failed), flush=True)
        return 1
    return 0


def lint_imports(env: dict[str, str]) -> int:
    """``lint-imports`` from the environment of this interpreter (the test extra installs it)."""
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if tool is None:
        print(f"lint-imports is not installed next to {sys.executable}: pip install -e '.[test]'", flush=True)
        return 1
    return subprocess.call([tool, "--no-cache"], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
