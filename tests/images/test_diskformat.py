"""Format detection on real files made with qemu-img, and refusal of files that cannot be a source."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from localbuilder.diskformat import DiskFormat, VhdType, detect_format, inspect_disk
from localbuilder.errors import CatalogError

MIB = 1024**2


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("fmt", "options", "expected", "vhd_type"),
    [
        ("qcow2", [], DiskFormat.qcow2, None),
        ("raw", [], DiskFormat.raw, None),
        ("vpc", ["-o", "subformat=dynamic,force_size=on"], DiskFormat.vpc, VhdType.dynamic),
        ("vpc", ["-o", "subformat=fixed,force_size=on"], DiskFormat.vpc, VhdType.fixed),
        ("vhdx", [], DiskFormat.vhdx, None),
        ("vmdk", [], DiskFormat.vmdk, None),
        ("vmdk", ["-o", "subformat=streamOptimized"], DiskFormat.vmdk, None),
        ("vmdk", ["-o", "subformat=monolithicFlat"], DiskFormat.vmdk, None),
    ],
)
def test_detects_format_and_size(
    tmp_path: Path, fmt: str, options: list[str], expected: DiskFormat, vhd_type: VhdType | None
) -> None:
    path = tmp_path / f"disk.{fmt}"
    qemu_img("create", "-q", "-f", fmt, *options, path, str(16 * MIB))
    assert detect_format(path) == (expected, vhd_type)
    info = inspect_disk(path)
    assert info.format is expected
    assert info.virtual_size == 16 * MIB
    assert info.vhd_type is vhd_type


def test_fixed_vhd_is_not_mistaken_for_raw(tmp_path: Path) -> None:
    # qemu-img itself probes a fixed VHD as raw (FACTS §5); we must read the footer.
    path = tmp_path / "fixed.vhd"
    qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=fixed,force_size=on", path, str(8 * MIB))
    probed = subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True, text=True)
    assert '"format": "raw"' in probed.stdout
    info = inspect_disk(path)
    assert (info.format, info.vhd_type, info.virtual_size) == (DiskFormat.vpc, VhdType.fixed, 8 * MIB)
    assert info.file_size == 8 * MIB + 512


def test_raw_with_data_is_raw(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\x00" * 510 + b"\x55\xaa" + b"\x01" * (MIB - 512))
    assert inspect_disk(path).format is DiskFormat.raw


def _vhd_footer(disk_type: int) -> bytes:
    footer = bytearray(512)
    footer[0:8] = b"conectix"
    footer[60:64] = disk_type.to_bytes(4, "big")
    return bytes(footer)


def test_differencing_vhd_refused(tmp_path: Path) -> None:
    path = tmp_path / "child.vhd"
    path.write_bytes(_vhd_footer(4) + b"\x00" * 1536)
    with pytest.raises(CatalogError, match="differencing VHD") as err:
        detect_format(path)
    assert err.value.hint and "qemu-img convert" in err.value.hint


def test_unknown_vhd_type_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.vhd"
    path.write_bytes(b"\x00" * 4096 + _vhd_footer(9))
    with pytest.raises(CatalogError, match="unknown disk type 9"):
        detect_format(path)


def test_vdi_refused_with_convert_hint(tmp_path: Path) -> None:
    path = tmp_path / "disk.vdi"
    qemu_img("create", "-q", "-f", "vdi", path, str(4 * MIB))
    with pytest.raises(CatalogError, match="VirtualBox VDI") as err:
        inspect_disk(path)
    assert (
        err.value.hint
        == f"Convert it to qcow2 first: qemu-img convert -O qcow2 {path} {tmp_path / 'disk'}.qcow2"
    )


def test_overlay_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, str(4 * MIB))
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top)
    with pytest.raises(CatalogError, match="overlay on") as err:
        inspect_disk(top)
    assert err.value.hint and "qemu-img convert" in err.value.hint


def test_truncated_qcow2_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, str(4 * MIB))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CatalogError, match="cannot read it as qcow2") as err:
        inspect_disk(path)
    assert err.value.hint and "qemu-img check -f qcow2" in err.value.hint


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"hello world\n", "not a whole number of 512-byte sectors")],
)
def test_not_an_image(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(content)
    with pytest.raises(CatalogError, match=message) as err:
        inspect_disk(path)
    assert err.value.hint


def test_iso_refused(tmp_path: Path) -> None:
    data = bytearray(64 * 1024)
    data[0x8001:0x8006] = b"CD001"
    path = tmp_path / "x.iso"
    path.write_bytes(bytes(data))
    with pytest.raises(CatalogError, match="ISO 9660"):
        inspect_disk(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such file"):
        inspect_disk(tmp_path / "nope.qcow2")
    with pytest.raises(CatalogError, match="is a directory"):
        inspect_disk(tmp_path)


def test_explicit_format_is_passed_to_qemu_img(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localbuilder import run as runmod

    seen: list[list[str]] = []
    real = runmod.run

    def spy(cmd, **kwargs):  # type: ignore[no-untyped-def]
        seen.append([str(c) for c in cmd])
        return real(cmd, **kwargs)

    monkeypatch.setattr(runmod, "run", spy)
    path = tmp_path / "fixed.vhd"
    qemu_img("create", "-q", "-f", "vpc", "-o", "subformat=fixed,force_size=on", path, str(4 * MIB))
    inspect_disk(path)
    assert seen == [["qemu-img", "info", "--output=json", "-U", "-f", "vpc", str(path)]]
