"""The libguestfs reader gives the same verdicts as debugfs (integration: each inspection boots libguestfs's
appliance once).

- a btrfs root (``mkfs.btrfs --rootdir``, no root needed), clean and dirty, is judged check for check as
  the same tree on ext4 is;
- an ext4 root whose fstab mounts /var from another partition: debugfs alone would read the root's empty
  /var and pass cloud-init's and waagent's leftovers; the inspection must go through libguestfs, which
  mounts /var as the guest would, and fail them.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from localbuilder import guestfs
from localbuilder.inspect import Status, inspect_image
from tests.disk import craft
from tests.disk.test_inspect import BASE, BUILD_KEY, DIRTY, DIRTY_LINKS, LINKS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(guestfs.unavailable() is not None, reason=f"{guestfs.unavailable()}"),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="needs mkfs.btrfs (btrfs-progs)"),
]


# What libguestfs's own inspection wants to call a tree a Linux root: /bin (here a link to usr/bin, as on
# every merged-/usr system) and /etc/hosts. Without them the fallback finds the root by /etc/passwd.
ROOTLIKE: dict[str, str | bytes] = {"/usr/bin/": "", "/etc/hosts": "127.0.0.1 localhost\n"}
ROOTLIKE_LINKS = {"/bin": "usr/bin"}


def verdicts(path: Path) -> dict[str, set[Status]]:
    report = inspect_image(path, build_user="lbuser", build_key=BUILD_KEY)
    out: dict[str, set[Status]] = {}
    for c in report.checks:
        out.setdefault(c.check, set()).add(c.status)
    return out


def btrfs_disk(tmp: Path, files: dict[str, str | bytes], links: dict[str, str], name: str) -> Path:
    tree = craft.make_tree(tmp / f"{name}-tree", files, links)
    fs = tmp / f"{name}.btrfs"
    with open(fs, "wb") as f:
        f.truncate(128 * craft.MIB)  # btrfs's minimum for a single-device filesystem is ~110 MiB
    subprocess.run(["mkfs.btrfs", "-q", "--rootdir", str(tree), str(fs)], check=True)
    return craft.disk_with_partitions(tmp / f"{name}.raw", [(0x83, fs)], disk_mib=132)


def ext4_disk(tmp: Path, files: dict[str, str | bytes], links: dict[str, str], name: str) -> Path:
    tree = craft.make_tree(tmp / f"{name}-tree", files, links)
    fs = craft.make_ext4(tmp / f"{name}.ext4", tree)
    return craft.disk_with_partitions(tmp / f"{name}.raw", [(0x83, fs)], disk_mib=12)


@pytest.mark.parametrize("files,links", [
    ({**BASE, **ROOTLIKE}, {**LINKS, **ROOTLIKE_LINKS}),
    ({**DIRTY, **ROOTLIKE}, {**DIRTY_LINKS, **ROOTLIKE_LINKS}),
    (DIRTY, DIRTY_LINKS),
], ids=["clean", "dirty", "dirty-not-rootlike"])  # fmt: skip
def test_btrfs_root_is_judged_like_ext4(tmp_path: Path, files: dict[str, str | bytes],
                                        links: dict[str, str]) -> None:
    on_btrfs = btrfs_disk(tmp_path, files, links, "b")
    report = inspect_image(on_btrfs, build_user="lbuser", build_key=BUILD_KEY)
    assert report.inspected and report.reader == "libguestfs", report.render()
    assert report.filesystem == "btrfs"
    assert verdicts(on_btrfs) == verdicts(ext4_disk(tmp_path, files, links, "e"))


def test_separate_var_is_read_from_its_own_filesystem(tmp_path: Path) -> None:
    var_uuid = str(uuid.uuid4())
    fstab = f"UUID={var_uuid} /var ext4 defaults 0 2\n"
    root_files = {**BASE, **ROOTLIKE, "/etc/fstab": fstab, "/var/": ""}
    root_tree = craft.make_tree(tmp_path / "root-tree", root_files, {**LINKS, **ROOTLIKE_LINKS})
    # The /var filesystem holds what a build leaves there: cloud-init's instance and waagent's state.
    var_tree = craft.make_tree(tmp_path / "var-tree", {
        "/lib/cloud/instances/iid-local01/boot-finished": "done",
        "/lib/waagent/provisioned": "",
    }, {"/lib/cloud/instance": "/var/lib/cloud/instances/iid-local01"})  # fmt: skip
    root_fs = craft.make_ext4(tmp_path / "root.ext4", root_tree)
    var_fs = tmp_path / "var.ext4"
    with open(var_fs, "wb") as f:
        f.truncate(8 * craft.MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", var_uuid, "-d", str(var_tree), str(var_fs)], check=True)
    disk = craft.disk_with_partitions(tmp_path / "split.raw", [(0x83, root_fs), (0x83, var_fs)], disk_mib=20)

    report = inspect_image(disk, build_user="lbuser")
    assert report.reader == "libguestfs" and ("/var", "/dev/sda2") in report.mounts, report.render()
    failed = {c.check for c in report.failures}
    assert {"cloud-init", "waagent"} <= failed, report.render()
