"""Validate an imageTemplates resource body and turn it into the typed ``Template``.

Two passes over the body:

1. ``_Walker`` checks the shape against the per-version field table in ``versions.py``: JSON types,
   required fields, unknown/renamed/read-only fields, enum values, numeric ranges. It mirrors how the
   service reads a body (VERDICTS.md "Method"): before API 2024-02-01 names and enum values match
   case-insensitively and unknown fields are ignored (a warning here); from 2024-02-01 both are enforced
   (a ``service`` finding). Wrong JSON types fail at every version (an ``error``: ``"false"`` is not a
   boolean, and localbuilder will not guess). It returns a normalised copy: canonical names, valid values.
2. ``_Builder`` applies the rules that span fields (exactly one of scriptUri/inline, runAsSystem needs
   runElevated, runOutputName pattern and uniqueness, File destinations on Linux, …) and builds the model.

Every finding carries the path of the value as written (``properties.customize[2].scriptUri``) and, where
the user has something to change, a hint. Severities: ``error`` = localbuilder cannot build it;
``service`` = Azure Image Builder would reject it (``--strict`` makes these errors); ``warning``;
``note``. Codes are the service's own ``provisioningErrorCode`` values where one applies.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from localbuilder.template import model as m
from localbuilder.template import versions as v
from localbuilder.template.durations import parse_duration
from localbuilder.template.findings import PathPart, Severity, ValidationResult

Path = tuple[PathPart, ...]

# ``^[A-Za-z0-9-_.]{1,64}$`` is the swagger pattern of runOutputName (and of template names).
RUN_OUTPUT_NAME = re.compile(r"[A-Za-z0-9\-_.]{1,64}")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# A template placeholder such as ``<region>`` or ``<scriptUrl`` (the corpus has one without its ``>``):
# the loader reports them; rules that check a format skip them so one mistake is reported once.
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\s]*>?")
RESOURCE_GROUP_ID = re.compile(r"/subscriptions/[^/]+/resourceGroups/[^/]+/?", re.IGNORECASE)
WINDOWS_DRIVE_PATH = re.compile(r"[A-Za-z]:[\\/]")
INT32 = (-(2**31), 2**31 - 1)

# Marketplace publishers whose images are Windows. Others (Canonical, RedHat, SUSE, Debian, …) are Linux.
WINDOWS_PUBLISHERS = frozenset(
    p.lower()
    for p in (
        "MicrosoftWindowsServer",
        "MicrosoftWindowsDesktop",
        "MicrosoftVisualStudio",
        "MicrosoftWindowsServerHPCPack",
        "MicrosoftSQLServer",
        "MicrosoftDynamicsAX",
        "MicrosoftBizTalkServer",
        "MicrosoftSharePoint",
        "MicrosoftWindowsServerEssentials",
    )
)
_LINUX_OFFER_HINTS = ("ubuntu", "rhel", "sles", "linux", "centos", "debian")
WINDOWS_ONLY = frozenset({"PowerShell", "WindowsRestart", "WindowsUpdate"})

_WHAT = {
    "source": "source",
    "customizer": "customizer",
    "validator": "validator",
    "distributor": "distributor",
    "versioning": "versioning scheme",
}


def is_placeholder(value: str) -> bool:
    return PLACEHOLDER.search(value) is not None


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Invalid:
    """A value that failed its check (reported already); present for the required check, not used."""


INVALID = _Invalid()


def _under(path: Path, flagged: frozenset[Path]) -> bool:
    return any(path[:n] in flagged for n in range(len(path) + 1))


class _Walker:
    """Pass 1: shape checks against the version's field table; returns normalised dicts."""

    def __init__(
        self, version: str, result: ValidationResult, flagged: frozenset[Path] = frozenset()
    ) -> None:
        self.version = version
        self.strict = v.is_strict(version)
        self.result = result
        # Paths the loader already reported as errors (an unevaluable ARM expression …): a value there is
        # not what the author meant, so checking its format would report one mistake twice.
        self.flagged = flagged

    # -- helpers --------------------------------------------------------------------------------------

    def add(
        self,
        path: Path,
        message: str,
        severity: Severity,
        *,
        hint: str | None = None,
        code: str | None = None,
    ) -> None:
        if not _under(path, self.flagged):
            self.result.add(path, message, severity, hint=hint, code=code)

    def lenient_or_service(self) -> Severity:
        return Severity.service if self.strict else Severity.warning

    def type_error(self, path: Path, field: v.Field, value: object) -> _Invalid:
        hint = None
        if field.kind is v.Kind.boolean and isinstance(value, str) and value.lower() in ("true", "false"):
            hint = f"write {value.lower()} without quotes"
        elif field.kind is v.Kind.integer and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            hint = f"write {value.strip()} without quotes"
        elif field.kind is v.Kind.integer_array and isinstance(value, str):
            hint = "write a JSON array of numbers, e.g. [0, 3010]"
        self.add(
            path,
            f"must be {_article(field.kind)}, not {_type_name(value)} ({_short(value)})",
            Severity.error,
            hint=hint,
        )
        return INVALID

    # -- objects --------------------------------------------------------------------------------------

    def obj(self, value: object, schema: str, path: Path, what: str | None = None) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(path, f"must be an object, not {_type_name(value)} ({_short(value)})", Severity.error)
            return None
        out: dict[str, Any] = {}
        present: set[str] = set()
        by_name = {f.name: f for f in v.SCHEMAS[schema]}
        by_lower = {f.name.lower(): f for f in v.SCHEMAS[schema]}
        for key, item in value.items():
            here = (*path, key)
            field = by_name.get(key)
            if field is None:
                field = by_lower.get(str(key).lower())
                if field is not None and self.strict:
                    self.add(
                        here,
                        f"property names are case-sensitive from API {v.STRICT_FROM}: "
                        f"'{key}' must be spelled '{field.name}'",
                        Severity.service,
                        hint=f"rename '{key}' to '{field.name}'",
                    )
            if field is None:
                self.add(
                    here,
                    f"unknown property '{key}'"
                    + ("" if what is None else f" of {what}")
                    + (
                        f" (the service rejects unknown properties from API {v.STRICT_FROM})"
                        if self.strict
                        else f" (ignored by the service at API {self.version})"
                    ),
                    self.lenient_or_service(),
                    hint=_did_you_mean(
                        str(key), [f.name for f in v.SCHEMAS[schema] if f.exists_at(self.version)]
                    ),
                )
                continue
            if field.name in present:
                self.add(
                    here,
                    f"'{field.name}' is given twice (names differ only in case)",
                    Severity.error,
                    hint="keep one of them",
                )
                continue
            if not field.exists_at(self.version):
                self.version_mismatch(here, key, field, schema)
                continue
            present.add(field.name)
            if field.read_only:
                self.add(here, f"'{field.name}' is read-only and ignored in a request", Severity.note)
                continue
            checked = self.value(item, field, here)
            if not isinstance(checked, _Invalid):
                out[field.name] = checked
        for field in v.SCHEMAS[schema]:
            if (
                field.exists_at(self.version)
                and field.required_at(self.version)
                and field.name not in present
            ):
                self.missing(path, field, what)
        return out

    def version_mismatch(self, path: Path, key: str, field: v.Field, schema: str) -> None:
        if field.read_only:
            self.add(path, f"'{field.name}' is read-only and ignored in a request", Severity.note)
            return
        hint = None
        if field.name == "script":
            hint = "'script' was renamed to 'scriptUri' in API 2019-05-01-preview: rename it"
        elif field.until is None:
            hint = f"use apiVersion {field.since} or later to use it"
        self.add(
            path,
            f"'{field.name}' exists {v.span(field.since, field.until)}; "
            + (
                f"the service rejects it at API {self.version}"
                if self.strict
                else f"the service ignores it at API {self.version}"
            ),
            self.lenient_or_service(),
            hint=hint,
        )

    def missing(self, path: Path, field: v.Field, what: str | None) -> None:
        since, until = field.required or (v.FIRST, None)
        when = "" if since == v.FIRST and until is None else f" ({v.span(since, until)})"
        owner = "" if what is None else f" in {what}"
        severity = Severity.error if field.need is v.Need.local else Severity.service
        hint = _MISSING_HINTS.get(field.name)
        self.add(
            (*path, field.name),
            f"'{field.name}' is required{owner}{when}",
            severity,
            hint=hint,
            code=field.code,
        )

    def family(self, value: object, family_name: str, path: Path) -> dict[str, Any] | None:
        family = v.FAMILIES[family_name]
        what = _WHAT[family_name]
        if not isinstance(value, dict):
            self.add(
                path, f"a {what} must be an object, not {_type_name(value)} ({_short(value)})", Severity.error
            )
            return None
        disc = family.discriminator
        raw = None
        raw_key = disc
        # Found case-insensitively at every version: at strict versions obj() below reports the casing as a
        # service finding, and localbuilder still knows what type the author meant.
        for key in sorted(value, key=lambda k: k != disc):
            if str(key).lower() == disc:
                raw, raw_key = value[key], key
                break
        if raw is None:
            self.add(
                (*path, disc),
                f"'{disc}' is required: every {what} names its type",
                Severity.error,
                code=family.unknown_code,
                hint="one of " + ", ".join(family.types),
            )
            return None
        if not isinstance(raw, str):
            self.add(
                (*path, raw_key),
                f"must be a string, not {_type_name(raw)} ({_short(raw)})",
                Severity.error,
                code=family.unknown_code,
            )
            return None
        type_name = raw if raw in family.types else None
        if type_name is None:
            lowered = {t.lower(): t for t in family.types}
            type_name = lowered.get(raw.lower())
            if type_name is not None and self.strict:
                self.add(
                    (*path, raw_key),
                    f"type names are case-sensitive from API {v.STRICT_FROM}: '{raw}' must be spelled "
                    f"'{type_name}'",
                    Severity.service,
                    hint=f"write '{type_name}'",
                    code=family.unknown_code,
                )
        if type_name is None:
            self.add(
                (*path, raw_key),
                f"unknown {what} type '{raw}'",
                Severity.error,
                code=family.unknown_code,
                hint="one of "
                + ", ".join(
                    t
                    for t, (since, until) in family.types.items()
                    if v.in_range(self.version, since, until) or t == "ISO"
                ),
            )
            return None
        if family_name == "source" and type_name == "ISO":
            self.add(
                (*path, raw_key),
                "ISO sources were a preview feature (2018-02-01-preview … 2019-05-01-preview) that the "
                "service has removed; localbuilder has no ISO install path either",
                Severity.error,
                code="BadSourceType",
                hint="start from a PlatformImage (e.g. RedHat RHEL), ManagedImage or SharedImageVersion",
            )
            return None
        since, until = family.types[type_name]
        if not v.in_range(self.version, since, until):
            self.add(
                (*path, raw_key),
                f"{what} type '{type_name}' exists {v.span(since, until)}, not at API {self.version}",
                Severity.service,
                code=family.unsupported_code,
                hint=f"use apiVersion {since} or later" if until is None else None,
            )
        out = self.obj(value, f"{family_name}.{type_name}", path, what=f"a {type_name} {what}")
        if out is None:
            return None
        out[disc] = type_name
        return out

    # -- values ---------------------------------------------------------------------------------------

    def value(self, value: object, field: v.Field, path: Path) -> Any:
        kind = field.kind
        if kind is v.Kind.any:
            return value
        if kind is v.Kind.string:
            if not isinstance(value, str):
                return self.type_error(path, field, value)
            return self.enum(value, field, path) if field.enum else value
        if kind is v.Kind.integer:
            return self.integer(value, field, path)
        if kind is v.Kind.boolean:
            if not isinstance(value, bool):
                return self.type_error(path, field, value)
            return value
        if kind is v.Kind.object:
            if field.family is not None:
                out = self.family(value, field.family, path)
            else:
                assert field.schema is not None
                out = self.obj(value, field.schema, path)
            return INVALID if out is None else out
        if kind in (v.Kind.string_array, v.Kind.integer_array, v.Kind.object_array):
            if not isinstance(value, list):
                return self.type_error(path, field, value)
            items: list[Any] = []
            bad = False
            for index, item in enumerate(value):
                checked = self.item(item, field, (*path, index))
                if isinstance(checked, _Invalid):
                    bad = True
                else:
                    items.append(checked)
            return INVALID if bad and kind is not v.Kind.object_array else items
        if kind is v.Kind.string_map:
            if not isinstance(value, dict):
                return self.type_error(path, field, value)
            out_map: dict[str, str] = {}
            for key, item in value.items():
                if not isinstance(item, str):
                    self.add(
                        (*path, key),
                        f"tag values must be strings, not {_type_name(item)} ({_short(item)})",
                        Severity.error,
                        hint="quote the value",
                    )
                else:
                    out_map[key] = item
            return out_map
        if kind is v.Kind.any_map:
            if not isinstance(value, dict):
                return self.type_error(path, field, value)
            return list(value)
        raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover - the table uses known kinds

    def item(self, item: object, field: v.Field, path: Path) -> Any:
        if field.kind is v.Kind.string_array:
            if not isinstance(item, str):
                self.add(path, f"must be a string, not {_type_name(item)} ({_short(item)})", Severity.error)
                return INVALID
            return item
        if field.kind is v.Kind.integer_array:
            return self.integer(item, v.Field(field.name, v.Kind.integer), path)
        if field.family is not None:
            out = self.family(item, field.family, path)
        else:
            assert field.schema is not None
            out = self.obj(item, field.schema, path)
        return INVALID if out is None else out

    def integer(self, value: object, field: v.Field, path: Path) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON.NET reads 240.0 as 240; ARM arithmetic can produce it
        if isinstance(value, bool) or not isinstance(value, int):
            return self.type_error(path, field, value)
        if not INT32[0] <= value <= INT32[1]:
            self.add(path, f"{value} does not fit a 32-bit integer", Severity.error)
            return INVALID
        severity = Severity.error if field.need is v.Need.local else Severity.service
        if field.minimum is not None and value < field.minimum:
            self.add(path, f"must be at least {field.minimum}, not {value}", severity)
            return INVALID
        if field.maximum is not None and value > field.maximum:
            self.add(path, f"must be at most {field.maximum}, not {value}", severity)
            return INVALID
        return value

    def enum(self, value: str, field: v.Field, path: Path) -> Any:
        allowed = field.enum_at(self.version)
        if value in allowed:
            return value
        by_lower = {a.lower(): a for a in allowed}
        canonical = by_lower.get(value.lower())
        if canonical is not None:
            if self.strict:
                self.add(
                    path,
                    f"values are case-sensitive from API {v.STRICT_FROM}: '{value}' must be "
                    f"spelled '{canonical}'",
                    Severity.service,
                    hint=f"write '{canonical}'",
                )
            return canonical
        later = {a.lower(): (a, since) for a, since in field.enum}
        severity = Severity.error if field.need is v.Need.local else Severity.service
        if value.lower() in later:
            name, since = later[value.lower()]
            self.add(
                path,
                f"'{name}' is accepted from API {since}, not at API {self.version}",
                severity,
                hint=f"use one of {', '.join(allowed)} or apiVersion {since}",
            )
            return name
        self.add(
            path,
            f"'{value}' is not one of {', '.join(allowed) or '(none at this version)'}",
            severity,
            hint=_did_you_mean(value, list(allowed)),
        )
        return INVALID


