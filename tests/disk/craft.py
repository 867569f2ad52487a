"""Build small disk images for the disk tests without root: mkfs.ext4 -d for the filesystem, and the
MBR/GPT written here byte by byte (independently of localbuilder.diskread, which parses them)."""

from __future__ import annotations

import os
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

MIB = 1024 * 1024
SECTOR = 512
LINUX_ROOT_X86_64 = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
ESP = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")


def make_tree(root: Path, files: dict[str, str | bytes], symlinks: dict[str, str] | None = None) -> Path:
    for rel, content in files.items():
        p = root / rel.lstrip("/")
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    for rel, target in (symlinks or {}).items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    return root


def make_ext4(path: Path, tree: Path, size_mib: int = 8) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path)], check=True)
    return path


def _copy_into(dst: Path, src: Path, offset: int) -> None:
    with open(src, "rb") as s, open(dst, "r+b") as d:
        d.seek(offset)
        while chunk := s.read(MIB):
            d.write(chunk)


def mbr_entry(ptype: int, lba: int, sectors: int, boot: bool = False) -> bytes:
    # CHS fields are ignored by everything modern; 0xFE/0xFF/0xFF means "use LBA".
    return struct.pack(
        "<B3sB3sII", 0x80 if boot else 0, b"\xfe\xff\xff", ptype, b"\xfe\xff\xff", lba, sectors
    )


def write_mbr(path: Path, entries: list[bytes], at: int = 0) -> None:
    sector = bytearray(SECTOR)
    for i, e in enumerate(entries):
        sector[446 + 16 * i : 446 + 16 * (i + 1)] = e
    sector[510:512] = b"\x55\xaa"
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(sector)


def disk_with_partitions(path: Path, parts: list[tuple[int, Path | int]], disk_mib: int) -> Path:
    """MBR disk: each (type, fs image or size in MiB) becomes a primary partition, 1 MiB aligned."""
    with open(path, "wb") as f:
        f.truncate(disk_mib * MIB)
    entries, lba = [], 2048
    for ptype, content in parts:
        size = content.stat().st_size if isinstance(content, Path) else content * MIB
        if isinstance(content, Path):
            _copy_into(path, content, lba * SECTOR)
        entries.append(mbr_entry(ptype, lba, size // SECTOR))
        lba += size // SECTOR
    write_mbr(path, entries)
    return path


def gpt_disk(path: Path, parts: list[tuple[uuid.UUID, Path | int, str]], disk_mib: int) -> Path:
    """GPT disk (protective MBR, primary header + 128 entries; the backup is omitted)."""
    total = disk_mib * MIB // SECTOR
    with open(path, "wb") as f:
        f.truncate(disk_mib * MIB)
    table = bytearray(128 * 128)
    lba = 2048
    for i, (ptype, content, name) in enumerate(parts):
        size = content.stat().st_size if isinstance(content, Path) else content * MIB
        if isinstance(content, Path):
            _copy_into(path, content, lba * SECTOR)
        last = lba + size // SECTOR - 1
        table[i * 128 : (i + 1) * 128] = (
            ptype.bytes_le + uuid.uuid4().bytes_le + struct.pack("<QQQ", lba, last, 0)
            + name.encode("utf-16-le").ljust(72, b"\0")
        )  # fmt: skip
        lba = last + 1
    header = bytearray(92)
    struct.pack_into(
        "<8sIIIIQQQQ16sQIII", header, 0,
        b"EFI PART", 0x00010000, 92, 0, 0, 1, total - 1, 34, total - 34, uuid.uuid4().bytes_le,
        2, 128, 128, zlib.crc32(table),
    )  # fmt: skip
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header)))
    write_mbr(path, [mbr_entry(0xEE, 1, min(total - 1, 0xFFFFFFFF))])
    with open(path, "r+b") as f:
        f.seek(SECTOR)
        f.write(bytes(header).ljust(SECTOR, b"\0"))
        f.write(table)
    return path
