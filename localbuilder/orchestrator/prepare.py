"""AIB's Queued phase: everything that can be known wrong before a guest boots, and every input fetched.

``preflight`` asks each customizer, validator and distributor whether it can run as the template asks
(step types on this OS, File destinations, output targets) and reports every problem at once, each
naming its field. ``fetch_inputs`` fetches and checksums every ``scriptUri``/``sourceUri``: no step
downloads anything itself, and the digests become part of the checkpoint keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from localbuilder import validators
from localbuilder.customizers import customizer_for
from localbuilder.distributors import DistributeContext, distributor_for
from localbuilder.errors import CustomizerError, LocalBuilderError
from localbuilder.fetch import Fetched, FetchRequest, fetch_all
from localbuilder.redact import hide_query
from localbuilder.template import model


def _problem(exc: LocalBuilderError) -> str:
    return exc.message + (f"\n    hint: {exc.hint}" if exc.hint else "")


def preflight(template: model.Template, os: model.OsType, ctx: DistributeContext, *,
              allow_any_destination: bool) -> None:
    """Raise CustomizerError listing every step or target that cannot run, each with its field path."""
    problems: list[str] = []
    steps: list[tuple[str, Any]] = [
        (f"properties.customize[{i}]", s) for i, s in enumerate(template.customize)
    ]
    if template.validate is not None:
        steps += [
            (f"properties.validate.inVMValidations[{i}]", s)
            for i, s in enumerate(template.validate.in_vm_validations)
        ]
    for where, step in steps:
        try:
            factory = validators.validator_for if ".validate." in where else customizer_for
            factory(step).preflight(os, allow_any_destination=allow_any_destination, where=where)
        except LocalBuilderError as exc:
            problems.append(_problem(exc))
    for i, target in enumerate(template.distribute):
        try:
            distributor_for(target).preflight(ctx, f"properties.distribute[{i}]")
        except LocalBuilderError as exc:
            problems.append(_problem(exc))
    if problems:
        raise CustomizerError("the template cannot be built:\n" + "\n".join(problems))


def _sections(template: model.Template) -> list[tuple[str, Sequence[Any]]]:
    out: list[tuple[str, Sequence[Any]]] = [("customize", template.customize)]
    if template.validate is not None:
        out.append(("validate.inVMValidations", template.validate.in_vm_validations))
    return out


def fetch_inputs(
    template: model.Template, base_dir: Path, *, note: Callable[[str], None]
) -> dict[str, Fetched]:
    """Every file a step names, fetched (or taken from the download cache) and checksummed; relative
    paths are relative to ``base_dir`` (the template's directory). ``note`` logs each one."""
    requests: list[FetchRequest] = []
    for section, steps in _sections(template):
        for i, step in enumerate(steps):
            for attr, field in (("script_uri", "scriptUri"), ("source_uri", "sourceUri")):
                uri = getattr(step, attr, None)
                if uri:
                    sha = getattr(step, "sha256_checksum", "") or None
                    requests.append(FetchRequest(uri, sha, f"properties.{section}[{i}].{field}"))
    if not requests:
        return {}
    fetched = fetch_all(requests, base_dir=base_dir)
    for f in fetched.values():
        cached = ", cached" if f.cached else ""
        note(f"fetched {hide_query(f.uri)} sha256={f.sha256} ({f.size} bytes{cached})")
    return fetched
