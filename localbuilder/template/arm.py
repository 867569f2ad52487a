"""ARM template expressions: tokenizer, parser and evaluator for the ``"[…]"`` language.

Deployment templates compute values with bracketed expressions
(https://learn.microsoft.com/azure/azure-resource-manager/templates/template-expressions):
a JSON string that starts with ``[`` and ends with ``]`` is an expression; ``[[`` at the start
escapes a literal ``[``. Inside: function calls, single-quoted strings (``''`` is a quote),
integers, ``true``/``false``/``null``, property access ``.name`` and indexing ``[0]`` / ``['x']``.

We evaluate what a local build can know (parameters, variables, string/array/object functions,
``resourceGroup()``/``subscription()`` from a local deployment context, ``guid()``, ``utcNow()``)
and refuse, with an :class:`ExpressionError` naming the function, what needs a live Azure
deployment (``reference()``, ``list*()``, …). The loader turns those errors into findings at the
JSON path of the value, so one bad value never hides the others.

Function and parameter names are case-insensitive, as in ARM.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# ARM's guid() is a name-based UUID v5 over this fixed namespace, of the arguments joined by '-'
# (documented on the Bicep string-functions page; widely reproduced, e.g. Terraform's uuidv5()).
_GUID_NAMESPACE = uuid.UUID("11fb06fb-712d-4ddd-98c7-e71bbd588830")
_MAX_EXPR_DEPTH = 64  # nested calls; real templates use < 10
_MAX_EXPR_CHARS = 20_000
_MAX_VALUE_LEN = 1_000_000  # characters of a string / items of an array computed by one call
_MAX_FORMAT_WIDTH = 1000  # .NET alignment and precision in format(): '{0,20}', '{0:D8}'
_RESOURCE_TYPE = re.compile(r"^[A-Za-z0-9.]+/[A-Za-z0-9/]+$")
_DIGITS = "0123456789"  # str.isdigit() also takes '²' and other Unicode digits int() refuses
PLACEHOLDER_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


class ExpressionError(Exception):
    """An expression that cannot be evaluated locally; ``hint`` says what the user can do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


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


# ---------------------------------------------------------------------------------------------
# Syntax: tokens → AST
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Literal:
    value: Any


@dataclasses.dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Node, ...]


@dataclasses.dataclass(frozen=True)
class Member:
    target: Node
    name: str


@dataclasses.dataclass(frozen=True)
class Index:
    target: Node
    index: Node


Node = Literal | Call | Member | Index


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # "(" ")" "[" "]" "," "." "str" "int" "ident" "end"
    value: Any
    pos: int


def is_expression(text: str) -> bool:
    """``[concat(…)]`` is an expression; ``[[literal]`` and ``[not closed`` are not."""
    return len(text) >= 2 and text[0] == "[" and text[-1] == "]" and text[1] != "["


def unescape_literal(text: str) -> str:
    """``[[x]`` → ``[x]``: ARM drops the doubled leading bracket of a literal string."""
    return text[1:] if text.startswith("[[") else text


