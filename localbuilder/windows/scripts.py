"""Access to the standalone scripts in ``guest_scripts/`` (STYLE §15: they import nothing from us)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from localbuilder.errors import LocalBuilderError

# In a source checkout the scripts live in <repo>/guest_scripts; an installed package carries them as
# package data under localbuilder/resources/guest_scripts.
_REPO_DIR = Path(__file__).resolve().parents[2] / "guest_scripts"


def guest_script(name: str) -> str:
    packaged = importlib.resources.files("localbuilder").joinpath("resources", "guest_scripts", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    path = _REPO_DIR / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LocalBuilderError(
            f"guest script {name} is missing ({path})",
            hint="The installation is incomplete: reinstall localbuilder.",
        ) from exc
