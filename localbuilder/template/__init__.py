"""Templates: read a document (``load``), check it and build the typed model (``parse_template``).

``parse_template`` is the one way from a loaded document to a :class:`~localbuilder.template.model.Template`:
it merges the loader's findings with the validator's and returns the Template only when nothing stops the
build (errors; with ``strict=True`` also the findings the Azure service would reject).
"""

from __future__ import annotations

from typing import Any, Protocol

from localbuilder.template.findings import Finding, Severity, ValidationResult
from localbuilder.template.model import Template
from localbuilder.template.validate import validate_body


class Loaded(Protocol):
    """What ``parse_template`` needs of ``load.LoadedTemplate`` (kept structural to avoid an import cycle)."""

    @property
    def name(self) -> str: ...
    @property
    def api_version(self) -> str | None: ...
    @property
    def body(self) -> dict[str, Any]: ...
    @property
    def result(self) -> ValidationResult: ...


def parse_template(
    loaded: Loaded, *, strict: bool = False, allow_any_destination: bool = False
) -> tuple[Template | None, ValidationResult]:
    """Validate a loaded template: ``(Template, findings)``, the Template None when it cannot be built.

    ``strict``: service findings (what Azure would reject) stop the build too. ``allow_any_destination``:
    File customizers may write outside ``/tmp`` on Linux (AIB itself refuses that).
    The returned result starts with the loader's findings; ``loaded.result`` is not modified.
    """
    result = ValidationResult(list(loaded.result.findings))
    template, result = validate_body(
        loaded.body,
        api_version=loaded.api_version,
        name=loaded.name,
        strict=strict,
        allow_any_destination=allow_any_destination,
        result=result,
    )
    return template, result


__all__ = ["Finding", "Loaded", "Severity", "Template", "ValidationResult", "parse_template"]
