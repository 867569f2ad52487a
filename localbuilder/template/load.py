"""Read a template document in any shape people submit, and resolve it to imageTemplates resource bodies.

Three shapes occur in the wild (see ../shared/corpus/aib-templates/VERDICTS.md):

- **bare**: the resource itself (``{"type": …, "location": …, "properties": {"source": …}}``), as passed
  to ``az image builder create --image-template`` or a REST PUT. ``type`` may be missing or odd.
- **arm**: a deployment template (``$schema`` …/deploymentTemplate.json#) whose ``resources`` contain one
  or more ``Microsoft.VirtualMachineImages/imageTemplates``. Parameters (``defaultValue``, a
  ``--parameters`` file, ``--param k=v``), variables and ``[…]`` expressions are evaluated here
  (:mod:`localbuilder.template.arm`); only the imageTemplates resources are kept.
- **rest**: a REST request example, ``{"parameters": {"api-version": …, "parameters": <body>}}``.

Then ``--set path=value`` overrides are applied, and leftover ``<placeholder>`` strings are reported.
Problems with one value become findings at its path (relative to the resource body); only problems
with the whole document raise :class:`TemplateError`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from localbuilder.errors import TemplateError
from localbuilder.template import jsonc
from localbuilder.template.arm import DeploymentContext, Scope
from localbuilder.template.arm_syntax import ExpressionError, is_expression, parse_expression
from localbuilder.template.findings import PathPart, Severity, ValidationResult, format_path

IMAGE_TEMPLATE_TYPE = "Microsoft.VirtualMachineImages/imageTemplates"
TEMPLATE_KEYS = ("source", "customize", "distribute")
Shape = Literal["bare", "arm", "rest"]
Path_ = tuple[PathPart, ...]
_MAX_RESOLVE_DEPTH = 40  # parameters/variables referring to each other; real templates chain 2–3


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
        supplied[name] = _Supplied(None, f"--param {name}", text)

    shape = detect_shape(doc, path)
    if shape == "arm":
        loaded = _load_arm(doc, path, supplied, ctx, resource)
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
            _apply_set(body, set_path, value, text)
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


@dataclasses.dataclass
class _Item:
    name: str
    doc_path: Path_  # where the body sits in the document (for duplicate-key findings)
    body: dict[str, Any]
    api_version: str | None
    findings: ValidationResult


def _load_plain(doc: dict[str, Any], path: Path, shape: Shape, supplied: dict[str, _Supplied]) -> _Item:
    findings = ValidationResult()
    if shape == "rest":
        request = doc["parameters"]
        body = copy.deepcopy(request["parameters"])
        doc_path: Path_ = ("parameters", "parameters")
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
    return _Item(path.stem, doc_path, body, api_version, findings)


def _relative(doc_path: Path_, base: Path_) -> Path_ | None:
    if doc_path[: len(base)] == base:
        return doc_path[len(base) :]
    return None


def _under(path: Sequence[PathPart], prefix: Sequence[PathPart]) -> bool:
    return tuple(path[: len(prefix)]) == tuple(prefix)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


# ---------------------------------------------------------------------------------------------
# ARM deployment templates
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Supplied:
    value: Any  # from a parameters file (already JSON)
    origin: str  # "--param NAME" / "parameters file X"
    text: str | None = None  # from --param: the raw command-line text, coerced to the declared type
    keyvault: bool = False


def _read_parameters_file(path: Path) -> dict[str, _Supplied]:
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
    out: dict[str, _Supplied] = {}
    origin = f"parameters file {path.name}"
    for name, entry in values.items():
        if values is doc and name in ("$schema", "contentVersion"):
            continue
        if isinstance(entry, dict) and "reference" in entry and "value" not in entry:
            out[name] = _Supplied(None, origin, keyvault=True)
        elif isinstance(entry, dict) and "value" in entry and set(entry) <= {"value", "metadata"}:
            out[name] = _Supplied(entry["value"], origin)
        else:
            out[name] = _Supplied(entry, origin)
    return out


class _ArmDeployment:
    """Parameters, variables and the expression scope of one deployment template."""

    def __init__(self, doc: dict[str, Any], supplied: dict[str, _Supplied], ctx: DeploymentContext) -> None:
        self.doc = doc
        declared = doc.get("parameters", {})
        self.declared: dict[str, tuple[str, dict[str, Any]]] = {}
        if isinstance(declared, dict):
            for name, decl in declared.items():
                self.declared[name.lower()] = (name, decl if isinstance(decl, dict) else {})
        variables = doc.get("variables", {})
        self.variables: dict[str, tuple[str, Any]] = {}
        if isinstance(variables, dict):
            self.variables = {name.lower(): (name, value) for name, value in variables.items()}
        self.supplied: dict[str, _Supplied] = {}
        self.undeclared: list[_Supplied] = []
        for name, item in supplied.items():
            if name.lower() in self.declared:
                self.supplied[name.lower()] = item  # later sources (--param) win, as in az
            else:
                self.undeclared.append(item)
        self.cache: dict[str, Any] = {}
        self.resolving: list[str] = []
        self.scope = Scope(
            context=ctx,
            resolve_parameter=self.parameter,
            resolve_variable=self.variable,
            template=doc,
        )

    # -- parameters ------------------------------------------------------------------------------
    def parameter(self, name: str) -> Any:
        key = name.lower()
        if key not in self.declared:
            known = ", ".join(n for n, _ in self.declared.values()) or "none"
            raise ExpressionError(
                f"parameter {name!r} is not declared in the template (declared: {known})",
                "fix the parameter name in the template",
            )
        return self._cached("p:" + key, name, lambda: self._compute_parameter(key))

    def variable(self, name: str) -> Any:
        key = name.lower()
        if key not in self.variables:
            if "copy" in self.variables:
                raise ExpressionError(f"variable {name!r}: variable copy loops are not supported")
            known = ", ".join(n for n, _ in self.variables.values()) or "none"
            raise ExpressionError(f"variable {name!r} is not defined (defined: {known})")
        return self._cached("v:" + key, name, lambda: self.resolve_strict(self.variables[key][1]))

    def _cached(self, key: str, name: str, compute: Any) -> Any:
        if key in self.cache:
            hit = self.cache[key]
            if isinstance(hit, ExpressionError):
                raise hit
            return copy.deepcopy(hit)
        kind = "parameter" if key.startswith("p:") else "variable"
        if key in self.resolving:
            raise ExpressionError(f"{kind} {name!r} refers to itself")
        if len(self.resolving) >= _MAX_RESOLVE_DEPTH:
            raise ExpressionError(
                f"{kind} {name!r}: parameters/variables nested more than {_MAX_RESOLVE_DEPTH} deep"
            )
        self.resolving.append(key)
        try:
            value = compute()
        except ExpressionError as exc:
            self.cache[key] = exc
            raise
        finally:
            self.resolving.pop()
        self.cache[key] = value
        return copy.deepcopy(value)

    def _compute_parameter(self, key: str) -> Any:
        name, decl = self.declared[key]
        declared_type = decl.get("type")
        ptype = declared_type.lower() if isinstance(declared_type, str) else ""
        item = self.supplied.get(key)
        if item is not None and item.keyvault:
            raise ExpressionError(
                f"parameter {name!r} is a Key Vault reference in the {item.origin}, which needs Azure",
                f"pass the value with --param {name}=VALUE",
            )
        if item is not None and item.text is not None:
            value = coerce_cli_value(name, ptype, item.text)
        elif item is not None:
            value = item.value
            _check_type(name, ptype, value, item.origin, f"--param {name}=VALUE")
        elif "defaultValue" in decl:
            self.scope.in_parameter_default += 1
            try:
                value = self.resolve_strict(decl["defaultValue"])
            except ExpressionError as exc:
                raise ExpressionError(
                    f"parameter {name!r}: its defaultValue cannot be evaluated: {exc.message}",
                    exc.hint or f"pass --param {name}=VALUE",
                ) from None
            finally:
                self.scope.in_parameter_default -= 1
            _check_type(name, ptype, value, "its defaultValue", f"--param {name}=VALUE")
        else:
            raise ExpressionError(
                f"parameter {name!r} has no value and no defaultValue",
                f"pass --param {name}=VALUE (or a --parameters file)",
            )
        _check_constraints(name, decl, value)
        return value

    # -- evaluation ------------------------------------------------------------------------------
    def resolve_strict(self, value: Any) -> Any:
        """Evaluate every expression in a JSON value; the first failure propagates."""
        if isinstance(value, str):
            return self.scope.evaluate_string(value)
        if isinstance(value, list):
            return [self.resolve_strict(v) for v in value]
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                key = self.scope.evaluate_string(k)
                if not isinstance(key, str):
                    raise ExpressionError(f"the property name {k!r} evaluates to a {type(key).__name__}")
                out[key] = self.resolve_strict(v)
            return out
        return value

    def resolve(self, value: Any, path: Path_, result: ValidationResult) -> Any:
        """Evaluate every expression, recording failures as findings and keeping the original text."""
        if isinstance(value, str):
            return self._evaluate_at(value, path, result, is_key=False)
        if isinstance(value, list):
            return [self.resolve(v, path + (i,), result) for i, v in enumerate(value)]
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                key = self._evaluate_at(k, path + (k,), result, is_key=True)
                if not isinstance(key, str):
                    result.add(
                        path + (k,), f"the property name {k!r} evaluates to a non-string", Severity.error
                    )
                    key = k
                out[key] = self.resolve(v, path + (key,), result)
            return out
        return value

    def _evaluate_at(self, text: str, path: Path_, result: ValidationResult, *, is_key: bool) -> Any:
        try:
            return copy.deepcopy(self.scope.evaluate_string(text))
        except ExpressionError as exc:
            if is_key:
                where = "edit this key in the template"
                hint = f"{exc.hint}, or {where}" if exc.hint else where
            else:
                where = f"--set {set_path(path)}=VALUE"
                hint = (
                    f"{exc.hint}, or override the value: {where}"
                    if exc.hint
                    else f"override the value: {where}"
                )
            result.add(path, f"cannot evaluate {_shorten(text)}: {exc.message}", Severity.error, hint=hint)
            return text
        except RecursionError:
            result.add(path, f"cannot evaluate {_shorten(text)}: nested too deeply", Severity.error)
            return text


def _shorten(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def coerce_cli_value(name: str, ptype: str, text: str) -> Any:
    """``--param NAME=TEXT`` → a value of the parameter's declared type."""
    hint = f"pass --param {name}=<{ptype or 'value'}>"
    parsed: Any = text
    is_json = False
    try:
        doc = jsonc.parse(text, source=f"--param {name}")
        if not doc.jsonc:
            parsed, is_json = doc.value, True
    except Exception:  # noqa: BLE001 - any parse failure means "take the text as a string"
        pass
    if ptype in ("string", "securestring"):
        return parsed if is_json and isinstance(parsed, str) else text
    if ptype == "int":
        if re.fullmatch(r"\s*-?\d{1,19}\s*", text):
            return int(text)
        raise ExpressionError(f"--param {name}={_shorten(text, 40)}: parameter {name!r} is an int", hint)
    if ptype == "bool":
        if text.strip().lower() in ("true", "false"):
            return text.strip().lower() == "true"
        raise ExpressionError(
            f"--param {name}={_shorten(text, 40)}: parameter {name!r} is a bool (true/false)", hint
        )
    if ptype in ("object", "secureobject", "array"):
        want = list if ptype == "array" else dict
        if is_json and isinstance(parsed, want):
            return parsed
        what = "a JSON array" if ptype == "array" else "a JSON object"
        raise ExpressionError(f"--param {name}={_shorten(text, 40)}: parameter {name!r} needs {what}", hint)
    return parsed if is_json else text