def _tokenize(src: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(src)
    while i < n:
        ch = src[i]
        if ch.isspace():
            i += 1
        elif ch in "()[],.":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch == "'":
            start, i = i, i + 1
            out: list[str] = []
            while True:
                j = src.find("'", i)
                if j < 0:
                    raise ExpressionError(f"unterminated string literal at character {start + 1}")
                out.append(src[i:j])
                if j + 1 < n and src[j + 1] == "'":  # '' is an escaped quote
                    out.append("'")
                    i = j + 2
                    continue
                i = j + 1
                break
            tokens.append(_Token("str", "".join(out), start))
        elif ch in _DIGITS or (ch == "-" and i + 1 < n and src[i + 1] in _DIGITS):
            start, i = i, i + 1
            while i < n and src[i] in _DIGITS:
                i += 1
            if i - start > 20:
                raise ExpressionError(f"integer literal at character {start + 1} is too long")
            tokens.append(_Token("int", int(src[start:i]), start))
        elif ch.isalpha() or ch == "_":
            start = i
            while i < n and (src[i].isalnum() or src[i] in "_$"):
                i += 1
            tokens.append(_Token("ident", src[start:i], start))
        else:
            raise ExpressionError(f"unexpected character {ch!r} at character {i + 1}")
    tokens.append(_Token("end", None, n))
    return tokens


class _ExprParser:
    def __init__(self, src: str) -> None:
        self.tokens = _tokenize(src)
        self.k = 0

    def peek(self) -> _Token:
        return self.tokens[self.k]

    def take(self, kind: str) -> _Token:
        tok = self.tokens[self.k]
        if tok.kind != kind:
            found = "the end" if tok.kind == "end" else repr(tok.value)
            raise ExpressionError(f"expected {kind!r} at character {tok.pos + 1}, found {found}")
        self.k += 1
        return tok

    def parse(self) -> Node:
        node = self.expr(0)
        tok = self.peek()
        if tok.kind != "end":
            raise ExpressionError(f"unexpected {tok.value!r} at character {tok.pos + 1}")
        return node

    def expr(self, depth: int) -> Node:
        if depth > _MAX_EXPR_DEPTH:
            raise ExpressionError(f"expression nested deeper than {_MAX_EXPR_DEPTH} levels")
        tok = self.peek()
        node: Node
        if tok.kind in ("str", "int"):
            self.k += 1
            node = Literal(tok.value)
        elif tok.kind == "ident":
            self.k += 1
            name = tok.value
            # Namespaced user-defined functions: ns.func(…)
            if (
                self.peek().kind == "."
                and self.tokens[self.k + 1].kind == "ident"
                and self.tokens[self.k + 2].kind == "("
            ):
                self.k += 1
                name = f"{name}.{self.take('ident').value}"
            if self.peek().kind == "(":
                self.k += 1
                args: list[Node] = []
                if self.peek().kind != ")":
                    while True:
                        args.append(self.expr(depth + 1))
                        if self.peek().kind == ",":
                            self.k += 1
                            continue
                        break
                self.take(")")
                node = Call(name, tuple(args))
            elif name.lower() in ("true", "false", "null"):
                node = Literal({"true": True, "false": False, "null": None}[name.lower()])
            else:
                raise ExpressionError(
                    f"{name!r} at character {tok.pos + 1} is not a function call (missing '(…)'?)"
                )
        else:
            found = "the end of the expression" if tok.kind == "end" else repr(tok.value)
            raise ExpressionError(f"expected a value at character {tok.pos + 1}, found {found}")
        while True:
            tok = self.peek()
            if tok.kind == ".":
                self.k += 1
                node = Member(node, self.take("ident").value)
            elif tok.kind == "[":
                self.k += 1
                index = self.expr(depth + 1)
                self.take("]")
                node = Index(node, index)
            else:
                return node


def parse_expression(text: str) -> Node:
    """Parse the inside of ``[…]`` (the brackets already removed)."""
    if len(text) > _MAX_EXPR_CHARS:
        raise ExpressionError(f"expression of {len(text)} characters is too long")
    if not text.strip():
        raise ExpressionError("empty expression '[]'")
    return _ExprParser(text).parse()


# ---------------------------------------------------------------------------------------------
# Values: ARM semantics on JSON values
# ---------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def to_string(value: Any) -> str:
    """ARM's string(): .NET spelling for booleans (``True``), compact JSON for objects/arrays."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _deep_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _get_property(obj: dict[str, Any], name: str, what: str) -> Any:
    if name in obj:
        return obj[name]
    for key, value in obj.items():  # ARM property lookup is case-insensitive
        if key.lower() == name.lower():
            return value
    available = ", ".join(obj) or "none"
    raise ExpressionError(f"{what} has no property {name!r} (available: {available})")


def _merge_objects(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """union() of objects: nested objects merge recursively, anything else is replaced by the later one."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge_objects(out[key], value)
        else:
            out[key] = value
    return out


_NET_DATE_TOKENS = (
    ("yyyy", "%Y"), ("yy", "%y"), ("MM", "%m"), ("M", "-m"), ("dd", "%d"), ("d", "-d"),
    ("HH", "%H"), ("H", "-H"), ("hh", "%I"), ("h", "-I"), ("mm", "%M"), ("m", "-M"),
    ("ss", "%S"), ("s", "-S"), ("tt", "%p"),
)  # fmt: skip
_NET_STANDARD_DATES = {"u": "yyyy-MM-dd HH:mm:ssZ", "s": "yyyy-MM-ddTHH:mm:ss", "d": "M/d/yyyy"}


def format_datetime(when: dt.datetime, fmt: str) -> str:
    """A .NET custom date/time format string (``yyyy.MM.ddHHmm``) applied to ``when``."""
    if fmt in ("o", "O"):
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    fmt = _NET_STANDARD_DATES.get(fmt, fmt)
    if len(fmt) == 1 and fmt.isalpha():
        raise ExpressionError(
            f"utcNow(): standard format {fmt!r} is not supported", "use a custom format like 'yyyyMMdd'"
        )
    out: list[str] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch in "'\"":  # quoted literal
            end = fmt.find(ch, i + 1)
            end = len(fmt) if end < 0 else end
            out.append(fmt[i + 1 : end])
            i = end + 1
            continue
        if ch == "\\" and i + 1 < len(fmt):
            out.append(fmt[i + 1])
            i += 2
            continue
        if ch == "f" or ch == "F":
            j = i
            while j < len(fmt) and fmt[j] == ch:
                j += 1
            out.append(f"{when.microsecond:06d}"[: min(j - i, 6)].ljust(j - i, "0"))
            i = j
            continue
        for token, code in _NET_DATE_TOKENS:
            if fmt.startswith(token, i):
                if code.startswith("-"):
                    out.append(str(int(when.strftime("%" + code[1]))))
                else:
                    out.append(when.strftime(code))
                i += len(token)
                break
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def dotnet_format(fmt: str, args: Sequence[Any]) -> str:
    """.NET composite formatting as ARM's format(): ``{0}``, ``{0,-8}``, ``{0:D3}``, ``{{``/``}}``."""
    out: list[str] = []
    i, n = 0, len(fmt)
    while i < n:
        ch = fmt[i]
        if ch == "{":
            if fmt.startswith("{{", i):
                out.append("{")
                i += 2
                continue
            end = fmt.find("}", i)
            if end < 0:
                raise ExpressionError(f"format(): unclosed '{{' at position {i} of the format string")
            item = fmt[i + 1 : end]
            spec = ""
            if ":" in item:
                item, spec = item.split(":", 1)
            align = 0
            if "," in item:
                item, align_text = item.split(",", 1)
                try:
                    align = int(align_text.strip())
                    if abs(align) > _MAX_FORMAT_WIDTH:
                        raise ValueError
                except ValueError:
                    raise ExpressionError(f"format(): bad alignment in {{{fmt[i + 1 : end]}}}") from None
            if not re.fullmatch(r"\s*[0-9]{1,6}\s*", item):
                raise ExpressionError(f"format(): {{{fmt[i + 1 : end]}}} is not a placeholder like {{0}}")
            index = int(item)
            if index >= len(args):
                raise ExpressionError(
                    f"format(): {{{index}}} refers to argument {index}, but only {len(args)} given"
                )
            text = _format_item(args[index], spec)
            out.append(text.rjust(align) if align > 0 else text.ljust(-align))
            i = end + 1
        elif ch == "}":
            if fmt.startswith("}}", i):
                out.append("}")
                i += 2
                continue
            raise ExpressionError(f"format(): unmatched '}}' at position {i} of the format string")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _format_item(value: Any, spec: str) -> str:
    if not spec or not isinstance(value, int) or isinstance(value, bool):
        return to_string(value)  # .NET ignores format specs for strings
    kind, digits = spec[0], spec[1:]
    if digits and not re.fullmatch(r"[0-9]{1,9}", digits):
        raise ExpressionError(f"format(): numeric format {spec!r} is not supported")
    width = int(digits) if digits else 0
    if width > _MAX_FORMAT_WIDTH:
        raise ExpressionError(f"format(): precision {width} is too large")
    if kind in "Dd":
        return ("-" if value < 0 else "") + str(abs(value)).zfill(width)
    if kind in "Xx":
        text = format(value, "x" if kind == "x" else "X")
        return text.zfill(width)
    if kind in "Nn":  # group separators, and 2 decimals unless a precision is given
        decimals = width if digits else 2
        return f"{value:,}" + ("." + "0" * decimals if decimals else "")
    raise ExpressionError(f"format(): numeric format {spec!r} is not supported")


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


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
                raise ExpressionError(f"cannot read property {node.name!r} of a {_type_name(target)} value")
            return _get_property(target, node.name, _describe(node.target))
        if isinstance(node, Index):
            target = self.eval(node.target)
            index = self.eval(node.index)
            if isinstance(target, list):
                if not isinstance(index, int) or isinstance(index, bool):
                    raise ExpressionError(f"an array index must be an integer, not {_type_name(index)}")
                if not 0 <= index < len(target):
                    raise ExpressionError(
                        f"index {index} is out of range for an array of {len(target)} items"
                    )
                return target[index]
            if isinstance(target, dict):
                if not isinstance(index, str):
                    raise ExpressionError(f"an object index must be a string, not {_type_name(index)}")
                return _get_property(target, index, _describe(node.target))
            raise ExpressionError(f"cannot index a {_type_name(target)} value")
        return self.call(node)

    def call(self, node: Call) -> Any:
        name = node.name.lower()
        if name == "if":  # lazy, like ARM: only the chosen branch is evaluated
            if len(node.args) != 3:
                raise ExpressionError("if() expects 3 arguments (condition, trueValue, falseValue)")
            cond = self.eval(node.args[0])
            if not isinstance(cond, bool):
                raise ExpressionError(f"if(): the condition must be a bool, not {_type_name(cond)}")
            return self.eval(node.args[1] if cond else node.args[2])
        if name in ("and", "or", "coalesce"):
            return self._short_circuit(name, node.args)
        func = _FUNCTIONS.get(name)
        if func is None:
            raise _unsupported(node.name)
        args = [self.eval(arg) for arg in node.args]
        try:
            value = func(self, args)
        except (ValueError, OverflowError, MemoryError) as exc:
            raise ExpressionError(f"{node.name}(): {exc}") from None
        # Nested replace()/concat() can grow a value exponentially; a template never needs this much.
        if isinstance(value, str | list) and len(value) > _MAX_VALUE_LEN:
            raise ExpressionError(f"{node.name}() produced a value longer than {_MAX_VALUE_LEN} items")
        return value

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
                raise ExpressionError(f"{name}(): arguments must be bools, not {_type_name(value)}")
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


# Functions that need a live Azure deployment (or that we deliberately do not emulate).
_NEEDS_AZURE = {
    "reference": "reads the runtime state of a deployed resource",
    "list": "calls a resource's list action", "listkeys": "calls a resource's list action",
    "listsecrets": "calls a resource's list action", "listaccountsas": "calls a resource's list action",
    "pickzones": "queries Azure for availability zones", "providers": "queries Azure resource providers",
    "environment": "describes the Azure cloud", "managementgroup": "needs a management group deployment",
    "managementgroupresourceid": "needs a management group deployment",
    "extensionresourceid": "names an extension resource in Azure",
    "uniquestring": "hashes Azure ids (not emulated)",
}  # fmt: skip


def _unsupported(name: str) -> ExpressionError:
    why = _NEEDS_AZURE.get(name.lower())
    if "." in name:
        return ExpressionError(f"user-defined function {name}() is not supported")
    if why:
        return ExpressionError(f"ARM function {name}() cannot be evaluated locally: it {why}")
    return ExpressionError(f"unknown or unsupported ARM function {name}()")


def _need(name: str, args: Sequence[Any], lo: int, hi: int | None = None) -> None:
    hi = lo if hi is None else hi
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else (f"at least {lo}" if hi > 99 else f"{lo} to {hi}")
        raise ExpressionError(f"{name}() expects {want} argument{'s' if hi != 1 else ''}, got {len(args)}")


def _str_arg(name: str, value: Any, what: str = "argument") -> str:
    if not isinstance(value, str):
        raise ExpressionError(f"{name}(): the {what} must be a string, not {_type_name(value)}")
    return value


def _int_arg(name: str, value: Any, what: str = "argument") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ExpressionError(f"{name}(): the {what} must be an integer, not {_type_name(value)}")
    return value


_RG_HINT = "set the real values in the deployment context (resource_group_name, resource_group_location)"
_SUB_HINT = "set the real values in the deployment context (subscription_id, tenant_id)"
_NOW_HINT = "it changes on every load; pass --param NAME=VALUE to the parameter that uses it to pin it"
_Impl = Callable[[Scope, list[Any]], Any]
_FUNCTIONS: dict[str, _Impl] = {}


def _fn(name: str) -> Callable[[_Impl], _Impl]:
    def register(impl: _Impl) -> _Impl:
        _FUNCTIONS[name.lower()] = impl
        return impl

    return register


@_fn("parameters")
def _parameters(scope: Scope, args: list[Any]) -> Any:
    _need("parameters", args, 1)
    return scope.resolve_parameter(_str_arg("parameters", args[0], "parameter name"))


@_fn("variables")
def _variables(scope: Scope, args: list[Any]) -> Any:
    _need("variables", args, 1)
    return scope.resolve_variable(_str_arg("variables", args[0], "variable name"))


@_fn("concat")
def _concat(scope: Scope, args: list[Any]) -> Any:
    _need("concat", args, 1, 999)
    if all(isinstance(a, list) for a in args):
        return [item for a in args for item in a]
    if any(isinstance(a, list | dict) for a in args):
        raise ExpressionError(
            "concat(): cannot mix arrays/objects with strings; use all arrays or all strings"
        )
    return "".join(to_string(a) for a in args)


@_fn("format")
def _format(scope: Scope, args: list[Any]) -> Any:
    _need("format", args, 1, 999)
    return dotnet_format(_str_arg("format", args[0], "format string"), args[1:])


@_fn("union")
def _union(scope: Scope, args: list[Any]) -> Any:
    _need("union", args, 1, 999)
    if all(isinstance(a, dict) for a in args):
        merged: dict[str, Any] = {}
        for a in args:
            merged = _merge_objects(merged, a)
        return merged
    if all(isinstance(a, list) for a in args):
        out: list[Any] = []
        for a in args:
            for item in a:
                if not any(_deep_equal(item, seen) for seen in out):
                    out.append(item)
        return out
    raise ExpressionError("union(): arguments must be all objects or all arrays")


@_fn("intersection")
def _intersection(scope: Scope, args: list[Any]) -> Any:
    _need("intersection", args, 2, 999)
    if all(isinstance(a, dict) for a in args):
        first = args[0]
        return {k: v for k, v in first.items() if all(k in o and _deep_equal(o[k], v) for o in args[1:])}
    if all(isinstance(a, list) for a in args):
        out: list[Any] = []
        for item in args[0]:
            if all(any(_deep_equal(item, x) for x in o) for o in args[1:]) and not any(
                _deep_equal(item, x) for x in out
            ):
                out.append(item)
        return out
    raise ExpressionError("intersection(): arguments must be all objects or all arrays")


@_fn("equals")
def _equals(scope: Scope, args: list[Any]) -> Any:
    _need("equals", args, 2)
    return _deep_equal(args[0], args[1])


@_fn("not")
def _not(scope: Scope, args: list[Any]) -> Any:
    _need("not", args, 1)
    if not isinstance(args[0], bool):
        raise ExpressionError(f"not(): the argument must be a bool, not {_type_name(args[0])}")
    return not args[0]


def _compare(name: str, op: Callable[[Any, Any], bool]) -> None:
    def impl(scope: Scope, args: list[Any]) -> Any:
        _need(name, args, 2)
        a, b = args
        both_int = all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b))
        if not (both_int or (isinstance(a, str) and isinstance(b, str))):
            raise ExpressionError(
                f"{name}(): compare two integers or two strings, not {_type_name(a)}/{_type_name(b)}"
            )
        return op(a, b)

    _FUNCTIONS[name.lower()] = impl


