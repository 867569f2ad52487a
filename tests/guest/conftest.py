"""Fixtures for the guest tests: the bootable image linux_guest() boots (``libvirt_uri`` is shared, in
tests/fixtures/libvirtd.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def boot_image(request: pytest.FixtureRequest) -> Path:
    """The Debian 12 test image: the shared ``debian_image`` fixture when it exists, else the cached
    image named in .cache/test-images/READY (written by the image recipe)."""
    try:
        image = request.getfixturevalue("debian_image")
        return Path(getattr(image, "path", image))  # a BuiltImage record, or a plain path
    except pytest.FixtureLookupError:
        pass
    ready = REPO / ".cache" / "test-images" / "READY"
    if not ready.exists():
        pytest.skip(f"no Debian test image yet ({ready} missing): build it with the images recipe")
    path = Path(ready.read_text().strip())
    if not path.is_file():
        pytest.skip(f"{ready} names {path}, which does not exist")
    return path
