"""ARM deployment templates: parameters, variables and the imageTemplates resources they contain.

A deployment template (``$schema`` …/deploymentTemplate.json#) declares ``parameters`` (values from
``defaultValue``, a ``--parameters`` file or ``--param k=v``) and ``variables``, and lists
``resources``, of which we keep the ``Microsoft.VirtualMachineImages/imageTemplates`` ones (also nested ones).
Every ``[…]`` value in them is evaluated with ``template.arm``; a value that cannot be evaluated
becomes a finding at its path and keeps its text, so one bad value never hides the others.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localbuilder.errors import TemplateError
from localbuilder.template import jsonc
from localbuilder.template.arm import DeploymentContext, Scope
from localbuilder.template.arm_syntax import ExpressionError, is_expression
from localbuilder.template.findings import JsonPath, PathPart, Severity, ValidationResult, shorten
from localbuilder.template.overrides import set_path

IMAGE_TEMPLATE_TYPE = "Microsoft.VirtualMachineImages/imageTemplates"
_MAX_RESOLVE_DEPTH = 40  # parameters/variables referring to each other; real templates chain 2–3


@dataclasses.dataclass
class FoundTemplate:
    """One image template found in a document, before ``--set`` and the loader's document-wide findings."""

    name: str
    doc_path: JsonPath  # where the body sits in the document (for duplicate-key findings)
    body: dict[str, Any]
    api_version: str | None
    findings: ValidationResult


@dataclasses.dataclass(frozen=True)
class Supplied:
    """A parameter value given from outside the template (``--param`` or a parameters file)."""

    value: Any  # from a parameters file (already JSON)
    origin: str  # "--param NAME" / "parameters file X"
    text: str | None = None  # from --param: the raw command-line text, coerced to the declared type
    keyvault: bool = False


class _ArmDeployment:
    """Parameters, variables and the expression scope of one deployment template."""

    def __init__(self, doc: dict[str, Any], supplied: dict[str, Supplied], ctx: DeploymentContext) -> None:
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
        self.supplied: dict[str, Supplied] = {}
        self.undeclared: list[Supplied] = []
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

    def resolve(self, value: Any, path: JsonPath, result: ValidationResult) -> Any:
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

    def _evaluate_at(self, text: str, path: JsonPath, result: ValidationResult, *, is_key: bool) -> Any:
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
            result.add(path, f"cannot evaluate {shorten(text)}: {exc.message}", Severity.error, hint=hint)
            return text
        except RecursionError:
            result.add(path, f"cannot evaluate {shorten(text)}: nested too deeply", Severity.error)
            return text


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
        raise ExpressionError(f"--param {name}={shorten(text, 40)}: parameter {name!r} is an int", hint)
    if ptype == "bool":
        if text.strip().lower() in ("true", "false"):
            return text.strip().lower() == "true"
        raise ExpressionError(
            f"--param {name}={shorten(text, 40)}: parameter {name!r} is a bool (true/false)", hint
        )
    if ptype in ("object", "secureobject", "array"):
        want = list if ptype == "array" else dict
        if is_json and isinstance(parsed, want):
            return parsed
        what = "a JSON array" if ptype == "array" else "a JSON object"
        raise ExpressionError(f"--param {name}={shorten(text, 40)}: parameter {name!r} needs {what}", hint)
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
            f"parameter {name!r} is declared {ptype}, but {origin} gives the {jsonc.kind(value)} "
            f"{shorten(repr(value), 60)}",
            f"give a {ptype} value: {fix}",
        )


def _check_constraints(name: str, decl: dict[str, Any], value: Any) -> None:
    allowed = decl.get("allowedValues")
    if isinstance(allowed, list):
        items = value if isinstance(value, list) else [value]
        bad = [item for item in items if item not in allowed or _bool_int_mismatch(item, allowed)]
        if bad:
            shown = ", ".join(repr(a) for a in allowed[:10])
            raise ExpressionError(
                f"parameter {name!r}: {shorten(repr(bad[0]), 60)} is not one of the allowedValues ({shown})",
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


def _find_image_templates(resources: Any, doc_path: JsonPath) -> Iterator[tuple[JsonPath, dict[str, Any]]]:
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


def load_arm(
    doc: dict[str, Any],
    path: Path,
    supplied: dict[str, Supplied],
    ctx: DeploymentContext,
    resource: str | None,
) -> list[FoundTemplate]:
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


def _evaluate_resource(
    deployment: _ArmDeployment, raw: dict[str, Any], doc_path: JsonPath, path: Path
) -> FoundTemplate:
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
    return FoundTemplate(name, doc_path, body, api_version, result)
