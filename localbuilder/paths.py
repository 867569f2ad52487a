"""Where localbuilder keeps its state: the image catalog, runs, caches.

``LOCALBUILDER_HOME`` overrides the default ``$XDG_DATA_HOME/localbuilder`` (``~/.local/share/localbuilder``).
Tests point it at a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("LOCALBUILDER_HOME")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return (base / "localbuilder").absolute()


def images_dir() -> Path:
    return home() / "images"


def runs_dir() -> Path:
    return home() / "runs"


def cache_dir() -> Path:
    return home() / "cache"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 for the leaf: keys and logs live there."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
