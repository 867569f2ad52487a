"""Test helpers shared by the build tests: a tmpfs mounted for one test, and a LOCALBUILDER_HOME set for a
module (real-guest tests share one home per module, as a user's builds share theirs)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """``mount -t tmpfs -o OPTIONS`` at ``path`` (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def localbuilder_home(home: Path) -> Iterator[Path]:
    """``LOCALBUILDER_HOME=home`` for the block; the previous value (or none) afterwards."""
    old = os.environ.get("LOCALBUILDER_HOME")
    os.environ["LOCALBUILDER_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("LOCALBUILDER_HOME", None)
        else:
            os.environ["LOCALBUILDER_HOME"] = old
