"""The checked cache store: whole entries verify, anything partial or altered does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from convscope.cache import cache_dir, read_checked, write_checked


def test_round_trip_and_each_kind_of_damage(tmp_path: Path) -> None:
    p = tmp_path / "entry.bin"
    write_checked(p, b"payload bytes", {"recipe": "r1"})
    payload, meta = read_checked(p)  # type: ignore[misc]
    assert payload == b"payload bytes" and meta["recipe"] == "r1"
    p.write_bytes(b"payload byte")
    assert read_checked(p).startswith("truncated")  # type: ignore[union-attr]
    p.write_bytes(b"payload bytez")
    assert read_checked(p) == "checksum mismatch"
    assert read_checked(tmp_path / "absent.bin") == "missing"


def test_cache_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("CONVSCOPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "convscope"
