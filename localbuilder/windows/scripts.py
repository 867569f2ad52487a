"""Access to the standalone scripts in ``guest_scripts/`` (STYLE §15: they import nothing from us).

They ship as package data: ``localbuilder/resources/guest_scripts`` (a link to the repository's
``guest_scripts/`` in a checkout).
"""

from __future__ import annotations

import importlib.resources

from localbuilder.errors import LocalBuilderError


def guest_script(name: str) -> str:
    resource = importlib.resources.files("localbuilder").joinpath("resources", "guest_scripts", name)
    try:
        return resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise LocalBuilderError(
            f"guest script {name} is missing from the installation ({resource})",
            hint="The installation is incomplete: reinstall localbuilder.",
        ) from exc