def _article(kind: v.Kind) -> str:
    name = str(kind)
    return ("an " if name[0] in "aeiou" else "a ") + name


def _did_you_mean(word: str, candidates: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.75)
    if close:
        return f"did you mean '{close[0]}'?"
    lowered = {c.lower(): c for c in candidates}
    if word.lower() in lowered:
        return f"did you mean '{lowered[word.lower()]}'?"
    return None


_MISSING_HINTS = {
    "identity": 'add "identity": {"type": "UserAssigned", "userAssignedIdentities": {"<identity id>": {}}}',
    "location": 'add "location": "<region>" (localbuilder does not use it)',
    "replicationRegions": 'add "replicationRegions": ["<region>"] (localbuilder does not use it)',
    "runOutputName": 'add "runOutputName": "<name>" (letters, digits, - _ .; at most 64)',
    "distribute": 'add "distribute": [{"type": "VHD", "runOutputName": "vhd"}]',
}


# ---------------------------------------------------------------------------------------------------------
# Pass 2: cross-field rules and the model


class _Builder:
    def __init__(
        self, version: str, result: ValidationResult, flagged: frozenset[Path], *, allow_any_destination: bool
    ) -> None:
        self.version = version
        self.result = result
        self.flagged = flagged
        self.allow_any_destination = allow_any_destination

    def add(
        self,
        path: Path,
        message: str,
        severity: Severity = Severity.error,
        *,
        hint: str | None = None,
        code: str | None = None,
    ) -> None:
        if not _under(path, self.flagged):
            self.result.add(path, message, severity, hint=hint, code=code)

    # -- OS detection ---------------------------------------------------------------------------------

    def detect_os(
        self, source: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]
    ) -> tuple[m.OsType, bool]:
        """(OS, decided by the source?) — from the marketplace publisher, else from the step types."""
        publisher = source.get("publisher")
        if (
            source.get("type") == "PlatformImage"
            and isinstance(publisher, str)
            and not is_placeholder(publisher)
        ):
            offer = str(source.get("offer", "")).lower()
            windows = publisher.lower() in WINDOWS_PUBLISHERS or publisher.lower().startswith(
                "microsoftwindows"
            )
            if windows and not any(hint in offer for hint in _LINUX_OFFER_HINTS):
                return m.OsType.windows, True
            return m.OsType.linux, True
        types = {s.get("type") for s in steps}
        if types & WINDOWS_ONLY:
            return m.OsType.windows, False
        if "Shell" in types:
            return m.OsType.linux, False
        for step in steps:
            dest = step.get("destination")
            if isinstance(dest, str) and WINDOWS_DRIVE_PATH.match(dest):
                return m.OsType.windows, False
        return m.OsType.linux, False

    # -- the template ---------------------------------------------------------------------------------

    def template(self, body: Mapping[str, Any], name: str) -> m.Template:
        props: Mapping[str, Any] = body.get("properties", {})
        pp: Path = ("properties",)
        source_raw: Mapping[str, Any] = props.get("source", {})
        steps_raw: list[Mapping[str, Any]] = props.get("customize", [])
        validate_raw: Mapping[str, Any] | None = props.get("validate")
        validators_raw: list[Mapping[str, Any]] = (validate_raw or {}).get("inVMValidations", [])
        os_type, decided = self.detect_os(source_raw, [*steps_raw, *validators_raw])
        if not decided and not steps_raw:
            self.add(
                pp + ("source",),
                f"cannot tell the guest OS from this source; assuming {os_type}",
                Severity.note,
            )
        kinds = {str(s.get("type")) for s in [*steps_raw, *validators_raw]}
        if not decided and "Shell" in kinds and kinds & WINDOWS_ONLY:
            # A managed/gallery image does not say its OS; the steps then decide, and must agree.
            self.add(
                pp + ("customize",),
                "mixes Shell steps (Linux) with "
                + ", ".join(sorted(kinds & WINDOWS_ONLY))
                + " steps (Windows): one guest cannot run both",
                hint="keep the steps of the source image's OS",
            )

        source = self.source(source_raw, pp + ("source",))
        customize = tuple(
            self.step(raw, pp + ("customize", i), os_type, decided, "customizer")
            for i, raw in enumerate(steps_raw)
        )
        self.duplicate_names(steps_raw, pp + ("customize",))
        distribute = self.distributors(props.get("distribute", []), pp + ("distribute",))
        validate = None
        if validate_raw is not None:
            validators = tuple(
                self.step(raw, pp + ("validate", "inVMValidations", i), os_type, decided, "validator")
                for i, raw in enumerate(validators_raw)
            )
            validate = m.Validate(
                continue_distribute_on_failure=validate_raw.get("continueDistributeOnFailure", False),
                source_validation_only=validate_raw.get("sourceValidationOnly", False),
                in_vm_validations=validators,  # type: ignore[arg-type]  # validator types are checked above
            )
            if validate.source_validation_only and customize:
                self.add(
                    pp + ("validate", "sourceValidationOnly"),
                    "sourceValidationOnly validates the source image directly: the customize steps do "
                    "not run",
                    Severity.warning,
                )
        timeout = props.get("buildTimeoutInMinutes", 0)
        if 0 < timeout < 6:
            self.add(
                pp + ("buildTimeoutInMinutes",),
                f"must be 0 (the default, 240) or between 6 and 960 minutes, not {timeout}",
                Severity.service,
                hint="use at least 6",
            )
        identity = self.identity(body.get("identity"), ("identity",))
        errors_raw: Mapping[str, Any] = props.get("errorHandling", {})
        staging = props.get("stagingResourceGroup")
        if (
            isinstance(staging, str)
            and staging
            and not is_placeholder(staging)
            and not RESOURCE_GROUP_ID.fullmatch(staging)
        ):
            self.add(
                pp + ("stagingResourceGroup",),
                "must be a resource group id (/subscriptions/<id>/resourceGroups/<name>), "
                f"not {_short(staging)}",
                Severity.service,
                code="BadStagingResourceGroup",
            )
        auto_run = props.get("autoRun", {}).get("state") == "Enabled"
        if auto_run:
            self.add(
                pp + ("autoRun",),
                "autoRun has no local meaning: 'localbuilder build' runs the build",
                Severity.note,
            )
        optimize = self.optimize(props.get("optimize"), pp + ("optimize",))
        return m.Template(
            name=name,
            api_version=self.version,
            location=body.get("location", ""),
            tags=body.get("tags", {}),
            identity=identity,
            source=source,
            customize=customize,
            distribute=distribute,
            vm_profile=self.vm_profile(props.get("vmProfile", {})),
            build_timeout_minutes=timeout or m.DEFAULT_BUILD_TIMEOUT_MINUTES,
            validate=validate,
            optimize=optimize,
            error_handling=m.ErrorHandling(
                on_customizer_error=m.OnBuildError(errors_raw.get("onCustomizerError", "cleanup")),
                on_validation_error=m.OnBuildError(errors_raw.get("onValidationError", "cleanup")),
            ),
            staging_resource_group=staging,
            auto_run=auto_run,
            managed_resource_tags=props.get("managedResourceTags", {}),
            additional_data_disks=tuple(
                m.DataDisk(size_gb=d.get("sizeGB", 0)) for d in props.get("additionalDataDisks", [])
            ),
            os_type=os_type,
        )

    def identity(self, raw: Mapping[str, Any] | None, path: Path) -> m.Identity | None:
        if raw is None or "type" not in raw:
            return None
        ids = tuple(raw.get("userAssignedIdentities", []))
        if raw["type"] == "UserAssigned" and not ids:
            self.add(
                path + ("userAssignedIdentities",),
                "a UserAssigned identity needs at least one entry in userAssignedIdentities",
                Severity.service,
                hint='add "userAssignedIdentities": {"<identity resource id>": {}}',
            )
        return m.Identity(type=m.IdentityType(raw["type"]), user_assigned_identities=ids)

    def source(self, raw: Mapping[str, Any], path: Path) -> m.Source:
        kind = raw.get("type")
        if kind == "ManagedImage":
            return m.ManagedImageSource(image_id=raw.get("imageId", ""))
        if kind == "SharedImageVersion":
            return m.SharedImageVersionSource(
                image_version_id=raw.get("imageVersionId", ""), exact_version=raw.get("exactVersion")
            )
        plan = raw.get("planInfo")
        return m.PlatformImageSource(
            publisher=raw.get("publisher", ""),
            offer=raw.get("offer", ""),
            sku=raw.get("sku", ""),
            version=raw.get("version", ""),
            plan_info=None
            if plan is None
            else m.PlanInfo(
                plan_name=plan.get("planName", ""),
                plan_product=plan.get("planProduct", ""),
                plan_publisher=plan.get("planPublisher", ""),
            ),
        )

    # -- customize / validate steps ----------------------------------------------------------------------

    def step(
        self, raw: Mapping[str, Any], path: Path, os_type: m.OsType, decided: bool, role: str
    ) -> m.Customizer:
        kind = raw["type"]
        name = raw.get("name", "")
        if decided and os_type is m.OsType.linux and kind in WINDOWS_ONLY:
            self.add(
                path + ("type",),
                f"a {kind} {role} needs a Windows source, but the source image is Linux",
                hint="use Shell steps on Linux sources",
            )
        if decided and os_type is m.OsType.windows and kind == "Shell":
            self.add(
                path + ("type",),
                f"a Shell {role} runs on Linux, but the source image is Windows",
                hint="use PowerShell steps on Windows sources",
            )
        checksum = raw.get("sha256Checksum", "")
        if checksum and not is_placeholder(checksum) and not SHA256.fullmatch(checksum):
            self.add(
                path + ("sha256Checksum",),
                f"must be 64 hexadecimal digits (a SHA-256), not {_short(checksum)}",
                hint="compute it with 'sha256sum FILE', or leave it empty to skip the check",
            )
        checksum = checksum.lower()
        if kind in ("Shell", "PowerShell"):
            script_uri, legacy = raw.get("scriptUri"), False
            if "script" in raw:
                script_uri, legacy = raw["script"], True
            inline = tuple(raw.get("inline", ()))
            has_uri = bool(script_uri)
            if has_uri == bool(inline):
                field = "script" if legacy else "scriptUri"
                code = "NoCustomizerScript" if role == "customizer" else "NoValidatorScript"
                if has_uri:
                    self.add(
                        path,
                        f"Exactly one of '{field}' or 'inline' can be specified: both are given",
                        code=code,
                        hint=f"split it into two {kind} steps",
                    )
                else:
                    self.add(
                        path,
                        f"Exactly one of '{field}' or 'inline' can be specified: neither is given"
                        + (" (or it is empty)" if field in raw or "inline" in raw else ""),
                        code=code,
                        hint=f'add "{field}": "https://…" or "inline": ["command"]',
                    )
            if kind == "Shell":
                return m.ShellCustomizer(
                    name=name,
                    script_uri=script_uri or None,
                    sha256_checksum=checksum,
                    inline=inline,
                    legacy=legacy,
                )
            run_elevated = raw.get("runElevated", False)
            run_as_system = raw.get("runAsSystem", False)
            if run_as_system and not run_elevated:
                self.add(
                    path + ("runAsSystem",),
                    "runAsSystem can only be true when the runElevated field is set to true",
                    Severity.service,
                    hint='add "runElevated": true',
                )
            return m.PowerShellCustomizer(
                name=name,
                script_uri=script_uri or None,
                sha256_checksum=checksum,
                inline=inline,
                run_elevated=run_elevated,
                run_as_system=run_as_system,
                valid_exit_codes=tuple(raw.get("validExitCodes", ())),
            )
        if kind == "File":
            destination = raw.get("destination", "")
            if "destination" in raw:  # a missing one is reported as required
                self.destination(destination, path + ("destination",), os_type)
            if raw.get("sourceUri") == "":
                self.add(
                    path + ("sourceUri",), "must not be empty", hint="give the URI of the file to upload"
                )
            return m.FileCustomizer(
                name=name,
                source_uri=raw.get("sourceUri", ""),
                sha256_checksum=checksum,
                destination=destination,
            )
        if kind == "WindowsRestart":
            timeout = raw.get("restartTimeout") or m.DEFAULT_RESTART_TIMEOUT
            try:
                seconds = parse_duration(timeout)
            except ValueError:
                self.add(
                    path + ("restartTimeout",),
                    f"must be a duration like '5m', '2h' or '300s', not {_short(timeout)}",
                    hint="a number followed by s, m or h (several may follow each other: 1h30m)",
                )
                seconds = 0
            return m.WindowsRestartCustomizer(
                name=name,
                restart_command=raw.get("restartCommand") or m.DEFAULT_RESTART_COMMAND,
                restart_check_command=raw.get("restartCheckCommand", ""),
                restart_timeout=timeout,
                restart_timeout_seconds=seconds,
            )
        # WindowsUpdate: "Omit or specify …" the empty value means the default (swagger descriptions).
        return m.WindowsUpdateCustomizer(
            name=name,
            search_criteria=raw.get("searchCriteria") or m.DEFAULT_UPDATE_SEARCH_CRITERIA,
            filters=tuple(raw.get("filters") or m.DEFAULT_UPDATE_FILTERS),
            update_limit=raw.get("updateLimit") or m.DEFAULT_UPDATE_LIMIT,
        )

    def destination(self, destination: str, path: Path, os_type: m.OsType) -> None:
        if not destination:
            self.add(path, "must not be empty", hint="give the absolute path of the file in the guest")
            return
        if is_placeholder(destination):
            return
        if os_type is m.OsType.windows:
            if not (WINDOWS_DRIVE_PATH.match(destination) or destination.startswith("\\\\")):
                self.add(
                    path, f"must be an absolute Windows path such as C:\\dir\\file, not {_short(destination)}"
                )
            return
        if not destination.startswith("/"):
            self.add(path, f"must be an absolute path, not {_short(destination)}", hint="e.g. /tmp/file")
            return
        normal = posixpath.normpath(destination)
        if not normal.startswith("/tmp/") and not self.allow_any_destination:
            self.add(
                path,
                f"on Linux the File customizer can only write under /tmp, not {_short(destination)}: "
                "AIB fails the build, and localbuilder does the same",
                hint="upload to /tmp and move it with a Shell step (sudo mv), or build with "
                "--allow-any-destination",
            )

    def duplicate_names(self, steps: Sequence[Mapping[str, Any]], path: Path) -> None:
        seen: dict[str, int] = {}
        for index, step in enumerate(steps):
            name = step.get("name")
            if not name:
                continue
            if name in seen:
                self.add(
                    path + (index, "name"),
                    f"customizer name '{name}' is also used by customize[{seen[name]}]",
                    Severity.warning,
                    hint="give each step its own name so logs and errors are unambiguous",
                )
            else:
                seen[name] = index

    # -- distribute -----------------------------------------------------------------------------------

    def distributors(self, raws: Sequence[Mapping[str, Any]], path: Path) -> tuple[m.Distributor, ...]:
        if not raws:
            self.add(path, "at least one distribute target is required", hint=_MISSING_HINTS["distribute"])
        out: list[m.Distributor] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(raws):
            here = path + (index,)
            name = raw.get("runOutputName", "")
            if "runOutputName" in raw and not is_placeholder(name) and not RUN_OUTPUT_NAME.fullmatch(name):
                self.add(
                    here + ("runOutputName",),
                    f"must match ^[A-Za-z0-9-_.]{{1,64}}$, not {_short(name)}",
                    hint="use letters, digits, '-', '_' and '.', at most 64 characters",
                )
            elif name:
                # Run outputs are ARM sub-resources: names compare case-insensitively.
                key = name.lower()
                if key in seen:
                    self.add(
                        here + ("runOutputName",),
                        f"runOutputName '{name}' is also used by distribute[{seen[key]}]; each "
                        "distribute target needs its own",
                        hint="rename one of them",
                    )
                else:
                    seen[key] = index
            tags = raw.get("artifactTags", {})
            kind = raw["type"]
            if kind == "ManagedImage":
                out.append(
                    m.ManagedImageDistributor(
                        run_output_name=name,
                        artifact_tags=tags,
                        image_id=raw.get("imageId", ""),
                        location=raw.get("location", ""),
                    )
                )
            elif kind == "SharedImage":
                out.append(self.shared_image(raw, here, name, tags))
            else:
                out.append(
                    m.VhdDistributor(run_output_name=name, artifact_tags=tags, uri=raw.get("uri") or None)
                )
        return tuple(out)

    def shared_image(
        self, raw: Mapping[str, Any], path: Path, name: str, tags: Mapping[str, str]
    ) -> m.SharedImageDistributor:
        regions = raw.get("replicationRegions")
        targets = raw.get("targetRegions")
        if regions is not None and targets is not None:
            self.add(
                path + ("targetRegions",),
                "replicationRegions can be specified only if targetRegions is not specified",
                Severity.service,
                hint="drop replicationRegions (deprecated) and keep targetRegions",
            )
        if (
            raw.get("storageAccountType") is not None
            and regions is None
            and v.at_least(self.version, v.V22_07)
        ):
            self.add(
                path + ("storageAccountType",),
                "storageAccountType can be specified only if replicationRegions is specified",
                Severity.service,
                hint="set storageAccountType per entry of targetRegions instead",
            )
        versioning = raw.get("versioning")
        return m.SharedImageDistributor(
            run_output_name=name,
            artifact_tags=tags,
            gallery_image_id=raw.get("galleryImageId", ""),
            replication_regions=tuple(regions or ()),
            target_regions=tuple(
                m.TargetRegion(
                    name=t.get("name", ""),
                    replica_count=t.get("replicaCount", 1),
                    storage_account_type=_opt_enum(m.StorageAccountType, t.get("storageAccountType")),
                )
                for t in targets or ()
            ),
            versioning=None
            if versioning is None
            else m.Versioning(scheme=m.VersioningScheme(versioning["scheme"]), major=versioning.get("major")),
            exclude_from_latest=raw.get("excludeFromLatest", False),
            storage_account_type=_opt_enum(m.StorageAccountType, raw.get("storageAccountType")),
            replication_mode=_opt_enum(m.ReplicationMode, raw.get("replicationMode")),
        )

    # -- the rest -------------------------------------------------------------------------------------

    def vm_profile(self, raw: Mapping[str, Any]) -> m.VmProfile:
        vnet = raw.get("vnetConfig")
        return m.VmProfile(
            vm_size=raw.get("vmSize", ""),
            os_disk_size_gb=raw.get("osDiskSizeGB", 0),
            user_assigned_identities=tuple(raw.get("userAssignedIdentities", ())),
            vnet_config=None
            if vnet is None
            else m.VnetConfig(
                subnet_id=vnet.get("subnetId"),
                container_instance_subnet_id=vnet.get("containerInstanceSubnetId"),
                proxy_vm_size=vnet.get("proxyVmSize"),
            ),
        )

    def optimize(self, raw: Mapping[str, Any] | None, path: Path) -> m.Optimize | None:
        if raw is None:
            return None
        boot = raw.get("vmBoot", {}).get("state")
        work = raw.get("workload", {})
        result = m.Optimize(
            vm_boot=_opt_enum(m.State, boot),
            workload=_opt_enum(m.State, work.get("state")),
            workload_script_uri=work.get("scriptUri"),
            workload_sha256_checksum=work.get("sha256Checksum", ""),
        )
        if result.vm_boot is m.State.Enabled or result.workload is m.State.Enabled:
            self.add(
                path, "image optimization is done by the Azure service; localbuilder skips it", Severity.note
            )
        return result


