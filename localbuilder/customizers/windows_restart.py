"""WindowsRestart customizer: Packer's restart algorithm, confirmed through the hypervisor.

See ``localbuilder.windows.restart`` for the algorithm; ``restartTimeout`` is parsed there (``5m``,
``2h``, ``1h30m``).
"""

from __future__ import annotations

from localbuilder.customizers import Customizer, StepContext
from localbuilder.template.model import OsType
from localbuilder.windows.restart import (
    DEFAULT_RESTART_COMMAND,
    RestartOptions,
    parse_restart_timeout,
    restart_windows,
)


class WindowsRestart(Customizer, type_name="WindowsRestart"):
    supported_os = frozenset({OsType.windows})

    def apply(self, ctx: StepContext) -> None:
        step = self.step
        # The template validator has parsed restartTimeout already (Go duration syntax); a record built
        # by hand without it falls back to our parser.
        timeout = float(step.restart_timeout_seconds or 0) or parse_restart_timeout(
            step.restart_timeout or "5m"
        )
        options = RestartOptions(
            restart_command=step.restart_command or DEFAULT_RESTART_COMMAND,
            check_command=step.restart_check_command or "",
            timeout=min(timeout, ctx.remaining()),
        )
        restart_windows(ctx.comm, options, guest=ctx.guest, on_output=ctx.output)
