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
