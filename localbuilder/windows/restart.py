"""WindowsRestart: reboot the guest and wait until it is back, as AIB (Packer's windows-restart) does.

Packer's algorithm (FACTS §6):

1. run ``restartCommand`` (default ``shutdown /r /f /t 0 /c "packer restart"``); exit 0, 1115
   (shutdown in progress) and 1190 (shutdown already scheduled) are success;
2. "is it rebooting?" loop: ``shutdown /r /f /t 60 /c "packer restart test"`` — a connection error
   or exit 1 means rebooting; 1115/1190/1717 mean "still going down", wait 10 s and ask again; exit 0
   means the test itself scheduled a reboot, so abort it (``shutdown /a``) and go on;
3. every 5 s: ``restartCheckCommand`` until it runs, then Packer's PowerShell check whose output must
   contain ``restarted.``; all of it bounded by ``restartTimeout`` (default 5m).

Packer cannot tell "rebooted" from "did not reboot yet" in step 2: a slow ``shutdown`` lets the test
command succeed and the step carries on before the reboot. Locally we can do better: with a
hypervisor ``Guest`` the reset counter must increase (QMP ``RESET`` events / libvirt reboot events);
without one, the guest's ``LastBootUpTime`` before and after must differ.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from localbuilder.communicator import CommandResult, Communicator, OutputCallback
from localbuilder.communicator.winrs import powershell_command
from localbuilder.errors import CommunicatorError, CustomizerError, Disconnected
from localbuilder.hypervisor import Guest
from localbuilder.template.durations import parse_duration
from localbuilder.template.model import DEFAULT_RESTART_COMMAND, DEFAULT_RESTART_TIMEOUT_SECONDS

log = logging.getLogger("localbuilder.windows.restart")

TEST_COMMAND = 'shutdown /r /f /t 60 /c "packer restart test"'
ABORT_COMMAND = "shutdown /a"
# Packer's built-in check (DefaultRestartCheckCommand): prints "<hostname> restarted.".
CHECK_SCRIPT = 'echo ("{0} restarted." -f [System.Net.Dns]::GetHostName())'
BOOT_TIME_SCRIPT = (
    "(Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')"
)
# Packer's pauses: after 1115/1190/1717 ("still going down"), and between restart checks.
PENDING_INTERVAL = 10.0
CHECK_INTERVAL = 5.0
RESTART_OK = (0, 1115, 1190)
STILL_GOING_DOWN = (1115, 1190, 1717)


@dataclasses.dataclass(frozen=True)
class RestartOptions:
    restart_command: str = DEFAULT_RESTART_COMMAND
    check_command: str = ""  # restartCheckCommand; "" = only Packer's built-in check
    timeout: float = float(DEFAULT_RESTART_TIMEOUT_SECONDS)  # restartTimeout in seconds
    pending_interval: float | None = None  # None: PENDING_INTERVAL
    check_interval: float | None = None  # None: CHECK_INTERVAL


def parse_restart_timeout(value: str) -> float:
    """``5m`` / ``2h`` / ``1h30m`` / ``90s`` (Go durations, as Packer parses them) → seconds (> 0)."""
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise invalid_restart_timeout(value)
    return float(seconds)


def invalid_restart_timeout(value: str) -> CustomizerError:
    """The error for a restartTimeout that is not a duration, or one of zero (which cannot be waited for)."""
    return CustomizerError(
        f"restartTimeout {value!r} is not a duration",
        hint="Write it like Packer/AIB do: '5m', '2h', '1h30m', '90s'.",
    )


def _run(comm: Communicator, command: str, on_output: OutputCallback | None, timeout: float) -> CommandResult:
    return comm.run(command, timeout=max(1.0, timeout), on_output=on_output)


def boot_time(comm: Communicator, timeout: float = 120.0) -> str:
    result = comm.run(powershell_command(BOOT_TIME_SCRIPT), timeout=timeout)
    if not result.ok or not result.stdout_tail.strip():
        raise CustomizerError(f"cannot read the guest's boot time (exit {result.exit_status})")
    return result.stdout_tail.strip().splitlines()[-1]


def restart_windows(
    comm: Communicator,
    options: RestartOptions = RestartOptions(),
    *,
    guest: Guest | None = None,
    on_output: OutputCallback | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Restart the guest and return once it is back and answering; raise CustomizerError otherwise."""
    start = time.monotonic()
    deadline = start + options.timeout
    pending_interval = PENDING_INTERVAL if options.pending_interval is None else options.pending_interval
    check_interval = CHECK_INTERVAL if options.check_interval is None else options.check_interval

    def left() -> float:
        return deadline - time.monotonic()

    def note(text: str) -> None:
        log.info("%s", text)
        if on_output is not None:
            on_output("localbuilder", text)

    resets_before = guest.reset_count() if guest is not None else 0
    booted_before = boot_time(comm) if guest is None else ""

    # 1. the restart command
    try:
        result = _run(comm, options.restart_command, on_output, left())
    except Disconnected:
        result = None  # the guest went down before it could answer: that is a restart too
    if result is not None and result.exit_status not in RESTART_OK:
        raise CustomizerError(
            f"restart command failed with exit code {result.exit_status}: {options.restart_command}"
            + (f"\n{result.stderr_tail}" if result.stderr_tail else ""),
            hint="Exit codes 0, 1115 and 1190 count as success (as in AIB).",
        )
    note("restart command sent; waiting for the guest to go down")

    # 2. is it rebooting?
    if guest is not None:
        # The hypervisor saw the reset: no guessing from shutdown.exe's exit codes.
        while guest.reset_count() <= resets_before:
            if not guest.is_running():
                raise CustomizerError(
                    "the guest powered off instead of restarting",
                    hint="restartCommand must reboot (shutdown /r), not shut down (/s).",
                )
            if left() <= 0:
                raise _timeout(options, "the guest did not reboot")
            sleep(0.2)
    else:
        while True:
            if left() <= 0:
                raise _timeout(options, "the guest did not go down")
            try:
                test = _run(comm, TEST_COMMAND, on_output, left())
            except (Disconnected, CommunicatorError) as exc:
                log.debug("restart test: %s (rebooting)", exc)
                break
            if test.exit_status == 1:
                break
            if test.exit_status in STILL_GOING_DOWN:
                sleep(pending_interval)
                continue
            if test.exit_status == 0:
                # Our test scheduled a reboot: cancel it. Packer goes on here; the boot-time
                # comparison below tells whether the guest really restarted.
                try:
                    _run(comm, ABORT_COMMAND, on_output, left())
                except (Disconnected, CommunicatorError):
                    pass
                break
            sleep(pending_interval)

    # 3. wait until the guest answers the checks
    note("waiting for the guest to come back")
    custom_done = not options.check_command
    last_error = ""
    while True:
        if left() <= 0:
            detail = f" (last: {last_error})" if last_error else ""
            raise _timeout(options, f"the guest did not come back{detail}")
        if guest is not None and not guest.is_running():
            raise CustomizerError(
                "the guest powered off while restarting",
                hint="Check the guest's console/serial log: Windows may have crashed during the boot.",
            )
        try:
            if not custom_done:
                _run(comm, options.check_command, on_output, left())
                custom_done = True
            check = _run(comm, powershell_command(CHECK_SCRIPT), on_output, left())
            if "restarted." in check.stdout_tail:
                if guest is None and boot_time(comm, left()) == booted_before:
                    # Packer would stop here; the guest never rebooted. Keep waiting: a slow
                    # shutdown may still be on its way until restartTimeout.
                    log.debug("boot time unchanged: the guest has not restarted yet")
                    custom_done = not options.check_command  # the user's check must see the new boot
                else:
                    break
        except (Disconnected, CommunicatorError) as exc:
            log.debug("restart check: %s", exc)
            last_error = exc.message
        sleep(check_interval)
    note(f"guest restarted ({time.monotonic() - start:.1f} s)")


def _timeout(options: RestartOptions, what: str) -> CustomizerError:
    return CustomizerError(
        f"{what} within restartTimeout ({options.timeout:.0f} s)",
        hint="Raise restartTimeout (e.g. '15m' when updates install during the reboot), or check the "
        "guest's console/serial log.",
    )
