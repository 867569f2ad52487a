"""A Windows build whose offline inspection is the real one: ``LocalPlatform.inspect`` on the fixed VHD the
build converted, through libguestfs (integration: it boots libguestfs's appliance).

The source is a real NTFS disk with real hives (``tests.disk.ntfs``). The guest is the WS-Management model
(no Windows runs here), which does not write the disk, so the VHD holds what the source held: a source in
the state Sysprep leaves builds Succeeded, one Sysprep never generalized fails at the inspection and its
VHD is not delivered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localbuilder import guestfs
from localbuilder.guest import Inspection
from localbuilder.guest.local import LocalPlatform
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.run import run
from localbuilder.state import RunState
from localbuilder.windows.firstboot import BUILD_USER
from tests.disk import ntfs
from tests.windows.test_build_windows import TEMPLATE, FakeHypervisorPlatform, vhd_template

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(guestfs.unavailable() is not None, reason=f"{guestfs.unavailable()}"),
]


class RealInspectionPlatform(FakeHypervisorPlatform):
    def inspect(self, vhd: Path, build_user: str) -> Inspection:
        return LocalPlatform(accel="tcg").inspect(vhd, build_user)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("winsrc")
    raw = {"sealed": base / "sealed.raw", "unsealed": base / "unsealed.raw"}
    ntfs.make({
        raw["sealed"]: ntfs.WindowsDisk(size_mib=256),
        raw["unsealed"]: ntfs.WindowsDisk(image_state=ntfs.NOT_GENERALIZED, size_mib=256,
                                          profiles={"S-1-5-21-7-1001": f"C:\\Users\\{BUILD_USER}"}),
    })  # fmt: skip
    out = {}
    for name, path in raw.items():
        out[name] = path.with_suffix(".qcow2")
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(path), str(out[name])])
        path.unlink()
    return out


def build(source: Path, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[RealInspectionPlatform, object, Path]:
    monkeypatch.setattr("localbuilder.windows.restart.CHECK_INTERVAL", 0.05)
    template = vhd_template(corpus_dir, tmp_path)
    platform = RealInspectionPlatform(source, tmp_path)
    options = BuildOptions(runs_root=tmp_path / "runs", output_dir=tmp_path / "out", interactive=False)
    try:
        record = Build(template, corpus_dir / TEMPLATE, platform, options).execute()
    finally:
        for srv in platform.servers:
            srv.stop()
    run_dir = next((tmp_path / "runs").rglob("generalization.json")).parent
    return platform, record, run_dir


def test_sealed_windows_source_builds_and_is_inspected(
    sources: dict[str, Path], corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, record, run_dir = build(sources["sealed"], corpus_dir, tmp_path, monkeypatch)
    assert record.run_state is RunState.Succeeded, record  # type: ignore[attr-defined]
    report = json.loads((run_dir / "generalization.json").read_text())
    assert report["inspected"] and report["generalized"] and report["os"] == "windows"
    assert report["reader"] == "libguestfs" and report["filesystem"] == "ntfs"
    assert {c["check"] for c in report["checks"]} == {"image-state", "unattend-passwords", "build-user"}
    assert (tmp_path / "out" / "win.vhd").is_file()


def test_unsealed_windows_source_fails_at_inspection(
    sources: dict[str, Path], corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, record, run_dir = build(sources["unsealed"], corpus_dir, tmp_path, monkeypatch)
    assert record.run_state is RunState.Failed  # type: ignore[attr-defined]
    message = record.last_run_status.message  # type: ignore[attr-defined]
    assert "not generalized" in message and "image-state" in message and "build-user" in message
    assert not (tmp_path / "out" / "win.vhd").exists(), "a VHD that failed inspection must not be delivered"
