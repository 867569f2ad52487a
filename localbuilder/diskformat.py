"""Recognise a disk image file's format from its bytes, then ask ``qemu-img info`` for its size.

Formats and their signatures:

    qcow2   ``QFI\\xfb`` at offset 0
    vhdx    ``vhdxfile`` at offset 0
    vpc     dynamic VHD: ``conectix`` at offset 0 (a copy of the footer);
            FIXED VHD: no header at all, only the 512-byte footer at the end — ``qemu-img`` probes such a
            file as raw (FACTS.md §5), so we read the last 512 bytes ourselves
    vmdk    ``KDMV`` (sparse extent) or a text descriptor (``# Disk DescriptorFile``)
    raw     anything else whose size is a whole number of 512-byte sectors

Once the format is known we pass ``-f`` to ``qemu-img`` so that it never guesses (probing raw is also a
security issue qemu warns about). Formats qemu reads but a build should not start from (differencing VHD,
images with a backing file, VDI, ISO) are refused with a hint saying how to convert them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from pathlib import Path

from localbuilder import run as runmod
from localbuilder.errors import CatalogError, CommandError

SECTOR = 512


class DiskFormat(enum.StrEnum):
    """qemu-img's own format names (``-f``)."""

    qcow2 = "qcow2"
    raw = "raw"
    vpc = "vpc"  # VHD
    vhdx = "vhdx"
    vmdk = "vmdk"


class VhdType(enum.IntEnum):
    """Disk type field of the VHD footer (offset 60), per the VHD specification."""

    fixed = 2
    dynamic = 3
    differencing = 4


@dataclasses.dataclass(frozen=True)
class DiskInfo:
    path: Path
    format: DiskFormat
    virtual_size: int  # bytes the guest sees
    file_size: int  # bytes of the file (apparent size)
    vhd_type: VhdType | None = None  # only for vpc


CONVERT_HINT = "Convert it to qcow2 first: qemu-img convert -O qcow2 {path} {stem}.qcow2"


def _head_tail(path: Path) -> tuple[bytes, bytes, int]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
            tail = b""
            if size >= SECTOR:
                fh.seek(size - SECTOR)
                tail = fh.read(SECTOR)
    except FileNotFoundError as exc:
        raise CatalogError(f"{path}: no such file", hint="Check the path of the image file.") from exc
    except IsADirectoryError as exc:
        raise CatalogError(f"{path} is a directory, not an image file",
                           hint="Give the path of a .qcow2/.vhd/.vhdx/.vmdk/.raw file.") from exc
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror}",
                           hint="Check the file's permissions.") from exc
    return head, tail, size


def _vhd_type(footer: bytes, path: Path) -> VhdType:
    raw_type = int.from_bytes(footer[60:64], "big")
    try:
        return VhdType(raw_type)
    except ValueError as exc:
        raise CatalogError(
            f"{path}: VHD footer has an unknown disk type {raw_type}",
            hint="The file is corrupt or not a VHD; check it with 'qemu-img check -f vpc'.",
        ) from exc


def detect_format(path: Path) -> tuple[DiskFormat, VhdType | None]:
    """The format of ``path`` from its signatures (and the VHD type for vpc). CatalogError if unusable."""
    head, tail, size = _head_tail(path)
    hint = CONVERT_HINT.format(path=path, stem=path.with_suffix(""))
    if size == 0:
        raise CatalogError(f"{path} is empty", hint="The download or copy of the image did not finish.")
    if head.startswith(b"QFI\xfb"):
        return DiskFormat.qcow2, None
    if head.startswith(b"vhdxfile"):
        return DiskFormat.vhdx, None
    if head.startswith(b"conectix"):
        vtype = _vhd_type(head[:SECTOR], path)
        if vtype is VhdType.differencing:
            raise CatalogError(f"{path} is a differencing VHD (it needs its parent disk)",
                               hint="Merge it into a standalone disk first (e.g. Merge-VHD on Windows), "
                               "or " + hint[0].lower() + hint[1:])
        return DiskFormat.vpc, vtype
    if tail.startswith(b"conectix"):
        # A fixed VHD: raw sectors followed by the footer, no header (FACTS §5).
        return DiskFormat.vpc, _vhd_type(tail, path)
    if head.startswith(b"KDMV") or head.startswith(b"COWD") or head.startswith(b"# Disk DescriptorFile"):
        return DiskFormat.vmdk, None
    if len(head) > 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        raise CatalogError(f"{path} is a VirtualBox VDI image", hint=hint)
    if len(head) >= 0x8006 and head[0x8001:0x8006] == b"CD001":
        raise CatalogError(f"{path} is an ISO 9660 image, not a disk",
                           hint="AIB sources are disk images (the ISO source type was removed from AIB); "
                           "install from the ISO into a disk first.")
    if size % SECTOR:
        raise CatalogError(
            f"{path}: {size} bytes is not a whole number of 512-byte sectors and no known image signature "
            "was found", hint="This is not a disk image, or it is truncated (an incomplete download?).")
    return DiskFormat.raw, None


def qemu_img_info(path: Path, fmt: DiskFormat) -> dict[str, object]:
    """``qemu-img info --output=json -f FMT`` (with ``-U``: works while a guest uses the file)."""
    try:
        out = runmod.run(["qemu-img", "info", "--output=json", "-U", "-f", str(fmt), path]).stdout
    except CommandError as exc:
        if exc.returncode == 127:
            raise
        raise CatalogError(
            f"{path}: qemu-img cannot read it as {fmt}: {exc.stderr_tail.strip()}",
            hint=f"The file is corrupt or truncated; check it with 'qemu-img check -f {fmt} {path}'.",
        ) from exc
    try:
        info = json.loads(out)
    except ValueError as exc:
        raise CatalogError(f"{path}: unexpected qemu-img info output",
                           hint="Run 'qemu-img info' on the file by hand to see what is wrong.") from exc
    if not isinstance(info, dict):
        raise CatalogError(f"{path}: unexpected qemu-img info output", hint="Run 'qemu-img info' by hand.")
    return info


def inspect_disk(path: Path) -> DiskInfo:
    """Detect the format of ``path`` and read its virtual size; refuse images that cannot be a source."""
    path = Path(os.path.abspath(path))
    fmt, vtype = detect_format(path)
    info = qemu_img_info(path, fmt)
    if info.get("backing-filename"):
        raise CatalogError(
            f"{path} is an overlay on {info['backing-filename']}: a catalog image must stand alone",
            hint=f"Flatten it first: qemu-img convert -O qcow2 {path} {path.with_suffix('')}-flat.qcow2",
        )
    if info.get("encrypted"):
        raise CatalogError(f"{path} is encrypted",
                           hint="Decrypt it first (qemu-img convert with --object secret,…).")
    vsize = info.get("virtual-size")
    if not isinstance(vsize, int) or vsize <= 0:
        raise CatalogError(f"{path}: qemu-img reports no virtual size",
                           hint=f"Check the file with 'qemu-img check -f {fmt} {path}'.")
    return DiskInfo(path=path, format=fmt, virtual_size=vsize, file_size=path.stat().st_size, vhd_type=vtype)
