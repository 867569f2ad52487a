"""What the offline inspection's verdict does to a build: a check that ran and failed fails the build (and
the VHD goes); a check that could not run — no offline reader for that root filesystem yet — is a warning,
and the VHD is delivered. Through the real ``LocalPlatform.inspect`` on real disk images (crafted
partition tables and superblocks), not an overridden ``inspect()``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from localbuilder.guest import Inspection
from localbuilder.guest.local import LocalPlatform
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.state import RunState
from tests.build.fakes import FakePlatform
from tests.build.test_build import shell, template
from tests.disk import craft
from tests.disk.test_inspect import DIRTY, DIRTY_LINKS


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    # A host without libguestfs: these roots then have no reader at all (with it, the crafted superblocks
    # hold no OS and the verdict is the same, but each costs an appliance boot).
    monkeypatch.setattr("localbuilder.guestfs.unavailable", lambda: "libguestfs is not installed (test)")
    return tmp_path / "home"


def xfs_root(path: Path) -> Path:
    """An MBR disk whose one Linux partition carries an XFS superblock: a root no reader of ours opens."""
    craft.disk_with_partitions(path, [(0x83, 4)], disk_mib=6)
    with open(path, "r+b") as f:
        f.seek(craft.MIB)
        f.write(b"XFSB")
    return path


def dirty_ext4_root(path: Path) -> Path:
    """An ext4 root that still has host keys, a machine-id, cloud-init's instance …: not generalized."""
    tree = craft.make_tree(path.with_suffix(".tree"), DIRTY, DIRTY_LINKS)
    fs = craft.make_ext4(path.with_suffix(".ext4"), tree)
    return craft.disk_with_partitions(path, [(0x83, fs)], disk_mib=12)


def ntfs_root(path: Path) -> Path:
    craft.disk_with_partitions(path, [(0x07, 4)], disk_mib=6)
    with open(path, "r+b") as f:
        f.seek(craft.MIB + 3)
        f.write(b"NTFS    ")
    return path


@pytest.mark.parametrize("make", [xfs_root, ntfs_root], ids=["xfs", "ntfs"])
def test_a_root_without_a_reader_is_a_warning_not_a_problem(tmp_path: Path, make: object) -> None:
    disk = make(tmp_path / "disk.raw")  # type: ignore[operator]
    result = LocalPlatform().inspect(disk, "packer")
    assert result.problems == ()
    assert len(result.warnings) == 1 and result.warnings[0].startswith("not inspected:")
    assert result.report["inspected"] is False


class RealInspection(FakePlatform):
    """The fake guest and conversion, but the converted "VHD" is a real disk image and the inspection is
    ``LocalPlatform``'s."""

    disk_maker = staticmethod(xfs_root)

    def convert(self, src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        super().convert(src, src_format, dst, size_bytes=size_bytes)
        self.disk_maker(dst)
        return dst.stat().st_size

    def inspect(self, vhd: Path, build_user: str) -> Inspection:
        self.events.append(f"inspect user={build_user}")
        return LocalPlatform().inspect(vhd, build_user)


def test_an_image_that_cannot_be_read_offline_is_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="localbuilder")
    platform = RealInspection(tmp_path)
    out = tmp_path / "out"
    record = Build(template(customize=(shell("s", "true"),)), tmp_path / "t.json", platform,
                   BuildOptions(output_dir=out)).execute()
    assert record.run_state is RunState.Succeeded, record.last_run_status.message
    assert (out / "out.vhd").read_bytes()[:512] == xfs_root(tmp_path / "again.raw").read_bytes()[:512]
    assert "was not checked offline for generalization" in caplog.text and "xfs" in caplog.text


def test_an_image_whose_checks_fail_is_not_delivered(tmp_path: Path) -> None:
    """The checks ran and failed: the build fails and no VHD is delivered."""
    platform = RealInspection(tmp_path)
    platform.disk_maker = staticmethod(dirty_ext4_root)
    out = tmp_path / "out"
    record = Build(template(customize=(shell("s", "true"),)), tmp_path / "t.json", platform,
                   BuildOptions(output_dir=out)).execute()
    assert record.run_state is RunState.Failed
    assert "not generalized" in record.last_run_status.message
    assert not (out / "out.vhd").exists()
