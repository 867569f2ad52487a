"""Deprovision a Linux build guest — AIB's hidden last step — and wait for it to power off.

AIB ends every Linux build by running ``/tmp/DeprovisioningScript.sh`` as root; by default that is
``waagent -force -deprovision+user && export HISTSIZE=0 && sync``, and a file of that name written by
an earlier customizer replaces it exactly (FACTS §4,
https://learn.microsoft.com/azure/virtual-machines/linux/image-builder-json, "Generalize").

Here:

* the guest has a ``/tmp/DeprovisioningScript.sh`` (the user's own): it runs as root through sudo, as
  AIB runs it, and the power-off is scheduled from the same root shell — the script may well have
  deleted the user we are logged in as, after which no new ``sudo`` would work;
* otherwise: AIB's default does not work outside Azure (waagent keeps the build user), so
  ``guest_scripts/deprovision.sh`` is uploaded and run instead. It does what the default means to do
  and schedules the power-off itself.

The SSH connection dropping while the guest goes down is expected and counts as success; what
decides is that the guest powers off before the deadline.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import re
import shlex
import tempfile
import time
from pathlib import Path

from localbuilder.communicator import CommandResult, Communicator, OutputCallback
from localbuilder.errors import CommunicatorError, CommunicatorTimeout, DeprovisionError, Disconnected
from localbuilder.hypervisor import Guest
from localbuilder.quiesce import MARKER_DIR

log = logging.getLogger("localbuilder.deprovision")

USER_SCRIPT = "/tmp/DeprovisioningScript.sh"
OUR_SCRIPT = "/tmp/localbuilder-deprovision.sh"
# What AIB writes as USER_SCRIPT when the user did not (the Linux default).
AIB_DEFAULT = "waagent -force -deprovision+user && export HISTSIZE=0 && sync"
DEFAULT_TIMEOUT = 600.0
# The probe and upload get this much at most: they are quick unless the guest is in trouble.
SHORT_TIMEOUT = 60.0
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]*\$?")
# Detached so that sudo, and then the SSH command, return with the script's exit status before the
# guest goes down; `sleep 1` leaves sshd the time to send it.
POWEROFF_LATER = (
    "setsid nohup sh -c 'sleep 1; systemctl poweroff || poweroff || shutdown -P now' "
    ">/dev/null 2>&1 </dev/null &"
)

EXIT_HINTS = {
    2: "the script was not run as root or got a bad user name; run it as: sudo sh SCRIPT USER",
    3: "waagent -deprovision+user failed: its output above says why (is the walinuxagent package sane?)",
    4: "the build user could not be deleted: a process may hold it (userdel -f should override that)",
}


@dataclasses.dataclass(frozen=True)
class DeprovisionResult:
    user_script: bool  # True: the user's /tmp/DeprovisioningScript.sh ran instead of ours
    script: str  # the guest path that ran
    exit_status: int | None  # None: the connection dropped before the exit status arrived
    disconnected: bool  # the SSH connection dropped during the power-off (expected, not an error)
    seconds: float  # from the start of deprovision to the guest's power-off

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def script_text() -> bytes:
    """Our deprovision script, from the package data (``localbuilder/resources/guest_scripts``)."""
    res = importlib.resources.files("localbuilder") / "resources" / "guest_scripts" / "deprovision.sh"
    return res.read_bytes()


def user_script_command() -> str:
    """How the user's script runs: made executable and started as root (its shebang decides the
    interpreter; without one, sh runs it), then the power-off — all in one root shell. ``cd /`` first:
    the script may have deleted the home directory the SSH session started in."""
    inner = (
        f"rm -rf {MARKER_DIR}; "  # our checkpoint marker (localbuilder.quiesce): never in the image
        f"chmod +x {USER_SCRIPT} && {USER_SCRIPT}; rc=$?; "
        f'if [ "$rc" -eq 0 ]; then cd / && {POWEROFF_LATER} fi; exit "$rc"'
    )
    return f"sudo -n sh -c {shlex.quote(inner)}"


def our_script_command(build_user: str) -> str:
    return f"sudo -n sh {OUR_SCRIPT} {shlex.quote(build_user)}"


def deprovision_linux(
    comm: Communicator,
    guest: Guest,
    build_user: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_output: OutputCallback | None = None,
) -> DeprovisionResult:
    """Generalize the guest and wait until it has powered off (at most ``timeout`` seconds in all)."""
    if not _USER_NAME.fullmatch(build_user):
        raise DeprovisionError(
            f"invalid build user name {build_user!r}",
            hint="Use a Linux user name: lower-case letters, digits, '_', '-' and '.'.",
        )
    start = time.monotonic()
    deadline = start + timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    try:
        probe = comm.run(f"test -f {USER_SCRIPT}", timeout=min(SHORT_TIMEOUT, left()))
    except CommunicatorError as exc:
        raise DeprovisionError(
            f"cannot reach the guest to deprovision it: {exc}",
            hint="The guest stopped answering before deprovision; its serial log may say why.",
        ) from exc
    user_script = probe.exit_status == 0
    if user_script:
        log.info("running the user's %s as root (it replaces the default deprovision)", USER_SCRIPT)
        script, command = USER_SCRIPT, user_script_command()
    else:
        log.info("running localbuilder's deprovision (waagent -deprovision+user made effective locally)")
        script, command = OUR_SCRIPT, our_script_command(build_user)
        _upload_script(comm)

    result: CommandResult | None = None
    disconnected = False
    try:
        result = comm.run(command, timeout=left(), on_output=on_output)
    except Disconnected as exc:
        # The script was started: the power-off it scheduled can win the race against the exit status.
        log.debug("connection dropped during deprovision (expected while powering off): %s", exc)
        disconnected = True
    except CommunicatorTimeout as exc:
        raise DeprovisionError(
            f"deprovision ({script}) did not finish within {timeout:.0f} s",
            hint="A step in it hangs (waagent waiting for something?); the serial log shows the guest side.",
        ) from exc
    except CommunicatorError as exc:
        raise DeprovisionError(f"deprovision ({script}) could not run: {exc}", hint=exc.hint) from exc

    if result is not None and result.exit_status != 0:
        raise DeprovisionError(
            f"deprovision script {script} exited with status {result.exit_status}{_tail(result)}",
            hint=_failure_hint(result, user_script),
        )
    comm.close()  # the guest is going down; a later use of this connection would only hang
    if not guest.wait_shutdown(left()):
        raise DeprovisionError(
            f"the guest did not power off within {timeout:.0f} s after deprovision",
            hint=f"{script} ran and 'systemctl poweroff' was scheduled after it; something in the guest "
            "blocks the shutdown: see the guest's serial log.",
        )
    seconds = time.monotonic() - start
    log.debug("deprovisioned and powered off in %.1f s (user script: %s)", seconds, user_script)
    return DeprovisionResult(
        user_script=user_script,
        script=script,
        exit_status=result.exit_status if result is not None else None,
        disconnected=disconnected,
        seconds=seconds,
    )


def _tail(result: CommandResult) -> str:
    text = result.stderr_tail.strip() or result.stdout_tail.strip()
    return "\n" + text if text else ""


def _failure_hint(result: CommandResult, user_script: bool) -> str:
    if "sudo:" in result.stderr_tail:
        return "The build user needs passwordless sudo (cloud-init's default user has it)."
    if user_script:
        return "The user's own deprovision script failed; fix it or remove the customizer that writes it."
    return EXIT_HINTS.get(result.exit_status, "See the script's output above.")


def _upload_script(comm: Communicator) -> None:
    with tempfile.TemporaryDirectory(prefix="localbuilder-") as tmp:
        local = Path(tmp) / "deprovision.sh"
        local.write_bytes(script_text())
        try:
            comm.upload(local, OUR_SCRIPT, mode=0o755)
        except CommunicatorError as exc:
            raise DeprovisionError(
                f"cannot upload the deprovision script to {OUR_SCRIPT}: {exc}",
                hint=exc.hint or "Is /tmp in the guest writable and not full?",
            ) from exc
