"""Which bytes of a sparse file need uploading: allocated extents, minus all-zero pages.

A fixed VHD of 30 GiB that holds 0.5 GiB of data is mostly holes. Reading every byte to find the data
(what `az storage blob upload --type page` and the SDK's ``upload_blob`` do) costs minutes of CPU; asking
the filesystem for the allocation map with ``SEEK_DATA``/``SEEK_HOLE`` (lseek(2)) costs microseconds. Inside
allocated extents we still skip all-zero 512-byte pages: a page blob reads unwritten pages as zeros, so
sending them is wasted bandwidth (FACTS §7, and what AzCopy does).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
from collections.abc import Iterator

PAGE = 512  # page-blob page size: every Put Page offset and length is a multiple of it
MAX_PUT = 4 * 1024 * 1024  # Put Page accepts at most 4 MiB per request
ZERO_PAGE = bytes(PAGE)


@dataclasses.dataclass(frozen=True, order=True)
class Range:
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def allocated_extents(fd: int, size: int) -> Iterator[Range]:
    """Yield the allocated (data) extents of an open file, page-aligned outwards.

    Falls back to one extent covering the whole file where the filesystem does not support
    SEEK_DATA (then zero-page skipping still keeps the upload small, it just reads more).
    """
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield Range(pos, size - pos)
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        start_aligned = start - start % PAGE
        end_aligned = min(size, -(-end // PAGE) * PAGE)
        yield Range(start_aligned, end_aligned - start_aligned)
        pos = end_aligned


def nonzero_runs(data: bytes | memoryview, base: int) -> Iterator[Range]:
    """Split ``data`` (page-aligned, starting at file offset ``base``) into runs of non-zero pages."""
    view = memoryview(data)
    n = len(view)
    run_start: int | None = None
    for i in range(0, n, PAGE):
        page = view[i : i + PAGE]
        zero = page == ZERO_PAGE[: len(page)]
        if zero:
            if run_start is not None:
                yield Range(base + run_start, i - run_start)
                run_start = None
        elif run_start is None:
            run_start = i
    if run_start is not None:
        yield Range(base + run_start, n - run_start)


def upload_plan(path: str, size: int, chunk: int = MAX_PUT) -> Iterator[tuple[Range, bytes, int]]:
    """Yield ``(range, data, scanned)`` to send: each range ≤ ``chunk`` bytes, page-aligned, with all-zero
    pages left out; ``scanned`` counts the file bytes read since the previous item (for progress).

    Reads only allocated extents. ``size`` must be a multiple of 512 (a VHD always is).
    """
    if chunk % PAGE or chunk <= 0 or chunk > MAX_PUT:
        raise ValueError(f"chunk must be a multiple of {PAGE} and at most {MAX_PUT}")
    fd = os.open(path, os.O_RDONLY)
    scanned = 0
    try:
        for extent in allocated_extents(fd, size):
            pos = extent.offset
            while pos < extent.end:
                length = min(chunk, extent.end - pos)
                data = os.pread(fd, length, pos)
                if len(data) < length:  # file shorter than the extent claims: pad to whole pages
                    data = data + bytes(length - len(data))
                scanned += length
                if data.count(0) != len(data):
                    for run in nonzero_runs(data, pos):
                        start = run.offset - pos
                        yield run, data[start : start + run.length], scanned
                        scanned = 0
                pos += length
    finally:
        os.close(fd)


def allocated_bytes(path: str) -> int:
    """Bytes the filesystem has allocated for ``path`` (st_blocks), the "data" of a sparse file."""
    return os.stat(path).st_blocks * 512


class SparseDigest:
    """SHA-256 of a sparse file's non-zero pages that does not depend on how the runs were split.

    Feed runs in increasing offset order; adjacent runs are coalesced, so (0, 4 MiB) + (4 MiB, 1 MiB)
    digests the same as (0, 5 MiB). Used to compare a local VHD with what a page blob holds.
    """

    def __init__(self) -> None:
        self._data = hashlib.sha256()
        self._layout = hashlib.sha256()
        self._start: int | None = None
        self._end = 0

    def update(self, offset: int, data: bytes | memoryview) -> None:
        if self._start is not None and offset == self._end:
            self._end += len(data)
        else:
            self._flush()
            self._start, self._end = offset, offset + len(data)
        self._data.update(data)

    def _flush(self) -> None:
        if self._start is not None:
            self._layout.update(self._start.to_bytes(8, "big") + (self._end - self._start).to_bytes(8, "big"))

    def hexdigest(self) -> str:
        self._flush()
        self._start = None
        return hashlib.sha256(self._layout.digest() + self._data.digest()).hexdigest()
