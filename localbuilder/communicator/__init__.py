"""Communicators: how localbuilder talks to a running guest (SSH for Linux, WinRM for Windows).

Implementations: ``ssh.SSHCommunicator`` (paramiko), ``winrm.WinRMCommunicator`` (pywinrm) and
``fake.FakeCommunicator`` (scripted replies for unit tests, like httpx's MockTransport).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
