"""A deterministic guest model for the WS-Management test server: the parts of a Windows build VM
that localbuilder's commands touch, and nothing more.

It recognises the commands and scripts localbuilder sends (by their shape: the variables our wrappers
assign, the header line of our guest scripts) and performs their documented effect on an in-memory
file system and a few state variables (boot number, pending shutdown, ImageState, update rounds). User
script lines are interpreted for a small set of commands (echo/Write-Output/mkdir/Start-Sleep/exit/
throw); every other line is recorded as ``unmodelled`` so a test can see it was not emulated.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ntpath
import re
from typing import Any

from tests.windows.wsman_server import GuestModel, ProcessIO, decode_powershell

HOSTNAME = "LB-BUILD"
SEALED = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
QUOTED = r"'((?:[^']|'')*)'"


def clixml_error(message: str) -> str:
    """What powershell.exe writes to stderr under WinRS for an error (with a progress record first)."""
    escaped = message.replace("\r\n", "_x000D__x000A_").replace("&", "&amp;").replace("<", "&lt;")
    return (
        "#< CLIXML\r\n"
        '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
        "<T>System.Object</T></TN><MS><I64 N=\"SourceId\">1</I64><PR N=\"Record\"><AV>Preparing modules "
        "for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD>"
        "</PR></MS></Obj>"
        f'<S S="Error">{escaped}_x000D__x000A_</S>'
        '<S S="Error">At line:1 char:1_x000D__x000A_</S></Objs>\r\n'
    )


def unquote(text: str) -> str:
    return text.replace("''", "'")


def var(script: str, name: str) -> str | None:
    """The value of ``$name = '…'`` in one of our generated scripts."""
    match = re.search(rf"^\s*\${name} = {QUOTED}", script, re.MULTILINE)
    return unquote(match.group(1)) if match else None


def norm(path: str) -> str:
    return ntpath.normpath(path.strip().strip('"')).lower()


@dataclasses.dataclass
class TaskRun:
    run_as: str
    script: str  # the user script the task ran
    password_ok: bool


class WindowsGuest(GuestModel):
    def __init__(self, *, password: str = "Secret-Pa55word!", reboot_seconds: float = 0.4) -> None:
        self.password = password
        self.reboot_seconds = reboot_seconds
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {norm("C:\\"), norm("C:\\Windows"), norm("C:\\Windows\\Temp")}
        self.going_down = False
        self.test_shutdown_pending = False
        self.powered_off = False
        self.restart_delay = 0.0  # > 0: `shutdown /r /t 0` returns but the reboot comes this much later
        self.image_state = "IMAGE_STATE_COMPLETE"
        self.sysprep_stuck = False
        self.update_rounds: list[int] = [101, 101, 0]  # exit codes of real-mode windows-update runs
        self.update_calls: list[dict[str, Any]] = []
        self.tasks: list[TaskRun] = []
        self.events: list[str] = []  # high-level effects, in order, for sequence assertions
        self.unmodelled: list[str] = []

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def boot_time(self) -> str:
        return f"2026-01-01T00:{self.server.boot:02d}:00.0000000Z"

    def write(self, path: str, data: bytes) -> None:
        parent = ntpath.dirname(norm(path))
        if parent not in self.dirs:
            raise FileNotFoundError(f"Could not find a part of the path '{path}'.")
        self.files[norm(path)] = data

    def read(self, path: str) -> bytes:
        return self.files[norm(path)]

    def on_boot(self) -> None:
        self.going_down = False
        self.test_shutdown_pending = False
        self.events.append(f"boot {self.server.boot}")

    # -- cmd.exe level ----------------------------------------------------------------------------
    def execute(self, io: ProcessIO, command: str) -> int:
        script = decode_powershell(command)
        if script is not None:
            return self.powershell(io, script)
        file_match = re.match(r'powershell(?:\.exe)?\s.*-File\s+"([^"]+)"', command, re.IGNORECASE)
        if file_match:
            return self.powershell(io, self.read(file_match.group(1)).decode("utf-8-sig"))
        if command.startswith("shutdown "):
            return self.shutdown(command)
        match = re.fullmatch(r"echo (.*?)\s*>\s*(\S+)", command)
        if match:
            return self.redirect(io, match.group(1), match.group(2))
        if command.startswith("echo "):
            io.out(command[5:] + "\n")
            return 0
        match = re.fullmatch(r'del /f /q "(.+)"', command)
        if match:
            self.files.pop(norm(match.group(1)), None)
            return 0
        match = re.fullmatch(r"cmd /c exit (\d+)", command)
        if match:
            return int(match.group(1))
        return super().execute(io, command)

    def redirect(self, io: ProcessIO, text: str, path: str) -> int:
        try:
            self.write(path, (text + "\r\n").encode())
        except FileNotFoundError as exc:
            io.err(f"{exc}\n")
            return 1
        self.events.append(f"write {norm(path)}")
        return 0

    def shutdown(self, command: str) -> int:
        if "/a" in command.split():
            if self.test_shutdown_pending:
                self.test_shutdown_pending = False
                self.events.append("shutdown aborted")
                return 0
            return 1116  # ERROR_NO_SHUTDOWN_IN_PROGRESS
        if "/s" in command.split():
            self.events.append("power off")
            self.powered_off = True
            self.server.power_off()
            return 0
        if '"packer restart test"' in command:
            if self.going_down:
                return 1115  # ERROR_SHUTDOWN_IN_PROGRESS
            self.test_shutdown_pending = True
            return 0
        if "/r" in command.split():
            if self.going_down:
                return 1190  # ERROR_SHUTDOWN_IS_SCHEDULED
            self.going_down = True
            self.events.append("restart")
            self.server.reboot(after=0.05 + self.restart_delay, down_for=self.reboot_seconds)
            return 0
        return 87

    # -- PowerShell level -------------------------------------------------------------------------
    def powershell(self, io: ProcessIO, script: str) -> int:
        body = script.split("\n", 1)[1] if script.startswith("$ProgressPreference") else script
        if body.startswith("begin {") and "$dst = " in body:
            return self.upload(io, body)
        if "ReadAllBytes(" in body:
            path = re.search(rf"ReadAllBytes\({QUOTED}\)", body)
            assert path is not None
            data = self.read(unquote(path.group(1)))
            io.out(base64.b64encode(data).decode() + "\n")
            io.out(f"sha256={hashlib.sha256(data).hexdigest()}\n")
            return 0
        if var(body, "taskName"):
            return self.task(io, body)
        if var(body, "script") and "& $script" in body:
            path = var(body, "script") or ""
            code = self.user_script(io, self.read(path).decode("utf-8-sig"), elevated=False)
            self.files.pop(norm(path), None)
            return code
        if "restarted.\" -f [System.Net.Dns]::GetHostName()" in body:
            io.out(f"{HOSTNAME} restarted.\n")
            return 0
        if "LastBootUpTime" in body:
            io.out(self.boot_time + "\n")
            return 0
        test_path = rf"if \(Test-Path -LiteralPath {QUOTED}( -PathType Container)?\) {{ exit 0 }} exit 3"
        match = re.search(test_path, body)
        if match:
            path = norm(unquote(match.group(1)))
            exists = path in self.dirs if match.group(2) else (path in self.files or path in self.dirs)
            return 0 if exists else 3
        if body.startswith("# localbuilder sysprep.ps1"):
            return self.sysprep(io)
        return self.user_script(io, body, elevated=False)

    def upload(self, io: ProcessIO, body: str) -> int:
        dst = var(body, "dst") or ""
        parent = ntpath.dirname(norm(dst))
        if parent not in self.dirs:
            io.err(f"parent directory does not exist: {ntpath.dirname(dst)}\n")
            return 2
        data = bytearray()
        while (line := io.read_stdin_line()) is not None:
            if line:
                data.extend(base64.b64decode(line))
        self.write(dst, bytes(data))
        self.events.append(f"upload {norm(dst)}")
        # like the real script: Get-FileHash of the file as stored
        io.out(f"sha256={hashlib.sha256(self.read(dst)).hexdigest()}\n")
        return 0

    def task(self, io: ProcessIO, body: str) -> int:
        run_as = var(body, "runAs") or ""
        user_script = var(body, "userScript") or ""
        password_ok = True
        if run_as != "SYSTEM":
            given = io.read_stdin_line()
            password_ok = given == self.password
            if not password_ok:
                io.err("Register-ScheduledTask : The user name or password is incorrect.\n")
                return 1
        content = self.read(user_script).decode("utf-8-sig")
        self.tasks.append(TaskRun(run_as, content, password_ok))
        self.events.append(f"task {run_as}")
        code = self.user_script(io, content, elevated=True, merge_stderr=True)
        self.files.pop(norm(user_script), None)
        return code

    def user_script(self, io: ProcessIO, text: str, *, elevated: bool, merge_stderr: bool = False) -> int:
        err = io.out if merge_stderr else io.err
        last = 0
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if m := re.fullmatch(rf"(?:Write-Output|Write-Host|echo) (?:{QUOTED}|(.*))", line):
                if ">" in (m.group(2) or ""):
                    text_, _, path = (m.group(2) or "").partition(">")
                    if self.redirect(io, text_.strip(), path.strip()) != 0:
                        last = 1
                    continue
                io.out((unquote(m.group(1)) if m.group(1) is not None else m.group(2)) + "\n")
            elif m := re.fullmatch(r"(?:mkdir|New-Item -ItemType Directory -Path) (.+)", line):
                self.dirs.add(norm(m.group(1)))
                self.events.append(f"mkdir {norm(m.group(1))}")
            elif m := re.fullmatch(rf"Write-Error {QUOTED}", line):
                if merge_stderr:  # a task's output file: plain text
                    err(f"Write-Error: {unquote(m.group(1))}\n")
                else:  # over WinRS, powershell.exe serializes its error stream as CLIXML
                    io.err(clixml_error(f"Write-Error: {unquote(m.group(1))}"))
            elif m := re.fullmatch(r"Start-Sleep(?: -Seconds)? ([\d.]+)", line):
                io.sleep(float(m.group(1)))
            elif m := re.fullmatch(r"exit (\d+)", line):
                return int(m.group(1))
            elif line == "exit $LASTEXITCODE":
                return last
            elif m := re.fullmatch(rf"throw {QUOTED}", line):
                err(f"Exception: {unquote(m.group(1))}\n")
                return 1
            elif m := re.match(rf"& {QUOTED}(.*)", line):
                last = self.call_script(io, unquote(m.group(1)), m.group(2), elevated=elevated)
            elif line == "Restart-Computer -Force":
                self.shutdown('shutdown /r /t 0')
            else:
                self.unmodelled.append(line)
        return 0  # a script that ends without `exit` exits 0 (PowerShell -File semantics)

    def call_script(self, io: ProcessIO, path: str, args: str, *, elevated: bool) -> int:
        content = self.read(path).decode("utf-8-sig")
        if content.startswith("# localbuilder windows-update.ps1"):
            return self.windows_update(io, args, elevated=elevated)
        return self.user_script(io, content, elevated=elevated)

    def windows_update(self, io: ProcessIO, args: str, *, elevated: bool) -> int:
        params = {m.group(1): unquote(m.group(2)) for m in re.finditer(rf"-(\w+) {QUOTED}", args)}
        params.update({m.group(1): m.group(2) for m in re.finditer(r"-(\w+) (\d+)", args)})
        filters = re.search(r"-Filters @\((.*?)\)(?: -|$)", args)
        params["Filters"] = [unquote(f) for f in re.findall(QUOTED, filters.group(1))] if filters else []
        self.update_calls.append(params)
        if not elevated:
            io.out("Windows Update Agent: access denied (0x80070005) outside a SYSTEM task\n")
            return 1
        counter = params.get("TestCounterFile")
        if counter:
            count = int(self.files.get(norm(counter), b"0").decode() or "0") + 1
            self.write(counter, str(count).encode())
            reboots = int(params.get("TestReboots", "2"))
            io.out(f"test mode: run {count}, {reboots} run(s) ask for a reboot\n")
            self.events.append(f"update {101 if count <= reboots else 0}")
            return 101 if count <= reboots else 0
        code = self.update_rounds.pop(0) if self.update_rounds else 0
        io.out(f"searching for updates: {params.get('SearchCriteria')}\n")
        self.events.append(f"update {code}")
        return code

    def sysprep(self, io: ProcessIO) -> int:
        for name in ("RdAgent", "WindowsAzureTelemetryService", "WindowsAzureGuestAgent"):
            io.out(f">>> service {name} is not installed: not waiting for it\n")
        io.out(">>> running Sysprep /oobe /generalize /quiet /quit\n")
        self.events.append("sysprep")
        for state in ("IMAGE_STATE_COMPLETE", "IMAGE_STATE_UNDEPLOYABLE"):
            io.out(f"ImageState={state} GeneralizationState=4\n")
        if self.sysprep_stuck:
            io.err(f"Sysprep did not reach {SEALED} within 1800 s\n")
            io.err("SYSPRP ActionPlatform::LaunchModule: Failure occurred while executing "
                   "'SysprepGeneralizeValidate'\n")
            return 1
        self.image_state = SEALED
        io.out(f"ImageState={SEALED} GeneralizationState=7\n>>> Sysprep complete\n")
        return 0
