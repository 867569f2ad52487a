"""Sparse, parallel, resumable page-blob upload of a fixed VHD.

Only allocated, non-zero 512-byte pages are sent (``extents.upload_plan``), in Put Page requests of at
most 4 MiB, ``concurrency`` at a time, each with a transactional MD5 (``validate_content``). Finished
ranges are appended to a journal under the cache directory, so an interrupted upload resumes by sending
only what is missing. Afterwards Get Page Ranges must cover every range we sent, and (``verify="full"``)
the written ranges are read back and compared by a digest of (offset, length, data) of the non-zero pages.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from localbuilder import paths
from localbuilder.azure.extents import (
    MAX_PUT,
    PAGE,
    Range,
    SparseDigest,
    allocated_extents,
    nonzero_runs,
    upload_plan,
)
from localbuilder.azure.target import BlobTarget
from localbuilder.errors import DistributeError
from localbuilder.redact import redact

log = logging.getLogger("localbuilder.azure.pageblob")

Verify = Literal["full", "ranges", "none"]
JOURNAL_VERSION = 1


@dataclasses.dataclass(frozen=True)
class UploadResult:
    url: str  # without SAS
    size: int
    bytes_sent: int
    requests: int
    bytes_resumed: int  # already on the blob from an interrupted earlier upload
    seconds: float
    cpu_seconds: float
    verified: str
    sparse_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sdk_error(exc: Exception, what: str, url: str) -> DistributeError:
    text = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    hint = "Check the SAS token's permissions (create, write, read) and expiry, or the account key."
    if "AuthenticationFailed" in str(exc) or "403" in str(exc):
        hint = "Authentication failed: the SAS token or key is wrong or expired (needs create/write/read)."
    return DistributeError(f"{what} {url}: {text}", hint=hint)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Journal:
    """Append-only record of finished ranges: a JSON header line, then ``offset length`` lines."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.done: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._fh: Any = None

    def load(self) -> bool:
        """Read an existing journal; True if it belongs to the same file and blob."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return False
        if not lines:
            return False
        try:
            if json.loads(lines[0]) != self.header:
                return False
            for line in lines[1:]:
                offset, length = line.split()
                self.done.add((int(offset), int(length)))
        except (ValueError, json.JSONDecodeError):
            return False  # torn or foreign journal: start over rather than trust it
        return True

    def start(self, fresh: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.done.clear()
            self.path.write_text(json.dumps(self.header) + "\n")
            os.chmod(self.path, 0o600)
        self._fh = open(self.path, "a", encoding="ascii")  # noqa: SIM115 - closed in close()

    def record(self, rng: Range) -> None:
        with self._lock:
            self._fh.write(f"{rng.offset} {rng.length}\n")
            self._fh.flush()

    def close(self, remove: bool) -> None:
        if self._fh:
            self._fh.close()
        if remove:
            self.path.unlink(missing_ok=True)


def _identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    with open(path, "rb") as fh:
        fh.seek(max(0, st.st_size - 512))
        footer = fh.read(512)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "footer": hashlib.sha256(footer).hexdigest()}


def upload_vhd(
    path: Path,
    target: BlobTarget,
    *,
    concurrency: int = 4,
    chunk: int = MAX_PUT,
    resume: bool = True,
    verify: Verify = "full",
    progress: bool = True,
    journal_dir: Path | None = None,
    on_sent: Callable[[Range], None] | None = None,
) -> UploadResult:
    """Upload ``path`` (a fixed VHD, size a multiple of 512) to ``target`` as a page blob."""
    size = path.stat().st_size
    if size % PAGE:
        raise DistributeError(
            f"{path}: size {size} is not a multiple of 512; a page blob cannot hold it",
            hint="Upload a fixed VHD produced by `localbuilder build` (checked with `localbuilder inspect`).",
        )
    if concurrency < 1:
        raise DistributeError("concurrency must be at least 1")
    client = target.client()
    url = target.url
    journal_dir = journal_dir or paths.cache_dir() / "uploads"
    key = hashlib.sha256(f"{url}\0{path.resolve()}".encode()).hexdigest()[:32]
    journal = _Journal(journal_dir / f"{key}.journal", {"v": JOURNAL_VERSION, "url": url, **_identity(path)})

    from azure.core.exceptions import AzureError, ResourceNotFoundError

    start, cpu0 = time.monotonic(), _cpu()
    fresh = True
    if resume and journal.load():
        try:
            props = client.get_blob_properties()
            fresh = props.size != size or props.blob_type != "PageBlob"
        except ResourceNotFoundError:
            fresh = True
        except AzureError as exc:
            raise _sdk_error(exc, "cannot read", url) from exc
        if not fresh:
            log.info("resuming upload to %s: %d ranges already there", url, len(journal.done))
    if fresh:
        try:
            client.create_page_blob(size=size)
        except AzureError as exc:
            raise _sdk_error(exc, "cannot create page blob", url) from exc
    journal.start(fresh)

    # The bar counts file bytes scanned: the allocation map tells the total without reading anything.
    fd = os.open(path, os.O_RDONLY)
    try:
        total_scan = sum(r.length for r in allocated_extents(fd, size))
    finally:
        os.close(fd)
    bar = _bar(total_scan, progress, path.name)
    sent = 0
    resumed = 0
    requests = 0

    def put(rng: Range, data: bytes) -> int:
        client.upload_page(data, offset=rng.offset, length=rng.length, validate_content=True)
        journal.record(rng)
        if on_sent is not None:
            on_sent(rng)
        return rng.length

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
            pending: set[concurrent.futures.Future[int]] = set()
            local_digest = SparseDigest()
            for rng, data, scanned in upload_plan(str(path), size, chunk):
                local_digest.update(rng.offset, data)
                bar.update(scanned)
                if (rng.offset, rng.length) in journal.done:
                    resumed += rng.length
                    continue
                # Bound memory: at most 2× concurrency chunks read ahead.
                while len(pending) >= 2 * concurrency:
                    done, pending = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                    for fut in done:
                        n = fut.result()
                        # Results are collected here, in the reading thread: no lock needed.
                        sent += n
                        requests += 1
                pending.add(pool.submit(put, rng, bytes(data)))
            for fut in concurrent.futures.as_completed(pending):
                n = fut.result()
                sent += n
                requests += 1
        sparse_sha256 = local_digest.hexdigest()
    except AzureError as exc:
        raise _sdk_error(exc, "upload failed for", url) from exc
    finally:
        bar.close()
        journal.close(remove=False)

    verified = _verify(client, path, size, verify, sparse_sha256)
    try:
        client.set_blob_metadata({"localbuilder_sparse_sha256": sparse_sha256})
    except AzureError as exc:
        raise _sdk_error(exc, "cannot set metadata on", url) from exc
    journal.close(remove=True)
    result = UploadResult(
        url=url,
        size=size,
        bytes_sent=sent,
        requests=requests,
        bytes_resumed=resumed,
        seconds=time.monotonic() - start,
        cpu_seconds=_cpu() - cpu0,
        verified=verified,
        sparse_sha256=sparse_sha256,
    )
    log.info(
        "uploaded %s: %.1f MiB sent in %d requests (%.1f MiB resumed), %.1f s, verified: %s",
        url,
        sent / 2**20,
        requests,
        resumed / 2**20,
        result.seconds,
        verified,
    )
    return result


def _verify(client: Any, path: Path, size: int, verify: Verify, expected: str) -> str:
    """Get Page Ranges must cover exactly our non-zero data; ``full`` also reads it back."""
    if verify == "none":
        return "none"
    from azure.core.exceptions import AzureError

    try:
        server = sorted((r.start, r.end + 1) for r in client.list_page_ranges() if not r.cleared)
    except AzureError as exc:
        raise _sdk_error(exc, "cannot list page ranges of", client.url) from exc
    h = SparseDigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in server:
            pos = start
            while pos < end:
                length = min(MAX_PUT, end - pos)
                local = os.pread(fd, length, pos)
                if verify == "full":
                    remote = client.download_blob(offset=pos, length=length).readall()
                    if remote != local:
                        raise DistributeError(
                            f"verification failed: blob bytes at offset {pos} differ from {path}",
                            hint="Upload again with --no-resume.",
                        )
                for run in nonzero_runs(local, pos):
                    h.update(run.offset, local[run.offset - pos : run.offset - pos + run.length])
                pos += length
    finally:
        os.close(fd)
    # Everything non-zero in the file must lie inside the server's page ranges: the digest over the
    # file's non-zero pages *within* those ranges must equal the digest over all its non-zero pages.
    if h.hexdigest() != expected:
        raise DistributeError(
            "verification failed: the blob's page ranges do not cover all data of the VHD",
            hint="Upload again with --no-resume.",
        )
    return verify


def _bar(total: int, enabled: bool, name: str) -> Any:
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"upload {name}",
        disable=not enabled,
        leave=False,
    )
