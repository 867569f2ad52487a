"""Validation pass 1: the shape of an imageTemplates body, against the field table of its API version.

``ShapeWalker`` checks JSON types, required fields, unknown/renamed/read-only fields, enum values and
numeric ranges as ``versions.py`` describes them at the version, and returns a normalised copy (canonical
names, valid values only) for pass 2 (``validate_rules``). It mirrors how the service reads a body
(VERDICTS.md "Method"): before API 2024-02-01 names and enum values match case-insensitively and unknown
fields are ignored (a warning here); from 2024-02-01 both are enforced (a ``service`` finding). Wrong
JSON types fail at every version (an ``error``: ``"false"`` is not a boolean, and localbuilder will not
guess).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from localbuilder.template import jsonc
from localbuilder.template import versions as v
from localbuilder.template.findings import JsonPath, Reporter, Severity, ValidationResult, quote

INT32 = (-(2**31), 2**31 - 1)

_WHAT = {
    "source": "source",
    "customizer": "customizer",
    "validator": "validator",
    "distributor": "distributor",
    "versioning": "versioning scheme",
}


# How a message names each JSON kind (``jsonc.kind``): ints and fractions are both "a number" to a user.
_PHRASES = {"null": "null", "boolean": "a boolean", "int": "a number", "number": "a number",
            "string": "a string", "array": "an array", "object": "an object"}


def type_phrase(value: object) -> str:
    """How a message names the JSON type of ``value``: ``a boolean``, ``an array``, ``null`` …"""
    if value is not None and not isinstance(value, bool | int | float | str | list | dict):
        return type(value).__name__
    return _PHRASES[jsonc.kind(value)]


class _Invalid:
    """A value that failed its check (reported already); present for the required check, not used."""


INVALID = _Invalid()


class ShapeWalker(Reporter):
    """Pass 1: shape checks against the version's field table; returns normalised dicts."""

    def __init__(
        self, version: str, result: ValidationResult, flagged: frozenset[JsonPath] = frozenset()
    ) -> None:
        super().__init__(result, flagged)
        self.version = version
        self.strict = v.is_strict(version)

    # -- helpers --------------------------------------------------------------------------------------

    def lenient_or_service(self) -> Severity:
        return Severity.service if self.strict else Severity.warning

    def type_error(self, path: JsonPath, field: v.Field, value: object) -> _Invalid:
        hint = None
        if field.kind is v.Kind.boolean and isinstance(value, str) and value.lower() in ("true", "false"):
            hint = f"write {value.lower()} without quotes"
        elif field.kind is v.Kind.integer and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            hint = f"write {value.strip()} without quotes"
        elif field.kind is v.Kind.integer_array and isinstance(value, str):
            hint = "write a JSON array of numbers, e.g. [0, 3010]"
        self.add(
            path,
            f"must be {_article(field.kind)}, not {type_phrase(value)} ({quote(value)})",
            Severity.error,
            hint=hint,
        )
        return INVALID

    # -- objects --------------------------------------------------------------------------------------

    def obj(
        self, value: object, schema: str, path: JsonPath, what: str | None = None
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(path, f"must be an object, not {type_phrase(value)} ({quote(value)})", Severity.error)
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

    def version_mismatch(self, path: JsonPath, key: str, field: v.Field, schema: str) -> None:
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

    def missing(self, path: JsonPath, field: v.Field, what: str | None) -> None:
        since, until = field.required or (v.FIRST, None)
        when = "" if since == v.FIRST and until is None else f" ({v.span(since, until)})"
        owner = "" if what is None else f" in {what}"
        severity = Severity.error if field.need is v.Need.local else Severity.service
        hint = MISSING_HINTS.get(field.name)
        self.add(
            (*path, field.name),
            f"'{field.name}' is required{owner}{when}",
            severity,
            hint=hint,
            code=field.code,
        )

    def family(self, value: object, family_name: str, path: JsonPath) -> dict[str, Any] | None:
        family = v.FAMILIES[family_name]
        what = _WHAT[family_name]
        if not isinstance(value, dict):
            self.add(
                path, f"a {what} must be an object, not {type_phrase(value)} ({quote(value)})", Severity.error
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
                f"must be a string, not {type_phrase(raw)} ({quote(raw)})",
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

    def value(self, value: object, field: v.Field, path: JsonPath) -> Any:
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
                        f"tag values must be strings, not {type_phrase(item)} ({quote(item)})",
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

    def item(self, item: object, field: v.Field, path: JsonPath) -> Any:
        if field.kind is v.Kind.string_array:
            if not isinstance(item, str):
                self.add(path, f"must be a string, not {type_phrase(item)} ({quote(item)})", Severity.error)
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

    def integer(self, value: object, field: v.Field, path: JsonPath) -> Any:
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

    def enum(self, value: str, field: v.Field, path: JsonPath) -> Any:
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


MISSING_HINTS = {
    "identity": 'add "identity": {"type": "UserAssigned", "userAssignedIdentities": {"<identity id>": {}}}',
    "location": 'add "location": "<region>" (localbuilder does not use it)',
    "replicationRegions": 'add "replicationRegions": ["<region>"] (localbuilder does not use it)',
    "runOutputName": 'add "runOutputName": "<name>" (letters, digits, - _ .; at most 64)',
    "distribute": 'add "distribute": [{"type": "VHD", "runOutputName": "vhd"}]',
}
