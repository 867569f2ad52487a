"""What the Azure-bound distributors share: readiness warnings, the page-blob upload, the Compute client.

Secrets: a SAS or account key only ever lives in a ``BlobTarget`` (repr hidden); every URL that reaches
a log line, a run output or an error goes through ``strip_query``/``redact`` first.
"""

from __future__ import annotations

import logging
from pathlib import Path

from localbuilder.azure.pageblob import upload_vhd
from localbuilder.azure.readiness import check_readiness, open_root
from localbuilder.azure.target import BlobTarget, resolve_target
from localbuilder.distributors import DistributeContext
from localbuilder.errors import DistributeError, LocalBuilderError
from localbuilder.redact import redact, strip_query
from localbuilder.template.model import OsType

log = logging.getLogger("localbuilder.distributors.azure")


_checked: dict[tuple[int, int, int], list[str]] = {}


def readiness_warnings(ctx: DistributeContext, vhd: Path) -> list[str]:
    """Log (as warnings) the Azure-readiness checks a Linux image fails; never stops the upload.

    Every target's VHD is a hard link to (or copy of) the run's one VHD: the check runs once per file
    identity, so three Azure targets do not print the same warnings three times.
    """
    if ctx.os_type is not OsType.linux:
        return []
    st = vhd.stat()
    key = (st.st_dev, st.st_ino, st.st_mtime_ns)
    if key in _checked:
        return _checked[key]
    _checked[key] = _check(vhd)
    return _checked[key]


def _check(vhd: Path) -> list[str]:
    try:
        reader = open_root(vhd)
        if reader is None:
            log.warning("Azure readiness: no Linux root filesystem found in %s; not checked", vhd)
            return []
        failed = [f for f in check_readiness(reader) if not f.ok]
    except LocalBuilderError as exc:
        # The check is advice: an unreadable image is reported, the upload goes on.
        log.warning("Azure readiness: cannot read %s: %s", vhd, exc.message)
        return []
    messages = [f"{f.check}: {f.message}" + (f" (fix: {f.hint})" if f.hint else "") for f in failed]
    for text in messages:
        log.warning("Azure readiness: %s", text)
    return messages


def staging_blob(ctx: DistributeContext, run_output_name: str) -> str:
    """``<staging container>/<runOutputName>-<run-id>.vhd``, keeping the container's query (SAS) if any."""
    staging = ctx.azure.staging
    if not staging:
        raise DistributeError("no staging container", hint="Pass --staging CONTAINER_URL.")
    base, sep, query = staging.partition("?")
    return f"{base.rstrip('/')}/{run_output_name}-{ctx.run_id}.vhd" + (f"?{query}" if sep else "")


def dry_run_blob_url(ctx: DistributeContext, run_output_name: str) -> str:
    """The blob URL a dry run shows: the real staging blob, or a placeholder container to fill in."""
    if ctx.azure.staging:
        return strip_query(staging_blob(ctx, run_output_name))
    return f"https://STORAGE_ACCOUNT.blob.core.windows.net/CONTAINER/{run_output_name}-{ctx.run_id}.vhd"


def upload(ctx: DistributeContext, vhd: Path, to: str, where: str) -> str:
    """Upload ``vhd`` to the blob ``to`` (a SAS in it, or env credentials); return the URL without query."""
    try:
        target: BlobTarget = resolve_target(to)
    except LocalBuilderError as exc:
        raise DistributeError(f"{where}: {redact(exc.message)}", hint=exc.hint) from exc
    readiness_warnings(ctx, vhd)
    log.info("uploading %s to %s", vhd, target.url)
    try:
        result = upload_vhd(vhd, target, progress=ctx.azure.upload_progress)
    except LocalBuilderError as exc:
        raise DistributeError(f"{where}: upload to {target.url} failed: {redact(exc.message)}",
                              hint=exc.hint) from exc  # fmt: skip
    log.info("uploaded %s: %d bytes sent", target.url, result.bytes_sent)
    return target.url