_compare("greater", lambda a, b: a > b)
_compare("greaterOrEquals", lambda a, b: a >= b)
_compare("less", lambda a, b: a < b)
_compare("lessOrEquals", lambda a, b: a <= b)


def _arith(name: str, op: Callable[[int, int], int]) -> None:
    def impl(scope: Scope, args: list[Any]) -> Any:
        _need(name, args, 2)
        a, b = (_int_arg(name, x) for x in args)
        if name in ("div", "mod") and b == 0:
            raise ExpressionError(f"{name}(): division by zero")
        return op(a, b)

    _FUNCTIONS[name] = impl


_arith("add", lambda a, b: a + b)
_arith("sub", lambda a, b: a - b)
_arith("mul", lambda a, b: a * b)
# .NET integer division and remainder truncate toward zero.
_arith("div", lambda a, b: abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1))
_arith("mod", lambda a, b: abs(a) % abs(b) * (1 if a >= 0 else -1))


@_fn("min")
def _min(scope: Scope, args: list[Any]) -> Any:
    values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    ints = [_int_arg("min", v) for v in values]
    if not ints:
        raise ExpressionError("min(): no values")
    return min(ints)


@_fn("max")
def _max(scope: Scope, args: list[Any]) -> Any:
    values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    ints = [_int_arg("max", v) for v in values]
    if not ints:
        raise ExpressionError("max(): no values")
    return max(ints)


