"""Placeholders left in a template (``<region>``, ``<your-subscription-id>``) and unevaluated ``[…]``.

Templates from documentation and samples carry ``<name>`` placeholders the author was meant to replace.
The loader warns about each one at its path, with the ``--set`` that would replace it
(:func:`scan_placeholders`); the validator skips the format checks of a value that looks like one
(:func:`is_placeholder`), so that one mistake is reported once.
"""

from __future__ import annotations

import re
from typing import Any

from localbuilder.template.arm_syntax import ExpressionError, is_expression, parse_expression
from localbuilder.template.findings import JsonPath, Severity, ValidationResult, shorten
from localbuilder.template.overrides import set_path

# A template placeholder such as ``<region>`` or ``<scriptUrl`` (the corpus has one without its ``>``):
# the loader reports them; rules that check a format skip them so one mistake is reported once.
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\s]*>?")
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

    def visit(value: Any, path: JsonPath) -> None:
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
                    f"{shorten(value, 80)} looks like an ARM expression, but a bare template is not "
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


def is_placeholder(value: str) -> bool:
    """Whether ``value`` holds anything like a placeholder (the validator then skips its format checks)."""
    return PLACEHOLDER.search(value) is not None
