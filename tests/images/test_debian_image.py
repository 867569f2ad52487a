"""Real Debian 12 image: registration through the CLI (cached build), and a boot to cloud-init + login.

The boot check reads only the serial console (no SSH: that is session.py's job): it proves the image
boots with root=UUID, names the NIC eth0, gets DHCP through systemd-networkd, runs cloud-init from a
NoCloud seed and reaches a login prompt.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pycdlib
import pytest

from localbuilder.__main__ import main
from localbuilder.catalog import Catalog
from localbuilder.images import BuiltImage
from localbuilder.template.model import PlatformImageSource
from tests.fixtures.images import TEST_IMAGES

pytestmark = pytest.mark.integration


def test_cli_build_registers_the_cached_image(
    debian_image: BuiltImage, lb_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = os.environ.get("LOCALBUILDER_DEBIAN_MIRROR")
    argv = [
        "image",
        "build",
        "debian-12",
        "--cache-dir",
        str(TEST_IMAGES),
        *(["--mirror", mirror] if mirror else []),
    ]
    mtime = debian_image.path.stat().st_mtime_ns
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{debian_image.urn}\n"
    assert "recipe unchanged: reusing" in captured.err
    entry = Catalog().resolve(
        PlatformImageSource(publisher="debian", offer="Debian-12", sku="12", version="latest")
    )
    assert (entry.path, entry.sha256, entry.format) == (debian_image.path, debian_image.sha256, "qcow2")
    assert entry.virtual_size == 2 * 1024**3
    # The cached rebuild is a no-op: nothing rebuilt, nothing re-registered.
    before = Catalog().file.read_bytes()
    assert main(argv) == 0
    assert "already in the catalog" in capsys.readouterr().err
    assert Catalog().file.read_bytes() == before
    assert debian_image.path.stat().st_mtime_ns == mtime


def test_recorded_sha256_matches_the_file(debian_image: BuiltImage) -> None:
    digest = hashlib.sha256()
    with open(debian_image.path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == debian_image.sha256
    assert debian_image.urn.startswith("Debian:debian-12:12:0.")


def _seed(path: Path) -> None:
    files = {
        "meta-data": "instance-id: lb-image-test\nlocal-hostname: lbimagetest\n",
        "user-data": "#cloud-config\nusers: [default]\nruncmd:\n  - echo LB-RUNCMD-OK > /dev/ttyS0\n",
    }
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, text in files.items():
        data = text.encode()
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"/{name.replace('-', '').upper()}.;1",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    iso.write(str(path))
    iso.close()


def boot_to_login(image: BuiltImage, tmp_path: Path, *, uefi: bool = False) -> str:
    """Boot an overlay on ``image`` with a NoCloud seed; return the serial console once cloud-init has
    finished and a login prompt is shown (or whatever there is after 600 s)."""
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.path), str(overlay), "4G"],
        check=True,
    )
    seed = tmp_path / "seed.iso"
    _seed(seed)
    firmware: list[str] = []
    if uefi:
        # OVMF: read-only code plus a private copy of the variable store.
        vars_copy = tmp_path / "OVMF_VARS.fd"
        shutil.copyfile("/usr/share/OVMF/OVMF_VARS_4M.fd", vars_copy)
        firmware = [
            "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]  # fmt: skip
    serial = tmp_path / "serial.log"
    qemu_err = open(tmp_path / "qemu.stderr", "wb")  # closed in finally
    qemu = subprocess.Popen([
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "1024", "-smp", "1",
        "-nodefaults", "-display", "none", "-vga", "none",
        *firmware,
        "-serial", f"file:{serial}",
        "-drive", f"file={overlay},if=virtio,format=qcow2,discard=unmap",
        "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
        "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
    ], stdout=subprocess.DEVNULL, stderr=qemu_err)  # fmt: skip
    text = ""
    try:
        deadline = time.monotonic() + 600  # ~65 s under TCG on the development machines
        while time.monotonic() < deadline and qemu.poll() is None:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if all(w in text for w in WANTED):
                break
            time.sleep(2)
    finally:
        qemu.kill()
        qemu.wait()
        qemu_err.close()
    return text


WANTED = ["login:", "LB-RUNCMD-OK", "finished at"]


def check_console(text: str) -> None:
    missing = [w for w in WANTED if w not in text]
    assert not missing, f"serial console lacks {missing}; tail:\n" + "\n".join(text.splitlines()[-30:])
    assert "root=UUID=" in text and "net.ifnames=0" in text
    assert "DataSourceNoCloud" in text
    assert re.search(r"\|\s+eth0\s+\|\s+True\s+\|\s+10\.0\.2\.15\s", text)  # DHCP via systemd-networkd
    assert "resized filesystem" in text  # cloud-init grew the root file system to the overlay size


def test_image_boots_to_cloud_init_and_login(debian_image: BuiltImage, tmp_path: Path) -> None:
    check_console(boot_to_login(debian_image, tmp_path))
    # The source image was not written to.
    assert hashlib.sha256(debian_image.path.read_bytes()).hexdigest() == debian_image.sha256


def test_gen2_image_boots_under_ovmf(debian_image_gen2: BuiltImage, tmp_path: Path) -> None:
    assert debian_image_gen2.urn.startswith("Debian:debian-12:12-gen2:0.")
    text = boot_to_login(debian_image_gen2, tmp_path, uefi=True)
    check_console(text)
    assert "EFI v2" in text or "efi: EFI" in text  # the kernel was started by OVMF, not SeaBIOS


def test_gen2_image_also_boots_with_seabios(debian_image_gen2: BuiltImage, tmp_path: Path) -> None:
    # The GPT carries a BIOS boot partition with GRUB's core.img, as Azure's Gen2 images do.
    text = boot_to_login(debian_image_gen2, tmp_path, uefi=False)
    check_console(text)
    assert "efi: EFI v" not in text
