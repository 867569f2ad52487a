"""PowerShell customizer (Windows): ``inline`` lines or a ``scriptUri`` script, as AIB runs them.

The logic lives in ``localbuilder.windows.powershell`` (upload to ``C:\\Windows\\Temp``, wrapper with
``$ProgressPreference = 'SilentlyContinue'``, scheduled task for ``runElevated``/``runAsSystem``);
this class maps the template step onto it and judges the exit code against ``validExitCodes``
(default ``[0]``).

On a Linux guest the step runs with PowerShell 7 (``pwsh``) when the guest has it — as the build user,
or through ``sudo`` with ``runElevated``/``runAsSystem`` — and fails with a clear message when not.
"""

from __future__ import annotations

import secrets
import shlex
import tempfile
from pathlib import Path

from localbuilder.customizers import Customizer, StepContext, StepFailed
from localbuilder.template import model
from localbuilder.template.model import OsType
from localbuilder.windows.powershell import inline_script, run_powershell_script

# Exit status the Linux wrapper uses when pwsh is missing (what a shell returns for "not found").
PWSH_MISSING = 127
PWSH_MISSING_MARKER = "__localbuilder_no_pwsh"


class PowerShell(Customizer[model.PowerShellCustomizer], type_name="PowerShell"):
    supported_os = frozenset({OsType.windows, OsType.linux})

    def apply(self, ctx: StepContext) -> None:
        if ctx.os is OsType.linux:
            self._apply_linux(ctx)
            return
        step = self.step
        if step.script_uri:
            script = ctx.local_file(step.script_uri).read_bytes()
        else:
            script = inline_script(step.inline)
        valid = step.accepted_exit_codes
        run = run_powershell_script(
            ctx.comm,
            script,
            label=f"{ctx.section.split('.')[0]}-{ctx.index}",
            elevated=bool(step.run_elevated),
            as_system=bool(step.run_as_system),
            user=ctx.build_user,
            timeout=ctx.remaining(),
            on_output=ctx.output,
        )
        if run.exit_status not in valid:
            how = " as SYSTEM" if run.as_system else (" elevated" if run.elevated else "")
            raise StepFailed(
                f"{self.describe(ctx.index, ctx.section)}: the script{how} exited with code "
                f"{run.exit_status} (valid: {', '.join(map(str, valid))})",
                exit_status=run.exit_status,
                output_tail=run.result.stderr_tail or run.result.stdout_tail,
                hint="Fix the script, or list the exit code in validExitCodes if it means success.",
            )

    def _apply_linux(self, ctx: StepContext) -> None:
        step = self.step
        valid = step.accepted_exit_codes
        with tempfile.TemporaryDirectory(prefix="localbuilder-pwsh-") as tmp:
            local = Path(tmp) / "step.ps1"
            if step.script_uri:
                local.write_bytes(ctx.local_file(step.script_uri).read_bytes())
            else:
                local.write_bytes(inline_script(step.inline))
            remote = f"/tmp/localbuilder-{ctx.section.split('.')[0]}-{ctx.index}-{secrets.token_hex(4)}.ps1"
            ctx.comm.upload(local, remote, mode=0o644)
        path = shlex.quote(remote)
        sudo = "sudo -n " if (step.run_elevated or step.run_as_system) else ""
        command = (
            f"if ! command -v pwsh >/dev/null 2>&1; then rm -f {path}; echo {PWSH_MISSING_MARKER} >&2; "
            f"exit {PWSH_MISSING}; fi; "
            f"{sudo}pwsh -NoLogo -NoProfile -NonInteractive -File {path}; rc=$?; rm -f {path}; exit $rc"
        )
        missing: list[bool] = []

        def on_output(stream: str, line: str) -> None:
            if line == PWSH_MISSING_MARKER:
                missing.append(True)
            elif ctx.output is not None:
                ctx.output(stream, line)

        result = ctx.run(command, on_output=on_output)
        if missing:
            raise StepFailed(
                f"{self.describe(ctx.index, ctx.section)}: PowerShell is not installed in this Linux guest "
                "(no pwsh on PATH)",
                exit_status=result.exit_status,
                hint="Install PowerShell 7 in an earlier Shell step, or use a Shell step instead.",
            )
        if result.exit_status not in valid:
            raise StepFailed(
                f"{self.describe(ctx.index, ctx.section)}: pwsh exited with code {result.exit_status} "
                f"(valid: {', '.join(map(str, valid))})",
                exit_status=result.exit_status,
                output_tail=result.stderr_tail or result.stdout_tail,
                hint="Fix the script, or list the exit code in validExitCodes if it means success.",
            )
