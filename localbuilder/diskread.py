"""Reading a disk image without booting or mounting it: partition tables, filesystems, ext files.

The MBR/GPT partition table is parsed here in Python, filesystems are told apart by their superblock
magic (the way blkid does), and files of an ext2/3/4 filesystem are read with e2fsprogs' ``debugfs``
through its io-options syntax, ``debugfs -c -R 'cat /etc/passwd' 'IMAGE?offset=N'``, which opens the
filesystem at a byte offset inside the disk image, read-only. No root, no loop device, no mount.

Used by the offline generalization report (``localbuilder.inspect``) and the Azure readiness checks
(``localbuilder.azure.readiness``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import uuid
import zlib
from pathlib import Path, PurePosixPath
from typing import Protocol

from localbuilder.errors import CommandError, InspectionError
from localbuilder.run import run

SECTOR = 512
MBR_EXTENDED = {0x05, 0x0F, 0x85}
MBR_PROTECTIVE_GPT = 0xEE
GPT_SIGNATURE = b"EFI PART"
LINUX_ROOT_X86_64 = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
EXT_MAGIC = 0xEF53
EXT_INCOMPAT_RECOVER = 0x0004


# ---------------------------------------------------------------------------------------------------
# Partition tables


@dataclasses.dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as Linux numbers them (MBR logical partitions start at 5)
    start: int  # byte offset in the disk
    size: int  # bytes
    scheme: str  # "mbr", "gpt" or "none" (a filesystem written straight onto the disk)
    type: str  # "0x83" for MBR, the type GUID for GPT
    name: str = ""

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int]]:
    """(type, first LBA, sector count) of the four primary slots that are in use."""
    out = []
    for i in range(4):
        raw = sector[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = raw[4]
        lba, count = struct.unpack_from("<II", raw, 8)
        if ptype != 0 and count != 0:
            out.append((ptype, lba, count))
    return out


def parse_partitions(read_at: ReadAt, disk_size: int) -> list[Partition]:
    """Partitions of a disk, from its GPT (behind a protective MBR) or its MBR (logical ones included).

    A disk without a partition table yields one pseudo-partition spanning it, so a bare filesystem
    image can be inspected too. Every extent is checked against ``disk_size``.
    """
    mbr = read_at(0, SECTOR)
    # A FAT/NTFS boot sector also ends in 55 AA: a filesystem written straight onto the disk is no MBR.
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa" or detect_filesystem(read_at, 0) in ("vfat", "ntfs"):
        return [Partition(1, 0, disk_size, "none", "")]
    entries = _mbr_entries(mbr)
    if any(ptype == MBR_PROTECTIVE_GPT for ptype, _, _ in entries):
        return _parse_gpt(read_at, disk_size)
    parts: list[Partition] = []
    for number, (ptype, lba, count) in enumerate(entries, start=1):
        if ptype in MBR_EXTENDED:
            parts.extend(_parse_logical(read_at, disk_size, lba))
            continue
        parts.append(Partition(number, lba * SECTOR, count * SECTOR, "mbr", f"0x{ptype:02x}"))
    for p in parts:
        if p.start + p.size > disk_size:
            raise InspectionError(
                f"MBR partition {p.number} ends at byte {p.start + p.size}, "
                f"beyond the disk's {disk_size} bytes",
                hint="The partition table is damaged, or the image was truncated.",
            )
    parts.sort(key=lambda p: p.number)
    return parts


def _parse_logical(read_at: ReadAt, disk_size: int, ext_lba: int) -> list[Partition]:
    """Follow the chain of extended boot records: entry 0 is a logical partition relative to this EBR,
    entry 1 the next EBR relative to the start of the extended partition."""
    parts = []
    ebr_lba = ext_lba
    seen: set[int] = set()
    number = 5
    while ebr_lba not in seen and len(seen) < 128:
        seen.add(ebr_lba)
        if ebr_lba * SECTOR >= disk_size:
            break
        ebr = read_at(ebr_lba * SECTOR, SECTOR)
        if ebr[510:512] != b"\x55\xaa":
            break
        slots = [struct.unpack_from("<BxxxII", ebr, 446 + 16 * i + 4) for i in range(2)]
        ptype, rel, count = slots[0]
        if ptype and count:
            parts.append(Partition(number, (ebr_lba + rel) * SECTOR, count * SECTOR, "mbr", f"0x{ptype:02x}"))
            number += 1
        ntype, nrel, _ = slots[1]
        if ntype not in MBR_EXTENDED or nrel == 0:
            break
        ebr_lba = ext_lba + nrel
    return parts


def _parse_gpt(read_at: ReadAt, disk_size: int) -> list[Partition]:
    header = read_at(SECTOR, SECTOR)
    if header[:8] != GPT_SIGNATURE:
        raise InspectionError(
            "protective MBR found but no GPT header at LBA 1",
            hint="The partition table is damaged; only 512-byte-sector disks are supported.",
        )
    hsize = struct.unpack_from("<I", header, 12)[0]
    if not 92 <= hsize <= SECTOR:
        raise InspectionError(f"GPT header size {hsize} is invalid")
    stored_crc = struct.unpack_from("<I", header, 16)[0]
    zeroed = header[:16] + b"\0\0\0\0" + header[20:hsize]
    if zlib.crc32(zeroed) != stored_crc:
        raise InspectionError(
            "GPT header checksum mismatch: the partition table is damaged",
            hint="Repair it with sgdisk/gdisk, or inspect the image it was built from.",
        )
    entries_lba, count, esize = struct.unpack_from("<QII", header, 72)
    if esize < 128 or count > 1024:
        raise InspectionError(f"GPT header describes {count} entries of {esize} bytes: not plausible")
    table = read_at(entries_lba * SECTOR, count * esize)
    parts = []
    for i in range(count):
        raw = table[i * esize : (i + 1) * esize]
        if len(raw) < 128:
            break
        ptype = uuid.UUID(bytes_le=raw[0:16])
        if ptype.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", errors="replace").rstrip("\0")
        start, size = first * SECTOR, (last - first + 1) * SECTOR
        if last < first or start + size > disk_size:
            raise InspectionError(
                f"GPT partition {i + 1} spans LBA {first}–{last}, outside the disk's {disk_size} bytes",
                hint="The partition table is damaged, or the image was truncated.",
            )
        parts.append(Partition(i + 1, start, size, "gpt", str(ptype), name))
    return parts


# ---------------------------------------------------------------------------------------------------
# Filesystem detection (by superblock magic, the way blkid does)


class ReadAt:
    """Positioned reads from the disk part of an image file (the VHD footer excluded)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def __call__(self, offset: int, length: int) -> bytes:
        if offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), length, offset)


