"""ARM's built-in functions on values: string, array, object, comparison, logical, numeric, conversion.

Each takes the evaluated arguments and nothing else; the functions that read the deployment
(``parameters()``, ``resourceGroup()``, ``utcNow()`` …) live with the evaluator in ``template.arm``.
:func:`unsupported` names the functions that need a live Azure deployment.
Reference: https://learn.microsoft.com/azure/azure-resource-manager/templates/template-functions
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from localbuilder.template.arm_syntax import ExpressionError
from localbuilder.template.arm_values import deep_equal, dotnet_format, merge_objects, to_string, type_name

# ARM's guid() is a name-based UUID v5 over this fixed namespace, of the arguments joined by '-'
# (documented on the Bicep string-functions page; widely reproduced, e.g. Terraform's uuidv5()).
_GUID_NAMESPACE = uuid.UUID("11fb06fb-712d-4ddd-98c7-e71bbd588830")

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


def unsupported(name: str) -> ExpressionError:
    """The error for a call of a function ARM has but a local build cannot (or that does not exist)."""
    why = _NEEDS_AZURE.get(name.lower())
    if "." in name:
        return ExpressionError(f"user-defined function {name}() is not supported")
    if why:
        return ExpressionError(f"ARM function {name}() cannot be evaluated locally: it {why}")
    return ExpressionError(f"unknown or unsupported ARM function {name}()")


def need(name: str, args: Sequence[Any], lo: int, hi: int | None = None) -> None:
    """Check that ``name()`` got between ``lo`` and ``hi`` arguments (exactly ``lo`` without ``hi``)."""
    hi = lo if hi is None else hi
    if not lo <= len(args) <= hi:
        want = str(lo) if lo == hi else (f"at least {lo}" if hi > 99 else f"{lo} to {hi}")
        raise ExpressionError(f"{name}() expects {want} argument{'s' if hi != 1 else ''}, got {len(args)}")


def str_arg(name: str, value: Any, what: str = "argument") -> str:
    if not isinstance(value, str):
        raise ExpressionError(f"{name}(): the {what} must be a string, not {type_name(value)}")
    return value


def int_arg(name: str, value: Any, what: str = "argument") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ExpressionError(f"{name}(): the {what} must be an integer, not {type_name(value)}")
    return value


Function = Callable[[list[Any]], Any]
FUNCTIONS: dict[str, Function] = {}  # lower-case name → implementation


def _fn(name: str) -> Callable[[Function], Function]:
    def register(impl: Function) -> Function:
        FUNCTIONS[name.lower()] = impl
        return impl

    return register


@_fn("concat")
def _concat(args: list[Any]) -> Any:
    need("concat", args, 1, 999)
    if all(isinstance(a, list) for a in args):
        return [item for a in args for item in a]
    if any(isinstance(a, list | dict) for a in args):
        raise ExpressionError(
            "concat(): cannot mix arrays/objects with strings; use all arrays or all strings"
        )
    return "".join(to_string(a) for a in args)


@_fn("format")
def _format(args: list[Any]) -> Any:
    need("format", args, 1, 999)
    return dotnet_format(str_arg("format", args[0], "format string"), args[1:])


@_fn("union")
def _union(args: list[Any]) -> Any:
    need("union", args, 1, 999)
    if all(isinstance(a, dict) for a in args):
        merged: dict[str, Any] = {}
        for a in args:
            merged = merge_objects(merged, a)
        return merged
    if all(isinstance(a, list) for a in args):
        out: list[Any] = []
        for a in args:
            for item in a:
                if not any(deep_equal(item, seen) for seen in out):
                    out.append(item)
        return out
    raise ExpressionError("union(): arguments must be all objects or all arrays")


@_fn("intersection")
def _intersection(args: list[Any]) -> Any:
    need("intersection", args, 2, 999)
    if all(isinstance(a, dict) for a in args):
        first = args[0]
        return {k: v for k, v in first.items() if all(k in o and deep_equal(o[k], v) for o in args[1:])}
    if all(isinstance(a, list) for a in args):
        out: list[Any] = []
        for item in args[0]:
            if all(any(deep_equal(item, x) for x in o) for o in args[1:]) and not any(
                deep_equal(item, x) for x in out
            ):
                out.append(item)
        return out
    raise ExpressionError("intersection(): arguments must be all objects or all arrays")


@_fn("equals")
def _equals(args: list[Any]) -> Any:
    need("equals", args, 2)
    return deep_equal(args[0], args[1])


@_fn("not")
def _not(args: list[Any]) -> Any:
    need("not", args, 1)
    if not isinstance(args[0], bool):
        raise ExpressionError(f"not(): the argument must be a bool, not {type_name(args[0])}")
    return not args[0]


def _compare(name: str, op: Callable[[Any, Any], bool]) -> None:
    def impl(args: list[Any]) -> Any:
        need(name, args, 2)
        a, b = args
        both_int = all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b))
        if not (both_int or (isinstance(a, str) and isinstance(b, str))):
            raise ExpressionError(
                f"{name}(): compare two integers or two strings, not {type_name(a)}/{type_name(b)}"
            )
        return op(a, b)

    FUNCTIONS[name.lower()] = impl


_compare("greater", lambda a, b: a > b)
_compare("greaterOrEquals", lambda a, b: a >= b)
_compare("less", lambda a, b: a < b)
_compare("lessOrEquals", lambda a, b: a <= b)


def _arith(name: str, op: Callable[[int, int], int]) -> None:
    def impl(args: list[Any]) -> Any:
        need(name, args, 2)
        a, b = (int_arg(name, x) for x in args)
        if name in ("div", "mod") and b == 0:
            raise ExpressionError(f"{name}(): division by zero")
        return op(a, b)

    FUNCTIONS[name] = impl


_arith("add", lambda a, b: a + b)
_arith("sub", lambda a, b: a - b)
_arith("mul", lambda a, b: a * b)
# .NET integer division and remainder truncate toward zero.
_arith("div", lambda a, b: abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1))
_arith("mod", lambda a, b: abs(a) % abs(b) * (1 if a >= 0 else -1))


@_fn("min")
def _min(args: list[Any]) -> Any:
    values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    ints = [int_arg("min", v) for v in values]
    if not ints:
        raise ExpressionError("min(): no values")
    return min(ints)


@_fn("max")
def _max(args: list[Any]) -> Any:
    values = args[0] if len(args) == 1 and isinstance(args[0], list) else args
    ints = [int_arg("max", v) for v in values]
    if not ints:
        raise ExpressionError("max(): no values")
    return max(ints)


@_fn("createArray")
def _create_array(args: list[Any]) -> Any:
    return list(args)


@_fn("array")
def _array(args: list[Any]) -> Any:
    need("array", args, 1)
    return args[0] if isinstance(args[0], list) else [args[0]]


@_fn("createObject")
def _create_object(args: list[Any]) -> Any:
    if len(args) % 2:
        raise ExpressionError("createObject() expects key/value pairs (an even number of arguments)")
    return {str_arg("createObject", args[i], "key"): args[i + 1] for i in range(0, len(args), 2)}


@_fn("range")
def _range(args: list[Any]) -> Any:
    need("range", args, 2)
    start, count = int_arg("range", args[0], "start"), int_arg("range", args[1], "count")
    if not 0 <= count <= 10000:
        raise ExpressionError("range(): count must be between 0 and 10000")
    return list(range(start, start + count))


@_fn("guid")
def _guid(args: list[Any]) -> Any:
    need("guid", args, 1, 999)
    return str(uuid.uuid5(_GUID_NAMESPACE, "-".join(str_arg("guid", a) for a in args)))


@_fn("uri")
def _uri(args: list[Any]) -> Any:
    need("uri", args, 2)
    base = str_arg("uri", args[0], "base URI")
    rel = str_arg("uri", args[1], "relative URI")
    if not urllib.parse.urlsplit(base).scheme:
        raise ExpressionError(f"uri(): the base {base!r} is not an absolute URI")
    return urllib.parse.urljoin(base, rel)


@_fn("uriComponent")
def _uri_component(args: list[Any]) -> Any:
    need("uriComponent", args, 1)
    return urllib.parse.quote(str_arg("uriComponent", args[0]), safe="-_.!~*'()")


@_fn("uriComponentToString")
def _uri_component_to_string(args: list[Any]) -> Any:
    need("uriComponentToString", args, 1)
    return urllib.parse.unquote(str_arg("uriComponentToString", args[0]))


@_fn("toLower")
def _to_lower(args: list[Any]) -> Any:
    need("toLower", args, 1)
    return str_arg("toLower", args[0]).lower()


@_fn("toUpper")
def _to_upper(args: list[Any]) -> Any:
    need("toUpper", args, 1)
    return str_arg("toUpper", args[0]).upper()


@_fn("trim")
def _trim(args: list[Any]) -> Any:
    need("trim", args, 1)
    return str_arg("trim", args[0]).strip()


@_fn("string")
def _string(args: list[Any]) -> Any:
    need("string", args, 1)
    return to_string(args[0])


@_fn("int")
def _int(args: list[Any]) -> Any:
    need("int", args, 1)
    value = args[0]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,19}\s*", value):
        return int(value)
    raise ExpressionError(f"int(): cannot convert {to_string(value)!r} to an integer")


@_fn("bool")
def _bool(args: list[Any]) -> Any:
    need("bool", args, 1)
    value = args[0]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int):
        return value != 0
    raise ExpressionError(f"bool(): cannot convert {to_string(value)!r} to a bool")


@_fn("json")
def _json(args: list[Any]) -> Any:
    need("json", args, 1)
    text = str_arg("json", args[0])
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ExpressionError(f"json(): not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@_fn("length")
def _length(args: list[Any]) -> Any:
    need("length", args, 1)
    if isinstance(args[0], str | list | dict):
        return len(args[0])
    raise ExpressionError(f"length(): expects a string, array or object, not {type_name(args[0])}")


@_fn("empty")
def _empty(args: list[Any]) -> Any:
    need("empty", args, 1)
    if args[0] is None:
        return True
    if isinstance(args[0], str | list | dict):
        return len(args[0]) == 0
    raise ExpressionError(f"empty(): expects a string, array or object, not {type_name(args[0])}")


@_fn("contains")
def _contains(args: list[Any]) -> Any:
    need("contains", args, 2)
    container, item = args
    if isinstance(container, str):
        return to_string(item) in container
    if isinstance(container, list):
        return any(deep_equal(item, x) for x in container)
    if isinstance(container, dict):
        return isinstance(item, str) and any(k.lower() == item.lower() for k in container)
    raise ExpressionError(f"contains(): expects a string, array or object, not {type_name(container)}")


@_fn("startsWith")
def _starts_with(args: list[Any]) -> Any:
    need("startsWith", args, 2)
    return str_arg("startsWith", args[0]).lower().startswith(str_arg("startsWith", args[1]).lower())


@_fn("endsWith")
def _ends_with(args: list[Any]) -> Any:
    need("endsWith", args, 2)
    return str_arg("endsWith", args[0]).lower().endswith(str_arg("endsWith", args[1]).lower())


@_fn("indexOf")
def _index_of(args: list[Any]) -> Any:
    need("indexOf", args, 2)
    return str_arg("indexOf", args[0]).lower().find(str_arg("indexOf", args[1]).lower())


@_fn("lastIndexOf")
def _last_index_of(args: list[Any]) -> Any:
    need("lastIndexOf", args, 2)
    return str_arg("lastIndexOf", args[0]).lower().rfind(str_arg("lastIndexOf", args[1]).lower())


@_fn("replace")
def _replace(args: list[Any]) -> Any:
    need("replace", args, 3)
    old = str_arg("replace", args[1], "old string")
    if not old:
        raise ExpressionError("replace(): the string to replace must not be empty")
    return str_arg("replace", args[0]).replace(old, str_arg("replace", args[2], "new string"))


@_fn("split")
def _split(args: list[Any]) -> Any:
    need("split", args, 2)
    text = str_arg("split", args[0])
    delims = args[1] if isinstance(args[1], list) else [args[1]]
    delims = [str_arg("split", d, "delimiter") for d in delims]
    if not all(delims):
        raise ExpressionError("split(): a delimiter must not be empty")
    pattern = "|".join(re.escape(d) for d in delims)
    return re.split(pattern, text)


@_fn("join")
def _join(args: list[Any]) -> Any:
    need("join", args, 2)
    if not isinstance(args[0], list):
        raise ExpressionError("join(): the first argument must be an array")
    return str_arg("join", args[1], "delimiter").join(to_string(x) for x in args[0])


@_fn("substring")
def _substring(args: list[Any]) -> Any:
    need("substring", args, 1, 3)
    text = str_arg("substring", args[0])
    start = int_arg("substring", args[1], "start index") if len(args) > 1 else 0
    length = int_arg("substring", args[2], "length") if len(args) > 2 else len(text) - start
    if start < 0 or length < 0 or start + length > len(text):
        raise ExpressionError(
            f"substring(): start {start} and length {length} are outside the {len(text)}-character string"
        )
    return text[start : start + length]


def _seq_arg(name: str, value: Any) -> str | list[Any]:
    if isinstance(value, str | list):
        return value
    raise ExpressionError(f"{name}(): expects a string or an array, not {type_name(value)}")


@_fn("first")
def _first(args: list[Any]) -> Any:
    need("first", args, 1)
    seq = _seq_arg("first", args[0])
    return seq[0] if seq else ("" if isinstance(seq, str) else None)


@_fn("last")
def _last(args: list[Any]) -> Any:
    need("last", args, 1)
    seq = _seq_arg("last", args[0])
    return seq[-1] if seq else ("" if isinstance(seq, str) else None)


@_fn("take")
def _take(args: list[Any]) -> Any:
    need("take", args, 2)
    seq, count = _seq_arg("take", args[0]), int_arg("take", args[1], "count")
    return seq[: max(count, 0)]


@_fn("skip")
def _skip(args: list[Any]) -> Any:
    need("skip", args, 2)
    seq, count = _seq_arg("skip", args[0]), int_arg("skip", args[1], "count")
    return seq[max(count, 0) :]


@_fn("base64")
def _base64(args: list[Any]) -> Any:
    need("base64", args, 1)
    return base64.b64encode(str_arg("base64", args[0]).encode()).decode()


@_fn("base64ToString")
def _base64_to_string(args: list[Any]) -> Any:
    need("base64ToString", args, 1)
    try:
        return base64.b64decode(str_arg("base64ToString", args[0]), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ExpressionError(f"base64ToString(): {exc}") from None


@_fn("true")
def _true(args: list[Any]) -> Any:
    need("true", args, 0)
    return True


@_fn("false")
def _false(args: list[Any]) -> Any:
    need("false", args, 0)
    return False


@_fn("null")
def _null(args: list[Any]) -> Any:
    need("null", args, 0)
    return None
