"""Windows images judged offline: real NTFS filesystems with real registry hives (``tests.disk.ntfs``), read
through libguestfs's appliance (integration: it boots a small VM).

One generalized image, one that Sysprep did not finish, one with a leftover answer-file password and the
build account's profile; and one that libguestfs's own inspection passes over (no cmd.exe), found by its
SOFTWARE hive instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localbuilder import guestfs
from localbuilder.inspect import Status, inspect_image
from tests.disk import ntfs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(guestfs.unavailable() is not None, reason=f"{guestfs.unavailable()}"),
]

DISKS = {
    "generalized": ntfs.WindowsDisk(unattend={"/Windows/Panther/unattend.xml": ntfs.UNATTEND_SANITIZED}),
    "not-generalized": ntfs.WindowsDisk(image_state=ntfs.NOT_GENERALIZED),
    "password-and-profile": ntfs.WindowsDisk(
        unattend={"/Windows/Panther/Unattend.xml": ntfs.UNATTEND_WITH_PASSWORD},
        profiles={"S-1-5-21-1004336348-1177238915-682003330-1001": r"C:\Users\packer"},
        user_dirs=("Public", "packer"),
    ),
    "no-cmd-exe": ntfs.WindowsDisk(image_state=None, cmd_exe=False),
}


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ntfs")
    paths = {name: base / f"{name}.raw" for name in DISKS}
    ntfs.make({paths[name]: spec for name, spec in DISKS.items()})
    return paths


def statuses(path: Path, user: str | None = "packer") -> dict[str, Status]:
    report = inspect_image(path, build_user=user)
    assert report.inspected and report.os == "windows" and report.reader == "libguestfs", report.render()
    assert report.filesystems == ("ntfs",) and report.root is not None and report.root.number == 1
    return {c.check: c.status for c in report.checks}


def test_generalized_image_passes(disks: dict[str, Path]) -> None:
    assert statuses(disks["generalized"]) == {
        "image-state": Status.passed, "unattend-passwords": Status.passed, "build-user": Status.passed,
    }  # fmt: skip


def test_sysprep_not_finished_fails(disks: dict[str, Path]) -> None:
    report = inspect_image(disks["not-generalized"], build_user="packer")
    assert not report.generalized
    assert [c.check for c in report.failures] == ["image-state"]
    assert "IMAGE_STATE_COMPLETE" in report.failures[0].message


def test_leftover_password_and_profile_fail(disks: dict[str, Path]) -> None:
    report = inspect_image(disks["password-and-profile"], build_user="packer")
    failed = {c.check: c for c in report.failures}
    assert set(failed) == {"unattend-passwords", "build-user"}
    assert "AdministratorPassword (plain text)" in failed["unattend-passwords"].message
    assert "P@ssw0rd" not in report.render(), "the report must not repeat the password"
    where = failed["build-user"].message
    assert "C:\\Users\\packer" in where and "/Users/packer" in where


def test_volume_libguestfs_passes_over_is_found_by_its_hive(disks: dict[str, Path]) -> None:
    found = statuses(disks["no-cmd-exe"], user=None)
    assert found["image-state"] is Status.failed  # no ImageState value at all
    assert found["build-user"] is Status.info
