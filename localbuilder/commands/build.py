"""`localbuilder build TEMPLATE`: build an AIB template locally, in AIB's phases, to a fixed VHD.

Also ``build T1 T2 … [--parallel N]`` (one child process per template: ``localbuilder.parallel``) and
``build --resume RUN`` (the run's recorded options from ``invocation.json``: ``localbuilder.invocation``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.parse
from pathlib import Path

from localbuilder import invocation, parallel, paths, room
from localbuilder.distributors import AzureOptions
from localbuilder.errors import LocalBuilderError, TemplateError, UsageError
from localbuilder.guest import Platform, SourceImage
from localbuilder.guest.bootwatch import DEFAULT_BOOT_TIMEOUT
from localbuilder.guest.local import LocalPlatform
from localbuilder.invocation import Invocation
from localbuilder.orchestrator import Build, BuildOptions, exit_code
from localbuilder.recovery import recover_and_warn
from localbuilder.redact import redact, strip_query
from localbuilder.room import Need
from localbuilder.state import RunState, find_run, reconcile
from localbuilder.template import Severity, parse_template
from localbuilder.template.load import load_documents
from localbuilder.template.model import OnBuildError, Template

NAME = "build"
HELP = "build an AIB image template locally (boot, customize, deprovision, fixed VHD, distribute)"
DESCRIPTION = (
    "Build an Azure VM Image Builder template on a local QEMU/libvirt guest, in AIB's order: "
    "validate the template, fetch and checksum every script, boot the source image, run customize[] "
    "(the first failure stops), deprovision, convert to a fixed MiB-aligned VHD, run inVMValidations "
    "in a guest booted from the output, distribute. Run state, customization.log and build.log are "
    "kept under the run directory (see 'localbuilder show-runs'). Several templates are built by "
    "separate processes, --parallel N at a time, with a summary table at the end. --resume RUN "
    "continues a failed run with the options it was started with. Exit codes: 0 Succeeded (all), "
    "1 Failed or PartiallySucceeded (any), 2 invalid template or usage, 130 canceled."
)

log = logging.getLogger("localbuilder.commands.build")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Options default to None (not to their effective default) so that `--resume RUN` can tell what
    # was given now, which overrides the run's recorded invocation, from what was not.
    parser.add_argument(
        "templates", nargs="*", type=Path, metavar="TEMPLATE",
        help="template file (bare, ARM, REST body); several are built in separate processes (--parallel)",
    )  # fmt: skip
    parser.add_argument("--parameters", type=Path, metavar="FILE", help="ARM parameters file")
    parser.add_argument("--param", action="append", default=None, metavar="K=V", help="set an ARM parameter")
    parser.add_argument(
        "--set", action="append", default=None, dest="sets", metavar="PATH=VALUE",
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
    parser.add_argument(
        "--hypervisor", choices=["qemu", "libvirt"], default=None, help="guest backend (default: qemu)"
    )
    parser.add_argument("--libvirt-uri", metavar="URI", default=None, help="libvirt connection URI")
    parser.add_argument(
        "--accel", choices=["auto", "kvm", "tcg"], default=None, help="accelerator (default: auto)"
    )
    parser.add_argument(
        "--provisioning", choices=["auto", "nocloud"], default=None,
        help="how the build guest is provisioned: auto reads the Linux source's cloud-init and waagent "
        "configuration before booting it and refuses a source that would ignore a NoCloud seed; nocloud "
        "boots with the seed without asking (default: auto)",
    )
    parser.add_argument(
        "--network", action=argparse.BooleanOptionalAction, default=None,
        help="give the guest outbound network access (default: isolated, only the SSH forward)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-any-destination", action=argparse.BooleanOptionalAction, default=None,
        help="let File customizers write outside /tmp on Linux (AIB refuses that)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action=argparse.BooleanOptionalAction, default=None, help="overwrite existing output VHDs"
    )
    parser.add_argument(
        "--strict", action=argparse.BooleanOptionalAction, default=None,
        help="also stop on what Azure would reject",
    )  # fmt: skip
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
        "--dry-run-azure", action=argparse.BooleanOptionalAction, default=None,
        help="print the az commands that would create the images instead of calling the Compute API",
    )  # fmt: skip
    parser.add_argument(
        "--cache", action=argparse.BooleanOptionalAction, default=None,
        help="--no-cache: neither start from nor store customizer checkpoints (default: use the cache)",
    )  # fmt: skip
    parser.add_argument(
        "--boot-timeout", type=_seconds, default=None, metavar="SECONDS",
        help=f"how long to wait for a booting guest to answer SSH (default: {DEFAULT_BOOT_TIMEOUT} s, AIB's "
             "20 minutes; the build timeout still bounds it). A guest whose console or hypervisor shows it "
             "will never answer fails at once",
    )  # fmt: skip
    parser.add_argument(
        "--parallel", type=_positive_int, default=1, metavar="N",
        help="with several templates: run at most N builds at once (default 1: one after the other)",
    )  # fmt: skip
    parser.add_argument(
        "--resume", metavar="RUN",
        help="continue a failed or canceled run (id, id prefix or directory) from its last checkpoint, "
             "with the options it was started with (options given now override them); re-reads the "
             "template file, so fix the failing step there first",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true",
        help="print the final state.json to stdout (several templates: a JSON list of them)",
    )  # fmt: skip


def _azure_options(args: argparse.Namespace) -> AzureOptions:
    """The Azure options as given on this command line."""
    return _azure(
        args.staging,
        args.staging_account_id,
        bool(args.dry_run_azure),
        json_output=args.json,
        quiet=args.quiet,
    )


def _azure(
    staging: str | None, account: str | None, dry_run: bool, *, json_output: bool, quiet: bool
) -> AzureOptions:
    if staging:
        parts = urllib.parse.urlsplit(staging)
        if parts.scheme not in ("http", "https") or not parts.path.strip("/"):
            raise UsageError(
                f"--staging {redact(strip_query(staging))}: not a blob container URL",
                hint="Use https://ACCOUNT.blob.core.windows.net/CONTAINER[?SAS]",
            )
    if account and "/providers/microsoft.storage/storageaccounts/" not in account.lower():
        raise UsageError(
            f"--staging-account-id {account!r} is not a storage account resource id",
            hint="Use /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Storage/storageAccounts/NAME",
        )
    # --json owns stdout: the dry-run commands then go to stderr.
    emit = (lambda line: print(line, file=sys.stderr)) if json_output else print
    return AzureOptions(
        staging=staging,
        staging_account_id=account,
        dry_run=dry_run,
        emit=emit,
        upload_progress=sys.stderr.isatty() and not quiet,
    )


def _load(path: Path, inv: Invocation, *, warn: bool = True) -> Template:
    """Load and validate one template; ``path`` as the user wrote it (error messages name it so).

    ``warn=False`` keeps the findings that do not stop the build quiet (the child build logs them)."""

    if not path.is_file():
        raise UsageError(f"{path}: no such file", hint="Give the path of an AIB template (JSON).")
    loaded = load_documents(
        path,
        parameters_file=inv.parameters,
        params=inv.params,
        sets=list(inv.sets),
        resource=inv.resource,
    )
    if len(loaded) > 1:
        names = ", ".join(doc.name for doc in loaded)
        raise UsageError(
            f"{path} holds {len(loaded)} image templates: {names}",
            hint="Pick one with --resource NAME.",
        )
    doc = loaded[0]
    template, result = parse_template(doc, strict=inv.strict, allow_any_destination=inv.allow_any_destination)
    for finding in result.findings:
        if warn and finding.severity in (Severity.warning, Severity.service) and template is not None:
            log.warning("%s", finding)
    if template is None:
        errors = result.errors(inv.strict)
        text = "\n".join(str(f) for f in errors) or "\n".join(str(f) for f in result.findings)
        raise TemplateError(
            f"{path}: the template is not valid ({len(errors)} errors):\n{text}",
            hint=f"Fix the fields named above; 'localbuilder validate {path}' shows every finding.",
        )
    return template


def _build(
    template: Template, inv: Invocation, args: argparse.Namespace, *, resume_run: Path | None = None
) -> int:

    platform = LocalPlatform(
        backend=inv.hypervisor,
        libvirt_uri=inv.libvirt_uri,
        accel=inv.accel,
        network=inv.network,
        progress=sys.stderr.isatty() and not args.quiet,
        provisioning=inv.provisioning,
    )
    azure = _azure(
        inv.staging, inv.staging_account_id, inv.dry_run_azure, json_output=args.json, quiet=args.quiet
    )
    # Before the run directory exists: a bad or full output directory fails now, not after the build.
    run_dir = resume_run if resume_run is not None else paths.runs_dir() / template.name
    room.check(_room_needs(template, platform, inv.output_dir, run_dir))
    options = BuildOptions(
        output_dir=inv.output_dir,
        on_error=OnBuildError(inv.on_error) if inv.on_error in ("cleanup", "abort") else None,
        ask_on_error=inv.on_error == "ask",
        allow_any_destination=inv.allow_any_destination,
        force=inv.force,
        azure=azure,
        use_cache=inv.use_cache,
        resume_run=resume_run,
        invocation=inv.as_dict(),
        boot_timeout=inv.boot_timeout or DEFAULT_BOOT_TIMEOUT,
    )
    record = Build(template, inv.template, platform, options).execute()
    if args.json:
        print(json.dumps(record.as_dict(), indent=2))
    return exit_code(record)


def _room_needs(template: Template, platform: Platform, output_dir: Path | None, run_dir: Path) -> list[Need]:
    """Probe where the build writes its VHDs (UsageError if unusable) and size what lands there."""
    validate = template.validate
    if validate is not None and validate.source_validation_only:
        return []  # the source is validated directly: no VHD is made
    image: SourceImage | None
    try:
        image = platform.resolve(template.source)
    except LocalBuilderError as exc:
        # The build itself reports an unresolvable source, in its run; here only the size is unknown.
        log.debug("cannot size the VHD before the build: %s", exc.message)
        image = None
    size = room.vhd_size(
        image.path if image else None, image.format if image else None, template.vm_profile.os_disk_size_gb
    )
    return room.plan(size, len(template.distribute), output_dir=output_dir, run_dir=run_dir)


def run(args: argparse.Namespace) -> int:

    recover_and_warn()  # builds that were killed: stop their guests, mark their runs Failed
    if args.resume is not None:
        return _resume(args)
    if not args.templates:
        raise UsageError(
            "build: no TEMPLATE given",
            hint="localbuilder build TEMPLATE.json [MORE.json … --parallel N], or --resume RUN",
        )
    if len(args.templates) > 1:
        return _build_many(args)
    path = args.templates[0]
    inv = Invocation.from_args(args, path)
    return _build(_load(path, inv), inv, args)


# ---------------------------------------------------------------------------------------------------------
# Several templates: one child process each (localbuilder.parallel)

# The child's command, before its arguments; tests replace it with a stand-in build.
CHILD_COMMAND: list[str] = [sys.executable, "-m", "localbuilder"]


def _build_many(args: argparse.Namespace) -> int:

    if args.resource is not None:
        raise UsageError(
            f"--resource {args.resource!r} with {len(args.templates)} templates: a resource name belongs "
            "to one ARM template",
            hint="Build that ARM template alone with --resource, or drop --resource.",
        )
    if args.on_error == "ask":
        raise UsageError(
            "--on-error ask needs a terminal, and several builds run in the background",
            hint="Use --on-error abort (keeps a failed guest running for SSH) or cleanup.",
        )
    invocations = [Invocation.from_args(args, path) for path in args.templates]
    # Every template is checked before anything boots: all problems at once, nothing half-started.
    problems: list[str] = []
    templates: list[Template] = []
    for path, inv in zip(args.templates, invocations, strict=True):
        try:
            templates.append(_load(path, inv, warn=False))
        except (TemplateError, UsageError) as exc:
            problems.append(exc.message + (f"\n  hint: {exc.hint}" if exc.hint else ""))
    if problems:
        raise TemplateError(
            f"{len(problems)} of {len(args.templates)} templates cannot be built:\n\n"
            + "\n\n".join(problems),
            hint="Fix them and run the command again; no build was started.",
        )
    if invocations[0].output_dir is not None:
        _check_distinct_outputs(templates, args.templates, invocations[0].output_dir)
    _azure_options(args)  # a bad --staging fails before any build starts
    # Room for every build's VHDs at once (--parallel N may run them all together), summed per filesystem.

    platform = LocalPlatform(provisioning="nocloud")  # only resolves sources here, for their sizes
    room.check(
        need
        for template, inv in zip(templates, invocations, strict=True)
        for need in _room_needs(template, platform, inv.output_dir, paths.runs_dir() / template.name)
    )

    labels = parallel.unique_labels([t.name for t in templates])
    global_options = [*(["--debug"] if args.debug else []), *(["--quiet"] if args.quiet else [])]
    jobs = [
        parallel.Job(label, inv.template, (*CHILD_COMMAND, *global_options, *inv.to_argv(), "--json"))
        for label, inv in zip(labels, invocations, strict=True)
    ]
    log.info(
        "building %d templates, %s: %s",
        len(jobs),
        "one after the other" if args.parallel == 1 else f"at most {args.parallel} at a time",
        ", ".join(labels),
    )
    outcome = parallel.run_jobs(jobs, args.parallel, out=sys.stderr)
    log.info("summary:")
    print(parallel.summary_table(outcome.results), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps([r.as_dict() for r in outcome.results], indent=2))
    return outcome.exit_code()


def _check_distinct_outputs(templates: list[Template], paths: list[Path], output_dir: Path) -> None:
    """Every distribute target writes ``<output-dir>/<runOutputName>.vhd``: two builds must not share one."""
    owners: dict[str, list[str]] = {}
    for template, path in zip(templates, paths, strict=True):
        for target in template.distribute:
            owners.setdefault(target.run_output_name, []).append(str(path))
    clashes = {name: files for name, files in owners.items() if len(files) > 1}
    if clashes:
        text = "; ".join(
            f"{output_dir / (name + '.vhd')} from {' and '.join(files)}" for name, files in clashes.items()
        )
        raise UsageError(
            f"--output-dir {output_dir}: several builds would write the same file: {text}",
            hint="Drop --output-dir (each run then keeps its VHDs in its own run directory), or give the "
            "targets distinct runOutputName values.",
        )


# ---------------------------------------------------------------------------------------------------------
# --resume RUN


def _resume(args: argparse.Namespace) -> int:

    if args.templates:
        raise UsageError(
            f"--resume {args.resume} takes the template from the run; drop "
            + " ".join(str(p) for p in args.templates),
            hint="The run re-reads the template file it was started with: fix the failing step in that "
            "file, then run 'localbuilder build --resume RUN'.",
        )
    run_dir = find_run(args.resume)
    record = reconcile(run_dir)
    ref = f"{record.template_name}/{record.run_id}"
    if not record.run_state.finished:
        pid = record.process.pid if record.process else "?"
        raise UsageError(
            f"run {ref} is still {record.run_state} (pid {pid}): it cannot be resumed",
            hint=f"Wait for it to end, or stop it with 'localbuilder cancel {record.run_id}'; then resume.",
        )
    if record.run_state is RunState.Succeeded:
        raise UsageError(
            f"run {ref} succeeded: there is nothing to resume",
            hint=f"Start a new build: localbuilder build {record.template_file} (unchanged steps come from "
            "the checkpoint cache).",
        )
    inv_file = run_dir.path / invocation.FILE_NAME
    try:
        data = json.loads(inv_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"run {ref} has no {invocation.FILE_NAME} (started by an older localbuilder): cannot resume it",
            hint=f"Start a new build: localbuilder build {record.template_file}",
        ) from None
    except ValueError as exc:
        raise UsageError(
            f"{inv_file}: not JSON ({exc})",
            hint=f"Start a new build: localbuilder build {record.template_file}",
        ) from exc
    recorded = Invocation.from_dict(data if isinstance(data, dict) else {}, source=str(inv_file))
    inv = recorded.merge(args, run_ref=ref)
    if not inv.template.is_file():
        raise UsageError(
            f"{inv.template}: the template file of run {ref} is gone",
            hint="Put it back (a resumed run re-reads it), or start a new build from another file.",
        )
    template = _load(inv.template, inv)
    if template.name != record.template_name:
        raise UsageError(
            f"{inv.template} now holds template {template.name!r}; run {ref} built {record.template_name!r}",
            hint="A resumed run continues the same template; start a new build for a different one.",
        )
    log.info("resuming run %s (%s, was %s)", ref, inv.template, record.run_state)
    return _build(template, inv, args, resume_run=run_dir.path)
