"""Communicators: how localbuilder talks to a running guest (SSH for Linux, WinRM for Windows).

Implementations: ``ssh.SSHCommunicator`` (paramiko), ``winrm.WinRMCommunicator`` (pywinrm) and
``fake.FakeCommunicator`` (scripted replies for unit tests, like httpx's MockTransport).

Under them, one module per concept: ``sshtransport`` (opening a verified paramiko transport),
``hostkeys`` (host-key pinning), ``sshchannel`` (driving one command's channel), ``console`` (the
serial console's tail in a timeout message), ``winrs`` (how commands and scripts are spelled for
Windows Remote Shell) and ``output`` (output streams into lines and bounded tails, shared by all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

# on_output(stream, line): stream is "stdout" or "stderr"; the line has no trailing newline.
OutputCallback = Callable[[str, str], None]


@dataclasses.dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout_tail: str  # last lines only: output is streamed through on_output, never held whole
    stderr_tail: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclasses.dataclass
class Held:
    """A guest command held at a point (``Communicator.hold``): ``line`` is the stdout line that said it
    got there; ``result`` is filled in once the command was released and ended."""

    line: str
    result: CommandResult | None = None


class Communicator(Protocol):
    def wait_ready(self, timeout: float) -> None:
        """Block until the guest accepts commands; raise CommunicatorTimeout after ``timeout`` s."""
        ...

    def run(
        self,
        command: str,
        *,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run ``command`` in the guest. Raises Disconnected if the connection drops mid-command."""
        ...

    def upload(self, src: Path, dst: str, *, mode: int | None = None) -> None: ...

    def download(self, src: str, dst: Path) -> None: ...

    def reconnect(self, timeout: float) -> None:
        """Drop the current connection and wait for the guest to accept a new one (after a reboot)."""
        ...

    def close(self) -> None: ...


class CanHold(Protocol):
    """A communicator that can keep one command waiting while the host acts (SSH; not WinRM)."""

    def hold(self, command: str, *, ready: str, timeout: float) -> AbstractContextManager[Held]:
        """Run ``command`` until it prints a stdout line starting with ``ready``; keep it waiting on its
        stdin while the block runs; then send it one newline (also when the block raises), close its
        stdin and wait for it to end. Used to keep the guest's filesystems frozen from one command
        while the host cuts a checkpoint (``localbuilder.quiesce``): nothing new starts in the guest."""
        ...