@_fn("createArray")
def _create_array(scope: Scope, args: list[Any]) -> Any:
    return list(args)


@_fn("array")
def _array(scope: Scope, args: list[Any]) -> Any:
    _need("array", args, 1)
    return args[0] if isinstance(args[0], list) else [args[0]]


@_fn("createObject")
def _create_object(scope: Scope, args: list[Any]) -> Any:
    if len(args) % 2:
        raise ExpressionError("createObject() expects key/value pairs (an even number of arguments)")
    return {_str_arg("createObject", args[i], "key"): args[i + 1] for i in range(0, len(args), 2)}


@_fn("range")
def _range(scope: Scope, args: list[Any]) -> Any:
    _need("range", args, 2)
    start, count = _int_arg("range", args[0], "start"), _int_arg("range", args[1], "count")
    if not 0 <= count <= 10000:
        raise ExpressionError("range(): count must be between 0 and 10000")
    return list(range(start, start + count))


@_fn("resourceGroup")
def _resource_group(scope: Scope, args: list[Any]) -> Any:
    _need("resourceGroup", args, 0)
    rg = scope.context.resource_group()
    scope.used.setdefault("resourceGroup()", (f"name {rg['name']!r}, location {rg['location']!r}", _RG_HINT))
    return rg


@_fn("subscription")
def _subscription(scope: Scope, args: list[Any]) -> Any:
    _need("subscription", args, 0)
    sub = scope.context.subscription()
    scope.used.setdefault("subscription()", (f"subscriptionId {sub['subscriptionId']!r}", _SUB_HINT))
    return sub


