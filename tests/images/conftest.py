from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def make_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """make_disk(name, fmt="qcow2", size_mib=8, data=b"") → a small real image made by qemu-img."""

    def make(name: str, fmt: str = "qcow2", size_mib: int = 8, data: bytes = b"") -> Path:
        path = tmp_path / "disks" / name
        path.parent.mkdir(exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), f"{size_mib}M"], check=True)
        if data:
            # Distinct content → distinct sha256 (the identity).
            subprocess.run(
                ["qemu-io", "-f", fmt, "-c", f"write -P {data[0]} 0 64k", str(path)],
                check=True,
                capture_output=True,
            )
        return path

    return make
