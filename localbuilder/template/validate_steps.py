"""Validation pass 2 for ``customize`` and ``validate.inVMValidations`` steps: rules and model records.

The rules that span fields of one step (exactly one of scriptUri/inline, runAsSystem needs runElevated,
checksum format, File destinations on Linux, the step's OS against the source's, WindowsRestart's
``restartTimeout``) and the defaults AIB applies to absent fields, resolved from ``model`` once here.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from localbuilder.template import model as m
from localbuilder.template.durations import parse_duration
from localbuilder.template.findings import JsonPath, Reporter, Severity, ValidationResult, quote
from localbuilder.template.guest_os import WINDOWS_DRIVE_PATH, WINDOWS_ONLY
from localbuilder.template.placeholders import is_placeholder

SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class StepBuilder(Reporter):
    """Checks one customize/validate step at a time and builds its model record."""

    def __init__(
        self, result: ValidationResult, flagged: frozenset[JsonPath], *, allow_any_destination: bool
    ) -> None:
        super().__init__(result, flagged)
        self.allow_any_destination = allow_any_destination

    def step(
        self, raw: Mapping[str, Any], path: JsonPath, os_type: m.OsType, decided: bool, role: str
    ) -> m.Customizer:
        kind = raw["type"]
        name = raw.get("name", "")
        if decided and os_type is m.OsType.linux and kind in WINDOWS_ONLY:
            self.add(
                path + ("type",),
                f"a {kind} {role} needs a Windows source, but the source image is Linux",
                hint="use Shell steps on Linux sources",
            )
        if decided and os_type is m.OsType.windows and kind == "Shell":
            self.add(
                path + ("type",),
                f"a Shell {role} runs on Linux, but the source image is Windows",
                hint="use PowerShell steps on Windows sources",
            )
        checksum = raw.get("sha256Checksum", "")
        if checksum and not is_placeholder(checksum) and not SHA256.fullmatch(checksum):
            self.add(
                path + ("sha256Checksum",),
                f"must be 64 hexadecimal digits (a SHA-256), not {quote(checksum)}",
                hint="compute it with 'sha256sum FILE', or leave it empty to skip the check",
            )
        checksum = checksum.lower()
        if kind in ("Shell", "PowerShell"):
            script_uri, legacy = raw.get("scriptUri"), False
            if "script" in raw:
                script_uri, legacy = raw["script"], True
            inline = tuple(raw.get("inline", ()))
            has_uri = bool(script_uri)
            if has_uri == bool(inline):
                field = "script" if legacy else "scriptUri"
                code = "NoCustomizerScript" if role == "customizer" else "NoValidatorScript"
                if has_uri:
                    self.add(
                        path,
                        f"Exactly one of '{field}' or 'inline' can be specified: both are given",
                        code=code,
                        hint=f"split it into two {kind} steps",
                    )
                else:
                    self.add(
                        path,
                        f"Exactly one of '{field}' or 'inline' can be specified: neither is given"
                        + (" (or it is empty)" if field in raw or "inline" in raw else ""),
                        code=code,
                        hint=f'add "{field}": "https://…" or "inline": ["command"]',
                    )
            if kind == "Shell":
                return m.ShellCustomizer(
                    name=name,
                    script_uri=script_uri or None,
                    sha256_checksum=checksum,
                    inline=inline,
                    legacy=legacy,
                )
            run_elevated = raw.get("runElevated", False)
            run_as_system = raw.get("runAsSystem", False)
            if run_as_system and not run_elevated:
                self.add(
                    path + ("runAsSystem",),
                    "runAsSystem can only be true when the runElevated field is set to true",
                    Severity.service,
                    hint='add "runElevated": true',
                )
            return m.PowerShellCustomizer(
                name=name,
                script_uri=script_uri or None,
                sha256_checksum=checksum,
                inline=inline,
                run_elevated=run_elevated,
                run_as_system=run_as_system,
                valid_exit_codes=tuple(raw.get("validExitCodes", ())),
            )
        if kind == "File":
            destination = raw.get("destination", "")
            if "destination" in raw:  # a missing one is reported as required
                self.destination(destination, path + ("destination",), os_type)
            if raw.get("sourceUri") == "":
                self.add(
                    path + ("sourceUri",), "must not be empty", hint="give the URI of the file to upload"
                )
            return m.FileCustomizer(
                name=name,
                source_uri=raw.get("sourceUri", ""),
                sha256_checksum=checksum,
                destination=destination,
            )
        if kind == "WindowsRestart":
            timeout = raw.get("restartTimeout") or m.DEFAULT_RESTART_TIMEOUT
            try:
                seconds = parse_duration(timeout)
            except ValueError:
                self.add(
                    path + ("restartTimeout",),
                    f"must be a duration like '5m', '2h' or '300s', not {quote(timeout)}",
                    hint="a number followed by s, m or h (several may follow each other: 1h30m)",
                )
                seconds = 0
            return m.WindowsRestartCustomizer(
                name=name,
                restart_command=raw.get("restartCommand") or m.DEFAULT_RESTART_COMMAND,
                restart_check_command=raw.get("restartCheckCommand", ""),
                restart_timeout=timeout,
                restart_timeout_seconds=seconds,
            )
        # WindowsUpdate: "Omit or specify …" the empty value means the default (swagger descriptions).
        return m.WindowsUpdateCustomizer(
            name=name,
            search_criteria=raw.get("searchCriteria") or m.DEFAULT_UPDATE_SEARCH_CRITERIA,
            filters=tuple(raw.get("filters") or m.DEFAULT_UPDATE_FILTERS),
            update_limit=raw.get("updateLimit") or m.DEFAULT_UPDATE_LIMIT,
        )

    def destination(self, destination: str, path: JsonPath, os_type: m.OsType) -> None:
        if not destination:
            self.add(path, "must not be empty", hint="give the absolute path of the file in the guest")
            return
        if is_placeholder(destination):
            return
        if os_type is m.OsType.windows:
            if not (WINDOWS_DRIVE_PATH.match(destination) or destination.startswith("\\\\")):
                self.add(
                    path, f"must be an absolute Windows path such as C:\\dir\\file, not {quote(destination)}"
                )
            return
        if not destination.startswith("/"):
            self.add(path, f"must be an absolute path, not {quote(destination)}", hint="e.g. /tmp/file")
            return
        normal = posixpath.normpath(destination)
        if not normal.startswith("/tmp/") and not self.allow_any_destination:
            self.add(
                path,
                f"on Linux the File customizer can only write under /tmp, not {quote(destination)}: "
                "AIB fails the build, and localbuilder does the same",
                hint="upload to /tmp and move it with a Shell step (sudo mv), or build with "
                "--allow-any-destination",
            )

    def duplicate_names(self, steps: Sequence[Mapping[str, Any]], path: JsonPath) -> None:
        seen: dict[str, int] = {}
        for index, step in enumerate(steps):
            name = step.get("name")
            if not name:
                continue
            if name in seen:
                self.add(
                    path + (index, "name"),
                    f"customizer name '{name}' is also used by customize[{seen[name]}]",
                    Severity.warning,
                    hint="give each step its own name so logs and errors are unambiguous",
                )
            else:
                seen[name] = index