def detect_filesystem(read_at: ReadAt, start: int) -> str:
    """``ext4``/``ext3``/``ext2``, ``ntfs``, ``xfs``, ``btrfs``, ``vfat``, ``lvm2``, ``swap``,
    ``bitlocker`` or ``unknown``."""
    boot = read_at(start, 4096)
    if boot[3:11] == b"NTFS    ":
        return "ntfs"
    if boot[3:11] == b"-FVE-FS-":
        return "bitlocker"
    if boot[:4] == b"XFSB":
        return "xfs"
    if b"LABELONE" in (boot[512:520], boot[:8], boot[1024:1032], boot[1536:1544]):
        return "lvm2"
    if boot[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    if boot[0x52:0x57] == b"FAT32" or boot[0x36:0x39] == b"FAT":
        return "vfat"
    if len(boot) >= 2048 and struct.unpack_from("<H", boot, 1024 + 56)[0] == EXT_MAGIC:
        compat, incompat = struct.unpack_from("<II", boot, 1024 + 0x5C)
        if incompat & 0x40 or incompat & 0x200:  # extents or flex_bg
            return "ext4"
        return "ext3" if compat & 0x4 else "ext2"  # has_journal
    if read_at(start + 0x10040, 8) == b"_BHRfS_M":
        return "btrfs"
    return "unknown"


def ext_needs_recovery(read_at: ReadAt, start: int) -> bool:
    """The journal holds unreplayed transactions (the guest was not shut down cleanly)."""
    sb = read_at(start + 1024, 1024)
    return bool(struct.unpack_from("<I", sb, 0x60)[0] & EXT_INCOMPAT_RECOVER)


# ---------------------------------------------------------------------------------------------------
# What the guest mounts


# Filesystem types an fstab names that are not on a disk: nothing of theirs can be read offline.
NOT_ON_DISK = frozenset({"swap", "tmpfs", "proc", "sysfs", "devpts", "devtmpfs", "none", "efivarfs"})


def fstab_mounts(text: str | None) -> list[tuple[str, str]]:
    """(source, mount point) of each on-disk filesystem an fstab mounts besides /: no swap, no virtual
    filesystem, no bind mount; mount points unescaped (``\\040`` is a space) and without a trailing /."""
    found = []
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#"):
            continue
        point = fields[1].replace("\\040", " ").rstrip("/") or "/"
        options = fields[3] if len(fields) > 3 else ""
        if point == "/" or not point.startswith("/") or fields[2] in NOT_ON_DISK or "bind" in options:
            continue
        found.append((fields[0], point))
    return found


# ---------------------------------------------------------------------------------------------------
# Reading an ext filesystem with debugfs


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    uid: int
    size: int

    @property
    def kind(self) -> str:
        return {0o040000: "dir", 0o100000: "file", 0o120000: "symlink"}.get(self.mode & 0o170000, "other")


class FileReader(Protocol):
    """Read-only files of a guest's root, whatever reads them (``Ext4Reader``, ``guestfs.GuestfsReader``).

    Absent paths are None, never an error; a read that fails raises InspectionError.
    """

    def listdir(self, path: str) -> dict[str, Entry] | None: ...

    def entry(self, path: str) -> Entry | None: ...

    def read_text(self, path: str) -> str | None: ...


class Ext4Reader:
    """Read-only access to an ext filesystem at ``offset`` bytes into ``image``, through debugfs."""

    NOT_FOUND = "File not found by ext2_lookup"

    def __init__(self, image: Path, offset: int) -> None:
        if "?" in str(image):
            raise InspectionError(
                f"{image}: debugfs cannot open a path containing '?' (it separates the io options)",
                hint="Rename or symlink the image to a path without '?'.",
            )
        self.spec = f"{image}?offset={offset}"

    def _debugfs(self, request: str) -> tuple[str, str]:
        # -c: catastrophic mode, read-only and without loading the bitmaps: faster on big disks and
        # never tempted to write. DEBUGFS_PAGER keeps ls/stat from starting a pager.
        try:
            proc = run(
                ["debugfs", "-c", "-R", request, self.spec],
                env={"DEBUGFS_PAGER": "__none__", "PAGER": "__none__"},
                timeout=120,
            )
        except CommandError as exc:
            raise InspectionError(
                f"debugfs failed on {self.spec}: {exc.stderr_tail.strip()}",
                hint="Is the partition a healthy ext2/3/4 filesystem? Try: e2fsck -fn on a copy.",
            ) from exc
        return proc.stdout, proc.stderr

    @staticmethod
    def _quote(path: str) -> str:
        if '"' in path or "\n" in path:
            raise InspectionError(f"cannot pass the path {path!r} to debugfs")
        return f'"{path}"'

    def listdir(self, path: str) -> dict[str, Entry] | None:
        """Entries of directory ``path`` (without . and ..), or None if it is absent or not a directory."""
        out, err = self._debugfs(f"ls -p {self._quote(path)}")
        if self.NOT_FOUND in err or "not a directory" in err:
            return None
        entries: dict[str, Entry] = {}
        for line in out.splitlines():
            # "/inode/mode/uid/gid/name/size/" — size is empty for directories
            if not line.startswith("/"):
                continue
            fields = line[1:].split("/")  # a file name never contains "/"
            if len(fields) < 6:
                continue
            _ino, mode, uid, _gid, name, size = fields[:6]
            if name in (".", ".."):
                continue
            entries[name] = Entry(name, int(mode, 8), int(uid), int(size) if size.isdigit() else 0)
        return entries

    def entry(self, path: str) -> Entry | None:
        p = PurePosixPath(path)
        listing = self.listdir(str(p.parent))
        return None if listing is None else listing.get(p.name)

    def readlink(self, path: str) -> str:
        out, _ = self._debugfs(f"stat {self._quote(path)}")
        m = re.search(r'Fast link dest: "(.*)"', out)
        if m:
            return m.group(1)
        # A long ("slow") symlink keeps its target in a data block, which cat prints.
        out, _ = self._debugfs(f"cat {self._quote(path)}")
        return out

    def read_text(self, path: str, _hops: int = 0) -> str | None:
        """Contents of ``path`` (following a symlink in the last component), or None if absent."""
        entry = self.entry(path)
        if entry is None:
            return None
        if entry.kind == "symlink":
            if _hops >= 8:
                raise InspectionError(f"too many levels of symbolic links at {path}")
            target = PurePosixPath(self.readlink(path))
            resolved = target if target.is_absolute() else PurePosixPath(path).parent / target
            return self.read_text(os.path.normpath(str(resolved)), _hops + 1)
        if entry.kind != "file":
            return None
        out, err = self._debugfs(f"cat {self._quote(path)}")
        if "cat:" in err:
            raise InspectionError(f"debugfs could not read {path}: {err.strip().splitlines()[-1]}")
        return out
