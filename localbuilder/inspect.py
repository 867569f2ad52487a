"""Offline generalization report: is this image really deprovisioned? Checked without booting it.

The image is never booted and never mounted (no root needed): its root partition is found and its files
are read through ``localbuilder.diskread`` (partition tables parsed in Python, ext2/3/4 read with
``debugfs``). Each check is one function reading through an ``Ext4Reader``; ``inspect_image`` runs them
all into a ``GeneralizationReport``.

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
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from localbuilder import vhd
from localbuilder.diskread import (
    LINUX_ROOT_X86_64,
    Ext4Reader,
    Partition,
    ReadAt,
    detect_filesystem,
    ext_needs_recovery,
    parse_partitions,
)
from localbuilder.errors import CommandError, InspectionError
from localbuilder.quiesce import MARKER_DIR
from localbuilder.run import run
from localbuilder.template.model import OsType

log = logging.getLogger("localbuilder.inspect")

# Formats whose magic tells us qemu-img must translate them to raw first.
QEMU_MAGIC = {b"QFI\xfb": "qcow2", b"KDMV": "vmdk", b"vhdxfile": "vhdx", b"conectix": "vpc"}


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
    filesystems: tuple[str, ...]  # of each partition, by its superblock (``diskread.detect_filesystem``)
    root: Partition | None
    filesystem: str
    os: OsType | None  # None: not recognised ("unknown" in the report)
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
        }

    def layout(self) -> list[str]:
        """The disk as found: partition table, each partition's filesystem, which one is the root."""
        scheme = self.partitions[0].scheme if self.partitions else "none"
        lines = [f"layout: {'no partition table' if scheme == 'none' else scheme.upper()}, "
                 f"{len(self.partitions)} partition{'s' if len(self.partitions) != 1 else ''}"]
        for part, fs in zip(self.partitions, self.filesystems, strict=True):
            size = f"{part.size / vhd.GIB:.1f} GiB" if part.size >= vhd.GIB else f"{part.size // vhd.MIB} MiB"
            label = f" {part.name!r}" if part.name else ""
            mark = "  <- root" if self.root is not None and part.number == self.root.number else ""
            lines.append(f"  {part.number:>2}  {size:>9}  {fs:<9}  type {part.type}{label}{mark}")
        return lines

    def render(self) -> str:
        """The human-readable report."""
        lines = [f"image: {self.image} ({self.image_format}, {self.disk_size / vhd.GIB:.2f} GiB)"]
        lines += self.layout()
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
            image=str(path), image_format=fmt, disk_size=disk_size, partitions=tuple(parts),
            filesystems=tuple(fs_of[p.number] for p in parts), root=None,
            filesystem="", os=None, os_name="", inspected=False, reason="", build_user=build_user,
            checks=(), tmp_leftovers=(), authorized_keys=(),
        )  # fmt: skip
        root = _find_root(fs_of, parts, raw)
        if root is None:
            if {"ntfs", "bitlocker"} & set(fs_of.values()):
                return dataclasses.replace(
                    report,
                    os=OsType.windows,
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
            report, root=root, filesystem=fs_of[root.number], os=OsType.linux,
            os_name=m.group(1) if m else "",
            inspected=True, checks=tuple(checks), tmp_leftovers=tuple(tmp), authorized_keys=tuple(keys),
        )  # fmt: skip
