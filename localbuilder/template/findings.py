"""Validation findings: a message at a JSON path, with a hint, a severity and the service's code.

Modelled on osbuild's ``ValidationError``/``ValidationResult``: every finding carries the path of the
value it is about (``properties.customize[2].scriptUri``), all findings are collected (never stop at
the first), and sub-results are rebased onto a parent path with ``merge(..., path=…)``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator, Sequence

PathPart = str | int
JsonPath = tuple[PathPart, ...]  # ("properties", "customize", 2, "inline")


class Severity(enum.StrEnum):
    error = "error"  # localbuilder cannot build this
    service = "service"  # Azure Image Builder would reject this; --strict turns it into an error
    warning = "warning"  # builds, but probably not what the author meant (unknown field, placeholder…)
    note = "note"  # information (comments stripped, expression evaluated, …)


def format_path(path: Sequence[PathPart]) -> str:
    """``("properties", "customize", 2, "inline")`` → ``properties.customize[2].inline``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def shorten(text: str, limit: int = 160) -> str:
    """``text`` cut to ``limit`` characters (the last one an ellipsis), to quote a value in a message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(value: object, limit: int = 60) -> str:
    """A value as written (its ``repr``), shortened: ``'5 minutes'``, ``{'value': '22_04-lts'}``."""
    return shorten(repr(value), limit)


@dataclasses.dataclass(frozen=True)
class Finding:
    path: tuple[PathPart, ...]
    message: str
    severity: Severity = Severity.error
    hint: str | None = None
    code: str | None = None  # the AIB service's error code where known (BadCustomizerType, …)

    @property
    def where(self) -> str:
        return format_path(self.path)

    def rebased(self, prefix: Sequence[PathPart]) -> Finding:
        return dataclasses.replace(self, path=tuple(prefix) + self.path)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.where,
            "severity": str(self.severity),
            "message": self.message,
            "hint": self.hint,
            "code": self.code,
        }

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        text = f"{self.where}: {self.message}{code}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


@dataclasses.dataclass
class ValidationResult:
    findings: list[Finding] = dataclasses.field(default_factory=list)

    def add(
        self,
        path: Sequence[PathPart],
        message: str,
        severity: Severity = Severity.error,
        *,
        hint: str | None = None,
        code: str | None = None,
    ) -> None:
        self.findings.append(Finding(tuple(path), message, severity, hint, code))

    def merge(self, other: ValidationResult | Iterable[Finding], path: Sequence[PathPart] = ()) -> None:
        items = other.findings if isinstance(other, ValidationResult) else other
        self.findings.extend(f.rebased(path) for f in items)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def of(self, *severities: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity in severities]

    def errors(self, strict: bool = False) -> list[Finding]:
        """Findings that stop a build: errors, plus service findings under ``--strict``."""
        stop = (Severity.error, Severity.service) if strict else (Severity.error,)
        return self.of(*stop)

    def ok(self, strict: bool = False) -> bool:
        return not self.errors(strict)


class Reporter:
    """Adds findings to ``result``, but none at or under a path in ``flagged``.

    ``flagged``: paths the loader already reported as errors (an unevaluable ARM expression …). A value
    there is not what the author meant, so checking its format would report one mistake twice.
    """

    def __init__(self, result: ValidationResult, flagged: frozenset[JsonPath] = frozenset()) -> None:
        self.result = result
        self.flagged = flagged

    def add(
        self,
        path: JsonPath,
        message: str,
        severity: Severity = Severity.error,
        *,
        hint: str | None = None,
        code: str | None = None,
    ) -> None:
        if not any(path[:n] in self.flagged for n in range(len(path) + 1)):
            self.result.add(path, message, severity, hint=hint, code=code)
