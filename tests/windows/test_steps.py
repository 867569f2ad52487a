"""PowerShell, WindowsRestart, WindowsUpdate, Sysprep and File on Windows, against the modelled guest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from localbuilder.errors import CustomizerError, DeprovisionError
from localbuilder.windows import (
    RestartOptions,
    UpdateOptions,
    deprovision_windows,
    parse_restart_timeout,
    restart_windows,
    run_powershell_script,
    upload_file,
    windows_update,
)
from localbuilder.windows.powershell import inline_script
from tests.windows.guest_model import SEALED
from tests.windows.helpers import PASSWORD, USER, connect, server_guest
from tests.windows.wsman_server import decode_powershell

FAST = RestartOptions(timeout=20, pending_interval=0.05, check_interval=0.05)


# -- PowerShell -------------------------------------------------------------------------------------


def test_inline_script_runs_and_is_removed(wsman) -> None:
    srv, model = wsman()
    comm = connect(srv)
    lines: list[str] = []
    run = run_powershell_script(
        comm,
        inline_script([
            "mkdir c:\\buildActions",
            "echo Azure-Image-Builder-Was-Here  > c:\\buildActions\\out.txt",
            "Write-Output 'done'",
        ]),
        label="customize-3",
        on_output=lambda s, line: lines.append(line),
    )
    assert run.exit_status == 0 and lines == ["done"]
    assert model.read("c:\\buildActions\\out.txt") == b"Azure-Image-Builder-Was-Here\r\n"
    assert not any("localbuilder-customize-3" in f for f in model.files)  # the wrapper deleted it
    assert model.unmodelled == []


def test_exit_code_and_stderr(wsman) -> None:
    srv, _ = wsman()
    run = run_powershell_script(connect(srv), inline_script(["Write-Error 'boom'", "exit 5"]), label="x")
    assert run.exit_status == 5 and "boom" in run.result.stderr_tail


@pytest.mark.parametrize("as_system", [False, True])
def test_elevated_runs_in_a_scheduled_task(wsman, as_system: bool) -> None:
    srv, model = wsman()
    comm = connect(srv)
    run = run_powershell_script(
        comm, inline_script(["Write-Output 'elevated'", "exit 3"]), label="customize-0",
        elevated=True, as_system=as_system, user=USER,
    )
    assert run.exit_status == 3 and run.result.stdout_tail == "elevated"
    assert len(model.tasks) == 1
    task = model.tasks[0]
    assert task.run_as == ("SYSTEM" if as_system else USER) and task.password_ok
    # the password travelled on stdin only: never on a command line
    assert not any(PASSWORD in c for c in srv.commands)
    assert not any(f.endswith(".launch.ps1") for f in model.files)


def test_elevated_with_wrong_password_fails(wsman) -> None:
    srv, model = wsman()
    model.password = "something-else"
    run = run_powershell_script(connect(srv), inline_script(["exit 0"]), label="x", elevated=True)
    assert run.exit_status == 1 and "password is incorrect" in run.result.stderr_tail


# -- WindowsRestart ---------------------------------------------------------------------------------


def test_parse_restart_timeout() -> None:
    assert parse_restart_timeout("5m") == 300
    assert parse_restart_timeout("2h") == 7200
    assert parse_restart_timeout("1h30m") == 5400
    assert parse_restart_timeout("90s") == 90
    for bad in ("", "5", "five minutes", "5m x", "0m"):
        with pytest.raises(CustomizerError, match="restartTimeout"):
            parse_restart_timeout(bad)


def test_restart_confirmed_by_hypervisor(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    comm = connect(srv)
    guest = server_guest(srv, model, tmp_path)
    options = RestartOptions(
        check_command="echo Azure-Image-Builder-Restarted-the-VM  > c:\\buildArtifacts\\restart.txt",
        timeout=20, pending_interval=0.05, check_interval=0.05,
    )
    model.dirs.add("c:\\buildartifacts")
    restart_windows(comm, options, guest=guest)
    assert srv.resets == 1
    assert "write c:\\buildartifacts\\restart.txt" in model.events
    assert model.events.index("boot 2") < model.events.index("write c:\\buildartifacts\\restart.txt")
    assert srv.commands[0] == 'shutdown /r /f /t 0 /c "packer restart"'


def test_restart_packer_loop_without_hypervisor(wsman) -> None:
    srv, model = wsman()
    model.reboot_seconds = 0.6
    restart_windows(connect(srv), FAST)
    assert srv.resets == 1
    # without a hypervisor the boot time is compared before and after
    scripts = [decode_powershell(c) or "" for c in srv.commands]
    assert len([s for s in scripts if "LastBootUpTime" in s]) == 2
    assert any("restarted." in s for s in scripts)  # Packer's built-in check ran after the restart


def test_slow_shutdown_is_not_mistaken_for_a_restart(wsman) -> None:
    """Packer's probe succeeds (exit 0) before a slow shutdown starts; the boot time catches it."""
    srv, model = wsman()
    model.restart_delay = 1.0
    model.going_down = False
    # the slow guest does not report 1115 while its shutdown is still delayed
    original = model.shutdown

    def slow(command: str) -> int:
        if '"packer restart test"' in command:
            model.test_shutdown_pending = True
            return 0
        return original(command)

    model.shutdown = slow  # type: ignore[method-assign]
    restart_windows(connect(srv), FAST)
    assert "shutdown aborted" in model.events
    assert srv.resets == 1  # we waited for the real restart instead of carrying on


