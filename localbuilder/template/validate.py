"""Validate an imageTemplates resource body and turn it into the typed ``Template``.

Two passes over the body:

1. ``validate_shape``: the shape against the per-version field table in ``versions.py`` (JSON types,
   required fields, unknown/renamed/read-only fields, enum values, numeric ranges), giving a normalised
   copy: canonical names, valid values.
2. ``validate_rules`` (and ``validate_steps`` for each step): the rules that span fields (exactly one of
   scriptUri/inline, runAsSystem needs runElevated, runOutputName pattern and uniqueness, File
   destinations on Linux, …), and the model.

This module is the driver: it picks the API version to judge the body at and runs both passes.
Every finding carries the path of the value as written (``properties.customize[2].scriptUri``) and, where
the user has something to change, a hint. Severities: ``error`` = localbuilder cannot build it;
``service`` = Azure Image Builder would reject it (``--strict`` makes these errors); ``warning``;
``note``. Codes are the service's own ``provisioningErrorCode`` values where one applies.
"""

from __future__ import annotations

import re

from localbuilder.template import model as m
from localbuilder.template import versions as v
from localbuilder.template.findings import Severity, ValidationResult, quote
from localbuilder.template.placeholders import is_placeholder
from localbuilder.template.validate_rules import ModelBuilder
from localbuilder.template.validate_shape import ShapeWalker, type_phrase


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
            f"must be a string, not {type_phrase(declared)} ({quote(declared)})",
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
            f"apiVersion {quote(declared)} is not a version: judged at API {v.LATEST}",
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
            f"the template must be a JSON object, not {type_phrase(body)}",
            Severity.error,
            hint='give the imageTemplates resource: {"location": …, "properties": {…}}',
        )
        return None, result
    flagged = frozenset(f.path for f in result.of(Severity.error))
    declared = api_version if api_version is not None else body.get("apiVersion")
    # The loader could not evaluate it (an ARM parameter without a value) and has said so.
    unevaluated = api_version is None and ("apiVersion",) in flagged
    version = resolve_api_version(declared, result, unevaluated=unevaluated)
    walker = ShapeWalker(version, result, flagged)
    normal = walker.obj(body, "resource", ())
    # The cross-field rules run even after shape errors (on what was valid), so that one run reports
    # everything; the Template is only returned when nothing stops the build.
    if normal is None or not isinstance(normal.get("properties"), dict):
        return None, result
    template_name = body.get("name") if isinstance(body.get("name"), str) and body.get("name") else name
    builder = ModelBuilder(version, result, flagged, allow_any_destination=allow_any_destination)
    template = builder.template(normal, template_name or "template")
    return (template if result.ok(strict) else None), result
