"""Atomic file writes: readers never see a half-written file, and outputs get ordinary permissions.

A written file gets the mode any new file gets (``0o666`` less the umask: ``0644`` under umask
022); a file that is replaced keeps its mode. A path that cannot be written raises
:class:`OutputError` naming what is in the way.

Example: ``write_atomic("out/page.html", page.encode())``.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from convscope.errors import ConvscopeError

_HINT = "Choose an output path in a folder you can write to (--out)."
_IN_THE_WAY = "Remove it, or choose another output path (--out)."


class OutputError(ConvscopeError, OSError):
    """An output path that cannot be written; an ``OSError`` too, for callers that catch those
    (with the ``errno`` of the failure that revealed it, when there was one)."""

    def __str__(self) -> str:
        return self.problem if not self.hint else f"{self.problem}. {self.hint}"


def check_writable(path: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """Raise :class:`OutputError` if ``path`` (a file, or a folder with ``folder=True``) could not
    be created or replaced; touches nothing. Returns the path.

    Example: ``check_writable("report.txt/out", folder=True)`` raises
    ``'report.txt' is a file, not a folder``.
    """
    target = Path(path)
    kind = "folder" if folder else "file"
    if target.exists() and target.is_dir() != folder:
        raise OutputError(f"cannot write the {kind} {str(target)!r}: a {'file' if folder else 'folder'} of that "
                          "name is there", _IN_THE_WAY)
    above = [target, *target.parents] if folder else [target.parent, *target.parent.parents]
    home = next((p for p in above if p.exists()), None)
    if home is None:  # nothing above it exists (a vanished working directory): the write will say
        return target
    if not home.is_dir():
        raise OutputError(f"cannot write {str(target)!r}: {str(home)!r} is a file, not a folder", _IN_THE_WAY)
    if not os.access(home, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {str(target)!r}: the folder {str(home)!r} is not writable", _HINT)
    return target


def _keep_mode(target: Path, tmp: Path) -> None:
    """Give ``tmp`` the mode of the ``target`` it replaces, if there is one (a new file already
    has the umask's mode: it was created with ``0o666``)."""
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


def _temporary(target: Path) -> tuple[int, Path]:
    """A new, uniquely named file beside ``target``, opened for writing, with the umask's mode."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits collide
            continue


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path``, creating parent directories; returns the path.

    The bytes go to a temporary file in the same directory, which then replaces ``path``
    with ``os.replace`` (atomic on one file system). On failure the temporary file is removed
    and any previous ``path`` is left as it was; a path that cannot be written raises
    :class:`OutputError`.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary(target)
    except OSError as exc:
        raise _output_error(target, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            _keep_mode(target, tmp)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise _output_error(target, exc) from exc
        raise
    return target


def _output_error(target: Path, exc: OSError) -> OutputError:
    """The clearest :class:`OutputError` for ``exc``, raised while writing ``target``."""
    try:
        check_writable(target)
    except OutputError as found:
        error = found
    else:
        error = OutputError(f"cannot write {str(target)!r} ({exc.strerror or exc})", _HINT)
    error.errno, error.strerror, error.filename = exc.errno, exc.strerror, str(target)
    return error
