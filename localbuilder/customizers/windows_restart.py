"""WindowsRestart customizer: Packer's restart algorithm, confirmed through the hypervisor.

See ``localbuilder.windows.restart`` for the algorithm. The template validator has resolved the step's
defaults and parsed ``restartTimeout`` (``5m``, ``2h``, ``1h30m``) into ``restart_timeout_seconds``.
"""

from __future__ import annotations

from localbuilder.customizers import Customizer, StepContext
from localbuilder.template import model
from localbuilder.template.model import OsType
from localbuilder.windows.restart import RestartOptions, invalid_restart_timeout, restart_windows


class WindowsRestart(Customizer[model.WindowsRestartCustomizer], type_name="WindowsRestart"):
    supported_os = frozenset({OsType.windows})

    def apply(self, ctx: StepContext) -> None:
        step = self.step
        if step.restart_timeout_seconds <= 0:  # '0s' is a valid Go duration, but no time to restart in
            raise invalid_restart_timeout(step.restart_timeout)
        options = RestartOptions(
            restart_command=step.restart_command,
            check_command=step.restart_check_command,
            timeout=min(float(step.restart_timeout_seconds), ctx.remaining()),
        )
        restart_windows(ctx.comm, options, guest=ctx.guest, on_output=ctx.output)