_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "securestring": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "secureobject": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _check_type(name: str, ptype: str, value: Any, origin: str, fix: str) -> None:
    check = _TYPE_CHECKS.get(ptype)
    if check is not None and not check(value):
        raise ExpressionError(
            f"parameter {name!r} is declared {ptype}, but {origin} gives the {_json_kind_of(value)} "
            f"{_shorten(repr(value), 60)}",
            f"give a {ptype} value: {fix}",
        )


def _json_kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, int) and not isinstance(value, bool):
        return "int"
    return _json_kind(value)


def _check_constraints(name: str, decl: dict[str, Any], value: Any) -> None:
    allowed = decl.get("allowedValues")
    if isinstance(allowed, list):
        items = value if isinstance(value, list) else [value]
        bad = [item for item in items if item not in allowed or _bool_int_mismatch(item, allowed)]
        if bad:
            shown = ", ".join(repr(a) for a in allowed[:10])
            raise ExpressionError(
                f"parameter {name!r}: {_shorten(repr(bad[0]), 60)} is not one of the allowedValues ({shown})",
                f"pass an allowed value: --param {name}=VALUE",
            )
    low, high = decl.get("minValue"), decl.get("maxValue")
    if isinstance(value, int) and not isinstance(value, bool):
        if isinstance(low, int) and value < low:
            raise ExpressionError(f"parameter {name!r}: {value} is less than its minValue {low}")
        if isinstance(high, int) and value > high:
            raise ExpressionError(f"parameter {name!r}: {value} is more than its maxValue {high}")
    if isinstance(value, str | list):
        shortest, longest = decl.get("minLength"), decl.get("maxLength")
        if isinstance(shortest, int) and len(value) < shortest:
            raise ExpressionError(f"parameter {name!r}: the value is shorter than its minLength {shortest}")
        if isinstance(longest, int) and len(value) > longest:
            raise ExpressionError(f"parameter {name!r}: the value is longer than its maxLength {longest}")


