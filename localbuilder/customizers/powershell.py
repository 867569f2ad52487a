"""PowerShell customizer (Windows): ``inline`` lines or a ``scriptUri`` script, as AIB runs them.

The logic lives in ``localbuilder.windows.powershell`` (upload to ``C:\\Windows\\Temp``, wrapper with
``$ProgressPreference = 'SilentlyContinue'``, scheduled task for ``runElevated``/``runAsSystem``);
this class maps the template step onto it and judges the exit code against ``validExitCodes``
(default ``[0]``).
"""

from __future__ import annotations

from localbuilder.customizers import Customizer, GuestOS, StepContext, StepFailed
from localbuilder.windows.powershell import inline_script, run_powershell_script


class PowerShell(Customizer, type_name="PowerShell"):
    supported_os = frozenset({GuestOS.windows})

    def apply(self, ctx: StepContext) -> None:
        step = self.step
        if step.script_uri:
            script = ctx.local_file(step.script_uri).read_bytes()
        else:
            script = inline_script(step.inline)
        valid = tuple(step.valid_exit_codes) or (0,)
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
