"""How a build was invoked: kept as ``<run>/invocation.json`` so ``build --resume RUN`` can repeat it.

The record holds every ``localbuilder build`` option that shapes the build (template file, ARM
parameters, ``--set``, backend, outputs, Azure options) — and no secret. Two options may carry one:

- ``--staging URL?SAS``: the query (SAS token) is dropped and ``stagingSasRedacted`` says so. A resume
  must then be given ``--staging`` again: re-using the container without its SAS would fail only at
  the end of the build, after the upload started.
- ``--param NAME=VALUE`` for a parameter the ARM template declares ``secureString``/``secureObject``:
  the value is stored as ``REDACTED`` and its name listed in ``redactedParams``; a resume must be given
  ``--param NAME=…`` again. A parameters file (``--parameters``) is referenced by path, never copied.

- ``--set PATH=VALUE`` whose value carries a URL query (a SAS token on a ``scriptUri``, ``sourceUri`` or
  VHD ``uri``) or a storage key/connection string: stored as ``PATH=REDACTED`` and listed in
  ``redactedSets``; a resume must be given ``--set PATH=…`` again. Other ``--set`` values are template
  fields and stored as given.

An ``Invocation`` built from the command line keeps the real values (it starts the child processes of
``build T1 T2 …``); ``as_dict()`` is the redacted record; one read back with ``from_dict()`` holds the
redacted placeholders until ``merge()`` fills them from the new command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from localbuilder.errors import TemplateError, UsageError
from localbuilder.redact import strip_query
from localbuilder.template import jsonc

SCHEMA_VERSION = 1
FILE_NAME = "invocation.json"
REDACTED = "REDACTED"
SECURE_TYPES = ("securestring", "secureobject")


@dataclasses.dataclass(frozen=True)
class Invocation:
    template: Path  # absolute
    parameters: Path | None = None  # absolute
    params: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    redacted_params: tuple[str, ...] = ()  # secure parameters stored as REDACTED
    sets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    redacted_sets: tuple[str, ...] = ()  # --set paths whose values were stored as REDACTED
    resource: str | None = None
    hypervisor: str = "qemu"
    libvirt_uri: str | None = None
    accel: str = "auto"
    provisioning: str = "auto"
    network: bool = False
    on_error: str | None = None
    output_dir: Path | None = None  # absolute
    allow_any_destination: bool = False
    force: bool = False
    strict: bool = False
    staging: str | None = dataclasses.field(default=None, repr=False)  # may hold a SAS until as_dict()
    staging_sas_redacted: bool = False  # read back: the SAS was dropped, --staging must be given again
    staging_account_id: str | None = None
    dry_run_azure: bool = False
    use_cache: bool = True
    boot_timeout: float | None = None  # --boot-timeout seconds; None: the default (bootwatch)

    # -- the record -------------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """The redacted record written to invocation.json (no SAS, no secure parameter value)."""
        staging, dropped = self.staging, self.staging_sas_redacted
        if staging is not None and urllib.parse.urlsplit(staging).query:
            staging, dropped = strip_query(staging), True
        secure = set(self.redacted_params)
        sets = [(_set_path(text), text) for text in self.sets]
        redacted_sets = set(self.redacted_sets) | {path for path, text in sets if _secret_value(text)}
        return {
            "schemaVersion": SCHEMA_VERSION,
            "template": str(self.template),
            "parametersFile": str(self.parameters) if self.parameters else None,
            "params": {k: (REDACTED if k in secure else v) for k, v in self.params.items()},
            "redactedParams": sorted(secure),
            "sets": [f"{path}={REDACTED}" if path in redacted_sets else text for path, text in sets],
            "redactedSets": sorted(redacted_sets),
            "resource": self.resource,
            "hypervisor": self.hypervisor,
            "libvirtUri": self.libvirt_uri,
            "accel": self.accel,
            "provisioning": self.provisioning,
            "network": self.network,
            "onError": self.on_error,
            "outputDir": str(self.output_dir) if self.output_dir else None,
            "allowAnyDestination": self.allow_any_destination,
            "force": self.force,
            "strict": self.strict,
            "staging": staging,
            "stagingSasRedacted": dropped,
            "stagingAccountId": self.staging_account_id,
            "dryRunAzure": self.dry_run_azure,
            "useCache": self.use_cache,
            "bootTimeout": self.boot_timeout,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = FILE_NAME) -> Invocation:
        try:
            version = int(d.get("schemaVersion", 0))
            if version != SCHEMA_VERSION:
                raise ValueError(f"schemaVersion {version}, expected {SCHEMA_VERSION}")
            params = d.get("params") or {}
            if not isinstance(params, dict):
                raise ValueError("params is not an object")
            return cls(
                template=Path(str(d["template"])),
                parameters=Path(d["parametersFile"]) if d.get("parametersFile") else None,
                params={str(k): str(v) for k, v in params.items()},
                redacted_params=tuple(str(n) for n in d.get("redactedParams") or ()),
                sets=tuple(str(s) for s in d.get("sets") or ()),
                redacted_sets=tuple(str(p) for p in d.get("redactedSets") or ()),
                resource=d.get("resource"),
                hypervisor=str(d.get("hypervisor") or "qemu"),
                libvirt_uri=d.get("libvirtUri"),
                accel=str(d.get("accel") or "auto"),
                provisioning=str(d.get("provisioning") or "auto"),
                network=bool(d.get("network", False)),
                on_error=d.get("onError"),
                output_dir=Path(d["outputDir"]) if d.get("outputDir") else None,
                allow_any_destination=bool(d.get("allowAnyDestination", False)),
                force=bool(d.get("force", False)),
                strict=bool(d.get("strict", False)),
                staging=d.get("staging"),
                staging_sas_redacted=bool(d.get("stagingSasRedacted", False)),
                staging_account_id=d.get("stagingAccountId"),
                dry_run_azure=bool(d.get("dryRunAzure", False)),
                use_cache=bool(d.get("useCache", True)),
                boot_timeout=float(d["bootTimeout"]) if d.get("bootTimeout") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{source}: unreadable invocation record ({exc})",
                hint="It was edited or written by another version; start a new build with "
                "'localbuilder build TEMPLATE' instead of resuming.",
            ) from exc

    # -- command line ------------------------------------------------------------------------------------

    @classmethod
    def from_args(cls, args: argparse.Namespace, template: Path) -> Invocation:
        """The invocation of one build of ``template`` from the parsed ``build`` options."""
        params = parse_params(args.param or [])
        secure = secure_parameter_names(template)
        return cls(
            template=template.absolute(),
            parameters=args.parameters.absolute() if args.parameters else None,
            params=params,
            redacted_params=tuple(sorted(n for n in params if n.lower() in secure)),
            sets=tuple(args.sets or ()),
            resource=args.resource,
            hypervisor=args.hypervisor or "qemu",
            libvirt_uri=args.libvirt_uri,
            accel=args.accel or "auto",
            provisioning=getattr(args, "provisioning", None) or "auto",
            network=bool(args.network),
            on_error=args.on_error,
            output_dir=args.output_dir.absolute() if args.output_dir else None,
            allow_any_destination=bool(args.allow_any_destination),
            force=bool(args.force),
            strict=bool(args.strict),
            staging=args.staging,
            staging_account_id=args.staging_account_id,
            dry_run_azure=bool(args.dry_run_azure),
            use_cache=args.cache is not False,
            boot_timeout=getattr(args, "boot_timeout", None),
        )

    def merge(self, args: argparse.Namespace, *, run_ref: str) -> Invocation:
        """This recorded invocation with the options given now on top (``build --resume RUN …``).

        Scalars given now replace the recorded ones; ``--param`` adds to / replaces recorded parameters
        by name; ``--set`` is applied after the recorded ones (the later one wins on the same path).
        """
        given = parse_params(args.param or [])
        # ARM parameter names are case-insensitive. A REDACTED placeholder must never reach the loader:
        # drop them all, and require every one back from the command line.
        given_names = {name.lower() for name in given}
        recorded_secure = {name.lower() for name in self.redacted_params}
        params = {k: v for k, v in self.params.items() if k.lower() not in recorded_secure}
        params.update(given)
        # Still secret next time: what was, and what the fixed template now declares secure.
        secure = recorded_secure | secure_parameter_names(self.template)
        missing = [n for n in self.redacted_params if n.lower() not in given_names]
        if missing:
            names = ", ".join(missing)
            raise UsageError(
                f"run {run_ref} was started with the secure parameter(s) {names}, whose values were not "
                "stored",
                hint="Give them again: " + " ".join(f"--param {n}=…" for n in missing),
            )
        given_sets = tuple(args.sets or ())
        missing_sets = [p for p in self.redacted_sets if p not in {_set_path(t) for t in given_sets}]
        if missing_sets:
            raise UsageError(
                f"run {run_ref} was started with --set values that hold secrets (a SAS or key), which were "
                f"not stored: {', '.join(missing_sets)}",
                hint="Give them again: " + " ".join(f"--set '{p}=…'" for p in missing_sets),
            )
        recorded_sets = tuple(t for t in self.sets if _set_path(t) not in set(self.redacted_sets))
        staging = args.staging if args.staging is not None else self.staging
        if args.staging is None and self.staging_sas_redacted:
            raise UsageError(
                f"run {run_ref} was started with --staging {self.staging}?<SAS>; the SAS was not stored",
                hint=f"Give it again: --staging '{self.staging}?<SAS>' (or set AZURE_STORAGE_KEY and pass "
                f"--staging {self.staging}).",
            )
        if args.resource is not None and args.resource != self.resource:
            raise UsageError(
                f"--resource {args.resource!r}: run {run_ref} built resource {self.resource!r}",
                hint="A resumed run continues the same template resource; drop --resource.",
            )

        def pick(name: str, recorded: Any) -> Any:
            value = getattr(args, name)
            return recorded if value is None else value

        return dataclasses.replace(
            self,
            parameters=args.parameters.absolute() if args.parameters else self.parameters,
            params=params,
            redacted_params=tuple(sorted(n for n in params if n.lower() in secure)),
            sets=recorded_sets + given_sets,
            redacted_sets=(),
            hypervisor=pick("hypervisor", self.hypervisor),
            libvirt_uri=pick("libvirt_uri", self.libvirt_uri),
            accel=pick("accel", self.accel),
            provisioning=pick("provisioning", self.provisioning),
            network=pick("network", self.network),
            on_error=pick("on_error", self.on_error),
            output_dir=args.output_dir.absolute() if args.output_dir else self.output_dir,
            allow_any_destination=pick("allow_any_destination", self.allow_any_destination),
            force=pick("force", self.force),
            strict=pick("strict", self.strict),
            staging=staging,
            staging_sas_redacted=False if args.staging is not None else self.staging_sas_redacted,
            staging_account_id=pick("staging_account_id", self.staging_account_id),
            dry_run_azure=pick("dry_run_azure", self.dry_run_azure),
            use_cache=self.use_cache if args.cache is None else bool(args.cache),
            boot_timeout=getattr(args, "boot_timeout", None) or self.boot_timeout,
        )

    def to_argv(self) -> list[str]:
        """``build`` arguments that repeat this invocation (real values: for child processes only)."""
        argv = ["build", str(self.template)]
        if self.parameters:
            argv += ["--parameters", str(self.parameters)]
        for key, value in self.params.items():
            argv += ["--param", f"{key}={value}"]
        for text in self.sets:
            argv += ["--set", text]
        argv += [
            *(["--resource", self.resource] if self.resource else []),
            "--hypervisor", self.hypervisor,
            *(["--libvirt-uri", self.libvirt_uri] if self.libvirt_uri else []),
            "--accel", self.accel,
            "--provisioning", self.provisioning,
            *(["--network"] if self.network else []),
            *(["--on-error", self.on_error] if self.on_error else []),
            *(["--output-dir", str(self.output_dir)] if self.output_dir else []),
            *(["--allow-any-destination"] if self.allow_any_destination else []),
            *(["--force"] if self.force else []),
            *(["--strict"] if self.strict else []),
            *(["--staging", self.staging] if self.staging else []),
            *(["--staging-account-id", self.staging_account_id] if self.staging_account_id else []),
            *(["--dry-run-azure"] if self.dry_run_azure else []),
            *(["--no-cache"] if not self.use_cache else []),
            *(["--boot-timeout", f"{self.boot_timeout:g}"] if self.boot_timeout else []),
        ]  # fmt: skip
        return argv


def _set_path(text: str) -> str:
    return text.partition("=")[0].strip()


def _secret_value(text: str) -> bool:
    """A ``--set`` value that may carry a credential: a URL with a query (SAS), or key material."""
    value = text.partition("=")[2]
    lowered = value.lower()
    if "accountkey=" in lowered or "sharedaccesssignature=" in lowered or "sig=" in lowered:
        return True
    for word in value.split():
        parts = urllib.parse.urlsplit(word.strip("\"'"))
        if parts.scheme and parts.netloc and parts.query:
            return True
    return False


def parse_params(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE", hint="e.g. --param imageName=web01")
        out[key] = value
    return out


def secure_parameter_names(template: Path) -> set[str]:
    """Lower-cased names of the parameters ``template`` declares secureString/secureObject (ARM)."""
    try:
        doc = jsonc.load_file(template).value
    except (OSError, TemplateError):
        return set()  # the loader reports an unreadable template with its own, better message
    declared = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(declared, dict):
        return set()
    return {
        str(name).lower()
        for name, decl in declared.items()
        if isinstance(decl, dict) and str(decl.get("type", "")).lower() in SECURE_TYPES
    }
