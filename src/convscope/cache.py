"""The user cache directory and a checked, atomic file store inside it.

Location: ``$CONVSCOPE_CACHE`` if set, else ``$XDG_CACHE_HOME/convscope`` (``~/.cache/convscope``).
Each entry is a payload file plus a JSON manifest holding the payload's SHA-256; both are
written to a temporary name and renamed into place, manifest last, so a crash never leaves an
entry that verifies. :func:`read_checked` returns ``None`` (and says why) for anything missing,
partial or corrupt, so the caller rebuilds instead of loading it.

Example::

    write_checked(path, payload_bytes, {"recipe": "..."})
    payload, meta = read_checked(path) or rebuild()
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from convscope.fileio import OutputError, write_atomic


def cache_dir() -> Path:
    """The convscope cache root (created on demand)."""
    env = os.environ.get("CONVSCOPE_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "convscope"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise OutputError(f"cannot use {str(root)!r} as convscope's cache folder ({why or exc})",
                          "Set CONVSCOPE_CACHE to a folder you can write to.") from exc
    return root


def _manifest(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_checked(path: Path, payload: bytes, meta: dict[str, Any]) -> None:
    """Store ``payload`` at ``path`` with a manifest ``path.json`` = meta + sha256 + size."""
    write_atomic(path, payload)
    record = {**meta, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    write_atomic(_manifest(path), json.dumps(record, indent=2, sort_keys=True).encode())


def read_checked(path: Path) -> tuple[bytes, dict[str, Any]] | str:
    """``(payload, meta)`` if the entry is whole and verifies, else a string saying what is wrong."""
    manifest = _manifest(path)
    if not path.exists() or not manifest.exists():
        return "missing"
    try:
        meta = json.loads(manifest.read_text())
        payload = path.read_bytes()
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if len(payload) != meta.get("size"):
        return f"truncated ({len(payload)} of {meta.get('size')} bytes)"
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        return "checksum mismatch"
    return payload, meta
