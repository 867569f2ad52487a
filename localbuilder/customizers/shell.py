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

import secrets
import shlex
import tempfile
from pathlib import Path

from localbuilder.communicator import CommandResult
from localbuilder.customizers import Customizer, GuestOS, StepContext, StepFailed
from localbuilder.errors import Disconnected

INLINE_SHEBANG = "#!/bin/sh -e"
# Printed to stderr after the script, filtered out of the log: systemd's state tells "rebooting".
STATE_MARKER = "__localbuilder_systemd_state="


def inline_script(lines: tuple[str, ...] | list[str]) -> str:
    return INLINE_SHEBANG + "\n" + "\n".join(lines) + "\n"


def exec_command(remote: str, *, as_root: bool, has_shebang: bool) -> str:
    """The one command line that runs the uploaded script, cleans up and reports systemd's state."""
    path = shlex.quote(remote)
    runner = path if has_shebang else f"/bin/sh {path}"
    if as_root:
        # -n: never prompt for a password (a prompt would hang the build until the timeout).
        runner = f"sudo -n {runner}"
    return (
        f"{runner}; rc=$?; rm -f {path}; "
        f'echo "{STATE_MARKER}$(systemctl is-system-running 2>/dev/null)" >&2; exit $rc'
    )


class Shell(Customizer, type_name="Shell"):
    supported_os = frozenset({GuestOS.linux})

    def apply(self, ctx: StepContext) -> None:
        step = self.step
        remote = f"/tmp/localbuilder-{ctx.section.split('.')[0]}-{ctx.index}-{secrets.token_hex(4)}.sh"
        if step.script_uri:
            local = ctx.local_file(step.script_uri)
            has_shebang = local.read_bytes()[:2] == b"#!"
            self._upload(ctx, local, remote)
            command = exec_command(remote, as_root=True, has_shebang=has_shebang)
        else:
            with tempfile.TemporaryDirectory(prefix="localbuilder-inline-") as tmp:
                local = Path(tmp) / "inline.sh"
                local.write_text(inline_script(step.inline), encoding="utf-8")
                self._upload(ctx, local, remote)
            command = exec_command(remote, as_root=False, has_shebang=True)
        self._run(ctx, command)

    @staticmethod
    def _upload(ctx: StepContext, local: Path, remote: str) -> None:
        ctx.remaining()
        ctx.comm.upload(local, remote, mode=0o755)

    def _run(self, ctx: StepContext, command: str) -> None:
        resets_before = ctx.guest.reset_count() if ctx.guest is not None else 0
        states: list[str] = []

        def on_output(stream: str, line: str) -> None:
            if line.startswith(STATE_MARKER):
                states.append(line[len(STATE_MARKER) :].strip())
            elif ctx.output is not None:
                ctx.output(stream, line)

        try:
            result = ctx.run(command, on_output=on_output)
        except Disconnected:
            # The connection dropped under the command: a reboot (or a crash, which wait_for_reboot
            # tells apart through the hypervisor).
            ctx.wait_for_reboot(resets_before)
            return
        rebooting = "stopping" in states or (
            ctx.guest is not None and ctx.guest.reset_count() > resets_before
        )
        if rebooting:
            ctx.wait_for_reboot(resets_before)
            return
        if not result.ok:
            raise StepFailed(
                f"{self.describe(ctx.index, ctx.section)} failed with exit code {result.exit_status}",
                exit_status=result.exit_status,
                output_tail=_tail(result),
                hint="Inline commands run with '/bin/sh -e' as the build user (prefix privileged "
                "commands with sudo); scriptUri scripts run as root. See customization.log in the run "
                "directory for the full output.",
            )


def _tail(result: CommandResult, lines: int = 15) -> str:
    out = [ln for ln in result.stdout_tail.splitlines() if not ln.startswith(STATE_MARKER)]
    err = [ln for ln in result.stderr_tail.splitlines() if not ln.startswith(STATE_MARKER)]
    text = out[-lines:]
    if err:
        text += ["(stderr)"] + err[-lines:]
    return "\n".join(text)
