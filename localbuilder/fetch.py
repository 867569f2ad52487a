"""Fetch ``scriptUri``/``sourceUri`` inputs before any guest boots, verified and cached by SHA-256.

AIB downloads every script and file of a template when the build starts and fails the build when
``sha256Checksum`` does not match. We do the same *before* booting, so a typo costs seconds, not a
boot. Supported: ``http(s)://`` (urllib), ``file://`` URIs, and plain paths, which are resolved
relative to the template file (handy for templates kept next to their scripts; AIB itself only takes
URLs). Every input is copied into ``<cache>/fetch/<sha256>``: the build uses that immutable copy, so
editing a script while a build runs cannot change what the guest executes.

Query strings are hidden in messages (``redact.hide_query``): Azure storage URLs carry SAS tokens there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from localbuilder import paths
from localbuilder.errors import FetchError
from localbuilder.redact import hide_query

log = logging.getLogger("localbuilder.fetch")

CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class FetchRequest:
    uri: str
    sha256: str | None  # as written in the template; None when the template gives none
    where: str  # template path of the field, e.g. properties.customize[1].scriptUri


@dataclasses.dataclass(frozen=True)
class Fetched:
    uri: str
    path: Path  # the verified copy in the cache
    sha256: str
    size: int
    cached: bool  # served from the cache without reading the origin


def _cache_root() -> Path:
    return paths.cache_dir() / "fetch"


def _normalise_digest(req: FetchRequest) -> str | None:
    if req.sha256 is None or req.sha256 == "":
        return None
    digest = req.sha256.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise FetchError(
            f"{req.where}: sha256Checksum {req.sha256!r} is not a SHA-256 hex digest",
            hint="Give the 64 hex characters printed by 'sha256sum FILE'.",
        )
    return digest


def local_path(uri: str, base_dir: Path) -> Path | None:
    """The local file a URI names (``file://`` or a path), or None for a network URL."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"{uri}: file:// URIs must name a local file (host {parts.netloc!r} given)")
        return Path(urllib.parse.unquote(parts.path))
    # A one-letter "scheme" is a Windows drive letter, not a URL scheme.
    if parts.scheme == "" or len(parts.scheme) == 1:
        try:
            path = Path(uri).expanduser()
        except RuntimeError:  # "~name/…" for a user this machine does not have
            raise FetchError(
                f"{uri}: cannot expand {uri.split('/')[0]!r}: no such user on this machine",
                hint="Give a path relative to the template, an absolute path or a file:// URI.",
            ) from None
        return path if path.is_absolute() else base_dir / path
    return None


def _refuse_climbing_out(req: FetchRequest, src: Path, base_dir: Path) -> None:
    """A relative path reads files that travel with the template (its scripts): one that climbs above
    the template's directory with ``..`` would quietly read other host files into the image. An
    absolute path or ``file://`` URI says plainly where it reads, and stays allowed."""
    if urllib.parse.urlsplit(req.uri).scheme == "file" or Path(req.uri).expanduser().is_absolute():
        return
    base = os.path.normpath(base_dir.absolute())
    if os.path.commonpath([base, os.path.normpath(src.absolute())]) != base:
        raise FetchError(
            f"{req.where}: {req.uri!r} points outside the template's directory {base}",
            hint="Relative paths must stay inside the template's directory (no '..' above it): put the "
            "file next to the template, or give an absolute path or file:// URI if reading it from "
            "elsewhere is intended.",
        )


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _copy_hashing(reader: _Readable, dst: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(dst, "wb") as out:
        while True:
            chunk = reader.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def fetch(req: FetchRequest, *, base_dir: Path, timeout: float = 60.0) -> Fetched:
    """Fetch one input into the cache and verify its checksum (when the template gives one)."""
    expected = _normalise_digest(req)
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    if expected is not None and (root / expected).is_file():
        # Content-addressed: a file stored under its digest *is* that content (we verified it when
        # storing it), so a template pinned by checksum never needs the origin again.
        log.debug("fetch %s: cache hit %s", hide_query(req.uri), expected)
        path = root / expected
        return Fetched(req.uri, path, expected, path.stat().st_size, cached=True)

    fd, tmp_name = tempfile.mkstemp(prefix=".partial-", dir=root)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            src = local_path(req.uri, base_dir)
        except FetchError as exc:
            raise FetchError(f"{req.where}: {exc.message}", hint=exc.hint) from None
        if src is not None:
            _refuse_climbing_out(req, src, base_dir)
            try:
                with open(src, "rb") as fh:
                    actual, size = _copy_hashing(fh, tmp)
            except FileNotFoundError:
                raise FetchError(
                    f"{req.where}: {src} does not exist",
                    hint=f"Relative paths are resolved against the template's directory ({base_dir}).",
                ) from None
            except IsADirectoryError:
                raise FetchError(f"{req.where}: {src} is a directory, not a file") from None
            except OSError as exc:
                raise FetchError(f"{req.where}: cannot read {src}: {exc.strerror}") from exc
        else:
            scheme = urllib.parse.urlsplit(req.uri).scheme
            if scheme not in ("http", "https"):
                raise FetchError(
                    f"{req.where}: unsupported URI scheme {scheme!r} in {hide_query(req.uri)}",
                    hint="Use https://, http://, file:// or a path relative to the template.",
                )
            log.info("downloading %s", hide_query(req.uri))
            try:
                with urllib.request.urlopen(req.uri, timeout=timeout) as resp:  # noqa: S310 - scheme checked
                    actual, size = _copy_hashing(resp, tmp)
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response's socket
                raise FetchError(
                    f"{req.where}: {hide_query(req.uri)}: HTTP {exc.code} {exc.reason}",
                    hint="Check the URL (and its SAS token, if it points to Azure storage).",
                ) from exc
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise FetchError(
                    f"{req.where}: cannot download {hide_query(req.uri)}: {reason}",
                    hint="Is the host reachable from this machine? For offline builds keep the script "
                    "next to the template and give a relative path.",
                ) from exc
        if expected is not None and actual != expected:
            raise FetchError(
                f"{req.where}: sha256 mismatch for {hide_query(req.uri)}: expected {expected}, got {actual}",
                hint="If the file changed on purpose, put the new digest in sha256Checksum.",
            )
        final = root / actual
        os.replace(tmp, final)
        os.chmod(final, 0o644)
        return Fetched(req.uri, final, actual, size, cached=False)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_all(requests: Iterable[FetchRequest], *, base_dir: Path) -> dict[str, Fetched]:
    """Fetch every request; collect all failures into one FetchError so the user fixes them at once."""
    done: dict[str, Fetched] = {}
    errors: list[FetchError] = []
    for req in requests:
        key = req.uri
        try:
            got = fetch(req, base_dir=base_dir)
        except FetchError as exc:
            errors.append(exc)
            continue
        previous = done.get(key)
        if previous is not None and previous.sha256 != got.sha256:
            errors.append(FetchError(f"{req.where}: {hide_query(key)} changed while fetching"))
        done[key] = got
    if errors:
        hints = sorted({e.hint for e in errors if e.hint})
        raise FetchError("\n".join(e.message for e in errors), hint=" ".join(hints) or None)
    return done
