"""Running PowerShell scripts in a Windows guest the way AIB (Packer's powershell provisioner) does.

A step's script (``inline`` lines or the fetched ``scriptUri`` file) is uploaded to
``C:\\Windows\\Temp`` and started by a small wrapper:

* plain: ``powershell -EncodedCommand <wrapper>`` over WinRM, as the build account. The wrapper sets
  ``$ProgressPreference = 'SilentlyContinue'`` (Packer does the same: progress records reach WinRM
  as CLIXML on stderr), calls the script, and exits with ``$LASTEXITCODE`` (0 when no native command
  or ``exit N`` set it; a terminating error gives 1) — Packer's ``&'path'; exit $LastExitCode``.
* ``runElevated`` / ``runAsSystem``: a WinRM logon is a network logon without the full administrator
  token, and Windows Update refuses to run in one (FACTS §6). So, like Packer's ``elevated_user``, the
  script runs from a **scheduled task** with ``RunLevel Highest`` — as the build account (its password
  is passed on the launcher's stdin, never written to disk or put on a command line) or as
  ``NT AUTHORITY\\SYSTEM``. The launcher streams the task's output file while it runs, and returns
  the script's exit code, which the task writes next to the script.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path

from localbuilder.communicator import CommandResult, Communicator, OutputCallback
from localbuilder.communicator.winrs import powershell_command, ps_quote
from localbuilder.errors import CustomizerError

log = logging.getLogger("localbuilder.windows.powershell")

TEMP_DIR = "C:\\Windows\\Temp"
UTF8_BOM = b"\xef\xbb\xbf"
# Task Scheduler results meaning "not finished yet" (SCHED_S_TASK_RUNNING, SCHED_S_TASK_HAS_NOT_RUN).
SCHED_RUNNING = 0x41301
SCHED_NOT_RUN = 0x41303


@dataclasses.dataclass(frozen=True)
class PowerShellRun:
    """What ran and how it ended (the caller decides whether the exit code is acceptable)."""

    result: CommandResult
    remote_script: str
    elevated: bool
    as_system: bool

    @property
    def exit_status(self) -> int:
        return self.result.exit_status


def remote_script_path(label: str) -> str:
    """A fresh ``C:\\Windows\\Temp\\localbuilder-<label>-<random>.ps1``."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label) or "script"
    return f"{TEMP_DIR}\\localbuilder-{safe}-{secrets.token_hex(4)}.ps1"


def inline_script(lines: Sequence[str]) -> bytes:
    """``inline`` lines → one script file, UTF-8 with BOM.

    Windows PowerShell 5.1 reads a BOM-less script in the ANSI code page, which would mangle any
    non-ASCII character of an inline command; the BOM makes it read UTF-8.
    """
    return UTF8_BOM + ("\r\n".join(lines) + "\r\n").encode("utf-8")


def plain_wrapper(script: str) -> str:
    """The PowerShell run over WinRM for a non-elevated step (golden-tested)."""
    return f"""$script = {ps_quote(script)}
try {{
    & $script
    $code = if ($LASTEXITCODE) {{ $LASTEXITCODE }} else {{ 0 }}
}} catch {{
    [Console]::Error.WriteLine(($_ | Out-String))
    $code = 1
}} finally {{
    Remove-Item -LiteralPath $script -Force -ErrorAction SilentlyContinue
}}
exit $code
"""


def task_runner(script: str) -> str:
    """What the scheduled task runs: the user script, then its exit code into ``<script>.exit``."""
    return f"""$ProgressPreference = 'SilentlyContinue'
try {{
    & {ps_quote(script)}
    $code = if ($LASTEXITCODE) {{ $LASTEXITCODE }} else {{ 0 }}
}} catch {{
    Write-Output ($_ | Out-String)
    $code = 1
}}
Set-Content -LiteralPath {ps_quote(script + ".exit")} -Value $code -Encoding ASCII
exit $code
"""