def _opt_enum(cls: Any, value: object) -> Any:
    return None if value is None else cls(value)


# ---------------------------------------------------------------------------------------------------------
# Entry point


def resolve_api_version(declared: object, result: ValidationResult, *, unevaluated: bool = False) -> str:
    """The version to judge the body at, with a finding whenever it is not the one written."""
    if unevaluated:
        result.add(
            ("apiVersion",),
            f"apiVersion could not be evaluated (see above): judged at API {v.LATEST}, the newest",
            Severity.note,
            hint="give its value (--param NAME=VERSION) to judge the template at the version you deploy with",
        )
        return v.LATEST
    if declared is None or declared == "":
        result.add(
            ("apiVersion",),
            f"no apiVersion: judged at API {v.LATEST}, the newest",
            Severity.note,
            hint='add "apiVersion" to judge the template at the version you deploy with',
        )
        return v.LATEST
    if not isinstance(declared, str):
        result.add(
            ("apiVersion",),
            f"must be a string, not {_type_name(declared)} ({_short(declared)})",
            Severity.error,
        )
        return v.LATEST
    if v.is_known(declared):
        return declared
    if (
        declared.startswith("[")
        or is_placeholder(declared)
        or not re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", declared)
    ):
        result.add(
            ("apiVersion",),
            f"apiVersion {_short(declared)} is not a version: judged at API {v.LATEST}",
            Severity.warning,
            hint="set a real apiVersion (e.g. " + v.LATEST + ")",
        )
        return v.LATEST
    nearest = v.nearest_known(declared)
    result.add(
        ("apiVersion",),
        f"unknown API version '{declared}' (known: {', '.join(v.VERSIONS)}); judged at API {nearest}",
        Severity.service,
        hint=f"use one of the known versions, e.g. {v.LATEST}",
    )
    return nearest


