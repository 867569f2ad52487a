"""The one chokepoint for host subprocesses.

Every external command (qemu-img, qemu-system, debootstrap, debugfs, …) goes through ``run()`` or
``spawn()``: argv lists only (never a shell), ``+ cmd`` logged at debug, and failures raised as
``CommandError`` with the tail of stderr. A missing binary becomes a ``CommandError`` whose hint names
the Debian package to install. ruff's banned-api rule keeps ``subprocess`` out of every other module.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from localbuilder.errors import CommandError

log = logging.getLogger("localbuilder.run")

# Where a missing tool comes from on Debian: used for the hint of a "not found" error.
PACKAGE_OF: dict[str, str] = {
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "debugfs": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "lvm": "lvm2",
    "losetup": "mount",
    "partx": "util-linux",
    "sfdisk": "fdisk",
    "mcopy": "mtools",
    "mformat": "mtools",
    "mkfs.vfat": "dosfstools",
    "packer": "packer",
    "az": "azure-cli",
}

TAIL_LINES = 20

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
CompletedProcess = subprocess.CompletedProcess
Popen = subprocess.Popen
TimeoutExpired = subprocess.TimeoutExpired


def _tail(text: str | bytes | None, lines: int = TAIL_LINES) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _missing(cmd: Sequence[str]) -> CommandError:
    tool = os.path.basename(str(cmd[0]))
    package = PACKAGE_OF.get(tool)
    hint = f"Install it: apt-get install {package}" if package else f"Is {tool} installed and on PATH?"
    err = CommandError(list(map(str, cmd)), 127, f"{tool}: not found", hint=hint)
    return err


def which(tool: str) -> str | None:
    return shutil.which(tool)


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion. Text mode; stdout/stderr captured unless ``capture=False``."""
    argv = [os.fspath(c) for c in cmd]
    log.debug("+ %s", shlex.join(argv))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            argv,
            input=input.decode() if isinstance(input, bytes) else input,
            stdout=stdout if stdout is not None else (subprocess.PIPE if capture else None),
            stderr=stderr if stderr is not None else (subprocess.PIPE if capture else None),
            text=True,
            errors="replace",
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).exists():
            raise
        raise _missing(argv) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            argv, -1, f"timed out after {timeout:.0f} s\n" + _tail(exc.stderr), hint=hint
        ) from exc
    if check and proc.returncode != 0:
        log.debug("stdout: %s", _tail(proc.stdout))
        raise CommandError(argv, proc.returncode, _tail(proc.stderr) or _tail(proc.stdout), hint=hint)
    return proc


def spawn(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
    stderr: int | IO[bytes] | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = True,
) -> subprocess.Popen[bytes]:
    """Start a long-running process (qemu) and return it. The caller owns its lifetime.

    ``new_session`` puts the child in its own session so that a Ctrl-C on the terminal reaches only
    localbuilder, which then shuts the guest down in order instead of having it killed mid-write.
    """
    argv = [os.fspath(c) for c in cmd]
    log.debug("+ %s &", shlex.join(argv))
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=full_env,
            cwd=cwd,
            start_new_session=new_session,
        )
    except FileNotFoundError as exc:
        raise _missing(argv) from exc
