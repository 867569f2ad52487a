"""ARM semantics on JSON values: type names, string(), deep equality, property lookup, .NET formatting.

What ARM functions need to agree with ARM on, independently of any one function: how a value is
written as a string (``True``, compact JSON), when two values are equal, that property names match
case-insensitively, and .NET's composite (``{0,-8}``) and date/time (``yyyy-MM-dd``) format strings.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

from localbuilder.template import jsonc
from localbuilder.template.arm_syntax import ExpressionError

_MAX_FORMAT_WIDTH = 1000  # .NET alignment and precision in format(): '{0,20}', '{0:D8}'


def type_name(value: Any) -> str:
    """ARM's name of the type of a JSON value (``int``, ``bool``, ``array`` …), for messages: JSON's kind
    (``jsonc.kind``) with ARM's spelling of booleans."""
    kind = jsonc.kind(value)
    return "bool" if kind == "boolean" else kind


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


def deep_equal(a: Any, b: Any) -> bool:
    """ARM's equals(): structural, and a bool is never equal to a number (Python says ``True == 1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def get_property(obj: dict[str, Any], name: str, what: str) -> Any:
    """``obj.name`` as ARM reads it; ``what`` names ``obj`` in the error when there is no such property."""
    if name in obj:
        return obj[name]
    for key, value in obj.items():  # ARM property lookup is case-insensitive
        if key.lower() == name.lower():
            return value
    available = ", ".join(obj) or "none"
    raise ExpressionError(f"{what} has no property {name!r} (available: {available})")


def merge_objects(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """union() of objects: nested objects merge recursively, anything else is replaced by the later one."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge_objects(out[key], value)
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
