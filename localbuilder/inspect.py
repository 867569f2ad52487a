"""Offline generalization report: is this image really deprovisioned? Checked without booting it.

The image is never booted and never mounted (no root needed): the MBR/GPT partition table is parsed
here in Python, the Linux root partition is found by its ext2/3/4 superblock, and files are read with
e2fsprogs' ``debugfs`` through its io-options syntax, ``debugfs -c -R 'cat /etc/passwd' 'IMAGE?offset=N'``,
which opens the filesystem at a byte offset inside the disk image, read-only.

Formats: a fixed VHD and a raw disk are read in place (a fixed VHD is the raw disk plus a 512-byte
footer at the end). Anything else qemu-img understands (qcow2, dynamic VHD, VMDK, VHDX) is first
converted to a temporary sparse raw file — no qemu-nbd, which would need root and a kernel module.

Only Linux on ext2/3/4 is inspected. Windows (NTFS) and other root filesystems (XFS, btrfs, LVM) are
detected and reported as not inspected, with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import re
import struct
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from localbuilder import vhd
from localbuilder.errors import CommandError, InspectionError
from localbuilder.quiesce import MARKER_DIR
from localbuilder.run import run

log = logging.getLogger("localbuilder.inspect")

SECTOR = 512
MBR_EXTENDED = {0x05, 0x0F, 0x85}
MBR_PROTECTIVE_GPT = 0xEE
GPT_SIGNATURE = b"EFI PART"
# Formats whose magic tells us qemu-img must translate them to raw first.
QEMU_MAGIC = {b"QFI\xfb": "qcow2", b"KDMV": "vmdk", b"vhdxfile": "vhdx", b"conectix": "vpc"}
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


# ---------------------------------------------------------------------------------------------------
# The report


class Status(enum.StrEnum):
    passed = "pass"
    failed = "fail"  # the image is not generalized: Azure would provision on top of stale state
    warning = "warn"  # probably unwanted, but deprovisioning does not guarantee it either
    info = "info"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    message: str
    paths: tuple[str, ...] = ()
    hint: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "check": self.check,
            "status": str(self.status),
            "message": self.message,
            "paths": list(self.paths),
            "hint": self.hint,
        }


@dataclasses.dataclass(frozen=True)
class GeneralizationReport:
    image: str
    image_format: str  # "vhd", "raw", or what qemu-img converted from ("qcow2", …)
    disk_size: int
    partitions: tuple[Partition, ...]
    root: Partition | None
    filesystem: str
    os: str  # "linux", "windows" or "unknown"
    os_name: str  # PRETTY_NAME from os-release, when read
    inspected: bool  # False: the checks could not run (Windows, XFS, …); see ``reason``
    reason: str
    build_user: str | None
    checks: tuple[CheckResult, ...]
    tmp_leftovers: tuple[str, ...]
    authorized_keys: tuple[str, ...]

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.status == Status.failed)

    @property
    def generalized(self) -> bool:
        return self.inspected and not self.failures

    def require_generalized(self) -> None:
        """Raise InspectionError listing every failed check (for the build's final gate)."""
        if self.inspected and self.failures:
            lines = "\n".join(f"  {c.check}: {c.message}" for c in self.failures)
            raise InspectionError(
                f"{self.image} is not generalized ({len(self.failures)} failed checks):\n{lines}",
                hint="Check the deprovision step (waagent -deprovision+user, cloud-init clean) or the "
                "user's /tmp/DeprovisioningScript.sh.",
            )

    def as_dict(self) -> dict[str, object]:
        return {
            "image": self.image,
            "image_format": self.image_format,
            "disk_size": self.disk_size,
            "partitions": [p.as_dict() for p in self.partitions],
            "root": self.root.as_dict() if self.root else None,
            "filesystem": self.filesystem,
            "os": self.os,
            "os_name": self.os_name,
            "inspected": self.inspected,
            "reason": self.reason,
            "generalized": self.generalized,
            "build_user": self.build_user,
            "checks": [c.as_dict() for c in self.checks],
            "tmp_leftovers": list(self.tmp_leftovers),
            "authorized_keys": list(self.authorized_keys),
        }

    def render(self) -> str:
        """The human-readable report."""
        lines = [f"image: {self.image} ({self.image_format}, {self.disk_size / vhd.GIB:.2f} GiB)"]
        if self.root:
            lines.append(
                f"root: partition {self.root.number} ({self.filesystem}, offset {self.root.start}, "
                f"{self.root.size // vhd.MIB} MiB){' — ' + self.os_name if self.os_name else ''}"
            )
        if not self.inspected:
            lines.append(f"NOT INSPECTED: {self.reason}")
            return "\n".join(lines)
        width = max(len(c.check) for c in self.checks) if self.checks else 10
        for c in self.checks:
            lines.append(f"  {str(c.status).upper():4}  {c.check:{width}}  {c.message}")
            if c.hint and c.status in (Status.failed, Status.warning):
                lines.append(f"        {'':{width}}  hint: {c.hint}")
        if self.generalized:
            lines.append("result: generalized")
        else:
            lines.append(f"result: NOT generalized ({len(self.failures)} failed checks)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Checks: one function each, all reading through an Ext4Reader


def _names_in(text: str | None, user: str) -> bool:
    return bool(text) and any(line.split(":", 1)[0] == user for line in (text or "").splitlines())


def _member_of(text: str | None, user: str) -> list[str]:
    groups = []
    for line in (text or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and user in fields[3].split(","):
            groups.append(fields[0])
    return groups


def check_build_user(fs: Ext4Reader, user: str | None) -> list[CheckResult]:
    passwd = fs.read_text("/etc/passwd")
    if passwd is None:
        return [
            CheckResult(
                "build-user", Status.failed, "/etc/passwd is missing: this is not a usable Linux root"
            )
        ]
    if user is None:
        humans = []
        for line in passwd.splitlines():
            f = line.split(":")
            if len(f) >= 3 and f[2].isdigit() and 1000 <= int(f[2]) < 60000:
                humans.append(f"{f[0]} ({f[2]})")
        msg = "build user not given; accounts with uid ≥ 1000: " + (", ".join(humans) or "none")
        return [
            CheckResult("build-user", Status.info, msg, hint="Pass --build-user NAME to check it is gone.")
        ]
    where = []
    for path in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"):
        text = passwd if path == "/etc/passwd" else fs.read_text(path)
        if _names_in(text, user):
            where.append(path)
        for group in _member_of(text, user) if path in ("/etc/group", "/etc/gshadow") else []:
            where.append(f"{path} (member of {group})")
    home = f"/home/{user}"
    if fs.entry(home) is not None:
        where.append(home)
    if where:
        return [
            CheckResult(
                "build-user",
                Status.failed,
                f"build user '{user}' remains in: {', '.join(where)}",
                tuple(where),
                hint="waagent deletes only the user named in /var/lib/waagent/ovf-env.xml (FACTS §4); "
                "localbuilder's deprovision script writes it.",
            )
        ]
    return [
        CheckResult(
            "build-user", Status.passed,
            f"build user '{user}' is absent from passwd, shadow, group and gshadow, and {home} is gone",
        )
    ]  # fmt: skip


def _key_blob(line: str) -> str | None:
    """The base64 key of an OpenSSH public-key line (options and comment ignored)."""
    parts = line.split()
    for i, part in enumerate(parts[:-1]):
        if part.startswith(("ssh-", "ecdsa-", "sk-")) and len(parts[i + 1]) > 40:
            return parts[i + 1]
    return None


def list_authorized_keys(fs: Ext4Reader) -> list[str]:
    homes = ["/root"]
    for name, entry in sorted((fs.listdir("/home") or {}).items()):
        if entry.kind == "dir":
            homes.append(f"/home/{name}")
    found = []
    for home in homes:
        ssh_dir = fs.listdir(f"{home}/.ssh") or {}
        for name in ("authorized_keys", "authorized_keys2"):
            if name in ssh_dir:
                found.append(f"{home}/.ssh/{name}")
    return found


def check_authorized_keys(fs: Ext4Reader, files: list[str], build_key: str | None) -> list[CheckResult]:
    if not files:
        return [CheckResult("authorized-keys", Status.passed, "no authorized_keys under /root or /home/*")]
    wanted = _key_blob(build_key) if build_key else None
    holding, counts = [], []
    for path in files:
        text = fs.read_text(path) or ""
        blobs = {b for b in map(_key_blob, text.splitlines()) if b}
        counts.append(f"{path} ({len(blobs)} keys)")
        if wanted and wanted in blobs:
            holding.append(path)
    if holding:
        return [
            CheckResult(
                "authorized-keys", Status.failed,
                f"the build key is still authorized in: {', '.join(holding)}",
                tuple(holding), hint="Delete the build user with its home (waagent -deprovision+user).",
            )
        ]  # fmt: skip
    status = Status.warning if any(not c.endswith("(0 keys)") for c in counts) else Status.info
    what = "the build key is in none of them" if wanted else "pass --build-key to look for the build key"
    return [
        CheckResult(
            "authorized-keys", status, f"authorized_keys present: {', '.join(counts)}; {what}", tuple(files),
            hint="Keys baked into an image grant access to every VM made from it; "
            "remove them unless intended.",
        )
    ]  # fmt: skip


def check_host_keys(fs: Ext4Reader) -> list[CheckResult]:
    keys = sorted(f"/etc/ssh/{n}" for n in (fs.listdir("/etc/ssh") or {}) if n.startswith("ssh_host_"))
    if keys:
        return [
            CheckResult(
                "ssh-host-keys", Status.failed, f"{len(keys)} SSH host key files remain: {', '.join(keys)}",
                tuple(keys), hint="Every VM from this image would share them; delete /etc/ssh/ssh_host_* "
                "(they are regenerated on first boot).",
            )
        ]  # fmt: skip
    return [CheckResult("ssh-host-keys", Status.passed, "no /etc/ssh/ssh_host_* files")]


def check_cloud_init(fs: Ext4Reader) -> list[CheckResult]:
    cloud = fs.listdir("/var/lib/cloud")
    if cloud is None:
        return [CheckResult("cloud-init", Status.passed, "no /var/lib/cloud (no cloud-init state)")]
    left = []
    if "instance" in cloud:
        left.append("/var/lib/cloud/instance")
    left += sorted(f"/var/lib/cloud/instances/{n}" for n in (fs.listdir("/var/lib/cloud/instances") or {}))
    if left:
        return [
            CheckResult(
                "cloud-init", Status.failed,
                f"cloud-init instance state remains: {', '.join(left)}", tuple(left),
                hint="Run 'cloud-init clean --logs' before power-off, "
                "or the first Azure boot is not a new instance.",
            )
        ]  # fmt: skip
    return [CheckResult("cloud-init", Status.passed, "no cloud-init instance state under /var/lib/cloud")]


def check_build_traces(fs: Ext4Reader) -> list[CheckResult]:
    """localbuilder's own state in the guest (the checkpoint marker, localbuilder.quiesce): deprovision
    removes it, so finding it means the image was not deprovisioned by this build's last step."""
    if fs.entry(MARKER_DIR) is not None:
        return [CheckResult("localbuilder-state", Status.failed,
                            f"{MARKER_DIR} remains (the build's checkpoint marker)", (MARKER_DIR,),
                            hint="Deprovision removes it; nothing after deprovision may write it.")]
    return [CheckResult("localbuilder-state", Status.passed, f"no {MARKER_DIR}")]


def check_machine_id(fs: Ext4Reader) -> list[CheckResult]:
    results = []
    text = fs.read_text("/etc/machine-id")
    value = (text or "").strip()
    # systemd treats an empty file and the literal "uninitialized" as "first boot: generate one".
    if value and value != "uninitialized":
        results.append(
            CheckResult(
                "machine-id", Status.failed, f"/etc/machine-id is set ({value}); every VM would share it",
                ("/etc/machine-id",), hint="Truncate it (: > /etc/machine-id) before power-off.",
            )
        )  # fmt: skip
    else:
        state = "absent" if text is None else "empty"
        results.append(CheckResult("machine-id", Status.passed, f"/etc/machine-id is {state}"))
    dbus = fs.entry("/var/lib/dbus/machine-id")
    if dbus is not None and dbus.kind == "file" and dbus.size > 0:
        results.append(
            CheckResult(
                "machine-id", Status.failed, "/var/lib/dbus/machine-id is a non-empty file",
                ("/var/lib/dbus/machine-id",), hint="Remove it; D-Bus then links to /etc/machine-id.",
            )
        )  # fmt: skip
    return results


def check_sudoers(fs: Ext4Reader) -> list[CheckResult]:
    path = "/etc/sudoers.d/90-cloud-init-users"
    if fs.entry(path) is not None:
        return [
            CheckResult(
                "sudoers", Status.failed, f"{path} remains (grants the build user sudo)", (path,),
                hint="Remove it in the same root shell as the deprovision (FACTS §4).",
            )
        ]  # fmt: skip
    return [CheckResult("sudoers", Status.passed, f"{path} is absent")]


def check_waagent(fs: Ext4Reader) -> list[CheckResult]:
    state = fs.listdir("/var/lib/waagent")
    if state is None:
        return [
            CheckResult(
                "waagent", Status.info, "no /var/lib/waagent (the Azure Linux agent is not installed?)"
            )
        ]
    left = sorted(f"/var/lib/waagent/{n}" for n in ("provisioned", "ovf-env.xml") if n in state)
    if left:
        return [
            CheckResult(
                "waagent", Status.failed,
                f"waagent provisioning state remains: {', '.join(left)}", tuple(left),
                hint="Run 'waagent -force -deprovision+user'; the agent would skip provisioning on Azure.",
            )
        ]  # fmt: skip
    return [CheckResult("waagent", Status.passed, "no waagent provisioning state (provisioned, ovf-env.xml)")]


def check_history(fs: Ext4Reader) -> list[CheckResult]:
    homes = ["/root"] + [
        f"/home/{n}" for n, e in sorted((fs.listdir("/home") or {}).items()) if e.kind == "dir"
    ]
    found = [f"{h}/.bash_history" for h in homes if fs.entry(f"{h}/.bash_history") is not None]
    if found:
        return [
            CheckResult(
                "shell-history", Status.warning, f"shell history remains: {', '.join(found)}", tuple(found)
            )
        ]
    return [CheckResult("shell-history", Status.passed, "no .bash_history under /root or /home/*")]


# systemd-tmpfiles creates these on every boot (tmpfiles.d/x11.conf): not anybody's leftovers.
TMP_SYSTEM_DIRS = frozenset({".X11-unix", ".ICE-unix", ".XIM-unix", ".font-unix", ".Test-unix"})


def list_tmp(fs: Ext4Reader) -> list[str]:
    entries = fs.listdir("/tmp") or {}
    return sorted(
        f"/tmp/{n}" for n, e in entries.items() if not (n in TMP_SYSTEM_DIRS and e.kind == "dir")
    )


# ---------------------------------------------------------------------------------------------------
# Entry point


@contextlib.contextmanager
def _as_raw(path: Path) -> Iterator[tuple[Path, int, str]]:
    """Yield (file, disk bytes, format) where the disk's raw bytes start at offset 0 of ``file``."""
    if not path.is_file():
        raise InspectionError(f"image not found: {path}", hint="Check the path.")
    size = path.stat().st_size
    if size >= vhd.FOOTER_SIZE:
        footer = vhd.read_footer(path)
        if footer.cookie == vhd.COOKIE and footer.disk_type == vhd.DiskType.fixed:
            if footer.current_size + vhd.FOOTER_SIZE > size:
                raise InspectionError(
                    f"{path}: the VHD footer says {footer.current_size} bytes but the file has only {size}",
                    hint="The VHD is truncated; convert it again.",
                )
            yield path, footer.current_size, "vhd"
            return
    with open(path, "rb") as f:
        magic = f.read(8)
    fmt = next((name for m, name in QEMU_MAGIC.items() if magic.startswith(m)), None)
    if fmt is None:
        yield path, size, "raw"
        return
    with tempfile.TemporaryDirectory(prefix="localbuilder-inspect-") as tmp:
        raw = Path(tmp) / "disk.raw"
        log.info("converting %s (%s) to a temporary raw file for inspection", path, fmt)
        try:
            run(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, raw])
        except CommandError as exc:
            raise InspectionError(
                f"cannot read {path} as {fmt}: {exc.stderr_tail.strip()}",
                hint="Inspect the fixed VHD or a raw copy instead.",
            ) from exc
        yield raw, raw.stat().st_size, fmt


def _find_root(fs_of: dict[int, str], parts: list[Partition], raw: Path) -> Partition | None:
    # Prefer the GPT "Linux root (x86-64)" type, then any ext partition that holds /etc/passwd
    # (a separate /boot is ext too, but has no /etc).
    ordered = sorted(parts, key=lambda p: p.type != str(LINUX_ROOT_X86_64))
    for p in ordered:
        if fs_of[p.number].startswith("ext"):
            etc = Ext4Reader(raw, p.start).listdir("/etc")
            if etc is not None and "passwd" in etc:
                return p
    return None


def inspect_image(
    path: Path, *, build_user: str | None = None, build_key: str | None = None
) -> GeneralizationReport:
    """Check offline that the Linux image at ``path`` is generalized; see the module docstring.

    ``build_key`` is the build's OpenSSH public-key line: finding it in any authorized_keys fails.
    Raises InspectionError when the image cannot be read at all; an image that can be read but is
    not generalized yields a report whose ``generalized`` is False.
    """
    with _as_raw(path) as (raw, disk_size, fmt):
        read_at = ReadAt(raw, disk_size)
        parts = parse_partitions(read_at, disk_size)
        fs_of = {p.number: detect_filesystem(read_at, p.start) for p in parts}
        log.debug("partitions of %s: %s", path, [(p.number, p.type, fs_of[p.number]) for p in parts])
        report = GeneralizationReport(
            image=str(path), image_format=fmt, disk_size=disk_size, partitions=tuple(parts), root=None,
            filesystem="", os="unknown", os_name="", inspected=False, reason="", build_user=build_user,
            checks=(), tmp_leftovers=(), authorized_keys=(),
        )  # fmt: skip
        root = _find_root(fs_of, parts, raw)
        if root is None:
            if {"ntfs", "bitlocker"} & set(fs_of.values()):
                return dataclasses.replace(
                    report,
                    os="windows",
                    reason="Windows (NTFS) image: offline inspection is Linux-only for now",
                )
            seen = ", ".join(f"{p.number}: {fs_of[p.number]}" for p in parts) or "none"
            return dataclasses.replace(
                report,
                reason=f"no ext2/3/4 partition holding /etc/passwd (partitions {seen}); offline inspection "
                "supports Linux roots on ext2/3/4 only (not XFS, btrfs or LVM)",
            )
        fs = Ext4Reader(raw, root.start)
        os_release = fs.read_text("/etc/os-release") or fs.read_text("/usr/lib/os-release") or ""
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', os_release, re.MULTILINE)
        checks: list[CheckResult] = []
        if ext_needs_recovery(read_at, root.start):
            checks.append(
                CheckResult(
                    "filesystem", Status.warning,
                    "the root filesystem was not cleanly unmounted: recent writes may sit unreplayed in the "
                    "journal and are not seen here", hint="Power the guest off cleanly before converting.",
                )
            )  # fmt: skip
        keys = list_authorized_keys(fs)
        checks += check_build_user(fs, build_user)
        checks += check_authorized_keys(fs, keys, build_key)
        checks += check_host_keys(fs)
        checks += check_cloud_init(fs)
        checks += check_machine_id(fs)
        checks += check_build_traces(fs)
        checks += check_sudoers(fs)
        checks += check_waagent(fs)
        checks += check_history(fs)
        tmp = list_tmp(fs)
        checks.append(
            CheckResult("tmp", Status.warning,
                        f"{len(tmp)} entries left in /tmp: {', '.join(tmp)}", tuple(tmp),
                        hint="Leftovers of customizers; clean them up in a last Shell step if unwanted.")
            if tmp else CheckResult("tmp", Status.passed, "/tmp is empty")
        )  # fmt: skip
        return dataclasses.replace(
            report, root=root, filesystem=fs_of[root.number], os="linux", os_name=m.group(1) if m else "",
            inspected=True, checks=tuple(checks), tmp_leftovers=tuple(tmp), authorized_keys=tuple(keys),
        )  # fmt: skip
