"""The generalization report: what was found on the disk, and each check's verdict."""

from __future__ import annotations

import dataclasses
import enum

from localbuilder import vhd
from localbuilder.diskread import Partition
from localbuilder.errors import InspectionError
from localbuilder.guestfs import Volume
from localbuilder.template.model import OsType


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
    filesystems: tuple[str, ...]  # of each partition, by its superblock (``diskread.detect_filesystem``)
    root: Partition | None  # the partition holding the root filesystem (for LVM: the one with its PV)
    filesystem: str
    os: OsType | None  # None: not recognised ("unknown" in the report)
    os_name: str  # PRETTY_NAME from os-release, when read
    inspected: bool  # False: the checks could not run (Windows, XFS, …); see ``reason``
    reason: str
    build_user: str | None
    checks: tuple[CheckResult, ...]
    tmp_leftovers: tuple[str, ...]
    authorized_keys: tuple[str, ...]
    volumes: tuple[Volume, ...] = ()  # LVM logical volumes (read through libguestfs only)
    root_device: str = ""  # as libguestfs names it ("/dev/rootvg/rootlv"); "" when read with debugfs
    mounts: tuple[tuple[str, str], ...] = ()  # (mount point, device) mounted for the checks
    reader: str = ""  # "debugfs" or "libguestfs": what read the files
    seconds: float = 0.0

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
            "partitions": [
                {**p.as_dict(), "filesystem": fs}
                for p, fs in zip(self.partitions, self.filesystems, strict=True)
            ],
            "root": self.root.as_dict() if self.root else None,
            "filesystem": self.filesystem,
            "os": str(self.os) if self.os is not None else "unknown",
            "os_name": self.os_name,
            "inspected": self.inspected,
            "reason": self.reason,
            "generalized": self.generalized,
            "build_user": self.build_user,
            "checks": [c.as_dict() for c in self.checks],
            "tmp_leftovers": list(self.tmp_leftovers),
            "authorized_keys": list(self.authorized_keys),
            "volumes": [v.as_dict() for v in self.volumes],
            "root_device": self.root_device,
            "mounts": [{"mountpoint": m, "device": d} for m, d in self.mounts],
            "reader": self.reader,
            "seconds": round(self.seconds, 1),
        }

    def layout(self) -> list[str]:
        """The disk as found: partition table, each partition's filesystem, which one is the root."""
        scheme = self.partitions[0].scheme if self.partitions else "none"
        lines = [f"layout: {'no partition table' if scheme == 'none' else scheme.upper()}, "
                 f"{len(self.partitions)} partition{'s' if len(self.partitions) != 1 else ''}"]
        for part, fs in zip(self.partitions, self.filesystems, strict=True):
            size = _size(part.size)
            label = f" {part.name!r}" if part.name else ""
            mark = "  <- root" if self.root is not None and part.number == self.root.number else ""
            lines.append(f"  {part.number:>2}  {size:>9}  {fs:<9}  type {part.type}{label}{mark}")
        for vol in self.volumes:
            mark = "  <- root" if vol.device == self.root_device else ""
            lines.append(f"  LV {vol.name:<20} {_size(vol.size):>9}  {vol.filesystem}{mark}")
        for point, dev in self.mounts:
            lines.append(f"  mount {point:<12} {dev}")
        return lines

    def render(self) -> str:
        """The human-readable report."""
        lines = [f"image: {self.image} ({self.image_format}, {self.disk_size / vhd.GIB:.2f} GiB)"]
        lines += self.layout()
        if self.root_device and not self.root_device.startswith("/dev/sd"):
            lines.append(f"root: {self.root_device} ({self.filesystem})"
                         f"{' — ' + self.os_name if self.os_name else ''}")
        elif self.root:
            lines.append(
                f"root: partition {self.root.number} ({self.filesystem}, offset {self.root.start}, "
                f"{self.root.size // vhd.MIB} MiB){' — ' + self.os_name if self.os_name else ''}"
            )
        if self.reader:
            lines.append(f"read with {self.reader} in {self.seconds:.1f} s")
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




def _size(n: int) -> str:
    return f"{n / vhd.GIB:.1f} GiB" if n >= vhd.GIB else f"{n // vhd.MIB} MiB"
