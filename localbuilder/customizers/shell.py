"""Shell customizer (Linux): ``inline`` commands or a ``scriptUri`` script, run like AIB/Packer do.

AIB runs Packer's shell provisioner inside the service. Packer writes ``inline`` commands into one
script whose first line is ``#!/bin/sh -e`` (its ``inline_shebang`` default), uploads it, and runs it
as the SSH user — so inline commands need ``sudo`` for privileged work, and the first failing command
stops the step. Every AIB example template writes ``sudo`` in front of privileged inline commands.

A ``scriptUri`` script, in contrast, runs as **root** here: the AIB quickstart script
``customizeScript.sh`` appends to ``/etc/motd`` without ``sudo`` and works in AIB, so AIB evidently runs
downloaded scripts elevated. A script without a ``#!`` line is run by ``/bin/sh`` (what a shell does on
ENOEXEC, and what Packer's ``chmod +x; path`` execution gives).

Per step: one SFTP upload and one SSH exec (Packer needs ~5 sessions: upload, chmod, run, 2× rm).
The exec also reports systemd's state afterwards, so a step that ran ``sudo reboot`` is recognised even
when its exit status arrives before the connection drops; the build then waits for the guest to come
back (hypervisor reset counter + reconnect + ``cloud-init status --wait``) and carries on.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import tempfile
import time
from pathlib import Path

from localbuilder.communicator import CommandResult
from localbuilder.customizers import Customizer, StepContext, StepFailed
from localbuilder.errors import CustomizerError, Disconnected
from localbuilder.template import model
from localbuilder.template.model import OsType

log = logging.getLogger("localbuilder.customizers.shell")

INLINE_SHEBANG = "#!/bin/sh -e"
# Printed to stderr around the script and filtered out of the log: STARTED says the command began in
# the guest (not a session stuck in a shutting-down guest); STATE is systemd's state afterwards.
STARTED_MARKER = "__localbuilder_started"
STATE_MARKER = "__localbuilder_systemd_state="
# A step whose connection dropped before it started is re-run once the guest is back.
MAX_ATTEMPTS = 3
# systemd states that may mean "going down" but need the hypervisor's confirmation (a reset).
AMBIGUOUS_STATES = frozenset({"unknown", "offline"})
AMBIGUOUS_WAIT_SECONDS = 120.0  # a TCG guest took ~45 s from `reboot` to the reset here


def inline_script(lines: tuple[str, ...] | list[str]) -> str:
    return INLINE_SHEBANG + "\n" + "\n".join(lines) + "\n"


def exec_command(remote: str, *, as_root: bool, has_shebang: bool) -> str:
    """The one command line that runs the uploaded script, cleans up and reports systemd's state.

    After ``sudo reboot`` returns, systemd has a job queued for shutdown.target: ``is-system-running``
    then says ``stopping``, and ``list-jobs`` shows the job.
    """
    path = shlex.quote(remote)
    runner = path if has_shebang else f"/bin/sh {path}"
    if as_root:
        # -n: never prompt for a password (a prompt would hang the build until the timeout).
        runner = f"sudo -n {runner}"
    return (
        f"echo {STARTED_MARKER} >&2; {runner}; rc=$?; rm -f {path}; "
        f'state="$(systemctl is-system-running 2>/dev/null)"; '
        f"systemctl list-jobs --no-legend 2>/dev/null | grep -qE '(reboot|poweroff|halt|shutdown)\\.target' "
        f'&& state="$state,shutdown-job"; '
        f'echo "{STATE_MARKER}$state" >&2; exit $rc'
    )


class Shell(Customizer[model.ShellCustomizer], type_name="Shell"):
    supported_os = frozenset({OsType.linux})

    def apply(self, ctx: StepContext) -> None:
        step = self.step
        with tempfile.TemporaryDirectory(prefix="localbuilder-inline-") as tmp:
            if step.script_uri:
                local = ctx.local_file(step.script_uri)
                has_shebang = local.read_bytes()[:2] == b"#!"
                as_root = True
            else:
                local = Path(tmp) / "inline.sh"
                local.write_text(inline_script(step.inline), encoding="utf-8")
                has_shebang, as_root = True, False
            for attempt in range(1, MAX_ATTEMPTS + 1):
                section = ctx.section.split(".")[0]
                remote = f"/tmp/localbuilder-{section}-{ctx.index}-{secrets.token_hex(4)}.sh"
                ctx.remaining()
                ctx.comm.upload(local, remote, mode=0o755)
                if self._run(ctx, exec_command(remote, as_root=as_root, has_shebang=has_shebang)):
                    return
                # The connection dropped before the script started: the guest was going down (a
                # reboot from the previous step that was not yet visible). Run the step again.
                ctx.note(f"{self.describe(ctx.index, ctx.section)} did not start before the guest went "
                         f"down; running it again (attempt {attempt + 1})")
        raise CustomizerError(
            f"{self.describe(ctx.index, ctx.section)} could not be started: the guest kept going down",
            hint="See the serial log in the run directory.",
        )

    def _run(self, ctx: StepContext, command: str) -> bool:
        """Run the step's command; False when it never started (retry after the reboot)."""
        resets_before = ctx.guest.reset_count() if ctx.guest is not None else 0
        states: list[str] = []
        started: list[bool] = []

        def on_output(stream: str, line: str) -> None:
            if line == STARTED_MARKER:
                started.append(True)
            elif line.startswith(STATE_MARKER):
                states.append(line[len(STATE_MARKER) :].strip())
            elif ctx.output is not None:
                ctx.output(stream, line)

        try:
            result = ctx.run(command, on_output=on_output)
        except Disconnected:
            # The connection dropped under the command: a reboot (or a crash, which wait_for_reboot
            # tells apart through the hypervisor).
            ctx.wait_for_reboot(resets_before)
            if started and not states:
                # The script never reported its end: whatever followed the reboot in it did not run.
                # The build goes on (a reboot ends a step, as `sudo reboot` as the last command does),
                # but says so where the user looks.
                text = (f"the guest rebooted before {self.describe(ctx.index, ctx.section)} reported its "
                        "end: commands after the reboot did not run (put 'sudo reboot' last in a step)")
                ctx.note(text)
                log.warning("%s", text)
            return bool(started)
        log.debug("after %s: systemd state %s", self.describe(ctx.index, ctx.section), states)
        state = states[-1] if states else ""
        rebooting = "stopping" in state or "shutdown-job" in state or (
            ctx.guest is not None and ctx.guest.reset_count() > resets_before
        )
        if not rebooting and state.split(",")[0] in AMBIGUOUS_STATES and ctx.guest is not None:
            # Measured on Debian 12: right after `sudo reboot`, an unprivileged systemctl already
            # cannot reach the manager and says "unknown". Confirm through the hypervisor.
            rebooting = _reset_within(ctx, resets_before, AMBIGUOUS_WAIT_SECONDS)
            if not rebooting:
                ctx.note(f"systemd said {state!r} after the step, but the guest did not reboot; going on")
        if rebooting:
            ctx.wait_for_reboot(resets_before)
            return True
        if not result.ok:
            raise StepFailed(
                f"{self.describe(ctx.index, ctx.section)} failed with exit code {result.exit_status}",
                exit_status=result.exit_status,
                output_tail=_tail(result),
                hint="Inline commands run with '/bin/sh -e' as the build user (prefix privileged "
                "commands with sudo); scriptUri scripts run as root. See customization.log in the run "
                "directory for the full output.",
            )
        return True


def _reset_within(ctx: StepContext, resets_before: int, seconds: float) -> bool:
    assert ctx.guest is not None
    end = time.monotonic() + min(seconds, ctx.remaining())
    while time.monotonic() < end:
        if ctx.guest.reset_count() > resets_before or not ctx.guest.is_running():
            return True
        time.sleep(0.5)
    return False


def _markers(line: str) -> bool:
    return line == STARTED_MARKER or line.startswith(STATE_MARKER)


def _tail(result: CommandResult, lines: int = 15) -> str:
    out = [ln for ln in result.stdout_tail.splitlines() if not _markers(ln)]
    err = [ln for ln in result.stderr_tail.splitlines() if not _markers(ln)]
    text = out[-lines:]
    if err:
        text += ["(stderr)"] + err[-lines:]
    return "\n".join(text)
