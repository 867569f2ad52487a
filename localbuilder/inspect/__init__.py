"""Offline generalization report: is this image really deprovisioned? Checked without booting it.

The image is never booted and never mounted on the host. Two readers, the fastest that can open the root:
- **debugfs** (``localbuilder.diskread``): partition tables parsed in Python, ext2/3/4 read with e2fsprogs'
  ``debugfs`` at a byte offset. No root, no appliance: well under a second. Used when the root is ext2/3/4
  on a partition and nothing the checks read sits on another filesystem (``linux.separate_mounts``).
- **libguestfs** (``localbuilder.guestfs``) for everything else: XFS, btrfs, LVM, a separate /var or
  /home, and Windows on NTFS. Its appliance boots once per inspection (~14 s under TCG) and mounts what
  the OS's own fstab or registry says, read-only.
The same Linux checks (``linux.py``) run over either; Windows has its own (``windows.py``). When neither
reader can open the root, the report says why (``inspected`` False): a check that could not run is not a
check that failed.

Formats: a fixed VHD and a raw disk are read in place (a fixed VHD is the raw disk plus a 512-byte
footer at the end). Anything else qemu-img understands (qcow2, dynamic VHD, VMDK, VHDX) is first
converted to a temporary sparse raw file — no qemu-nbd, which would need root and a kernel module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from localbuilder import guestfs, vhd
from localbuilder.diskread import (
    LINUX_ROOT_X86_64,
    Ext4Reader,
    FileReader,
    Partition,
    ReadAt,
    detect_filesystem,
    ext_needs_recovery,
    parse_partitions,
)
from localbuilder.errors import CommandError, InspectionError
from localbuilder.hypervisor.probe import cached_probe
from localbuilder.inspect import linux, windows
from localbuilder.inspect.report import CheckResult, GeneralizationReport, Status
from localbuilder.run import run
from localbuilder.template.model import OsType

__all__ = ["CheckResult", "GeneralizationReport", "Status", "inspect_image", "open_linux_root"]

log = logging.getLogger("localbuilder.inspect")

# Where a Linux root can be that debugfs does not read; an ext partition without /etc/passwd is a separate
# /boot, not a root. A disk with none of these is not worth an appliance boot for ``open_linux_root``.
LINUX_ROOT_FILESYSTEMS = frozenset({"xfs", "btrfs", "lvm2"})

# Formats whose magic tells us qemu-img must translate them to raw first.
QEMU_MAGIC = {b"QFI\xfb": "qcow2", b"KDMV": "vmdk", b"vhdxfile": "vhdx", b"conectix": "vpc"}



@contextlib.contextmanager
def _as_raw(path: Path) -> Iterator[tuple[Path, int, str]]:
    """Yield (file, disk bytes, format) where the disk's raw bytes start at offset 0 of ``file``."""
    if not path.is_file():
        raise InspectionError(f"image not found: {path}", hint="Check the path.")
    size = path.stat().st_size
    footer = vhd.fixed_vhd_footer(path)
    if footer is not None:
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


def _layout(raw: Path, disk_size: int) -> tuple[ReadAt, list[Partition], dict[int, str], Partition | None]:
    """The disk's partitions, each one's filesystem (by superblock), and the ext root debugfs can read."""
    read_at = ReadAt(raw, disk_size)
    parts = parse_partitions(read_at, disk_size)
    fs_of = {p.number: detect_filesystem(read_at, p.start) for p in parts}
    return read_at, parts, fs_of, _find_root(fs_of, parts, raw)


def _windows_by_superblock(filesystems: Iterable[str]) -> OsType | None:
    """Windows when a partition is NTFS or BitLocker: what a disk is, even when nothing more can be read."""
    return OsType.windows if {"ntfs", "bitlocker"} & set(filesystems) else None


