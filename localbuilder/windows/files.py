"""File customizer on Windows: upload a fetched file to any path whose parent directory exists.

AIB's File customizer has no destination restriction on Windows (Linux: /tmp only unless elevated);
the parent must already exist (AIB/Packer do not create it). Transfer: ``WinRMCommunicator.upload``
(stdin of one command, SHA-256 verified).
"""

from __future__ import annotations

import ntpath
from pathlib import Path

from localbuilder.communicator import Communicator
from localbuilder.communicator.winrs import powershell_command, ps_quote
from localbuilder.errors import CustomizerError


def upload_file(comm: Communicator, src: Path, dst: str) -> None:
    """Copy ``src`` to ``dst`` (a Windows path) in the guest; clear errors for a bad destination."""
    if not ntpath.isabs(dst) or not ntpath.splitdrive(dst)[0]:
        raise CustomizerError(
            f"File destination {dst!r} is not an absolute Windows path",
            hint="Write it with a drive letter, e.g. c:\\\\buildArtifacts\\\\index.html.",
        )
    parent = ntpath.dirname(dst)
    script = f"if (Test-Path -LiteralPath {ps_quote(parent)} -PathType Container) {{ exit 0 }} exit 3"
    check = comm.run(powershell_command(script), timeout=120)
    if check.exit_status == 3:
        raise CustomizerError(
            f"File destination {dst}: the directory {parent} does not exist in the guest",
            hint="Create it in an earlier PowerShell step (New-Item -ItemType Directory -Force …), as AIB "
            "requires too.",
        )
    if not check.ok:
        raise CustomizerError(f"checking {parent} in the guest failed (exit {check.exit_status})")
    comm.upload(src, dst)