def _bool_int_mismatch(item: Any, allowed: list[Any]) -> bool:
    # Python says True == 1; ARM does not.
    return isinstance(item, bool) and not any(isinstance(a, bool) and a == item for a in allowed)


def _find_image_templates(resources: Any, doc_path: Path_) -> Iterator[tuple[Path_, dict[str, Any]]]:
    """imageTemplates resources, also nested as child resources; languageVersion 2.0 uses an object."""
    items: Iterator[tuple[PathPart, Any]]
    if isinstance(resources, list):
        items = enumerate(resources)
    elif isinstance(resources, dict):
        items = iter(resources.items())
    else:
        return
    for key, res in items:
        if not isinstance(res, dict):
            continue
        rtype = res.get("type")
        if isinstance(rtype, str) and rtype.lower() == IMAGE_TEMPLATE_TYPE.lower():
            yield doc_path + (key,), res
        yield from _find_image_templates(res.get("resources"), doc_path + (key, "resources"))


def _load_arm(
    doc: dict[str, Any],
    path: Path,
    supplied: dict[str, _Supplied],
    ctx: DeploymentContext,
    resource: str | None,
) -> list[_Item]:
    resources = doc.get("resources")
    found = list(_find_image_templates(resources, ("resources",)))
    if not found:
        nested = isinstance(resources, list) and any(
            isinstance(r, dict) and str(r.get("type", "")).lower() == "microsoft.resources/deployments"
            for r in resources
        )
        raise TemplateError(
            f"{path.name}: the deployment template has no {IMAGE_TEMPLATE_TYPE} resource",
            hint=(
                "nested deployments (Microsoft.Resources/deployments) are not evaluated; save the inner "
                "template as its own file"
                if nested
                else "this deployment does not create an image template"
            ),
        )
    items = []
    for doc_path, raw in found:
        deployment = _ArmDeployment(doc, supplied, ctx)  # fresh caches: findings land on each template
        items.append(_evaluate_resource(deployment, raw, doc_path, path))
    if resource is not None:
        wanted = resource.lower()
        chosen = [
            it for it, (_, raw) in zip(items, found, strict=True)
            if it.name.lower() == wanted or str(raw.get("name", "")).lower() == wanted
        ]  # fmt: skip
        if not chosen:
            names = ", ".join(repr(it.name) for it in items)
            raise TemplateError(
                f"--resource {resource!r} names no imageTemplates resource in {path.name}",
                hint=f"the image templates are: {names}",
            )
        items = chosen
    return items