@contextlib.contextmanager
def _appliance(raw: Path, tcg: bool | None) -> Iterator[tuple[guestfs.Guestfish, dict[str, str],
                                                              guestfs.GuestOS | None]]:
    """libguestfs's appliance on ``raw`` (kept off KVM unless the probe says it works, for ``tcg`` None):
    the filesystems it sees and the operating system it found, not yet mounted."""
    with guestfs.Guestfish(tcg=not cached_probe().usable if tcg is None else tcg) as gf:
        gf.launch(raw, "raw")
        fs_of = guestfs.filesystems(gf)
        yield gf, fs_of, guestfs.find_os(gf, fs_of)


@contextlib.contextmanager
def open_linux_root(path: Path, *, tcg: bool | None = None) -> Iterator[tuple[FileReader | None, str]]:
    """The Linux root of the image at ``path`` for reading, with the same two readers as the inspection:
    (reader, how it was read) — or (None, why not) when no reader can open it (Windows, libguestfs missing,
    no Linux found). For questions about a *source* image before it boots (``localbuilder.provisioning``)."""
    with _as_raw(path) as (raw, disk_size, _fmt):
        _, _, fs_of, root = _layout(raw, disk_size)
        if root is not None:
            yield Ext4Reader(raw, root.start), "debugfs"
            return
        if not set(fs_of.values()) & LINUX_ROOT_FILESYSTEMS:
            yield None, "no filesystem a Linux root lives on (partitions: " + \
                (", ".join(f"{n}: {fs}" for n, fs in fs_of.items()) or "none") + ")"
            return
        missing = guestfs.unavailable()
        if missing is not None:
            yield None, f"no ext2/3/4 root, and {missing}"
            return
        with _appliance(raw, tcg) as (gf, _, os_):
            if os_ is None or os_.type != "linux":
                yield None, "libguestfs found no Linux root"
                return
            guestfs.mount_all(gf, os_)
            yield guestfs.GuestfsReader(gf), "libguestfs"


def inspect_image(
    path: Path, *, build_user: str | None = None, build_key: str | None = None, tcg: bool | None = None
) -> GeneralizationReport:
    """Check offline that the image at ``path`` is generalized; see the module docstring.

    ``build_key`` is the build's OpenSSH public-key line: finding it in any authorized_keys fails.
    ``tcg``: keep libguestfs's appliance off KVM (None: ask the KVM probe). Raises InspectionError when the
    image cannot be read at all; an image that can be read but is not generalized yields a report whose
    ``generalized`` is False, and one whose root no reader can open a report whose ``inspected`` is False.
    """
    started = time.monotonic()
    with _as_raw(path) as (raw, disk_size, fmt):
        read_at, parts, fs_of, root = _layout(raw, disk_size)
        log.debug("partitions of %s: %s", path, [(p.number, p.type, fs_of[p.number]) for p in parts])
        report = GeneralizationReport(
            image=str(path), image_format=fmt, disk_size=disk_size, partitions=tuple(parts),
            filesystems=tuple(fs_of[p.number] for p in parts), root=None,
            filesystem="", os=None, os_name="", inspected=False, reason="", build_user=build_user,
            checks=(), tmp_leftovers=(), authorized_keys=(),
        )  # fmt: skip
        why_guestfs = ""
        if root is not None:
            fs = Ext4Reader(raw, root.start)
            separate = linux.separate_mounts(fs.read_text("/etc/fstab"))
            if not separate:
                done = _inspect_ext(report, fs, read_at, root, fs_of[root.number], build_key)
                return dataclasses.replace(done, reader="debugfs", seconds=time.monotonic() - started)
            why_guestfs = f"{', '.join(separate)} on a separate filesystem"
        else:
            seen = ", ".join(f"{p.number}: {fs_of[p.number]}" for p in parts) or "none"
            why_guestfs = f"no ext2/3/4 root on a partition (partitions {seen})"
        missing = guestfs.unavailable()
        if missing is not None:
            return dataclasses.replace(
                report, os=_windows_by_superblock(fs_of.values()),
                reason=f"{why_guestfs}; reading it needs libguestfs, but {missing}",
            )  # fmt: skip
        log.info("inspecting %s with libguestfs (%s)", path, why_guestfs)
        try:
            done = _inspect_guestfs(report, raw, build_key, tcg=tcg)
        except InspectionError as exc:
            # The reader failed (appliance, mount, a request): no verdict either way.
            log.debug("libguestfs inspection of %s failed", path, exc_info=True)
            why = f"{why_guestfs}; libguestfs could not read it: {exc.message}"
            done = dataclasses.replace(report, reason=why)
        return dataclasses.replace(done, reader="libguestfs", seconds=time.monotonic() - started)


