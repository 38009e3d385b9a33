"""One error type for everything a user can get wrong.

A :class:`ConvscopeError` carries the problem and the fix in one paragraph. The CLI prints
it without a traceback (unless ``--debug``) and exits non-zero.

Example::

    raise ConvscopeError("layer 'feature.3' not found", hint="did you mean 'features.3'?")
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConvscopeError(Exception):
    """A user-facing error: ``problem`` says what is wrong, ``hint`` how to fix it."""

    def __init__(self, problem: str, hint: str | None = None) -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(problem if not hint else f"{problem}. {hint}")


def close_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates most similar to ``name`` (difflib ratio), best first.

    Example: ``close_names("layer4.1.cov2", names)`` -> ``["layer4.1.conv2", ...]``.
    """
    pool = list(candidates)
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if len(close) < n:  # also offer names that contain or extend what was typed
        close += [c for c in pool if (name in c or c.startswith(name)) and c not in close]
    return close[:n]


def did_you_mean(name: str, candidates: Iterable[str], what: str = "name", show: int = 12) -> str:
    """A hint sentence listing the closest candidates, or else the first ``show`` of them."""
    pool = list(candidates)
    close = close_names(name, pool)
    if close:
        return "Did you mean " + ", ".join(repr(c) for c in close) + "?"
    shown = ", ".join(repr(c) for c in pool[:show]) + (f" and {len(pool) - show} more" if len(pool) > show else "")
    return f"Known {what}s: {shown}." if pool else f"There are no {what}s to choose from."