def test_restart_that_never_happens_times_out(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    guest = server_guest(srv, model, tmp_path)
    options = RestartOptions(restart_command="echo not restarting", timeout=1.0, check_interval=0.05)
    start = time.monotonic()
    with pytest.raises(CustomizerError, match="restartTimeout") as info:
        restart_windows(connect(srv), options, guest=guest)
    assert time.monotonic() - start < 5
    assert "restartTimeout" in (info.value.hint or "")


def test_restart_command_that_powers_off(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    options = RestartOptions(restart_command='shutdown /s /t 0 /f', timeout=10)
    with pytest.raises(CustomizerError, match="powered off instead of restarting") as info:
        restart_windows(connect(srv), options, guest=server_guest(srv, model, tmp_path))
    assert "/r" in (info.value.hint or "")


def test_failing_restart_command(wsman) -> None:
    srv, _ = wsman()
    with pytest.raises(CustomizerError, match="exit code 5"):
        restart_windows(connect(srv), RestartOptions(restart_command="cmd /c exit 5", timeout=5))


# -- WindowsUpdate ----------------------------------------------------------------------------------


def test_update_loop_test_mode_101_101_0(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    guest = server_guest(srv, model, tmp_path)
    options = UpdateOptions(test_counter_file="C:\\Windows\\Temp\\wu-counter.txt", restart=FAST)
    codes = windows_update(connect(srv), options, guest=guest)
    assert codes == [101, 101, 0]
    assert srv.resets == 2
    assert [e for e in model.events if e.startswith(("update", "restart", "boot"))] == [
        "update 101", "restart", "boot 2", "update 101", "restart", "boot 3", "update 0",
    ]
    assert all(t.run_as == "SYSTEM" for t in model.tasks)
    assert model.read("C:\\Windows\\Temp\\wu-counter.txt") == b"3"


def test_update_passes_criteria_filters_limit(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    model.update_rounds = [0]
    options = UpdateOptions(
        search_criteria="IsInstalled=0",
        filters=("exclude:$_.Title -like '*Preview*'", "include:$true"),
        update_limit=20,
    )
    assert windows_update(connect(srv), options, guest=server_guest(srv, model, tmp_path)) == [0]
    call = model.update_calls[0]
    assert call["SearchCriteria"] == "IsInstalled=0"
    assert call["Filters"] == ["exclude:$_.Title -like '*Preview*'", "include:$true"]
    assert call["UpdateLimit"] == "20"


def test_update_failure_reports_code(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    model.update_rounds = [1]
    with pytest.raises(CustomizerError, match="exit code 1"):
        windows_update(connect(srv), UpdateOptions(), guest=server_guest(srv, model, tmp_path))


def test_update_bad_filter() -> None:
    from localbuilder.windows.update import invocation

    with pytest.raises(CustomizerError, match="include:"):
        invocation(UpdateOptions(filters=("$true",)))


# -- Sysprep ----------------------------------------------------------------------------------------


def test_deprovision_default_script(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    guest = server_guest(srv, model, tmp_path)
    lines: list[str] = []
    used_user_script = deprovision_windows(
        connect(srv), guest, timeout=30, shutdown_timeout=5, on_output=lambda s, line: lines.append(line)
    )
    assert used_user_script is False
    assert model.image_state == SEALED
    assert f"ImageState={SEALED} GeneralizationState=7" in lines
    assert "upload c:\\deprovisioningscript.ps1" in model.events
    assert model.events[-2:] == ["sysprep", "power off"]
    assert not guest.is_running()


def test_deprovision_user_script_replaces_default(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    model.files["c:\\deprovisioningscript.ps1"] = b"Write-Output 'my own generalize'\r\n"
    lines: list[str] = []
    assert deprovision_windows(
        connect(srv), server_guest(srv, model, tmp_path), timeout=30, shutdown_timeout=5,
        on_output=lambda s, line: lines.append(line),
    )
    assert lines == ["my own generalize"]
    assert "sysprep" not in model.events and "upload c:\\deprovisioningscript.ps1" not in model.events
    assert model.read("c:\\deprovisioningscript.ps1") == b"Write-Output 'my own generalize'\r\n"


def test_deprovision_stuck_sysprep_fails_with_log_tail(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    model.sysprep_stuck = True
    with pytest.raises(DeprovisionError, match="SysprepGeneralizeValidate") as info:
        deprovision_windows(connect(srv), server_guest(srv, model, tmp_path), timeout=30, shutdown_timeout=5)
    assert "setuperr.log" in (info.value.hint or "")
    assert not model.powered_off


def test_deprovision_guest_that_does_not_power_off(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    guest = server_guest(srv, model, tmp_path)
    guest.wait_shutdown = lambda timeout: False  # type: ignore[method-assign]
    with pytest.raises(DeprovisionError, match="did not power off"):
        deprovision_windows(connect(srv), guest, timeout=30, shutdown_timeout=0.2)


# -- File -------------------------------------------------------------------------------------------


def test_upload_file_any_path_parent_must_exist(wsman, tmp_path: Path) -> None:
    srv, model = wsman()
    comm = connect(srv)
    src = tmp_path / "index.html"
    src.write_text("<h1>hi</h1>")
    with pytest.raises(CustomizerError, match="does not exist") as info:
        upload_file(comm, src, "c:\\buildArtifacts\\index.html")
    assert "Create it" in (info.value.hint or "")
    model.dirs.add("c:\\buildartifacts")
    upload_file(comm, src, "c:\\buildArtifacts\\index.html")
    assert model.read("c:\\buildArtifacts\\index.html") == b"<h1>hi</h1>"
    with pytest.raises(CustomizerError, match="absolute Windows path"):
        upload_file(comm, src, "buildArtifacts\\index.html")