@_fn("tenant")
def _tenant(scope: Scope, args: list[Any]) -> Any:
    _need("tenant", args, 0)
    scope.used.setdefault("tenant()", (f"tenantId {scope.context.tenant_id!r}", _SUB_HINT))
    return {"tenantId": scope.context.tenant_id, "countryCode": "", "displayName": "localbuilder"}


@_fn("deployment")
def _deployment(scope: Scope, args: list[Any]) -> Any:
    _need("deployment", args, 0)
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


@_fn("resourceId")
def _resource_id(scope: Scope, args: list[Any]) -> Any:
    # resourceId([subscriptionId], [resourceGroupName], resourceType, name1, [name2, …])
    if len(args) < 2:
        raise ExpressionError("resourceId() expects a resource type and at least one name")
    strings = [_str_arg("resourceId", a) for a in args]
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


@_fn("subscriptionResourceId")
def _subscription_resource_id(scope: Scope, args: list[Any]) -> Any:
    strings = [_str_arg("subscriptionResourceId", a) for a in args]
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


@_fn("guid")
def _guid(scope: Scope, args: list[Any]) -> Any:
    _need("guid", args, 1, 999)
    return str(uuid.uuid5(_GUID_NAMESPACE, "-".join(_str_arg("guid", a) for a in args)))