def _evaluate_resource(deployment: _ArmDeployment, raw: dict[str, Any], doc_path: Path_, path: Path) -> _Item:
    result = ValidationResult()
    for item in deployment.undeclared:
        known = ", ".join(n for n, _ in deployment.declared.values()) or "none"
        result.add(
            (),
            f"{item.origin}: the template declares no such parameter (declared: {known})",
            Severity.error,
            hint="check the spelling; ARM rejects values for undeclared parameters",
        )
    body: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "dependsOn":
            body[key] = copy.deepcopy(value)  # ordering between Azure resources; nothing to build locally
        elif key == "copy":
            body[key] = copy.deepcopy(value)
            result.add(
                ("copy",),
                "copy loops over the imageTemplates resource are not supported",
                Severity.error,
                hint="remove 'copy' and build one template at a time",
            )
        else:
            body[key] = deployment.resolve(value, (key,), result)
    condition = body.get("condition")
    if "condition" in body and condition is False:
        result.add(("condition",), "condition is false: ARM would not deploy this resource", Severity.warning)
    elif "condition" in body and not isinstance(condition, bool) and not result.of(Severity.error):
        result.add(("condition",), f"condition must be a bool, not {condition!r}", Severity.error)
    for func, (value, hint) in deployment.scope.used.items():
        result.add((), f"{func} was evaluated locally: {value}", Severity.note, hint=hint)
    name_value = body.get("name")
    name = name_value if isinstance(name_value, str) and not is_expression(name_value) else path.stem
    version = body.get("apiVersion")
    api_version = version if isinstance(version, str) and not is_expression(version) else None
    return _Item(name, doc_path, body, api_version, result)


