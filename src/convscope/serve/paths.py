"""Paths from requests, kept inside the folders the server serves.

A request names a file by a path relative to one served folder. :func:`safe_path` refuses what
could leave it before touching the disk (absolute paths, drive letters, backslashes, ``..``
components, NUL bytes, percent signs left after the server's one decoding: double-encoded
forms), then resolves the path (following symlinks) and refuses a result outside the folder.

Example::

    safe_path(Path("data"), "cats/01.png")      # -> /abs/data/cats/01.png
    safe_path(Path("data"), "../secret.txt")    # raises PathRefused (400)
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from convscope.serve.answers import Refused


class PathRefused(Refused):
    """A request's path that would leave its served folder (400; 403 for a symlink pointing out)."""

    def __init__(self, problem: str, status: int = 400) -> None:
        super().__init__(problem, "Name a file inside the served folder by its relative path.", status)


def safe_path(root: Path, requested: str) -> Path:
    """``root / requested`` resolved, or :class:`PathRefused` when it is not inside ``root``."""
    if not requested or "\0" in requested or "\\" in requested or "%" in requested:
        raise PathRefused(f"the path {requested!r} is empty or holds a forbidden character")
    pure = PurePosixPath(requested)
    if pure.is_absolute() or (len(requested) > 1 and requested[1] == ":"):
        raise PathRefused(f"the path {requested!r} is absolute")
    if any(part == ".." for part in pure.parts):
        raise PathRefused(f"the path {requested!r} climbs out of its folder ('..')")
    base = root.resolve()
    target = (base / pure).resolve()
    if target != base and base not in target.parents:  # a symlink pointing out
        raise PathRefused(f"the path {requested!r} leads outside the served folder", status=403)
    return target
