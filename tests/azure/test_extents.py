"""The allocation-map reader and zero-page skipping behind the sparse upload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localbuilder.azure.extents import (
    MAX_PUT,
    PAGE,
    Range,
    SparseDigest,
    allocated_extents,
    nonzero_runs,
    upload_plan,
)

MiB = 1024 * 1024


def _sparse_file(path: Path, size: int, writes: dict[int, bytes]) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, data in writes.items():
            fh.seek(offset)
            fh.write(data)


def test_allocated_extents_skip_holes(tmp_path: Path) -> None:
    f = tmp_path / "disk"
    _sparse_file(f, 64 * MiB, {8 * MiB: b"\x01" * MiB, 40 * MiB: b"\x02" * (2 * MiB)})
    fd = os.open(f, os.O_RDONLY)
    try:
        extents = list(allocated_extents(fd, 64 * MiB))
    finally:
        os.close(fd)
    total = sum(e.length for e in extents)
    # Filesystems allocate in blocks (4 KiB) — the map is exact to a block, never the whole file.
    assert 3 * MiB <= total <= 3 * MiB + 64 * 1024
    assert any(e.offset <= 8 * MiB < e.end for e in extents)
    assert any(e.offset <= 40 * MiB < e.end for e in extents)


def test_nonzero_runs_split_on_zero_pages() -> None:
    data = b"\x01" * PAGE + bytes(PAGE) * 2 + b"\x02" * (3 * PAGE) + bytes(PAGE)
    assert list(nonzero_runs(data, 1024)) == [Range(1024, PAGE), Range(1024 + 3 * PAGE, 3 * PAGE)]
    assert list(nonzero_runs(bytes(4 * PAGE), 0)) == []


def test_upload_plan_leaves_out_allocated_zero_pages_and_caps_chunks(tmp_path: Path) -> None:
    f = tmp_path / "disk"
    payload = os.urandom(9 * MiB)
    # An allocated extent that holds explicit zeros in the middle: those pages must not be sent.
    zeros_inside = b"\x07" * (2 * PAGE) + bytes(8 * PAGE) + b"\x08" * PAGE
    _sparse_file(f, 32 * MiB, {0: payload, 20 * MiB: zeros_inside})
    plan = list(upload_plan(str(f), 32 * MiB))
    ranges = [r for r, _, _ in plan]
    assert all(r.length <= MAX_PUT and r.offset % PAGE == 0 and r.length % PAGE == 0 for r in ranges)
    assert sum(r.length for r in ranges) == 9 * MiB + 3 * PAGE
    assert Range(20 * MiB, 2 * PAGE) in ranges and Range(20 * MiB + 10 * PAGE, PAGE) in ranges
    for rng, data, _ in plan:
        with open(f, "rb") as fh:
            fh.seek(rng.offset)
            assert fh.read(rng.length) == data


def test_upload_plan_rejects_bad_chunk(tmp_path: Path) -> None:
    f = tmp_path / "disk"
    _sparse_file(f, MiB, {})
    with pytest.raises(ValueError):
        list(upload_plan(str(f), MiB, chunk=MAX_PUT + PAGE))


def test_sparse_digest_does_not_depend_on_splitting() -> None:
    a, b = SparseDigest(), SparseDigest()
    data = os.urandom(6 * PAGE)
    a.update(0, data)
    b.update(0, data[: 2 * PAGE])
    b.update(2 * PAGE, data[2 * PAGE :])
    assert a.hexdigest() == b.hexdigest()
    c = SparseDigest()
    c.update(0, data[: 2 * PAGE])
    c.update(3 * PAGE, data[2 * PAGE :])  # same bytes, different place: different digest
    assert c.hexdigest() != a.hexdigest()