# ---------------------------------------------------------------------------------------------
# --set
# ---------------------------------------------------------------------------------------------

_SET_HINT = (
    "syntax: --set properties.customize[2].inline[0]=VALUE "
    "(quote odd keys: identity.userAssignedIdentities['/subscriptions/…'])"
)


def parse_set(text: str) -> tuple[Path_, Any, str]:
    """``properties.source.sku=22_04-lts`` → (path, value, text); value is JSON if it parses, else text."""
    parts: list[PathPart] = []
    i, n = 0, len(text)
    expect_key = True
    while i < n and text[i] != "=":
        ch = text[i]
        if ch == "[":
            end = text.find("]", i)
            inner = text[i + 1 : end] if end > 0 else ""
            if end < 0:
                raise TemplateError(f"--set {text!r}: unclosed '['", hint=_SET_HINT)
            if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                # A quoted key may contain ']' or '=': find the matching quote first.
                close = text.find(inner[0] + "]", i + 2)
                parts.append(text[i + 2 : close])
                i = close + 2
            elif inner.isdigit() and len(inner) < 10:
                parts.append(int(inner))
                i = end + 1
            else:
                raise TemplateError(
                    f"--set {text!r}: [{inner}] is not an index like [0] or a key like ['name']",
                    hint=_SET_HINT,
                )
            expect_key = False
        elif ch == ".":
            if expect_key:
                raise TemplateError(
                    f"--set {text!r}: empty key before '.' at character {i + 1}", hint=_SET_HINT
                )
            expect_key = True
            i += 1
        else:
            if not expect_key:
                raise TemplateError(
                    f"--set {text!r}: expected '.' or '[' at character {i + 1}", hint=_SET_HINT
                )
            start = i
            while i < n and text[i] not in ".[=":
                i += 1
            parts.append(text[start:i].strip())
            expect_key = False
    if i >= n:
        raise TemplateError(f"--set {text!r}: missing '=VALUE'", hint=_SET_HINT)
    if not parts or expect_key or not all(p != "" for p in parts):
        raise TemplateError(f"--set {text!r}: the path before '=' is empty or ends with '.'", hint=_SET_HINT)
    raw = text[i + 1 :]
    value: Any = raw
    try:
        doc = jsonc.parse(raw, source="--set")
        if not doc.jsonc:
            value = doc.value
    except TemplateError:
        pass
    return tuple(parts), value, text


def _apply_set(body: dict[str, Any], path: Path_, value: Any, text: str) -> None:
    cur: Any = body
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        here = format_path(path[:depth]) if depth else "the template"
        if isinstance(part, int):
            if not isinstance(cur, list):
                raise TemplateError(
                    f"--set {text}: {here} is not an array, cannot use [{part}]", hint=_SET_HINT
                )
            if part >= len(cur):
                raise TemplateError(
                    f"--set {text}: index [{part}] is past the end of {here} ({len(cur)} items)",
                    hint="indexes start at 0; --set can change items but not append them",
                )
            if last:
                cur[part] = copy.deepcopy(value)
            else:
                cur = cur[part]
            continue
        if not isinstance(cur, dict):
            raise TemplateError(
                f"--set {text}: {here} is a {_json_kind_of(cur)}, not an object", hint=_SET_HINT
            )
        key = part
        if key not in cur:  # AIB field names were case-insensitive before 2024-02-01: reuse the written case
            key = next((k for k in cur if k.lower() == part.lower()), part)
        if last:
            cur[key] = copy.deepcopy(value)
        else:
            if key not in cur:
                if isinstance(path[depth + 1], int):
                    raise TemplateError(
                        f"--set {text}: {format_path(path[: depth + 1])} does not exist, "
                        f"so it has no [{path[depth + 1]}]",
                        hint="set the whole array instead: --set PATH='[…]'",
                    )
                cur[key] = {}
            cur = cur[key]


