"""ARM template expressions, evaluation: the ``Scope`` of one deployment and the functions that read it.

A deployment template's ``"[…]"`` values (syntax in ``arm_syntax``, value functions in ``arm_functions``)
are evaluated against a :class:`Scope`: the template's parameters and variables, and a
:class:`DeploymentContext` standing in for what ARM knows about the deployment.

We evaluate what a local build can know (parameters, variables, string/array/object functions,
``resourceGroup()``/``subscription()`` from a local deployment context, ``guid()``, ``utcNow()``)
and refuse, with an :class:`ExpressionError` naming the function, what needs a live Azure
deployment (``reference()``, ``list*()``, …). The loader turns those errors into findings at the
JSON path of the value, so one bad value never hides the others.

Function and parameter names are case-insensitive, as in ARM.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from localbuilder.template.arm_functions import FUNCTIONS, need, str_arg, unsupported
from localbuilder.template.arm_syntax import (
    Call,
    ExpressionError,
    Index,
    Literal,
    Member,
    Node,
    is_expression,
    parse_expression,
    unescape_literal,
)
from localbuilder.template.arm_values import format_datetime, get_property, type_name

_MAX_VALUE_LEN = 1_000_000  # characters of a string / items of an array computed by one call
_RESOURCE_TYPE = re.compile(r"^[A-Za-z0-9.]+/[A-Za-z0-9/]+$")
PLACEHOLDER_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


@dataclasses.dataclass(frozen=True)
class DeploymentContext:
    """What ARM knows about the deployment and a local build has to make up.

    Defaults are visibly fake (``localbuilder-rg``, location ``local``, the all-zero subscription)
    so nobody mistakes them for a real Azure resource.
    """

    resource_group_name: str = "localbuilder-rg"
    resource_group_location: str = "local"
    subscription_id: str = PLACEHOLDER_SUBSCRIPTION
    tenant_id: str = PLACEHOLDER_SUBSCRIPTION
    deployment_name: str = "localbuilder"
    now: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))

    KEYS = (
        "resource_group_name",
        "resource_group_location",
        "subscription_id",
        "tenant_id",
        "deployment_name",
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> DeploymentContext:
        unknown = sorted(set(values) - set(cls.KEYS))
        if unknown:
            raise ValueError(
                f"unknown deployment context key(s) {', '.join(unknown)}; known: {', '.join(cls.KEYS)}"
            )
        fields: dict[str, Any] = dict(values)
        return cls(**fields)

    def resource_group(self) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group_name}",
            "name": self.resource_group_name,
            "type": "Microsoft.Resources/resourceGroups",
            "location": self.resource_group_location,
            "managedBy": None,
            "tags": {},
            "properties": {"provisioningState": "Succeeded"},
        }

    def subscription(self) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{self.subscription_id}",
            "subscriptionId": self.subscription_id,
            "tenantId": self.tenant_id,
            "displayName": "localbuilder (local deployment context)",
        }


class Scope:
    """The parameters, variables and deployment context of one deployment template.

    ``resolve_parameter``/``resolve_variable`` are callbacks into the loader, which owns parameter
    values, type coercion and caching; the scope only evaluates expressions.
    """

    def __init__(
        self,
        *,
        context: DeploymentContext,
        resolve_parameter: Callable[[str], Any],
        resolve_variable: Callable[[str], Any],
        template: Mapping[str, Any] | None = None,
    ) -> None:
        self.context = context
        self.resolve_parameter = resolve_parameter
        self.resolve_variable = resolve_variable
        self.template = template or {}
        self.in_parameter_default = 0  # > 0 while evaluating a parameter's defaultValue
        # context function → (what it evaluated to, how to change it), reported as notes
        self.used: dict[str, tuple[str, str]] = {}

    def evaluate_string(self, text: str) -> Any:
        """Evaluate a JSON string value: an expression, an escaped literal, or a plain string."""
        if not is_expression(text):
            return unescape_literal(text)
        node = parse_expression(text[1:-1])
        return self.eval(node)

    def eval(self, node: Node) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Member):
            target = self.eval(node.target)
            if not isinstance(target, dict):
                raise ExpressionError(f"cannot read property {node.name!r} of a {type_name(target)} value")
            return get_property(target, node.name, _describe(node.target))
        if isinstance(node, Index):
            target = self.eval(node.target)
            index = self.eval(node.index)
            if isinstance(target, list):
                if not isinstance(index, int) or isinstance(index, bool):
                    raise ExpressionError(f"an array index must be an integer, not {type_name(index)}")
                if not 0 <= index < len(target):
                    raise ExpressionError(
                        f"index {index} is out of range for an array of {len(target)} items"
                    )
                return target[index]
            if isinstance(target, dict):
                if not isinstance(index, str):
                    raise ExpressionError(f"an object index must be a string, not {type_name(index)}")
                return get_property(target, index, _describe(node.target))
            raise ExpressionError(f"cannot index a {type_name(target)} value")
        return self.call(node)

    def call(self, node: Call) -> Any:
        name = node.name.lower()
        if name == "if":  # lazy, like ARM: only the chosen branch is evaluated
            if len(node.args) != 3:
                raise ExpressionError("if() expects 3 arguments (condition, trueValue, falseValue)")
            cond = self.eval(node.args[0])
            if not isinstance(cond, bool):
                raise ExpressionError(f"if(): the condition must be a bool, not {type_name(cond)}")
            return self.eval(node.args[1] if cond else node.args[2])
        if name in ("and", "or", "coalesce"):
            return self._short_circuit(name, node.args)
        func = self._function(node.name)
        args = [self.eval(arg) for arg in node.args]
        try:
            value = func(args)
        except (ValueError, OverflowError, MemoryError) as exc:
            raise ExpressionError(f"{node.name}(): {exc}") from None
        # Nested replace()/concat() can grow a value exponentially; a template never needs this much.
        if isinstance(value, str | list) and len(value) > _MAX_VALUE_LEN:
            raise ExpressionError(f"{node.name}() produced a value longer than {_MAX_VALUE_LEN} items")
        return value

    def _function(self, name: str) -> Callable[[list[Any]], Any]:
        key = name.lower()
        if key in FUNCTIONS:
            return FUNCTIONS[key]
        if key in _SCOPE_FUNCTIONS:
            return functools.partial(_SCOPE_FUNCTIONS[key], self)
        raise unsupported(name)

    def _short_circuit(self, name: str, nodes: Sequence[Node]) -> Any:
        if len(nodes) < (1 if name == "coalesce" else 2):
            raise ExpressionError(f"{name}() expects at least {1 if name == 'coalesce' else 2} arguments")
        for arg in nodes:
            value = self.eval(arg)
            if name == "coalesce":
                if value is not None:
                    return value
                continue
            if not isinstance(value, bool):
                raise ExpressionError(f"{name}(): arguments must be bools, not {type_name(value)}")
            if value == (name == "or"):
                return value
        return None if name == "coalesce" else name == "and"


def _describe(node: Node) -> str:
    if isinstance(node, Call):
        return f"{node.name}()"
    if isinstance(node, Member):
        return f"{_describe(node.target)}.{node.name}"
    if isinstance(node, Index):
        return f"{_describe(node.target)}[…]"
    return "the value"


_RG_HINT = "set the real values in the deployment context (resource_group_name, resource_group_location)"
_SUB_HINT = "set the real values in the deployment context (subscription_id, tenant_id)"
_NOW_HINT = "it changes on every load; pass --param NAME=VALUE to the parameter that uses it to pin it"
_ScopeFunction = Callable[[Scope, list[Any]], Any]
_SCOPE_FUNCTIONS: dict[str, _ScopeFunction] = {}  # lower-case name → implementation


def _scoped(name: str) -> Callable[[_ScopeFunction], _ScopeFunction]:
    def register(impl: _ScopeFunction) -> _ScopeFunction:
        _SCOPE_FUNCTIONS[name.lower()] = impl
        return impl

    return register


@_scoped("parameters")
def _parameters(scope: Scope, args: list[Any]) -> Any:
    need("parameters", args, 1)
    return scope.resolve_parameter(str_arg("parameters", args[0], "parameter name"))


@_scoped("variables")
def _variables(scope: Scope, args: list[Any]) -> Any:
    need("variables", args, 1)
    return scope.resolve_variable(str_arg("variables", args[0], "variable name"))


@_scoped("resourceGroup")
def _resource_group(scope: Scope, args: list[Any]) -> Any:
    need("resourceGroup", args, 0)
    rg = scope.context.resource_group()
    scope.used.setdefault("resourceGroup()", (f"name {rg['name']!r}, location {rg['location']!r}", _RG_HINT))
    return rg


@_scoped("subscription")
def _subscription(scope: Scope, args: list[Any]) -> Any:
    need("subscription", args, 0)
    sub = scope.context.subscription()
    scope.used.setdefault("subscription()", (f"subscriptionId {sub['subscriptionId']!r}", _SUB_HINT))
    return sub


@_scoped("tenant")
def _tenant(scope: Scope, args: list[Any]) -> Any:
    need("tenant", args, 0)
    scope.used.setdefault("tenant()", (f"tenantId {scope.context.tenant_id!r}", _SUB_HINT))
    return {"tenantId": scope.context.tenant_id, "countryCode": "", "displayName": "localbuilder"}


@_scoped("deployment")
def _deployment(scope: Scope, args: list[Any]) -> Any:
    need("deployment", args, 0)
    # A local file has no templateLink (ARM sets it only for deployments from a URI), so templates
    # that default `_artifactsLocation` to deployment().properties.templateLink.uri need an override.
    return {
        "name": scope.context.deployment_name,
        "properties": {
            "template": {"contentVersion": scope.template.get("contentVersion", "1.0.0.0")},
            "templateHash": "",
            "parameters": {},
            "mode": "Incremental",
            "provisioningState": "Accepted",
        },
    }


@_scoped("resourceId")
def _resource_id(scope: Scope, args: list[Any]) -> Any:
    # resourceId([subscriptionId], [resourceGroupName], resourceType, name1, [name2, …])
    if len(args) < 2:
        raise ExpressionError("resourceId() expects a resource type and at least one name")
    strings = [str_arg("resourceId", a) for a in args]
    type_at = next((i for i, a in enumerate(strings[:3]) if "/" in a), None)
    if type_at is None or not _RESOURCE_TYPE.match(strings[type_at]):
        raise ExpressionError(
            "resourceId(): no resource type like 'Microsoft.Compute/images' among the first three arguments"
        )
    rtype, names = strings[type_at], strings[type_at + 1 :]
    namespace, *types = rtype.split("/")
    if len(names) != len(types):
        raise ExpressionError(
            f"resourceId(): type {rtype!r} needs {len(types)} name(s) after it, got {len(names)}"
        )
    sub = strings[0] if type_at == 2 else scope.context.subscription_id
    rg = strings[type_at - 1] if type_at >= 1 else scope.context.resource_group_name
    if type_at == 0:
        scope.used.setdefault("resourceId()", (f"resource group {rg!r} in subscription {sub!r}", _RG_HINT))
    path = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{namespace}/{path}"


@_scoped("subscriptionResourceId")
def _subscription_resource_id(scope: Scope, args: list[Any]) -> Any:
    strings = [str_arg("subscriptionResourceId", a) for a in args]
    type_at = next((i for i, a in enumerate(strings[:2]) if "/" in a), None)
    if type_at is None or len(strings) < type_at + 2:
        raise ExpressionError("subscriptionResourceId() expects [subscriptionId,] resourceType, name…")
    namespace, *types = strings[type_at].split("/")
    names = strings[type_at + 1 :]
    if len(names) != len(types):
        raise ExpressionError(f"subscriptionResourceId(): type needs {len(types)} names, got {len(names)}")
    sub = strings[0] if type_at == 1 else scope.context.subscription_id
    path = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
    return f"/subscriptions/{sub}/providers/{namespace}/{path}"


@_scoped("utcNow")
def _utc_now(scope: Scope, args: list[Any]) -> Any:
    need("utcNow", args, 0, 1)
    if not scope.in_parameter_default:
        raise ExpressionError(
            "utcNow() is only allowed in a parameter's defaultValue (ARM rejects it elsewhere)"
        )
    fmt = str_arg("utcNow", args[0], "format") if args else "yyyyMMddTHHmmssZ"
    value = format_datetime(scope.context.now, fmt)
    scope.used.setdefault("utcNow()", (repr(value), _NOW_HINT))
    return value


@_scoped("newGuid")
def _new_guid(scope: Scope, args: list[Any]) -> Any:
    need("newGuid", args, 0)
    if not scope.in_parameter_default:
        raise ExpressionError(
            "newGuid() is only allowed in a parameter's defaultValue (ARM rejects it elsewhere)"
        )
    value = str(uuid.uuid4())
    scope.used.setdefault("newGuid()", (repr(value), _NOW_HINT))
    return value


SUPPORTED_FUNCTIONS = frozenset(FUNCTIONS) | frozenset(_SCOPE_FUNCTIONS) | {"if", "and", "or", "coalesce"}