@_fn("utcNow")
def _utc_now(scope: Scope, args: list[Any]) -> Any:
    _need("utcNow", args, 0, 1)
    if not scope.in_parameter_default:
        raise ExpressionError(
            "utcNow() is only allowed in a parameter's defaultValue (ARM rejects it elsewhere)"
        )
    fmt = _str_arg("utcNow", args[0], "format") if args else "yyyyMMddTHHmmssZ"
    value = format_datetime(scope.context.now, fmt)
    scope.used.setdefault("utcNow()", (repr(value), _NOW_HINT))
    return value


@_fn("newGuid")
def _new_guid(scope: Scope, args: list[Any]) -> Any:
    _need("newGuid", args, 0)
    if not scope.in_parameter_default:
        raise ExpressionError(
            "newGuid() is only allowed in a parameter's defaultValue (ARM rejects it elsewhere)"
        )
    value = str(uuid.uuid4())
    scope.used.setdefault("newGuid()", (repr(value), _NOW_HINT))
    return value


@_fn("uri")
def _uri(scope: Scope, args: list[Any]) -> Any:
    _need("uri", args, 2)
    base = _str_arg("uri", args[0], "base URI")
    rel = _str_arg("uri", args[1], "relative URI")
    if not urllib.parse.urlsplit(base).scheme:
        raise ExpressionError(f"uri(): the base {base!r} is not an absolute URI")
    return urllib.parse.urljoin(base, rel)