def elevated_launcher(script: str, *, task_name: str, run_as: str) -> str:
    """The PowerShell that runs ``script`` from a scheduled task with highest privileges (golden-tested).

    ``run_as`` is ``SYSTEM`` or the build account; for the latter the password is the first line of
    the launcher's stdin.
    """
    runner = task_runner(script)
    if "\n'@" in runner:  # cannot happen with ps_quote'd paths; guards the here-string below
        raise CustomizerError("internal error: task runner breaks its here-string")
    return f"""$ErrorActionPreference = 'Stop'
$taskName = {ps_quote(task_name)}
$userScript = {ps_quote(script)}
$runAs = {ps_quote(run_as)}
$runner = $userScript + '.task.ps1'
$log = $userScript + '.log'
$exitFile = $userScript + '.exit'
Set-Content -LiteralPath $runner -Encoding UTF8 -Value @'
{runner}'@
$powershell = 'powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass'
$arguments = '/c {{0}} -File "{{1}}" > "{{2}}" 2>&1' -f $powershell, $runner, $log
$task = @{{
    TaskName = $taskName
    Action = New-ScheduledTaskAction -Execute 'cmd.exe' -Argument $arguments
    Settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries `
        -ExecutionTimeLimit ([TimeSpan]::Zero)
    Force = $true
}}
if ($runAs -eq 'SYSTEM') {{
    $task.Principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\\SYSTEM' -LogonType ServiceAccount `
        -RunLevel Highest
}} else {{
    $task.User = $runAs
    # The password arrives on stdin (never on disk or a command line): as pipeline input, or else
    # readable from the console stream.
    foreach ($line in $input) {{ if ($null -eq $task.Password) {{ $task.Password = [string]$line }} }}
    if ($null -eq $task.Password) {{ $task.Password = [Console]::In.ReadLine() }}
    $task.RunLevel = 'Highest'
}}
Register-ScheduledTask @task | Out-Null
$task = $null
Start-ScheduledTask -TaskName $taskName
$position = 0
function Send-NewOutput {{
    if (-not (Test-Path -LiteralPath $log)) {{ return }}
    $stream = [System.IO.File]::Open($log, 'Open', 'Read', 'ReadWrite')
    try {{
        [void]$stream.Seek($script:position, 'Begin')
        $text = (New-Object System.IO.StreamReader($stream)).ReadToEnd()
        $script:position = $stream.Length
    }} finally {{
        $stream.Close()
    }}
    if ($text) {{ [Console]::Out.Write($text) }}
}}
while (-not (Test-Path -LiteralPath $exitFile)) {{
    Start-Sleep -Milliseconds 500
    Send-NewOutput
    $state = (Get-ScheduledTask -TaskName $taskName).State
    $last = (Get-ScheduledTaskInfo -TaskName $taskName).LastTaskResult
    $pending = $last -eq {SCHED_RUNNING} -or $last -eq {SCHED_NOT_RUN}
    if ($state -ne 'Running' -and $state -ne 'Queued' -and -not $pending) {{
        break
    }}
}}
Send-NewOutput
if (Test-Path -LiteralPath $exitFile) {{
    $code = [int](Get-Content -LiteralPath $exitFile -Raw)
}} else {{
    $code = (Get-ScheduledTaskInfo -TaskName $taskName).LastTaskResult
    [Console]::Error.WriteLine("the scheduled task ended without an exit code (task result $code)")
}}
Unregister-ScheduledTask -TaskName $taskName -Confirm:$false
Remove-Item -LiteralPath $runner, $log, $exitFile, $userScript -Force -ErrorAction SilentlyContinue
exit $code
"""


def _upload_bytes(comm: Communicator, data: bytes, remote: str) -> None:
    with tempfile.TemporaryDirectory(prefix="localbuilder-ps-") as tmp:
        local = Path(tmp) / "script.ps1"
        local.write_bytes(data)
        comm.upload(local, remote)


def elevation_credentials(comm: Communicator, fallback_user: str) -> tuple[str, str | None]:
    """The build account and its password, from a WinRM communicator (which holds them)."""
    getter = getattr(comm, "elevation_credentials", None)
    if callable(getter):
        user, password = getter()
        return str(user), str(password)
    return fallback_user, None


def run_powershell_script(
    comm: Communicator,
    script: bytes,
    *,
    label: str,
    elevated: bool = False,
    as_system: bool = False,
    user: str = "",
    timeout: float | None = None,
    on_output: OutputCallback | None = None,
) -> PowerShellRun:
    """Upload ``script`` and run it (plainly, elevated as ``user``, or as SYSTEM); return the result.

    ``as_system`` implies elevation (AIB documents runAsSystem as "requires runElevated"; validation
    reports the missing runElevated, here both mean a SYSTEM task).
    """
    remote = remote_script_path(label)
    _upload_bytes(comm, script, remote)
    if not (elevated or as_system):
        result = comm.run(powershell_command(plain_wrapper(remote)), timeout=timeout, on_output=on_output)
        return PowerShellRun(result, remote, elevated=False, as_system=False)
    task_name = "localbuilder-" + remote.rsplit("-", 1)[-1].removesuffix(".ps1")
    stdin: bytes | None = None
    if as_system:
        run_as = "SYSTEM"
    else:
        run_as, password = elevation_credentials(comm, user)
        if password is None:
            raise CustomizerError(
                f"runElevated needs the build account's password, which this connection does not have "
                f"({type(comm).__name__})",
                hint="Set runAsSystem: true to run the script as SYSTEM instead.",
            )
        stdin = password.encode("utf-8") + b"\r\n"
    launcher = remote.removesuffix(".ps1") + ".launch.ps1"
    text = elevated_launcher(remote, task_name=task_name, run_as=run_as)
    _upload_bytes(comm, UTF8_BOM + text.encode("utf-8"), launcher)
    command = (
        "powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass "
        f'-File "{launcher}"'
    )
    try:
        result = comm.run(command, timeout=timeout, on_output=on_output, stdin=stdin)
    finally:
        stdin = None
    # The launcher cannot delete itself while it runs; one cheap command removes it afterwards.
    try:
        comm.run(f'del /f /q "{launcher}"', timeout=60)
    except Exception as exc:  # cleanup only; the step's result is what matters
        log.debug("removing %s failed: %s", launcher, exc)
    return PowerShellRun(result, remote, elevated=True, as_system=as_system)