def _inspect_ext(
    report: GeneralizationReport, fs: Ext4Reader, read_at: ReadAt, root: Partition, fstype: str,
    build_key: str | None,
) -> GeneralizationReport:
    checks: list[CheckResult] = []
    if ext_needs_recovery(read_at, root.start):
        checks.append(
            CheckResult(
                "filesystem", Status.warning,
                "the root filesystem was not cleanly unmounted: recent writes may sit unreplayed in the "
                "journal and are not seen here", hint="Power the guest off cleanly before converting.",
            )
        )  # fmt: skip
    found, tmp, keys = linux.run_checks(fs, report.build_user, build_key)
    return dataclasses.replace(
        report, root=root, filesystem=fstype, os=OsType.linux, os_name=linux.os_name(fs), inspected=True,
        checks=tuple(checks + found), tmp_leftovers=tuple(tmp), authorized_keys=tuple(keys),
    )  # fmt: skip


def _partition_of(device: str, report: GeneralizationReport) -> Partition | None:
    """``/dev/sda3`` → partition 3; a logical volume → the partition holding the volume group (the
    single ``lvm2`` partition, when there is exactly one)."""
    digits = device.removeprefix("/dev/sda")
    if device.startswith("/dev/sda") and digits.isdigit():
        return next((p for p in report.partitions if p.number == int(digits)), None)
    pvs = [p for p, fs in zip(report.partitions, report.filesystems, strict=True) if fs == "lvm2"]
    return pvs[0] if len(pvs) == 1 else None


def _inspect_guestfs(report: GeneralizationReport, raw: Path, build_key: str | None, *, tcg: bool | None
                     ) -> GeneralizationReport:
    with _appliance(raw, tcg) as (gf, fs_of, os_):
        found = dataclasses.replace(report, volumes=guestfs.volumes(gf, fs_of))
        if os_ is None:
            seen = ", ".join(f"{d}: {t}" for d, t in fs_of.items()) or "none"
            return dataclasses.replace(
                found, os=_windows_by_superblock(report.filesystems),
                reason=f"libguestfs found no operating system on the disk (filesystems {seen})",
            )  # fmt: skip
        found = dataclasses.replace(
            found, root=_partition_of(os_.root, report), root_device=os_.root, filesystem=os_.filesystem,
            mounts=os_.mounts, os_name=os_.product,
        )  # fmt: skip
        guestfs.mount_all(gf, os_)
        if os_.type == "windows":
            checks = windows.run_checks(gf, os_.windows_root, report.build_user)
            return dataclasses.replace(found, os=OsType.windows, inspected=True, checks=tuple(checks))
        if os_.type != "linux":
            return dataclasses.replace(found, reason=f"libguestfs found a {os_.type} system ({os_.product}); "
                                       "only Linux and Windows are checked")
        fs = guestfs.GuestfsReader(gf)
        mounted = {point.rstrip("/") or "/" for point, _ in os_.mounts}
        unmapped = [m for m in linux.separate_mounts(fs.read_text("/etc/fstab")) if m not in mounted]
        if unmapped:
            # The checks would read the root's empty mount point instead: no verdict rather than a wrong one.
            return dataclasses.replace(found, os=OsType.linux, reason=(
                f"/etc/fstab mounts {', '.join(unmapped)} from a filesystem libguestfs could not find on "
                "this disk; the checks would read an empty mount point"))
        checks, tmp, keys = linux.run_checks(fs, report.build_user, build_key)
        return dataclasses.replace(
            found, os=OsType.linux, os_name=linux.os_name(fs) or os_.product, inspected=True,
            checks=tuple(checks), tmp_leftovers=tuple(tmp), authorized_keys=tuple(keys),
        )  # fmt: skip