def set_path(path: Sequence[PathPart]) -> str:
    """A path in ``--set`` syntax, quoting keys that are not plain identifiers."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_$@-]+", part):
            out += ("." if out else "") + part
        else:
            out += f"['{part}']"
    return out


# ---------------------------------------------------------------------------------------------
# Placeholders
# ---------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"<([A-Za-z_][A-Za-z0-9_.-]*)>")
_UNCLOSED = re.compile(r"<[A-Za-z_][A-Za-z0-9_.-]*")
# Separators inside URLs, resource ids and paths: a placeholder between them is a segment.
_SEGMENT_EDGE = set("/\\:=?&#,;@.")
_HTML_TAGS = frozenset(
    "a b i p br hr em li ol ul td tr th div span html head body title script style pre code table img".split()
)


def find_placeholders(text: str) -> list[str]:
    """``<name>`` placeholders in a value: the whole value, or a segment of a URL/id/path without spaces.

    Shell or PowerShell in inline scripts (``echo "<html>"``, ``cat <<EOF``, ``> c:\\log``) has
    spaces or no ``<identifier>`` segment, so it is left alone.
    """
    stripped = text.strip()
    whole = _PLACEHOLDER.fullmatch(stripped)
    if whole:
        return [] if whole.group(1).lower() in _HTML_TAGS else [whole.group(0)]
    if any(ch.isspace() for ch in stripped):
        return []
    found = []
    for m in _PLACEHOLDER.finditer(stripped):
        before = stripped[m.start() - 1] if m.start() else "/"
        after = stripped[m.end()] if m.end() < len(stripped) else "/"
        if before in _SEGMENT_EDGE and after in _SEGMENT_EDGE:
            found.append(m.group(0))
    return found


def scan_placeholders(body: Any, *, arm_evaluated: bool) -> ValidationResult:
    """Warnings for ``<placeholder>`` values left in the body (and unevaluated ``[…]`` in bare files)."""
    result = ValidationResult()

    def visit(value: Any, path: Path_) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if key == "dependsOn" and len(path) == 0:
                    continue
                names = find_placeholders(key)
                if names:
                    result.add(
                        path + (key,),
                        f"placeholder {', '.join(names)} in this key was never replaced",
                        Severity.warning,
                        hint="rename the key in the template (a --set cannot rename keys)",
                    )
                visit(child, path + (key,))
        elif isinstance(value, list):
            for i, child in enumerate(value):
                visit(child, path + (i,))
        elif isinstance(value, str):
            names = find_placeholders(value)
            plural = "s" if len(names) > 1 else ""
            if names:
                result.add(
                    path,
                    f"placeholder{plural} {', '.join(names)} {'were' if plural else 'was'} never replaced",
                    Severity.warning,
                    hint=f"replace it in the template, or: --set {set_path(path)}=VALUE",
                )
            elif _UNCLOSED.fullmatch(value.strip()):
                result.add(
                    path,
                    f"{value.strip()!r} looks like a placeholder missing its closing '>'",
                    Severity.warning,
                    hint=f"replace it in the template, or: --set {set_path(path)}=VALUE",
                )
            elif not arm_evaluated and is_expression(value) and _parses(value):
                result.add(
                    path,
                    f"{_shorten(value, 80)} looks like an ARM expression, but a bare template is not "
                    "evaluated: the service takes the text literally",
                    Severity.warning,
                    hint="put the template in an ARM deployment template, or write the value itself",
                )

    visit(body, ())
    return result


def _parses(text: str) -> bool:
    try:
        parse_expression(text[1:-1])
    except ExpressionError:
        return False
    return True
