"""Where a blob goes and how we authenticate, with secrets kept out of every message.

Accepted forms (what az CLI users already have at hand):
- a SAS URL ``https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB.vhd?sv=…&sig=…``;
- a plain blob URL plus an account key (``--account-key`` or ``AZURE_STORAGE_KEY``);
- a connection string (``--connection-string`` or ``AZURE_STORAGE_CONNECTION_STRING``) plus
  ``CONTAINER/BLOB`` or a full URL;
- a plain URL and nothing else: ``DefaultAzureCredential`` when azure-identity is installed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from typing import Any

from localbuilder.errors import DistributeError, UsageError
from localbuilder.redact import redact, strip_query


def _parse_connection_string(conn: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in conn.split(";"):
        if "=" in part:
            key, _, value = part.partition("=")
            fields[key.strip().lower()] = value.strip()
    return fields


@dataclasses.dataclass(frozen=True)
class BlobTarget:
    """A page-blob destination. ``url`` never carries a secret; ``credential`` holds it (repr hidden)."""

    url: str  # https://account.blob.core.windows.net/container/blob.vhd (no query string)
    sas: str | None = dataclasses.field(default=None, repr=False)
    credential: Any = dataclasses.field(default=None, repr=False)

    @property
    def container(self) -> str:
        return urllib.parse.urlsplit(self.url).path.lstrip("/").split("/", 2)[-2]

    def client(self) -> Any:
        """A ``BlobClient`` for this target (imported lazily: azure-storage-blob is only for uploads)."""
        try:
            from azure.storage.blob import BlobClient
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise DistributeError(
                "azure-storage-blob is not installed", hint="pip install azure-storage-blob"
            ) from exc
        full = f"{self.url}?{self.sas}" if self.sas else self.url
        # Azurite (and emulators on loopback) speak plain HTTP; the SDK refuses keys over http only
        # for token credentials, so nothing special is needed here.
        return BlobClient.from_blob_url(full, credential=self.credential, max_single_put_size=4 * 1024 * 1024)


def resolve_target(
    to: str,
    *,
    connection_string: str | None = None,
    account_key: str | None = None,
) -> BlobTarget:
    """Turn the user's ``--to`` and credential options into a ``BlobTarget``."""
    connection_string = connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    account_key = account_key or os.environ.get("AZURE_STORAGE_KEY")
    parts = urllib.parse.urlsplit(to)
    if parts.scheme in ("http", "https"):
        path = parts.path.lstrip("/")
        segments = path.split("/")
        # Path-style endpoints (Azurite: http://127.0.0.1:10000/devstoreaccount1/container/blob)
        # carry the account as the first segment.
        min_segments = 3 if re.match(r"^[\d.]+$|^localhost$", parts.hostname or "") else 2
        if len(segments) < min_segments or not segments[-1]:
            raise UsageError(
                f"--to {redact(strip_query(to))}: not a blob URL (no container/blob name)",
                hint="Use https://ACCOUNT.blob.core.windows.net/CONTAINER/NAME.vhd[?SAS]",
            )
        url = strip_query(to)
        sas = parts.query or None
        if sas:
            return BlobTarget(url, sas=sas)
        if account_key:
            account = (parts.hostname or "").split(".")[0]
            if min_segments == 3:
                account = segments[0]
            return BlobTarget(url, credential={"account_name": account, "account_key": account_key})
        if connection_string:
            fields = _parse_connection_string(connection_string)
            if "accountname" in fields and "accountkey" in fields:
                return BlobTarget(
                    url,
                    credential={"account_name": fields["accountname"], "account_key": fields["accountkey"]},
                )
            if "sharedaccesssignature" in fields:
                return BlobTarget(url, sas=fields["sharedaccesssignature"])
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise UsageError(
                f"no credential for {url}",
                hint="Pass a SAS URL, --account-key (or AZURE_STORAGE_KEY), --connection-string "
                "(or AZURE_STORAGE_CONNECTION_STRING), or pip install azure-identity for Entra ID.",
            ) from None
        return BlobTarget(url, credential=DefaultAzureCredential())
    # CONTAINER/BLOB with a connection string
    if not connection_string:
        raise UsageError(
            f"--to {to!r} is not a URL",
            hint="Give a blob URL, or CONTAINER/BLOB together with --connection-string.",
        )
    fields = _parse_connection_string(connection_string)
    endpoint = fields.get("blobendpoint")
    if not endpoint:
        protocol = fields.get("defaultendpointsprotocol", "https")
        suffix = fields.get("endpointsuffix", "core.windows.net")
        if "accountname" not in fields:
            raise UsageError("the connection string has no AccountName or BlobEndpoint")
        endpoint = f"{protocol}://{fields['accountname']}.blob.{suffix}"
    if to.count("/") < 1:
        raise UsageError(f"--to {to!r}: expected CONTAINER/BLOB", hint="e.g. --to vhds/image.vhd")
    url = endpoint.rstrip("/") + "/" + to.lstrip("/")
    if "accountkey" in fields:
        return BlobTarget(
            url, credential={"account_name": fields["accountname"], "account_key": fields["accountkey"]}
        )
    if "sharedaccesssignature" in fields:
        return BlobTarget(url, sas=fields["sharedaccesssignature"])
    raise UsageError("the connection string has neither AccountKey nor SharedAccessSignature")
