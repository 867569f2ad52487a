"""Offline inspection on crafted images: partition tables written byte by byte, ext4 made with
``mkfs.ext4 -d`` (no root, no mount), read back through debugfs."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from localbuilder import disk, diskread
from localbuilder import inspect as ins
from localbuilder.__main__ import main
from localbuilder.errors import InspectionError
from tests.disk import craft

pytestmark = pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs debugfs (e2fsprogs)")

BUILD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5Zm9ybG9jYWxidWlsZGVydGVzdHNvbmx5IQ lb-build"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG90aGVya2V5dGhhdGlzbm90dGhlYnVpbGRrZXkhISEh admin"

BASE = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n",
    "/etc/shadow": "root:*:19000:0:99999:7:::\nsshd:!:19000::::::\n",
    "/etc/group": "root:x:0:\nsudo:x:27:\n",
    "/etc/gshadow": "root:*::\nsudo:*::\n",
    "/etc/machine-id": "",
    "/etc/ssh/sshd_config": "PermitRootLogin no\n",
    "/usr/lib/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n',
    "/var/lib/cloud/": "",
    "/var/lib/cloud/instances/": "",
    "/var/lib/waagent/": "",
    "/home/": "",
    "/root/": "",
    "/tmp/": "",
    "/tmp/.X11-unix/": "",  # made by systemd-tmpfiles at every boot: not a leftover
    "/tmp/.ICE-unix/": "",
}
LINKS = {"/etc/os-release": "../usr/lib/os-release"}

DIRTY = {
    **BASE,
    "/etc/passwd": BASE["/etc/passwd"] + "lbuser:x:1000:1000::/home/lbuser:/bin/bash\n",
    "/etc/shadow": BASE["/etc/shadow"] + "lbuser:!:19000:0:99999:7:::\n",
    "/etc/group": "root:x:0:\nsudo:x:27:lbuser\nlbuser:x:1000:\n",
    "/etc/gshadow": "root:*::\nsudo:*::lbuser\nlbuser:!::\n",
    "/etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/etc/ssh/ssh_host_ed25519_key": "secret",
    "/etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA host",
    "/etc/sudoers.d/90-cloud-init-users": "lbuser ALL=(ALL) NOPASSWD:ALL\n",
    "/var/lib/cloud/instances/iid-local01/boot-finished": "done",
    "/var/lib/waagent/provisioned": "",
    "/var/lib/waagent/ovf-env.xml": "<Environment/>",
    "/home/lbuser/.ssh/authorized_keys": BUILD_KEY + "\n",
    "/home/lbuser/.bash_history": "ls\n",
    "/root/.ssh/authorized_keys": OTHER_KEY + "\n",
    "/tmp/script-1234.sh": "echo hi\n",
}
DIRTY_LINKS = {**LINKS, "/var/lib/cloud/instance": "/var/lib/cloud/instances/iid-local01"}


def _fs(tmp_path: Path, files: dict[str, str | bytes], links: dict[str, str], name: str = "fs") -> Path:
    tree = craft.make_tree(tmp_path / f"{name}-tree", files, links)
    return craft.make_ext4(tmp_path / f"{name}.ext4", tree)


@pytest.fixture
def clean_disk(tmp_path: Path) -> Path:
    fs = _fs(tmp_path, BASE, LINKS, name="clean")
    return craft.disk_with_partitions(tmp_path / "clean.raw", [(0x83, fs)], disk_mib=12)


@pytest.fixture
def dirty_disk(tmp_path: Path) -> Path:
    fs = _fs(tmp_path, DIRTY, DIRTY_LINKS, name="dirty")
    return craft.disk_with_partitions(tmp_path / "dirty.raw", [(0x83, fs)], disk_mib=12)


def _by_check(report: ins.GeneralizationReport) -> dict[str, set[ins.Status]]:
    out: dict[str, set[ins.Status]] = {}
    for c in report.checks:
        out.setdefault(c.check, set()).add(c.status)
    return out


# --------------------------------------------------------------------------------- partition tables


def test_mbr_partitions_are_parsed_with_byte_offsets(tmp_path: Path) -> None:
    path = craft.disk_with_partitions(tmp_path / "d.raw", [(0x82, 2), (0x83, 3)], disk_mib=8)
    parts = diskread.parse_partitions(diskread.ReadAt(path, path.stat().st_size), path.stat().st_size)
    assert [(p.number, p.start, p.size, p.scheme, p.type) for p in parts] == [
        (1, 1 * craft.MIB, 2 * craft.MIB, "mbr", "0x82"),
        (2, 3 * craft.MIB, 3 * craft.MIB, "mbr", "0x83"),
    ]


def test_logical_partitions_follow_the_ebr_chain(tmp_path: Path) -> None:
    path = tmp_path / "ext.raw"
    with open(path, "wb") as f:
        f.truncate(16 * craft.MIB)
    # extended partition at LBA 2048 spanning 10 MiB; two logical partitions of 2 MiB each
    craft.write_mbr(path, [craft.mbr_entry(0x05, 2048, 20480)])
    craft.write_mbr(
        path, [craft.mbr_entry(0x83, 2048, 4096), craft.mbr_entry(0x05, 8192, 6144)], at=2048 * 512
    )
    craft.write_mbr(path, [craft.mbr_entry(0x82, 2048, 4096)], at=(2048 + 8192) * 512)
    size = path.stat().st_size
    parts = diskread.parse_partitions(diskread.ReadAt(path, size), size)
    assert [(p.number, p.start // 512, p.size // 512, p.type) for p in parts] == [
        (5, 4096, 4096, "0x83"),
        (6, 2048 + 8192 + 2048, 4096, "0x82"),
    ]


def test_gpt_partitions_are_parsed(tmp_path: Path) -> None:
    path = craft.gpt_disk(
        tmp_path / "g.raw", [(craft.ESP, 2, "EFI"), (craft.LINUX_ROOT_X86_64, 4, "root")], 10
    )
    size = path.stat().st_size
    parts = diskread.parse_partitions(diskread.ReadAt(path, size), size)
    assert [(p.number, p.start, p.size, p.scheme, p.type, p.name) for p in parts] == [
        (1, craft.MIB, 2 * craft.MIB, "gpt", str(craft.ESP), "EFI"),
        (2, 3 * craft.MIB, 4 * craft.MIB, "gpt", str(craft.LINUX_ROOT_X86_64), "root"),
    ]


def test_gpt_with_a_corrupted_header_is_refused(tmp_path: Path) -> None:
    path = craft.gpt_disk(tmp_path / "g.raw", [(craft.LINUX_ROOT_X86_64, 4, "root")], 8)
    with open(path, "r+b") as f:
        f.seek(512 + 40)  # first usable LBA: covered by the header CRC
        f.write(b"\x07")
    size = path.stat().st_size
    with pytest.raises(InspectionError, match="GPT header checksum mismatch"):
        diskread.parse_partitions(diskread.ReadAt(path, size), size)


def test_mbr_partition_beyond_the_disk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.raw"
    with open(path, "wb") as f:
        f.truncate(4 * craft.MIB)
    craft.write_mbr(path, [craft.mbr_entry(0x83, 2048, 1_000_000)])
    with pytest.raises(InspectionError, match="MBR partition 1 ends at byte"):
        diskread.parse_partitions(diskread.ReadAt(path, 4 * craft.MIB), 4 * craft.MIB)


def test_bare_filesystem_is_one_pseudo_partition(tmp_path: Path) -> None:
    fs = _fs(tmp_path, BASE, LINKS)
    report = ins.inspect_image(fs, build_user="lbuser")
    assert report.root is not None and report.root.scheme == "none" and report.root.start == 0
    assert report.generalized, report.render()


# ------------------------------------------------------------------------------------------- reader


def test_debugfs_reader_lists_reads_and_follows_symlinks(tmp_path: Path, clean_disk: Path) -> None:
    fs = diskread.Ext4Reader(clean_disk, craft.MIB)
    etc = fs.listdir("/etc")
    assert etc is not None and {"passwd", "os-release", "ssh"} <= set(etc)
    assert etc["os-release"].kind == "symlink" and etc["ssh"].kind == "dir" and etc["passwd"].kind == "file"
    assert fs.read_text("/etc/passwd") == BASE["/etc/passwd"]
    assert "bookworm" in (fs.read_text("/etc/os-release") or "")
    assert fs.read_text("/etc/absent") is None
    assert fs.listdir("/absent") is None
    assert fs.listdir("/etc/passwd") is None


def test_reader_refuses_a_path_debugfs_would_misparse(tmp_path: Path) -> None:
    with pytest.raises(InspectionError, match="'\\?'"):
        diskread.Ext4Reader(tmp_path / "odd?name.raw", 0)


def test_filesystem_detection(tmp_path: Path) -> None:
    ntfs = bytearray(4096)
    ntfs[3:11] = b"NTFS    "
    ntfs[510:512] = b"\x55\xaa"
    xfs = b"XFSB".ljust(4096, b"\0")
    path = tmp_path / "fs.raw"
    path.write_bytes(bytes(ntfs) + xfs + bytes(8192))
    r = diskread.ReadAt(path, path.stat().st_size)
    assert diskread.detect_filesystem(r, 0) == "ntfs"
    assert diskread.detect_filesystem(r, 4096) == "xfs"
    assert diskread.detect_filesystem(r, 8192) == "unknown"


def test_unreplayed_journal_flag_is_detected(tmp_path: Path) -> None:
    sb = bytearray(2048)
    struct.pack_into("<H", sb, 1024 + 56, 0xEF53)
    path = tmp_path / "sb.raw"
    path.write_bytes(bytes(sb))
    assert not diskread.ext_needs_recovery(diskread.ReadAt(path, 2048), 0)
    struct.pack_into("<I", sb, 1024 + 0x60, 0x4 | 0x40)
    path.write_bytes(bytes(sb))
    assert diskread.ext_needs_recovery(diskread.ReadAt(path, 2048), 0)


# ------------------------------------------------------------------------------------------- report


def test_clean_image_is_generalized(clean_disk: Path) -> None:
    report = ins.inspect_image(clean_disk, build_user="lbuser", build_key=BUILD_KEY)
    assert report.inspected and report.generalized, report.render()
    assert report.os == "linux" and report.os_name == "Debian GNU/Linux 12 (bookworm)"
    assert report.filesystem == "ext4" and report.image_format == "raw"
    assert report.tmp_leftovers == () and report.authorized_keys == ()
    assert {c.check for c in report.checks} >= {
        "build-user", "authorized-keys", "ssh-host-keys", "cloud-init",
        "machine-id", "sudoers", "waagent", "tmp",
    }  # fmt: skip
    assert "result: generalized" in report.render()
    report.require_generalized()


def test_dirty_image_fails_every_check_with_the_paths(dirty_disk: Path) -> None:
    report = ins.inspect_image(dirty_disk, build_user="lbuser", build_key=BUILD_KEY)
    assert not report.generalized
    statuses = _by_check(report)
    for check in (
        "build-user",
        "authorized-keys",
        "ssh-host-keys",
        "cloud-init",
        "machine-id",
        "sudoers",
        "waagent",
    ):
        assert ins.Status.failed in statuses[check], (check, report.render())
    assert statuses["tmp"] == {ins.Status.warning}
    assert statuses["shell-history"] == {ins.Status.warning}
    by = {c.check: c for c in report.checks if c.status == ins.Status.failed}
    assert set(by["build-user"].paths) == {
        "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/group (member of sudo)",
        "/etc/gshadow (member of sudo)", "/home/lbuser",
    }  # fmt: skip
    assert by["authorized-keys"].paths == ("/home/lbuser/.ssh/authorized_keys",)
    assert by["ssh-host-keys"].paths == ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub")
    assert by["cloud-init"].paths == ("/var/lib/cloud/instance", "/var/lib/cloud/instances/iid-local01")
    assert by["waagent"].paths == ("/var/lib/waagent/ovf-env.xml", "/var/lib/waagent/provisioned")
    machine = [c for c in report.checks if c.check == "machine-id"]
    assert [c.status for c in machine] == [ins.Status.failed, ins.Status.failed]
    assert "0123456789abcdef" in machine[0].message
    assert report.tmp_leftovers == ("/tmp/script-1234.sh",)
    assert report.authorized_keys == ("/root/.ssh/authorized_keys", "/home/lbuser/.ssh/authorized_keys")
    with pytest.raises(InspectionError, match="not generalized \\(8 failed checks\\)"):
        report.require_generalized()


def test_without_build_user_the_accounts_are_listed(dirty_disk: Path) -> None:
    report = ins.inspect_image(dirty_disk)
    user = [c for c in report.checks if c.check == "build-user"]
    assert user[0].status == ins.Status.info and "lbuser (1000)" in user[0].message
    keys = [c for c in report.checks if c.check == "authorized-keys"][0]
    assert keys.status == ins.Status.warning and "(1 keys)" in keys.message


def test_a_foreign_key_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    files = {**BASE, "/root/.ssh/authorized_keys": OTHER_KEY + "\n"}
    disk_path = craft.disk_with_partitions(tmp_path / "d.raw", [(0x83, _fs(tmp_path, files, LINKS))], 12)
    report = ins.inspect_image(disk_path, build_user="lbuser", build_key=BUILD_KEY)
    assert report.generalized
    assert _by_check(report)["authorized-keys"] == {ins.Status.warning}


def test_gpt_disk_with_esp_finds_the_root_by_type(tmp_path: Path) -> None:
    boot = _fs(tmp_path, {"/grub/grub.cfg": "x"}, {}, name="boot")  # ext, but no /etc: not the root
    root = _fs(tmp_path, BASE, LINKS, name="root")
    path = craft.gpt_disk(
        tmp_path / "g.raw",
        [(craft.ESP, 2, "EFI"), (craft.ESP, boot, "boot"), (craft.LINUX_ROOT_X86_64, root, "")],
        24,
    )
    report = ins.inspect_image(path, build_user="lbuser")
    assert report.root is not None and report.root.number == 3 and report.generalized


def test_fixed_vhd_and_qcow2_are_inspected(tmp_path: Path, dirty_disk: Path) -> None:
    vhd_path = disk.to_fixed_vhd(dirty_disk, "raw", tmp_path / "dirty.vhd", progress=False).path
    report = ins.inspect_image(vhd_path, build_user="lbuser")
    assert report.image_format == "vhd" and report.disk_size == 12 * craft.MIB and len(report.failures) >= 7
    qcow = tmp_path / "dirty.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", dirty_disk, qcow], check=True)
    report2 = ins.inspect_image(qcow, build_user="lbuser")
    assert report2.image_format == "qcow2"
    assert [c.as_dict() for c in report2.checks] == [c.as_dict() for c in report.checks]


@pytest.fixture
def no_guestfs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("localbuilder.guestfs.unavailable", lambda: "libguestfs is not installed (test)")


def test_windows_image_is_reported_as_not_inspected(tmp_path: Path, no_guestfs: None) -> None:
    path = craft.disk_with_partitions(tmp_path / "win.raw", [(0x07, 4)], disk_mib=6)
    with open(path, "r+b") as f:
        f.seek(craft.MIB + 3)
        f.write(b"NTFS    ")
    report = ins.inspect_image(path)
    assert not report.inspected and report.os == "windows" and "libguestfs is not installed" in report.reason
    assert not report.generalized
    assert "NOT INSPECTED" in report.render()


def test_xfs_root_is_named_in_the_reason(tmp_path: Path, no_guestfs: None) -> None:
    path = craft.disk_with_partitions(tmp_path / "x.raw", [(0x83, 4)], disk_mib=6)
    with open(path, "r+b") as f:
        f.seek(craft.MIB)
        f.write(b"XFSB")
    report = ins.inspect_image(path)
    assert not report.inspected and report.os is None and "1: xfs" in report.reason
    assert report.as_dict()["os"] == "unknown"


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InspectionError, match="image not found"):
        ins.inspect_image(tmp_path / "nope.vhd")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_json_and_exit_codes(
    tmp_path: Path, clean_disk: Path, dirty_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(dirty_disk), "--json", "--build-user", "lbuser"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["generalized"] is False and data["build_user"] == "lbuser"
    assert {c["check"] for c in data["checks"] if c["status"] == "fail"} >= {"build-user", "ssh-host-keys"}
    key = tmp_path / "build.pub"
    key.write_text(BUILD_KEY + "\n")
    assert main(["inspect", str(clean_disk), "--build-user", "lbuser", "--build-key", str(key)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "result: generalized" in out


def test_cli_bad_build_key_path_is_a_usage_error(
    clean_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", str(clean_disk), "--build-key", "/nonexistent.pub"]) == 2
    assert "--build-key: cannot read /nonexistent.pub" in capsys.readouterr().err


def test_a_left_checkpoint_marker_fails_the_image(tmp_path: Path, clean_disk: Path) -> None:
    """localbuilder's checkpoint marker (localbuilder.quiesce) is removed by deprovision: an image that
    still has it was not deprovisioned by the build's last step, whatever else looks clean."""
    assert _by_check(ins.inspect_image(clean_disk))["localbuilder-state"] == {ins.Status.passed}
    marked = {**BASE, "/var/lib/localbuilder/checkpoint": "ab" * 32 + "\n"}
    fs = _fs(tmp_path, marked, LINKS, name="marked")
    image = craft.disk_with_partitions(tmp_path / "marked.raw", [(0x83, fs)], disk_mib=12)
    report = ins.inspect_image(image)
    failed = [c for c in report.failures if c.check == "localbuilder-state"]
    assert len(failed) == 1 and failed[0].paths == ("/var/lib/localbuilder",)
    assert not report.generalized


def test_the_report_shows_the_layout_it_found(clean_disk: Path) -> None:
    report = ins.inspect_image(clean_disk, build_user="lbuser")
    lines = report.render().splitlines()
    assert lines[1] == "layout: MBR, 1 partition"
    assert lines[2].split() == ["1", "8", "MiB", "ext4", "type", "0x83", "<-", "root"]
    assert report.as_dict()["partitions"][0]["filesystem"] == "ext4"  # type: ignore[index]


def test_the_layout_names_gpt_partitions_and_every_filesystem(tmp_path: Path) -> None:
    path = craft.gpt_disk(
        tmp_path / "g.raw", [(craft.ESP, 2, "EFI"), (craft.LINUX_ROOT_X86_64, 4, "root")], 10
    )
    with open(path, "r+b") as f:
        f.seek(3 * craft.MIB)  # partition 2
        f.write(b"XFSB")
    text = ins.inspect_image(path).render()
    assert "layout: GPT, 2 partitions" in text
    assert "'EFI'" in text and "'root'" in text and " xfs " in text
    assert "<- root" not in text  # no root that offline inspection can read: none is marked