@_fn("uriComponent")
def _uri_component(scope: Scope, args: list[Any]) -> Any:
    _need("uriComponent", args, 1)
    return urllib.parse.quote(_str_arg("uriComponent", args[0]), safe="-_.!~*'()")


@_fn("uriComponentToString")
def _uri_component_to_string(scope: Scope, args: list[Any]) -> Any:
    _need("uriComponentToString", args, 1)
    return urllib.parse.unquote(_str_arg("uriComponentToString", args[0]))


@_fn("toLower")
def _to_lower(scope: Scope, args: list[Any]) -> Any:
    _need("toLower", args, 1)
    return _str_arg("toLower", args[0]).lower()


@_fn("toUpper")
def _to_upper(scope: Scope, args: list[Any]) -> Any:
    _need("toUpper", args, 1)
    return _str_arg("toUpper", args[0]).upper()


@_fn("trim")
def _trim(scope: Scope, args: list[Any]) -> Any:
    _need("trim", args, 1)
    return _str_arg("trim", args[0]).strip()


@_fn("string")
def _string(scope: Scope, args: list[Any]) -> Any:
    _need("string", args, 1)
    return to_string(args[0])


@_fn("int")
def _int(scope: Scope, args: list[Any]) -> Any:
    _need("int", args, 1)
    value = args[0]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,19}\s*", value):
        return int(value)
    raise ExpressionError(f"int(): cannot convert {to_string(value)!r} to an integer")


@_fn("bool")
def _bool(scope: Scope, args: list[Any]) -> Any:
    _need("bool", args, 1)
    value = args[0]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int):
        return value != 0
    raise ExpressionError(f"bool(): cannot convert {to_string(value)!r} to a bool")


