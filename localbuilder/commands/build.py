"""`localbuilder build TEMPLATE`: build an AIB template locally, in AIB's phases, to a fixed VHD."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.parse
from pathlib import Path

from localbuilder.distributors import AzureOptions
from localbuilder.errors import TemplateError, UsageError

NAME = "build"
HELP = "build an AIB image template locally (boot, customize, deprovision, fixed VHD, distribute)"
DESCRIPTION = (
    "Build an Azure VM Image Builder template on a local QEMU/libvirt guest, in AIB's order: "
    "validate the template, fetch and checksum every script, boot the source image, run customize[] "
    "(the first failure stops), deprovision, convert to a fixed MiB-aligned VHD, run inVMValidations "
    "in a guest booted from the output, distribute. Run state, customization.log and build.log are "
    "kept under the run directory (see 'localbuilder show-runs'). Exit codes: 0 Succeeded, "
    "1 Failed or PartiallySucceeded, 2 invalid template or usage, 130 canceled."
)

log = logging.getLogger("localbuilder.commands.build")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("template", type=Path, help="template file (bare, ARM, REST body)")
    parser.add_argument("--parameters", type=Path, metavar="FILE", help="ARM parameters file")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="set an ARM parameter")
    parser.add_argument(
        "--set", action="append", default=[], dest="sets", metavar="PATH=VALUE",
        help="override a template value, e.g. properties.vmProfile.osDiskSizeGB=8",
    )  # fmt: skip
    parser.add_argument("--resource", metavar="NAME", help="pick one imageTemplates resource")
    parser.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="where VHDs go (default: <run dir>/outputs)"
    )
    parser.add_argument(
        "--on-error", choices=["cleanup", "abort", "ask"], default=None,
        help="when a step fails: remove the guest (cleanup), keep it running for SSH (abort), or ask "
             "(default: the template's errorHandling, else cleanup)",
    )  # fmt: skip
    parser.add_argument("--hypervisor", choices=["qemu", "libvirt"], default="qemu", help="guest backend")
    parser.add_argument("--libvirt-uri", metavar="URI", default=None, help="libvirt connection URI")
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto", help="accelerator")
    parser.add_argument(
        "--network", action="store_true",
        help="give the guest outbound network access (default: isolated, only the SSH forward)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-any-destination", action="store_true",
        help="let File customizers write outside /tmp on Linux (AIB refuses that)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="overwrite existing output VHDs")
    parser.add_argument("--strict", action="store_true", help="also stop on what Azure would reject")
    parser.add_argument(
        "--staging", metavar="CONTAINER_URL",
        help="blob container for ManagedImage/SharedImage uploads (with a SAS, or AZURE_STORAGE_KEY / "
             "AZURE_STORAGE_CONNECTION_STRING in the environment)",
    )  # fmt: skip
    parser.add_argument(
        "--staging-account-id", metavar="ID",
        help="resource id of the staging storage account (needed for SharedImage gallery versions)",
    )  # fmt: skip
    parser.add_argument(
        "--dry-run-azure", action="store_true",
        help="print the az commands that would create the images instead of calling the Compute API",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the final state.json to stdout")


def _params(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE", hint="e.g. --param imageName=web01")
        out[key] = value
    return out


def _azure_options(args: argparse.Namespace) -> AzureOptions:
    from localbuilder.azure.target import redact, strip_query

    staging = args.staging
    if staging:
        parts = urllib.parse.urlsplit(staging)
        if parts.scheme not in ("http", "https") or not parts.path.strip("/"):
            raise UsageError(
                f"--staging {redact(strip_query(staging))}: not a blob container URL",
                hint="Use https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS]",
            )
    account = args.staging_account_id
    if account and "/providers/microsoft.storage/storageaccounts/" not in account.lower():
        raise UsageError(
            f"--staging-account-id {account!r} is not a storage account resource id",
            hint="Use /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Storage/storageAccounts/NAME",
        )
    # --json owns stdout: the dry-run commands then go to stderr.
    emit = (lambda line: print(line, file=sys.stderr)) if args.json else print
    return AzureOptions(
        staging=staging,
        staging_account_id=account,
        dry_run=args.dry_run_azure,
        emit=emit,
        upload_progress=sys.stderr.isatty() and not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    from localbuilder.build import Build, BuildOptions, OnError, exit_code
    from localbuilder.platform import LocalPlatform
    from localbuilder.template import Severity, parse_template
    from localbuilder.template.load import load_documents

    if not args.template.is_file():
        raise UsageError(f"{args.template}: no such file", hint="Give the path of an AIB template (JSON).")
    loaded = load_documents(
        args.template,
        parameters_file=args.parameters,
        params=_params(args.param),
        sets=args.sets,
        resource=args.resource,
    )
    if len(loaded) > 1:
        names = ", ".join(doc.name for doc in loaded)
        raise UsageError(
            f"{args.template} holds {len(loaded)} image templates: {names}",
            hint="Pick one with --resource NAME.",
        )
    doc = loaded[0]
    template, result = parse_template(
        doc, strict=args.strict, allow_any_destination=args.allow_any_destination
    )
    for finding in result.findings:
        if finding.severity in (Severity.warning, Severity.service) and template is not None:
            log.warning("%s", finding)
    if template is None:
        errors = result.errors(args.strict)
        text = "\n".join(str(f) for f in errors) or "\n".join(str(f) for f in result.findings)
        raise TemplateError(
            f"{args.template}: the template is not valid ({len(errors)} errors):\n{text}",
            hint=f"Fix the fields named above; 'localbuilder validate {args.template}' shows every finding.",
        )
    platform = LocalPlatform(
        backend=args.hypervisor,
        libvirt_uri=args.libvirt_uri,
        accel=args.accel,
        network=args.network,
        progress=sys.stderr.isatty() and not args.quiet,
    )
    azure = _azure_options(args)
    options = BuildOptions(
        output_dir=args.output_dir,
        on_error=OnError(args.on_error) if args.on_error else None,
        allow_any_destination=args.allow_any_destination,
        force=args.force,
        azure=azure,
    )
    record = Build(template, args.template.absolute(), platform, options).execute()
    if args.json:
        print(json.dumps(record.as_dict(), indent=2))
    return exit_code(record)
