"""Atomic writes: outputs get the mode the umask gives any new file (``open(path, "w")`` is the
oracle), a replaced file keeps its mode, a path that cannot be written is one clear error (an
``OSError`` too) that leaves the previous file and no temporary behind, and every output of the
package goes through :func:`~convscope.fileio.write_atomic`."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from convscope import render
from convscope.errors import ConvscopeError
from convscope.fileio import OutputError, check_writable, write_atomic

SRC = Path(__file__).resolve().parents[2] / "src" / "convscope"


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask022", "umask077", "umask002"])
def test_new_files_get_the_umask_mode(mask: int, expected: int, tmp_path: Path) -> None:
    with umask(mask):
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as f:  # what any new file gets
            f.write("x")
        written = write_atomic(tmp_path / "sub" / "atomic.bin", b"data")
        png = render.save_png(tmp_path / "sub" / "image.png", np.zeros((4, 4, 3), np.uint8))
        page = render.save_html(tmp_path / "page.html", render.html_page("t", {"s": ["text"]}))
    assert mode(plain) == expected
    assert {mode(written), mode(png), mode(page)} == {expected}
    assert written.read_bytes() == b"data"


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "kept.txt"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with umask(0o022):
        write_atomic(path, b"new")
    assert mode(path) == 0o640 and path.read_bytes() == b"new"


def test_a_file_in_the_way_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "report.txt"
    blocker.write_text("mine")
    with pytest.raises(OutputError, match="'.*report.txt' is a file, not a folder") as info:
        write_atomic(blocker / "page.html", b"x")
    assert isinstance(info.value, ConvscopeError) and isinstance(info.value, OSError)
    assert info.value.errno is not None  # the OSError's own details survive
    assert blocker.read_text() == "mine"


def test_a_folder_in_the_way_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "out.png").mkdir()
    with pytest.raises(OutputError, match="a folder of that name is there"):
        write_atomic(tmp_path / "out.png", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        with pytest.raises(OutputError, match="is not writable"):
            check_writable(locked / "out", folder=True)
        with pytest.raises(OutputError, match="is not writable"):
            write_atomic(locked / "out" / "a.png", b"x")
    finally:
        locked.chmod(0o755)


def test_a_refused_write_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What root never sees (it writes into read-only folders): the system refuses the file."""
    (tmp_path / "a.png").write_bytes(b"old")

    def refuse(*_args: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(OutputError, match=r"cannot write '.*a.png' \(Permission denied\)") as info:
        write_atomic(tmp_path / "a.png", b"new")
    assert info.value.errno == 13
    monkeypatch.undo()
    assert (tmp_path / "a.png").read_bytes() == b"old"


def test_check_writable_touches_nothing(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "a" / "b", folder=True) == tmp_path / "a" / "b"
    assert check_writable(tmp_path / "a" / "c.png") == tmp_path / "a" / "c.png"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="a file of that name is there"):
        check_writable(tmp_path / "f", folder=True)


WRITES = re.compile(r"mkstemp|NamedTemporaryFile|os\.replace|\.write_bytes\(|\.write_text\(|open\([^)]*['\"][wax]b?['\"]")


def test_every_output_goes_through_write_atomic() -> None:
    offenders = [f"{path.relative_to(SRC)}:{n}" for path in SRC.rglob("*.py") if path.name != "fileio.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if WRITES.search(line)]
    assert offenders == []


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600)], ids=["umask022", "umask077"])
def test_explain_outputs_get_the_umask_mode(mask: int, expected: int, shapes_vgg: object, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from convscope.cli import main

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    with umask(mask):
        assert main(["explain", "zoo:shapes-vgg", str(tmp_path / "a.png"), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == ["a-grad_cam.png", "maps.json"]
    assert {p.name: mode(p) for p in written} == {p.name: expected for p in written}
