"""``--set PATH=VALUE``: override one value of a loaded template, by path.

The path syntax is the one findings print (``properties.customize[2].inline[0]``), with quoted keys for
odd names (``identity.userAssignedIdentities['/subscriptions/…']``); the value is JSON when it parses as
JSON, else the text itself. :func:`set_path` writes a path back in that syntax, for hints.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from localbuilder.errors import TemplateError
from localbuilder.template import jsonc
from localbuilder.template.findings import JsonPath, PathPart, format_path

_SET_HINT = (
    "syntax: --set properties.customize[2].inline[0]=VALUE "
    "(quote odd keys: identity.userAssignedIdentities['/subscriptions/…'])"
)


def parse_set(text: str) -> tuple[JsonPath, Any, str]:
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


def apply_set(body: dict[str, Any], path: JsonPath, value: Any, text: str) -> None:
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
            raise TemplateError(f"--set {text}: {here} is a {jsonc.kind(cur)}, not an object", hint=_SET_HINT)
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
