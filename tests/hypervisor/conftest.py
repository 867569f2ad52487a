"""Fixtures for the hypervisor tests: fake executables on PATH (osbuild ``mock_command`` style)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MockCommand = Callable[[str, str], Path]


@pytest.fixture
def mock_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MockCommand]:
    """Put ``name`` on PATH as a bash script; every call appends its argv to ``<bin>/<name>.calls``."""
    bindir = tmp_path / "mockbin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def make(name: str, body: str) -> Path:
        calls = bindir / f"{name}.calls"
        script = bindir / name
        script.write_text(
            "#!/bin/bash\n"
            f'printf "%s\\n" "$*" >> {calls}\n'
            + textwrap.dedent(body)
        )
        script.chmod(0o755)
        return calls

    yield make


@pytest.fixture
def lb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "lbhome"
    monkeypatch.setenv("LOCALBUILDER_HOME", str(home))
    return home


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


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """qemu:///system when libvirtd answers; otherwise skip (conftest turns that into a failure in CI)."""
    try:
        import libvirt
    except ImportError:
        pytest.skip("libvirt-python is not installed (pip install '.[libvirt]')")
    uri = "qemu:///system"
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    try:
        libvirt.open(uri).close()
    except libvirt.libvirtError as exc:
        pytest.skip(f"libvirtd is not reachable at {uri} ({exc}); start it: bash tests/start-services.sh")
    return uri
