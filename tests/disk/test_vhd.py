"""The VHD footer reader/verifier, against footers packed here field by field and against qemu-img's."""

from __future__ import annotations

import datetime
import os
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from localbuilder import vhd
from localbuilder.errors import ConversionError

MIB = 1024 * 1024
GIB = 1024 * MIB
UID = uuid.UUID("12345678-1234-5678-9abc-def012345678")


def footer_bytes(
    size: int,
    *,
    cookie: bytes = b"conectix",
    disk_type: int = 2,
    data_offset: int = 0xFFFFFFFFFFFFFFFF,
    version: int = 0x00010000,
    checksum: int | None = None,
) -> bytes:
    """A footer laid out as the VHD spec's table says, independently of localbuilder.vhd."""
    raw = bytearray(512)
    raw[0:8] = cookie
    raw[8:12] = (2).to_bytes(4, "big")  # features: the reserved bit
    raw[12:16] = version.to_bytes(4, "big")
    raw[16:24] = data_offset.to_bytes(8, "big")
    raw[24:28] = (86400).to_bytes(4, "big")  # 2000-01-02 00:00:00 UTC
    raw[28:32] = b"test"
    raw[32:36] = (0x00050003).to_bytes(4, "big")
    raw[36:40] = b"Wi2k"
    raw[40:48] = size.to_bytes(8, "big")
    raw[48:56] = size.to_bytes(8, "big")
    raw[56:60] = struct.pack(">HBB", 1024, 16, 63)
    raw[60:64] = disk_type.to_bytes(4, "big")
    raw[68:84] = UID.bytes
    if checksum is None:
        checksum = ~sum(raw) & 0xFFFFFFFF  # checksum field still zero here
    raw[64:68] = checksum.to_bytes(4, "big")
    return bytes(raw)


def write_vhd(path: Path, size: int, footer: bytes, *, extra: int = 0) -> Path:
    with open(path, "wb") as f:
        f.truncate(size + extra)  # sparse: a 2 TiB test file costs nothing
        f.seek(size + extra)
        f.write(footer)
    return path


def test_footer_fields_are_decoded(tmp_path: Path) -> None:
    f = vhd.check_fixed_vhd(write_vhd(tmp_path / "ok.vhd", 4 * MIB, footer_bytes(4 * MIB)))
    assert f.cookie == b"conectix" and f.features == 2 and f.format_version == 0x00010000
    assert f.data_offset == 0xFFFFFFFFFFFFFFFF and f.disk_type == vhd.DiskType.fixed
    assert f.timestamp == datetime.datetime(2000, 1, 2, tzinfo=datetime.UTC)
    assert (f.creator_application, f.creator_version, f.creator_host_os) == ("test", 0x00050003, "Wi2k")
    assert f.original_size == f.current_size == 4 * MIB
    assert f.geometry == vhd.Geometry(1024, 16, 63) and f.geometry.size == 1024 * 16 * 63 * 512
    assert f.unique_id == UID and f.saved_state == 0 and f.checksum_ok
    d = f.as_dict()
    assert d["disk_type"] == "fixed" and d["unique_id"] == str(UID) and d["checksum_ok"] is True


def test_checksum_is_ones_complement_of_byte_sum() -> None:
    raw = bytearray(512)
    raw[0] = 0x01
    raw[511] = 0x02
    raw[64:68] = b"\xff\xff\xff\xff"  # ignored: counted as zero
    assert vhd.footer_checksum(bytes(raw)) == 0xFFFFFFFF - 3


@pytest.mark.parametrize(
    ("kwargs", "size", "extra", "message"),
    [
        ({"cookie": b"notavhd!"}, 4 * MIB, 0, "not a VHD: the last 512 bytes start with b'notavhd!'"),
        ({"disk_type": 3, "data_offset": 512}, 4 * MIB, 0, "disk type is dynamic \\(3\\)"),
        ({"disk_type": 4, "data_offset": 512}, 4 * MIB, 0, "disk type is differencing \\(4\\)"),
        ({"data_offset": 512}, 4 * MIB, 0, "data offset is 0x0000000000000200"),
        ({"version": 0x00020000}, 4 * MIB, 0, "file format version 0x00020000"),
        ({"checksum": 0x12345678}, 4 * MIB, 0, "checksum mismatch: stored 0x12345678, computed 0x"),
        (
            {},
            4 * MIB + 512,
            0,
            "virtual size 4194816 bytes .* not a whole number of MiB \\(512 bytes over\\)",
        ),
        ({}, 4 * MIB, 1, "file size 4194817 bytes != current size 4194304 \\+ 512-byte footer"),
        ({}, 2041 * GIB, 0, "exceeds the 2040 GiB VHD limit"),
    ],
)
def test_each_problem_is_named(
    tmp_path: Path, kwargs: dict[str, int], size: int, extra: int, message: str
) -> None:
    path = write_vhd(tmp_path / "bad.vhd", size, footer_bytes(size, **kwargs), extra=extra)  # type: ignore[arg-type]
    with pytest.raises(ConversionError, match=message) as info:
        vhd.check_fixed_vhd(path)
    assert str(path) in str(info.value) and info.value.hint


def test_corrupted_byte_is_caught_by_the_checksum(tmp_path: Path) -> None:
    raw = bytearray(footer_bytes(4 * MIB))
    raw[30] ^= 0x01  # inside the creator application field
    with pytest.raises(ConversionError, match="checksum mismatch"):
        vhd.check_fixed_vhd(write_vhd(tmp_path / "c.vhd", 4 * MIB, bytes(raw)))


def test_tiny_file_is_not_a_vhd(tmp_path: Path) -> None:
    path = tmp_path / "tiny.vhd"
    path.write_bytes(b"conectix")
    with pytest.raises(ConversionError, match="too small to be a VHD"):
        vhd.check_fixed_vhd(path)


def _qemu_vhd(tmp_path: Path, name: str, size: str, opts: str) -> Path:
    src = tmp_path / f"{name}.qcow2"
    dst = tmp_path / f"{name}.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", src, size], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "vpc", "-o", opts, src, dst], check=True)
    return dst


def test_qemu_fixed_vhd_with_force_size_passes(tmp_path: Path) -> None:
    path = _qemu_vhd(tmp_path, "ok", "2G", "subformat=fixed,force_size=on")
    f = vhd.check_fixed_vhd(path)
    assert f.current_size == 2 * GIB and os.path.getsize(path) == 2 * GIB + 512
    assert f.checksum_ok and f.creator_host_os == "Wi2k"


def test_qemu_fixed_vhd_without_force_size_is_rejected(tmp_path: Path) -> None:
    # FACTS §5: qemu rounds 2 GiB to the CHS geometry, 2,147,991,552 bytes: not MiB-aligned.
    path = _qemu_vhd(tmp_path, "chs", "2G", "subformat=fixed")
    with pytest.raises(ConversionError, match="virtual size 2147991552 bytes"):
        vhd.check_fixed_vhd(path)


def test_qemu_dynamic_vhd_is_rejected(tmp_path: Path) -> None:
    path = _qemu_vhd(tmp_path, "dyn", "64M", "subformat=dynamic,force_size=on")
    with pytest.raises(ConversionError, match="disk type is dynamic"):
        vhd.check_fixed_vhd(path)