@_fn("json")
def _json(scope: Scope, args: list[Any]) -> Any:
    _need("json", args, 1)
    text = _str_arg("json", args[0])
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ExpressionError(f"json(): not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@_fn("length")
def _length(scope: Scope, args: list[Any]) -> Any:
    _need("length", args, 1)
    if isinstance(args[0], str | list | dict):
        return len(args[0])
    raise ExpressionError(f"length(): expects a string, array or object, not {_type_name(args[0])}")


@_fn("empty")
def _empty(scope: Scope, args: list[Any]) -> Any:
    _need("empty", args, 1)
    if args[0] is None:
        return True
    if isinstance(args[0], str | list | dict):
        return len(args[0]) == 0
    raise ExpressionError(f"empty(): expects a string, array or object, not {_type_name(args[0])}")


@_fn("contains")
def _contains(scope: Scope, args: list[Any]) -> Any:
    _need("contains", args, 2)
    container, item = args
    if isinstance(container, str):
        return to_string(item) in container
    if isinstance(container, list):
        return any(_deep_equal(item, x) for x in container)
    if isinstance(container, dict):
        return isinstance(item, str) and any(k.lower() == item.lower() for k in container)
    raise ExpressionError(f"contains(): expects a string, array or object, not {_type_name(container)}")


@_fn("startsWith")
def _starts_with(scope: Scope, args: list[Any]) -> Any:
    _need("startsWith", args, 2)
    return _str_arg("startsWith", args[0]).lower().startswith(_str_arg("startsWith", args[1]).lower())


@_fn("endsWith")
def _ends_with(scope: Scope, args: list[Any]) -> Any:
    _need("endsWith", args, 2)
    return _str_arg("endsWith", args[0]).lower().endswith(_str_arg("endsWith", args[1]).lower())


@_fn("indexOf")
def _index_of(scope: Scope, args: list[Any]) -> Any:
    _need("indexOf", args, 2)
    return _str_arg("indexOf", args[0]).lower().find(_str_arg("indexOf", args[1]).lower())


@_fn("lastIndexOf")
def _last_index_of(scope: Scope, args: list[Any]) -> Any:
    _need("lastIndexOf", args, 2)
    return _str_arg("lastIndexOf", args[0]).lower().rfind(_str_arg("lastIndexOf", args[1]).lower())


@_fn("replace")
def _replace(scope: Scope, args: list[Any]) -> Any:
    _need("replace", args, 3)
    old = _str_arg("replace", args[1], "old string")
    if not old:
        raise ExpressionError("replace(): the string to replace must not be empty")
    return _str_arg("replace", args[0]).replace(old, _str_arg("replace", args[2], "new string"))


@_fn("split")
def _split(scope: Scope, args: list[Any]) -> Any:
    _need("split", args, 2)
    text = _str_arg("split", args[0])
    delims = args[1] if isinstance(args[1], list) else [args[1]]
    delims = [_str_arg("split", d, "delimiter") for d in delims]
    if not all(delims):
        raise ExpressionError("split(): a delimiter must not be empty")
    pattern = "|".join(re.escape(d) for d in delims)
    return re.split(pattern, text)


@_fn("join")
def _join(scope: Scope, args: list[Any]) -> Any:
    _need("join", args, 2)
    if not isinstance(args[0], list):
        raise ExpressionError("join(): the first argument must be an array")
    return _str_arg("join", args[1], "delimiter").join(to_string(x) for x in args[0])


@_fn("substring")
def _substring(scope: Scope, args: list[Any]) -> Any:
    _need("substring", args, 1, 3)
    text = _str_arg("substring", args[0])
    start = _int_arg("substring", args[1], "start index") if len(args) > 1 else 0
    length = _int_arg("substring", args[2], "length") if len(args) > 2 else len(text) - start
    if start < 0 or length < 0 or start + length > len(text):
        raise ExpressionError(
            f"substring(): start {start} and length {length} are outside the {len(text)}-character string"
        )
    return text[start : start + length]


def _seq_arg(name: str, value: Any) -> str | list[Any]:
    if isinstance(value, str | list):
        return value
    raise ExpressionError(f"{name}(): expects a string or an array, not {_type_name(value)}")


@_fn("first")
def _first(scope: Scope, args: list[Any]) -> Any:
    _need("first", args, 1)
    seq = _seq_arg("first", args[0])
    return seq[0] if seq else ("" if isinstance(seq, str) else None)


@_fn("last")
def _last(scope: Scope, args: list[Any]) -> Any:
    _need("last", args, 1)
    seq = _seq_arg("last", args[0])
    return seq[-1] if seq else ("" if isinstance(seq, str) else None)


@_fn("take")
def _take(scope: Scope, args: list[Any]) -> Any:
    _need("take", args, 2)
    seq, count = _seq_arg("take", args[0]), _int_arg("take", args[1], "count")
    return seq[: max(count, 0)]


@_fn("skip")
def _skip(scope: Scope, args: list[Any]) -> Any:
    _need("skip", args, 2)
    seq, count = _seq_arg("skip", args[0]), _int_arg("skip", args[1], "count")
    return seq[max(count, 0) :]


@_fn("base64")
def _base64(scope: Scope, args: list[Any]) -> Any:
    _need("base64", args, 1)
    return base64.b64encode(_str_arg("base64", args[0]).encode()).decode()


@_fn("base64ToString")
def _base64_to_string(scope: Scope, args: list[Any]) -> Any:
    _need("base64ToString", args, 1)
    try:
        return base64.b64decode(_str_arg("base64ToString", args[0]), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ExpressionError(f"base64ToString(): {exc}") from None


@_fn("true")
def _true(scope: Scope, args: list[Any]) -> Any:
    _need("true", args, 0)
    return True


@_fn("false")
def _false(scope: Scope, args: list[Any]) -> Any:
    _need("false", args, 0)
    return False


@_fn("null")
def _null(scope: Scope, args: list[Any]) -> Any:
    _need("null", args, 0)
    return None


SUPPORTED_FUNCTIONS = frozenset(_FUNCTIONS) | {"if", "and", "or", "coalesce"}
