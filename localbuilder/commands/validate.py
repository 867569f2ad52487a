"""``localbuilder validate TEMPLATE…``: check templates the way the build and the AIB service would.

Every finding is printed as ``FILE: PATH: SEVERITY: MESSAGE [CODE]`` with its hint on the next line,
one result per file and per imageTemplates resource. Exit 0 when every template can be built, 2 otherwise
(a file that cannot be read at all counts as one that cannot be built; the other files are still checked).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from localbuilder.errors import TemplateError, UsageError
from localbuilder.template import parse_template
from localbuilder.template.findings import Finding, Severity, ValidationResult
from localbuilder.template.load import load_documents

NAME = "validate"
HELP = "check image templates without building: every finding with its path and a hint"
DESCRIPTION = (
    "Check AIB image templates (bare resource, ARM deployment template, REST example; JSONC tolerated) "
    "against the rules of their apiVersion and what localbuilder can build. Severities: error (cannot be "
    "built), service (Azure Image Builder would reject it; --strict makes it an error), warning, note. "
    "Exit status: 0 when every template can be built, 2 otherwise."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("templates", nargs="+", metavar="TEMPLATE", type=Path, help="template file(s)")
    parser.add_argument("--parameters", type=Path, metavar="FILE", help="ARM parameters file")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an ARM parameter value (repeatable)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="sets",
        metavar="PATH=VALUE",
        help="override a field of the resolved template, e.g. properties.source.sku=22_04-lts (repeatable)",
    )
    parser.add_argument("--resource", metavar="NAME", help="only this imageTemplates resource of an ARM file")
    parser.add_argument("--strict", action="store_true", help="treat what Azure would reject as errors")
    parser.add_argument(
        "--allow-any-destination",
        action="store_true",
        help="allow File customizers to write outside /tmp on Linux (AIB refuses that)",
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable list instead")


def parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(
                f"--param {item!r}: expected NAME=VALUE", hint="e.g. --param api-version=2022-02-14"
            )
        params[name.strip()] = value
    return params


def _entry(
    file: Path,
    resource: str | None,
    shape: str | None,
    api_version: str | None,
    ok: bool,
    result: ValidationResult,
) -> dict[str, Any]:
    return {
        "file": str(file),
        "resource": resource,
        "shape": shape,
        "apiVersion": api_version,
        "ok": ok,
        "findings": [f.as_dict() for f in result],
    }


def check(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per template (per file, and per resource of ARM files)."""
    params = parse_params(args.param)
    entries: list[dict[str, Any]] = []
    for file in args.templates:
        try:
            loaded = load_documents(
                file, parameters_file=args.parameters, params=params, sets=args.sets, resource=args.resource
            )
        except TemplateError as exc:
            # A file that cannot be read at all: report it like a finding and go on with the next file.
            message = exc.message.removeprefix(f"{file}: ").removeprefix(f"{file.name}: ")
            result = ValidationResult([Finding((), message, Severity.error, exc.hint)])
            entries.append(_entry(file, None, None, None, False, result))
            continue
        for item in loaded:
            template, result = parse_template(
                item, strict=args.strict, allow_any_destination=args.allow_any_destination
            )
            entry = _entry(file, item.name, item.shape, item.api_version, template is not None, result)
            if template is not None:
                entry["apiVersion"] = template.api_version
                entry["os"] = str(template.os_type)
            entries.append(entry)
    return entries


def _print_text(entries: list[dict[str, Any]]) -> None:
    per_file: dict[str, int] = {}
    for entry in entries:
        per_file[entry["file"]] = per_file.get(entry["file"], 0) + 1
    for entry in entries:
        label = entry["file"]
        if per_file[label] > 1 and entry["resource"]:
            label += f" ({entry['resource']})"
        counts: dict[str, int] = {}
        for finding in entry["findings"]:
            code = f" [{finding['code']}]" if finding["code"] else ""
            where = "" if entry["shape"] is None else f" {finding['path']}:"  # unreadable file: no path
            print(f"{label}:{where} {finding['severity']}: {finding['message']}{code}")
            if finding["hint"]:
                print(f"    hint: {finding['hint']}")
            counts[finding["severity"]] = counts.get(finding["severity"], 0) + 1
        summary = (
            ", ".join(f"{n} {sev}{'s' if n > 1 else ''}" for sev, n in sorted(counts.items())) or "clean"
        )
        if entry["ok"]:
            print(f"{label}: OK: can be built (API {entry['apiVersion']}, {entry.get('os', '?')}; {summary})")
        else:
            print(f"{label}: FAILED: cannot be built ({summary})")


def run(args: argparse.Namespace) -> int:
    entries = check(args)
    if args.json:
        json.dump(entries, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        _print_text(entries)
    return 0 if all(e["ok"] for e in entries) else 2
