"""The PowerShell / WindowsRestart / WindowsUpdate customizer classes on a StepContext."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from localbuilder.customizers import StepContext, StepFailed, customizer_for, registered_types
from localbuilder.template import model
from localbuilder.template.model import OsType
from tests.windows.helpers import USER, connect, server_guest


def context(srv, model_, tmp_path: Path, *, fetched: dict[str, Path] | None = None,
            lines: list[tuple[str, str]] | None = None) -> StepContext:
    out = lines if lines is not None else []
    return StepContext(
        index=2, comm=connect(srv), os=OsType.windows, build_user=USER, deadline=time.monotonic() + 60,
        guest=server_guest(srv, model_, tmp_path), fetched=fetched or {},
        output=lambda stream, line: out.append((stream, line)),
    )


def test_registered() -> None:
    types = registered_types()
    for name in ("WindowsRestart", "WindowsUpdate"):
        assert OsType.windows in types[name].supported_os and OsType.linux not in types[name].supported_os
    # PowerShell also runs on Linux guests, through pwsh (tests/build/test_powershell_linux.py).
    assert types["PowerShell"].supported_os == {OsType.windows, OsType.linux}


def test_powershell_inline_output_goes_to_the_log(wsman, tmp_path: Path) -> None:
    srv, m = wsman()
    lines: list[tuple[str, str]] = []
    step = model.PowerShellCustomizer(name="hello", inline=("Write-Output 'hi'", "mkdir c:\\buildActions"))
    customizer_for(step).apply(context(srv, m, tmp_path, lines=lines))
    assert ("stdout", "hi") in lines
    assert "mkdir c:\\buildactions" in m.events


def test_powershell_failure_names_step_code_and_tail(wsman, tmp_path: Path) -> None:
    srv, m = wsman()
    step = model.PowerShellCustomizer(name="bad", inline=("Write-Error 'disk full'", "exit 3"))
    with pytest.raises(StepFailed) as info:
        customizer_for(step).apply(context(srv, m, tmp_path))
    err = info.value
    assert err.exit_status == 3
    assert "customize[2] PowerShell 'bad'" in str(err) and "valid: 0" in str(err)
    assert "disk full" in err.output_tail and "validExitCodes" in (err.hint or "")


def test_powershell_valid_exit_codes(wsman, tmp_path: Path) -> None:
    srv, m = wsman()
    step = model.PowerShellCustomizer(inline=("exit 3010",), valid_exit_codes=(0, 3010))
    customizer_for(step).apply(context(srv, m, tmp_path))  # no exception
    with pytest.raises(StepFailed, match="valid: 0, 3010"):
        customizer_for(model.PowerShellCustomizer(inline=("exit 1",), valid_exit_codes=(0, 3010))).apply(
            context(srv, m, tmp_path))


def test_powershell_script_uri_elevated_as_system(wsman, tmp_path: Path) -> None:
    srv, m = wsman()
    script = tmp_path / "setup.ps1"
    script.write_bytes(b"Write-Output 'from scriptUri'\r\n")
    uri = "https://example.invalid/setup.ps1"
    step = model.PowerShellCustomizer(script_uri=uri, run_elevated=True, run_as_system=True)
    customizer_for(step).apply(context(srv, m, tmp_path, fetched={uri: script}))
    assert [t.run_as for t in m.tasks] == ["SYSTEM"]
    assert m.tasks[0].script == "Write-Output 'from scriptUri'\r\n"  # uploaded verbatim


def test_powershell_run_elevated_as_build_user(wsman, tmp_path: Path) -> None:
    srv, m = wsman()
    step = model.PowerShellCustomizer(inline=("Write-Output 'admin'",), run_elevated=True)
    customizer_for(step).apply(context(srv, m, tmp_path))
    assert [(t.run_as, t.password_ok) for t in m.tasks] == [(USER, True)]


def test_windows_restart_step(wsman, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("localbuilder.windows.restart.CHECK_INTERVAL", 0.05)
    srv, m = wsman()
    step = model.WindowsRestartCustomizer(restart_timeout="2m", restart_timeout_seconds=120)
    customizer_for(step).apply(context(srv, m, tmp_path))
    assert srv.resets == 1


def test_windows_update_step_defaults(wsman, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("localbuilder.windows.restart.CHECK_INTERVAL", 0.05)
    srv, m = wsman()
    m.update_rounds = [101, 0]
    customizer_for(model.WindowsUpdateCustomizer()).apply(context(srv, m, tmp_path))
    call = m.update_calls[0]
    assert call["SearchCriteria"] == "BrowseOnly=0 and IsInstalled=0"
    assert call["Filters"] == ["include:$true"] and call["UpdateLimit"] == "1000"
    assert srv.resets == 1 and len(m.update_calls) == 2
