"""Azure-readiness checks: on crafted filesystems (fast) and on the real Debian 12 test image."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from localbuilder.azure import readiness
from localbuilder.azure.readiness import check_readiness, cpio_names
from localbuilder.diskread import Ext4Reader, ReadAt, detect_filesystem, parse_partitions


def _newc(files: dict[str, bytes]) -> bytes:
    out = b""
    for i, (name, data) in enumerate([*files.items(), ("TRAILER!!!", b"")]):
        nb = name.encode() + b"\0"
        fields = [i + 1, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        hdr = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        out += hdr + nb
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out


class FakeReader:
    spec = "fake"

    def __init__(self, files: dict[str, str], binaries: dict[str, bytes] | None = None) -> None:
        self.files = files
        self.binaries = binaries or {}

    def read_text(self, path: str) -> str | None:
        return self.files.get(path)

    def listdir(self, path: str) -> dict[str, object] | None:
        prefix = path.rstrip("/") + "/"
        names = {
            p[len(prefix) :].split("/")[0] for p in [*self.files, *self.binaries] if p.startswith(prefix)
        }
        return {n: object() for n in names} or None


def _image(config: str, initrd: bytes | None, grub: str, cloud: str | None, waagent: bool) -> FakeReader:
    files = {
        "/boot/vmlinuz-6.1.0-9-cloud-amd64": "",
        "/boot/config-6.1.0-9-cloud-amd64": config,
        "/boot/grub/grub.cfg": grub,
    }
    if cloud is not None:
        files["/etc/cloud/cloud.cfg"] = cloud
    if waagent:
        files["/usr/sbin/waagent"] = "#!/usr/bin/python3"
    binaries = {"/boot/initrd.img-6.1.0-9-cloud-amd64": initrd} if initrd is not None else {}
    return FakeReader(files, binaries)


@pytest.fixture(autouse=True)
def _fake_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readiness, "dump_file", lambda reader, path: reader.binaries.get(path))


GOOD_GRUB = "menuentry 'Debian' {\n\tlinux /boot/vmlinuz root=UUID=x ro console=ttyS0 net.ifnames=0\n}\n"
MODULES = "CONFIG_HYPERV=m\nCONFIG_HYPERV_STORAGE=m\nCONFIG_HYPERV_NET=m\n"


def test_cpio_names_across_uncompressed_and_gzip_archives() -> None:
    early = _newc({"kernel/x86/microcode/GenuineIntel.bin": b"u" * 5})
    main = gzip.compress(_newc({"usr/lib/modules/6.1/kernel/drivers/hv/hv_vmbus.ko": b"\x7fELF"}))
    assert list(cpio_names(early + b"\0" * 8 + main)) == [
        "kernel/x86/microcode/GenuineIntel.bin",
        "usr/lib/modules/6.1/kernel/drivers/hv/hv_vmbus.ko",
    ]


def test_ready_image_passes_every_check() -> None:
    initrd = gzip.compress(
        _newc({f"usr/lib/modules/6.1/kernel/drivers/x/{m}.ko": b"" for m in readiness.HYPERV_MODULES})
    )
    found = check_readiness(_image(MODULES, initrd, GOOD_GRUB, "datasource_list: [ NoCloud, Azure ]", False))
    assert [f.ok for f in found] == [True, True, True], found


def test_builtin_drivers_need_no_initramfs() -> None:
    config = "CONFIG_HYPERV=y\nCONFIG_HYPERV_STORAGE=y\nCONFIG_HYPERV_NET=y\n"
    (f,) = readiness.check_hyperv_drivers(_image(config, None, GOOD_GRUB, None, True))
    assert f.ok and "built into the kernel" in f.message


def test_missing_driver_is_named() -> None:
    initrd = gzip.compress(_newc({"usr/lib/modules/6.1/kernel/drivers/hv/hv_vmbus.ko": b""}))
    (f,) = readiness.check_hyperv_drivers(_image(MODULES, initrd, GOOD_GRUB, None, True))
    assert not f.ok and "hv_storvsc, hv_netvsc" in f.message and f.hint


def test_no_serial_console() -> None:
    grub = "menuentry 'Debian' {\n\tlinux /boot/vmlinuz root=UUID=x ro quiet\n}\n"
    (f,) = readiness.check_serial_console(_image(MODULES, None, grub, None, True))
    assert not f.ok and "console=ttyS0" in f.message


def test_agent_rules() -> None:
    none = _image(MODULES, None, GOOD_GRUB, "datasource_list: [ NoCloud, None ]", False)
    assert not readiness.check_agent(none)[0].ok
    default_all = _image(MODULES, None, GOOD_GRUB, "users: [default]", False)  # no list: every datasource
    assert readiness.check_agent(default_all)[0].ok
    assert readiness.check_agent(_image(MODULES, None, GOOD_GRUB, None, True))[0].ok


@pytest.mark.integration
def test_debian_test_image_is_azure_ready(
    debian_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.undo()  # the real debugfs dump, not the fake
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(debian_image.path), str(raw)], check=True)
    size = raw.stat().st_size
    parts = parse_partitions(ReadAt(raw, size), size)
    root = next(p for p in parts if detect_filesystem(ReadAt(raw, size), p.start).startswith("ext"))
    found = check_readiness(Ext4Reader(raw, root.start))
    assert all(f.ok for f in found), found
