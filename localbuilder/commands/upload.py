"""`localbuilder upload VHD --to BLOB_URL`: sparse, parallel, resumable page-blob upload."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localbuilder.azure.pageblob import upload_vhd
from localbuilder.azure.target import resolve_target
from localbuilder.errors import UsageError
from localbuilder.vhd import check_fixed_vhd

NAME = "upload"
HELP = "upload a fixed VHD to an Azure page blob (sparse, parallel, resumable)"
DESCRIPTION = (
    "Upload a fixed VHD to an Azure Storage page blob, sending only allocated non-zero pages. "
    "An interrupted upload resumes where it stopped. Credentials: a SAS URL, --account-key / "
    "AZURE_STORAGE_KEY, --connection-string / AZURE_STORAGE_CONNECTION_STRING, or Entra ID "
    "(DefaultAzureCredential, when azure-identity is installed). Secrets are never logged."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vhd", type=Path, help="the fixed VHD to upload")
    parser.add_argument(
        "--to", required=True, metavar="BLOB_URL", help="blob URL (with SAS), or CONTAINER/BLOB"
    )
    parser.add_argument("--connection-string", help="storage connection string (prefer the environment)")
    parser.add_argument("--account-key", help="storage account key (prefer AZURE_STORAGE_KEY)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel Put Page requests (default 4)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a partial upload exists")
    parser.add_argument(
        "--verify",
        choices=["full", "ranges", "none"],
        default="full",
        help="after upload: compare page ranges (ranges) and read the data back (full, default)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    if not args.vhd.is_file():
        raise UsageError(f"{args.vhd}: no such file", hint="Give the path of a fixed VHD.")
    _check_vhd(args.vhd)
    target = resolve_target(args.to, connection_string=args.connection_string, account_key=args.account_key)
    result = upload_vhd(
        args.vhd,
        target,
        concurrency=args.concurrency,
        resume=not args.no_resume,
        verify=args.verify,
        progress=sys.stderr.isatty() and not args.quiet,
    )
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(result.url)
    return 0


def _check_vhd(path: Path) -> None:
    """Refuse anything but a fixed VHD: Azure rejects the rest after a long upload."""
    check_fixed_vhd(path)
