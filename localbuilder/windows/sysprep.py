"""Windows deprovision: AIB's Sysprep step, made to work on a local VM, then power-off.

AIB appends a hidden last step to every Windows build: run ``C:\\DeprovisioningScript.ps1`` — by default
Sysprep ``/oobe /generalize /quiet /quit`` and a poll of ``ImageState`` until
``IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE``. A customizer that writes its own
``C:\\DeprovisioningScript.ps1`` replaces the default exactly (FACTS §4). AIB's default first waits for
the Azure guest agent services, which a local VM does not have; ``guest_scripts/sysprep.ps1`` skips
services that do not exist (``Get-Service … -ErrorAction SilentlyContinue``) and bounds its waits.

After the script: ``shutdown /s`` and wait for the hypervisor to see the guest power off.
"""

from __future__ import annotations

import logging

from localbuilder.communicator import Communicator, OutputCallback
from localbuilder.communicator.winrs import powershell_command
from localbuilder.errors import CommunicatorError, DeprovisionError, Disconnected
from localbuilder.hypervisor import Guest
from localbuilder.windows.powershell import UTF8_BOM, _upload_bytes
from localbuilder.windows.scripts import guest_script

log = logging.getLogger("localbuilder.windows.sysprep")

DEPROVISION_SCRIPT = "C:\\DeprovisioningScript.ps1"
RUN_SCRIPT = (
    "powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass "
    f'-File "{DEPROVISION_SCRIPT}"'
)
POWER_OFF = 'shutdown /s /t 0 /f /c "localbuilder deprovision"'
EXISTS_SCRIPT = f"if (Test-Path -LiteralPath '{DEPROVISION_SCRIPT}') {{ exit 0 }} exit 3"


def deprovision_windows(
    comm: Communicator,
    guest: Guest,
    *,
    timeout: float,
    on_output: OutputCallback | None = None,
    shutdown_timeout: float = 300.0,
) -> bool:
    """Generalize the guest and power it off. Returns True when the user's own script was used.

    ``timeout`` bounds the Sysprep script; ``shutdown_timeout`` the power-off that follows.
    """
    exists = comm.run(powershell_command(EXISTS_SCRIPT), timeout=120)
    user_script = exists.exit_status == 0
    if exists.exit_status not in (0, 3):
        raise DeprovisionError(f"checking for {DEPROVISION_SCRIPT} failed (exit {exists.exit_status})")
    if user_script:
        log.info("using the DeprovisioningScript.ps1 written by a customize step")
    else:
        _upload_bytes(comm, UTF8_BOM + guest_script("sysprep.ps1").encode("utf-8"), DEPROVISION_SCRIPT)
    went_down = False
    try:
        result = comm.run(RUN_SCRIPT, timeout=timeout, on_output=on_output)
    except Disconnected:
        # A user script may end with its own shutdown (sysprep /shutdown): that is fine if the guest
        # then powers off, which is checked below.
        went_down = True
    except CommunicatorError as exc:
        raise DeprovisionError(
            f"deprovisioning failed: {exc}",
            hint="Sysprep can hang on a pending update or a provisioned Store app; the guest's "
            "C:\\Windows\\System32\\Sysprep\\Panther\\setuperr.log says why.",
        ) from exc
    if not went_down and not result.ok:
        tail = result.stderr_tail or result.stdout_tail
        raise DeprovisionError(
            f"{DEPROVISION_SCRIPT} failed with exit code {result.exit_status}"
            + (f"\n{tail}" if tail else ""),
            hint="See the Sysprep output above and C:\\Windows\\System32\\Sysprep\\Panther\\setuperr.log.",
        )
    if not went_down:
        try:
            comm.run(POWER_OFF, timeout=60)
        except (Disconnected, CommunicatorError) as exc:
            log.debug("power-off command: %s (expected while the guest goes down)", exc)
    if not guest.wait_shutdown(shutdown_timeout):
        raise DeprovisionError(
            f"the guest did not power off within {shutdown_timeout:.0f} s after deprovisioning",
            hint="Check the guest console; a Windows update may be installing during shutdown.",
        )
    return user_script
