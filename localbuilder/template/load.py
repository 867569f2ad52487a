"""Read a template document in any shape people submit, and resolve it to imageTemplates resource bodies.

Three shapes occur in the wild (see ../shared/corpus/aib-templates/VERDICTS.md):

- **bare**: the resource itself (``{"type": …, "location": …, "properties": {"source": …}}``), as passed
  to ``az image builder create --image-template`` or a REST PUT. ``type`` may be missing or odd.
- **arm**: a deployment template (``$schema`` …/deploymentTemplate.json#) whose ``resources`` contain one
  or more ``Microsoft.VirtualMachineImages/imageTemplates``. Parameters (``defaultValue``, a
  ``--parameters`` file, ``--param k=v``), variables and ``[…]`` expressions are evaluated
  (``template.arm_deployment``); only the imageTemplates resources are kept.
- **rest**: a REST request example, ``{"parameters": {"api-version": …, "parameters": <body>}}``.

Then ``--set path=value`` overrides are applied (``template.overrides``), and leftover ``<placeholder>``
strings are reported (``template.placeholders``). Problems with one value become findings at its path
(relative to the resource body); only problems with the whole document raise :class:`TemplateError`.
This module is the driver: it reads the files, tells the shapes apart and puts those steps together.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from localbuilder.errors import TemplateError
from localbuilder.template import jsonc
from localbuilder.template.arm import DeploymentContext
from localbuilder.template.arm_deployment import IMAGE_TEMPLATE_TYPE, FoundTemplate, Supplied, load_arm
from localbuilder.template.findings import JsonPath, PathPart, Severity, ValidationResult, format_path
from localbuilder.template.overrides import apply_set, parse_set
from localbuilder.template.placeholders import scan_placeholders

TEMPLATE_KEYS = ("source", "customize", "distribute")
Shape = Literal["bare", "arm", "rest"]


@dataclasses.dataclass(frozen=True)
class LoadedTemplate:
    name: str  # resource name (ARM) / file stem (bare/rest)
    source_file: Path
    shape: Shape
    api_version: str | None  # as written / evaluated; None when absent or not evaluable
    body: dict[str, Any]  # the resolved imageTemplates resource
    result: ValidationResult  # loader findings, paths relative to `body`
    jsonc: bool = False  # comments / trailing commas were stripped


def load_documents(
    path: Path,
    *,
    parameters_file: Path | None = None,
    params: Mapping[str, str] = {},  # noqa: B006 - the documented interface; never mutated
    sets: Sequence[str] = (),
    resource: str | None = None,
    context: Mapping[str, str] | None = None,
) -> list[LoadedTemplate]:
    """Load every image template in ``path`` (one for bare/rest, all imageTemplates for ARM).

    ``resource`` keeps only the ARM imageTemplates resource of that name. ``context`` sets the local
    deployment context (keys of :class:`DeploymentContext`, e.g. ``resource_group_location``).
    """
    parsed = jsonc.load_file(path)
    doc = parsed.value
    if not isinstance(doc, dict):
        raise TemplateError(
            f"{path}: the top level is a JSON {_json_kind(doc)}, not an object",
            hint="an image template is a JSON object with a 'properties' object, or an ARM deployment",
        )
    overrides = [parse_set(text) for text in sets]  # bad --set syntax fails before any work
    # `--param resource_group_location=westus` sets the deployment context, unless the template
    # declares a parameter of that name (then it is that parameter, as ARM would see it).
    declared = doc.get("parameters") if isinstance(doc.get("$schema"), str) or "resources" in doc else None
    declared_names = {k.lower() for k in declared} if isinstance(declared, dict) else set()
    ctx_values = dict(context or {})
    template_params: dict[str, str] = {}
    for name, text in params.items():
        if name in DeploymentContext.KEYS and name.lower() not in declared_names:
            ctx_values[name] = text
        else:
            template_params[name] = text
    try:
        ctx = DeploymentContext.from_mapping(ctx_values)
    except ValueError as exc:
        raise TemplateError(f"deployment context: {exc}", hint="fix the context key") from None
    supplied = _read_parameters_file(parameters_file) if parameters_file else {}
    for name, text in template_params.items():
        supplied[name] = Supplied(None, f"--param {name}", text)

    shape = detect_shape(doc, path)
    if shape == "arm":
        loaded = load_arm(doc, path, supplied, ctx, resource)
    else:
        if resource is not None:
            raise TemplateError(
                f"--resource {resource!r} given, but {path.name} is a {shape} template, not ARM",
                hint="--resource picks one imageTemplates resource of an ARM deployment template; drop it",
            )
        loaded = [_load_plain(doc, path, shape, supplied)]

    out = []
    for item in loaded:
        result = ValidationResult()
        if parsed.jsonc:
            result.add(
                (),
                f"not strict JSON: {parsed.deviation_summary()} tolerated, as ARM/JSON.NET does",
                Severity.note,
                hint="az CLI and the Azure portal refuse comments and trailing commas; remove them to submit",
            )
        for dup in parsed.duplicates:
            rel = _relative(dup, item.doc_path)
            where = "" if rel is not None else f" (at {format_path(dup)})"
            result.add(
                rel if rel is not None else (),
                f"duplicate key {dup[-1]!r}{where}: the last value wins, as in ARM/JSON.NET",
                Severity.warning,
                hint="remove one of the duplicate keys",
            )
        result.merge(item.findings)
        body = item.body
        for set_path, value, text in overrides:
            apply_set(body, set_path, value, text)
            # The overridden value replaces whatever could not be evaluated there.
            result.findings = [f for f in result.findings if not _under(f.path, set_path)]
            result.add(set_path, f"set from --set {text}", Severity.note)
        api_version = item.api_version
        if shape != "arm" or any(set_path == ("apiVersion",) for set_path, _, _ in overrides):
            written = body.get("apiVersion")
            if isinstance(written, str):
                api_version = written
        result.merge(scan_placeholders(body, arm_evaluated=shape == "arm"))
        out.append(LoadedTemplate(item.name, path, shape, api_version, body, result, parsed.jsonc))
    return out


def load_document(path: Path, **kwargs: Any) -> LoadedTemplate:
    """Like :func:`load_documents`, for callers that need exactly one template (``build``)."""
    templates = load_documents(path, **kwargs)
    if len(templates) > 1:
        names = ", ".join(repr(t.name) for t in templates)
        raise TemplateError(
            f"{path.name} defines {len(templates)} image templates: {names}",
            hint="choose one with --resource NAME",
        )
    return templates[0]


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def detect_shape(doc: dict[str, Any], path: Path) -> Shape:
    schema = doc.get("$schema")
    schema = schema.lower() if isinstance(schema, str) else ""
    if "deploymentparameters" in schema:
        raise TemplateError(
            f"{path.name} is an ARM deployment parameters file, not a template",
            hint="pass it with --parameters, and give the deployment template as the template file",
        )
    if "deploymenttemplate" in schema or isinstance(doc.get("resources"), list | dict):
        return "arm"
    request = doc.get("parameters")
    if isinstance(request, dict) and isinstance(request.get("parameters"), dict):
        inner = request["parameters"]
        if isinstance(inner.get("properties"), dict):
            return "rest"
    props = doc.get("properties")
    if isinstance(props, dict) and any(key in props for key in TEMPLATE_KEYS):
        return "bare"
    raise TemplateError(
        f"{path.name}: no image template found",
        hint=(
            "expected an imageTemplates resource (an object whose 'properties' has source/customize/"
            "distribute), an ARM deployment template with such a resource in 'resources', or a REST "
            "request example {'parameters': {'api-version': …, 'parameters': <template>}}"
        ),
    )


def _load_plain(
    doc: dict[str, Any], path: Path, shape: Shape, supplied: dict[str, Supplied]
) -> FoundTemplate:
    findings = ValidationResult()
    if shape == "rest":
        request = doc["parameters"]
        body = copy.deepcopy(request["parameters"])
        doc_path: JsonPath = ("parameters", "parameters")
        version = request.get("api-version")
        api_version = version if isinstance(version, str) else None
    else:
        body = copy.deepcopy(doc)
        doc_path = ()
        version = body.get("apiVersion")
        api_version = version if isinstance(version, str) else None
        rtype = body.get("type")
        if isinstance(rtype, str) and rtype.lower() != IMAGE_TEMPLATE_TYPE.lower():
            findings.add(
                ("type",),
                f"type is {rtype!r}, not {IMAGE_TEMPLATE_TYPE!r}; read as an image template anyway",
                Severity.note,
            )
    for item in supplied.values():
        findings.add(
            (),
            f"{item.origin}: ignored, a {shape} template has no parameters",
            Severity.warning,
            hint="--param and --parameters apply to ARM deployment templates; use --set PATH=VALUE here",
        )
    return FoundTemplate(path.stem, doc_path, body, api_version, findings)


def _relative(doc_path: JsonPath, base: JsonPath) -> JsonPath | None:
    if doc_path[: len(base)] == base:
        return doc_path[len(base) :]
    return None


def _under(path: Sequence[PathPart], prefix: Sequence[PathPart]) -> bool:
    return tuple(path[: len(prefix)]) == tuple(prefix)


def _json_kind(value: Any) -> str:
    # JSON's word for a top level that is not an object: 5 is a number (jsonc.kind says int, for ARM types).
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return jsonc.kind(value)


def _read_parameters_file(path: Path) -> dict[str, Supplied]:
    """The az CLI's parameter file formats: deploymentParameters, ``{"x": {"value": …}}``, ``{"x": …}``."""
    parsed = jsonc.load_file(path)
    doc = parsed.value
    hint = 'expected {"$schema": …, "parameters": {"NAME": {"value": …}}} or {"NAME": {"value": …}}'
    if not isinstance(doc, dict):
        raise TemplateError(f"parameters file {path}: the top level is a JSON {_json_kind(doc)}", hint=hint)
    schema = doc.get("$schema")
    if isinstance(schema, str) and "deploymenttemplate" in schema.lower():
        raise TemplateError(
            f"parameters file {path} is a deployment template, not a parameters file",
            hint="give the template as the template file and its parameters with --parameters",
        )
    values = doc.get("parameters", doc) if ("$schema" in doc or "parameters" in doc) else doc
    if not isinstance(values, dict):
        raise TemplateError(f"parameters file {path}: 'parameters' is a JSON {_json_kind(values)}", hint=hint)
    out: dict[str, Supplied] = {}
    origin = f"parameters file {path.name}"
    for name, entry in values.items():
        if values is doc and name in ("$schema", "contentVersion"):
            continue
        if isinstance(entry, dict) and "reference" in entry and "value" not in entry:
            out[name] = Supplied(None, origin, keyvault=True)
        elif isinstance(entry, dict) and "value" in entry and set(entry) <= {"value", "metadata"}:
            out[name] = Supplied(entry["value"], origin)
        else:
            out[name] = Supplied(entry, origin)
    return out