def validate_body(
    body: object,
    *,
    api_version: str | None = None,
    name: str = "",
    strict: bool = False,
    allow_any_destination: bool = False,
    result: ValidationResult | None = None,
) -> tuple[m.Template | None, ValidationResult]:
    """Check an imageTemplates resource body (``{"location", "identity", "properties": {…}}``).

    ``api_version``: as resolved by the loader; None falls back to the body's own ``apiVersion`` key.
    Findings are appended to ``result`` (a new one by default); the Template is None when any finding
    stops the build (errors, and service findings under ``strict``).
    """
    result = ValidationResult() if result is None else result
    if not isinstance(body, dict):
        result.add(
            (),
            f"the template must be a JSON object, not {_type_name(body)}",
            Severity.error,
            hint='give the imageTemplates resource: {"location": …, "properties": {…}}',
        )
        return None, result
    flagged = frozenset(f.path for f in result.of(Severity.error))
    declared = api_version if api_version is not None else body.get("apiVersion")
    # The loader could not evaluate it (an ARM parameter without a value) and has said so.
    unevaluated = api_version is None and ("apiVersion",) in flagged
    version = resolve_api_version(declared, result, unevaluated=unevaluated)
    walker = _Walker(version, result, flagged)
    normal = walker.obj(body, "resource", ())
    # The cross-field rules run even after shape errors (on what was valid), so that one run reports
    # everything; the Template is only returned when nothing stops the build.
    if normal is None or not isinstance(normal.get("properties"), dict):
        return None, result
    template_name = body.get("name") if isinstance(body.get("name"), str) and body.get("name") else name
    builder = _Builder(version, result, flagged, allow_any_destination=allow_any_destination)
    template = builder.template(normal, template_name or "template")
    return (template if result.ok(strict) else None), result
