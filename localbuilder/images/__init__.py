"""Source images built offline from distribution repositories (``debian.py``), and what they share.

A recipe module builds a bootable disk image from packages alone — no cloud, no download of a vendor
image — so that a lab without internet (only a package mirror) can still run AIB templates whose source
is a marketplace image. The result is registered in the catalog (``localbuilder.catalog``) under the
URN Azure uses for the same distribution.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

from localbuilder.errors import SourceError

__all__ = ["BuiltImage", "progress_enabled", "require_root"]


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """A source image produced by a recipe (or found in the recipe's cache)."""

    path: Path
    format: str  # qemu-img format name of ``path`` ("qcow2")
    urn: str  # publisher:offer:sku:version, as Azure names the equivalent marketplace image
    sha256: str
    recipe_key: str  # hash of everything that went into the image; part of the file name
    built_at: str  # ISO 8601 UTC time the image was built (not when it was reused)
    build_seconds: float  # how long the build took (of the original build when reused)
    reused: bool  # True when the cached image was returned without building


def progress_enabled() -> bool:
    """tqdm bars only on a terminal, and not under ``--quiet`` (console handler above INFO)."""
    if not sys.stderr.isatty():
        return False
    for handler in logging.getLogger("localbuilder").handlers:
        if getattr(handler, "_localbuilder_console", False) and handler.level > logging.INFO:
            return False
    return True


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise SourceError(
            f"{what} needs root: it runs debootstrap, attaches loop devices and mounts file systems",
            hint="Run it as root, e.g. 'sudo localbuilder image build debian-12', or register an "
            "existing image instead with 'localbuilder image add FILE --urn …'.",
        )
