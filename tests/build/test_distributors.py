"""Placing the VHD: hard link, sparse copy across filesystems, never a partial file, --force."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from localbuilder.distributors import place
from localbuilder.errors import DistributeError


def sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(b"data")
        fh.truncate(size)


def test_hard_link_when_possible(tmp_path: Path) -> None:
    src = tmp_path / "image.vhd"
    sparse_file(src, 64 * 1024 * 1024)
    place(src, tmp_path / "out" / "a.vhd", force=False)
    assert os.stat(tmp_path / "out" / "a.vhd").st_ino == src.stat().st_ino


def test_sparse_copy_across_filesystems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "image.vhd"
    sparse_file(src, 256 * 1024 * 1024)

    def no_link(a: object, b: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    dst = tmp_path / "b.vhd"
    place(src, dst, force=False)
    assert dst.stat().st_size == src.stat().st_size
    assert dst.read_bytes()[:4] == b"data"
    assert dst.stat().st_blocks * 512 < 16 * 1024 * 1024  # stayed sparse
    assert not list(tmp_path.glob(".*.partial"))


def test_existing_output_needs_force(tmp_path: Path) -> None:
    src = tmp_path / "image.vhd"
    src.write_bytes(b"new")
    dst = tmp_path / "c.vhd"
    dst.write_bytes(b"old")
    with pytest.raises(DistributeError, match="already exists"):
        place(src, dst, force=False)
    place(src, dst, force=True)
    assert dst.read_bytes() == b"new"
