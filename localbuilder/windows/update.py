"""WindowsUpdate: install updates in a loop of "install, restart" until nothing is left.

As in the packer windows-update plugin that AIB runs (FACTS §6): ``guest_scripts/windows-update.ps1``
runs as SYSTEM from a scheduled task (the Windows Update Agent API refuses a WinRM network logon);
its exit code 101 means "updates installed, a reboot is needed" (also used when a reboot was already
pending, the ``0x80240016`` case): we restart (Packer's restart algorithm) and run it again; 0 means
done. Anything else fails the step with the script's output tail.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from localbuilder.communicator import Communicator, OutputCallback
from localbuilder.communicator.winrs import ps_quote
from localbuilder.errors import CustomizerError
from localbuilder.hypervisor import Guest
from localbuilder.template.model import (
    DEFAULT_UPDATE_FILTERS,
    DEFAULT_UPDATE_LIMIT,
    DEFAULT_UPDATE_SEARCH_CRITERIA,
)
from localbuilder.windows.powershell import TEMP_DIR, UTF8_BOM, _upload_bytes, run_powershell_script
from localbuilder.windows.restart import RestartOptions, restart_windows
from localbuilder.windows.scripts import guest_script

log = logging.getLogger("localbuilder.windows.update")

EXIT_REBOOT = 101
REMOTE_SCRIPT = f"{TEMP_DIR}\\localbuilder-windows-update.ps1"


@dataclasses.dataclass(frozen=True)
class UpdateOptions:
    search_criteria: str = DEFAULT_UPDATE_SEARCH_CRITERIA
    filters: tuple[str, ...] = DEFAULT_UPDATE_FILTERS
    update_limit: int = DEFAULT_UPDATE_LIMIT
    max_rounds: int = 20  # install/restart rounds before giving up (a loop that never converges)
    restart: RestartOptions = RestartOptions(timeout=3600.0)  # reboots after updates can be long
    # Test mode of windows-update.ps1: no Windows Update Agent, the counter file decides (see script).
    test_counter_file: str | None = None
    test_reboots: int = 2


def invocation(options: UpdateOptions, script: str = REMOTE_SCRIPT) -> str:
    """The PowerShell line the SYSTEM task runs (golden-tested)."""
    for flt in options.filters:
        if not (flt.startswith("include:") or flt.startswith("exclude:")):
            raise CustomizerError(
                f"WindowsUpdate filter {flt!r} must start with 'include:' or 'exclude:'",
                hint="Example: \"exclude:$_.Title -like '*Preview*'\", \"include:$true\".",
            )
    filters = ", ".join(ps_quote(f) for f in options.filters) or ""
    parts = [
        f"& {ps_quote(script)}",
        f"-SearchCriteria {ps_quote(options.search_criteria)}",
        f"-Filters @({filters})",
        f"-UpdateLimit {int(options.update_limit)}",
    ]
    if options.test_counter_file:
        parts += [
            f"-TestCounterFile {ps_quote(options.test_counter_file)}",
            f"-TestReboots {options.test_reboots}",
        ]
    return " ".join(parts) + "\nexit $LASTEXITCODE\n"


def windows_update(
    comm: Communicator,
    options: UpdateOptions = UpdateOptions(),
    *,
    guest: Guest | None = None,
    on_output: OutputCallback | None = None,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[int]:
    """Run the update loop; return the exit codes of the rounds (e.g. ``[101, 101, 0]``)."""
    codes: list[int] = []
    for round_no in range(1, options.max_rounds + 1):
        # Uploaded every round: a restart may have cleaned C:\Windows\Temp.
        _upload_bytes(comm, UTF8_BOM + guest_script("windows-update.ps1").encode("utf-8"), REMOTE_SCRIPT)
        run = run_powershell_script(
            comm,
            UTF8_BOM + invocation(options).encode("utf-8"),
            label=f"windows-update-{round_no}",
            as_system=True,
            timeout=timeout,
            on_output=on_output,
        )
        codes.append(run.exit_status)
        if run.exit_status == 0:
            log.info("Windows Update: done after %d round(s)", round_no)
            if on_output is not None:
                on_output("localbuilder", f"Windows Update round {round_no}: exit 0, done")
            return codes
        if run.exit_status != EXIT_REBOOT:
            raise CustomizerError(
                f"Windows Update failed with exit code {run.exit_status} (round {round_no})"
                + _tail(run.result.stdout_tail, run.result.stderr_tail),
                hint="See the update log above; 0x80240016 means a reboot was pending (retried "
                "automatically), other HRESULTs are Windows Update Agent errors.",
            )
        log.info("Windows Update: round %d needs a restart", round_no)
        if on_output is not None:
            on_output("localbuilder", f"Windows Update round {round_no}: exit 101, restarting")
        restart_windows(comm, options.restart, guest=guest, on_output=on_output, sleep=sleep)
    raise CustomizerError(
        f"Windows Update still wanted a restart after {options.max_rounds} rounds ({codes})",
        hint="An update that fails to install keeps asking for a reboot; exclude it with a filter "
        "(\"exclude:$_.Title -like '*KB…*'\").",
    )


def _tail(stdout: str, stderr: str) -> str:
    text = "\n".join(t for t in (stdout.strip(), stderr.strip()) if t)
    return f"\n{text}" if text else ""
