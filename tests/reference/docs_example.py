"""The code blocks of a document in docs/, so tests can execute them exactly as written there."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(name: str) -> list[str]:
    """The ```python blocks of ``docs/<name>``, in order."""
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(encoding="utf-8"), flags=re.S)


def run_example(name: str) -> dict[str, Any]:
    """Execute the first python block of ``docs/<name>`` as a module; its names."""
    namespace: dict[str, Any] = {"__name__": f"docs_{Path(name).stem.replace('-', '_')}"}
    exec(compile(python_blocks(name)[0], str(DOCS / name), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


@contextmanager
def registered_example(name: str) -> Iterator[dict[str, Any]]:
    """:func:`run_example` for the block; the method registry as it was afterwards, so the
    example's methods do not join other tests' registry-driven cases."""
    from convscope.methods import registry

    saved = dict(registry._REGISTRY)
    try:
        yield run_example(name)
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
