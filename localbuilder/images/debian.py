"""The Debian 12 (bookworm) source image: its recipe, and the cache of images built from it.

The recipe is the one measured in FACTS.md §2: ``debootstrap --variant=minbase`` with an explicit package
set onto a private tmpfs, a sparse raw disk with an MBR and one bootable partition at sector 2048, ext4,
GRUB for BIOS, systemd-networkd DHCP, cloud-init with the NoCloud and Azure datasources, no SSH host keys,
then ``qemu-img convert -c`` to a zstd-compressed qcow2. It mirrors what Azure's ``Debian:debian-12:12``
image looks like to a customizer (cloud-init, waagent, sudo, systemd) without being a copy of it. The
build itself is ``debian_build.py``.

Caching: the output file name carries a hash of the recipe (suite, mirror, packages, size, firmware, the
files written into the image and ``SCRIPT_VERSION``); ``cached_image()`` finds a build of the recipe by
that hash, with its ``.json`` record beside it.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
import logging
import re
from pathlib import Path

from localbuilder.errors import SourceError
from localbuilder.images import BuiltImage

log = logging.getLogger("localbuilder.images.debian")

# Bump when the build steps change in a way the recipe fields below do not capture: it invalidates
# every cached image.
SCRIPT_VERSION = 1

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SIZE = 2 * 1024**3
SUITE = "bookworm"
NAME = "debian-12"

# FACTS.md §2. python3-cffi-backend must be named: debootstrap does not resolve the virtual package
# python3-cryptography (pulled in by cloud-init) depends on.
PACKAGES: tuple[str, ...] = (
    "linux-image-cloud-amd64",
    "grub-pc",
    "systemd-sysv",
    "systemd-resolved",
    "dbus",
    "openssh-server",
    "cloud-init",
    "cloud-guest-utils",
    "waagent",
    "sudo",
    "iproute2",
    "e2fsprogs",
    "python3-cffi-backend",
)

# Azure's own URN for Debian 12: publisher Debian, offer debian-12, sku 12 (Gen1) / 12-gen2 (Gen2).
PUBLISHER = "Debian"
OFFER = "debian-12"


class Firmware(enum.StrEnum):
    bios = "bios"  # Hyper-V generation V1, sku "12"
    uefi = "uefi"  # Hyper-V generation V2, sku "12-gen2"


class Layout(enum.StrEnum):
    """How the disk is laid out. ``lvm_xfs`` is RHEL's (and Azure's RHEL LVM images'): a separate ext4
    /boot, and / and /var as XFS logical volumes ``rootvg/rootlv`` and ``rootvg/varlv``."""

    ext4 = "ext4"  # one ext4 root partition, sku "12" / "12-gen2"
    lvm_xfs = "lvm-xfs"  # sku "12-lvm-xfs" / "12-lvm-xfs-gen2"


# lvm_xfs: LVM tools in the initramfs (root on a logical volume) and xfsprogs for xfs_repair/growfs.
LVM_XFS_PACKAGES = ("lvm2", "xfsprogs")
VOLUME_GROUP = "rootvg"
BOOT_MIB = 256
VAR_MIB = 512  # mkfs.xfs refuses filesystems under 300 MiB


# Files written into the image. They are part of the recipe hash, so editing one rebuilds the image.
KERNEL_CMDLINE = "net.ifnames=0 console=ttyS0,115200n8"  # Azure-like: eth0 names, serial console
IMAGE_FILES: dict[str, str] = {
    # Interface names: net.ifnames=0 gives eth0, but match en* too in case a user drops that option.
    "etc/systemd/network/90-localbuilder-dhcp.network": (
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
    ),
    # NoCloud first: localbuilder's seed ISO; Azure so that the same image behaves on Azure; None so that
    # a boot without any seed still finishes cloud-init. C.UTF-8 avoids cloud-init's locale-gen error
    # (the minbase system has no locales package).
    "etc/cloud/cloud.cfg.d/90-localbuilder.cfg": (
        "datasource_list: [ NoCloud, Azure, None ]\nlocale: C.UTF-8\n"
    ),
    "etc/default/locale": "LANG=C.UTF-8\n",
    "etc/default/grub.d/50-localbuilder.cfg": (
        "GRUB_TIMEOUT=1\n"
        "GRUB_DISABLE_OS_PROBER=true\n"
        'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
        f'GRUB_CMDLINE_LINUX="{KERNEL_CMDLINE}"\n'
        'GRUB_TERMINAL="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
    ),
    "etc/hostname": "localhost\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
}
ENABLED_UNITS = ("systemd-networkd.service", "systemd-resolved.service", "ssh.service")

# The x86_64-efi modules for grub-mkstandalone; unlike grub-efi-amd64 it does not conflict with grub-pc.
UEFI_PACKAGES = ("grub-efi-amd64-bin",)
# Config embedded in the standalone EFI GRUB. Partition maps are not autoloaded (grub-mkconfig's own
# grub.cfg says `insmod part_gpt` for the same reason): without them `search` sees no partitions. If the
# root is not found, say so instead of `configfile` re-reading this memdisk file forever.
EFI_GRUB_CFG = (
    "insmod part_gpt\n"
    "insmod part_msdos\n"
    "insmod ext2\n"
    "if search --no-floppy --fs-uuid --set=root @ROOT_UUID@; then\n"
    "  configfile ($root)/boot/grub/grub.cfg\n"
    "else\n"
    '  echo "localbuilder: no file system with UUID @ROOT_UUID@"\n'
    "fi\n"
)


@dataclasses.dataclass(frozen=True)
class DebianRecipe:
    """Everything that decides the content of the image. ``key`` hashes all of it."""

    mirror: str = DEFAULT_MIRROR
    size_bytes: int = DEFAULT_SIZE
    firmware: Firmware = Firmware.bios
    packages: tuple[str, ...] = PACKAGES
    suite: str = SUITE
    layout: Layout = Layout.ext4

    def __post_init__(self) -> None:
        if not re.match(r"^(https?|file)://", self.mirror):
            raise SourceError(
                f"--mirror {self.mirror!r} is not an http(s):// or file:// URL",
                hint=f"Give the base URL of a Debian archive, e.g. --mirror {DEFAULT_MIRROR}",
            )
        mib = 1024**2
        if self.layout is Layout.lvm_xfs and self.firmware is Firmware.uefi:
            raise SourceError(
                "the lvm-xfs layout is built for BIOS (Gen1) only",
                hint="Drop --uefi, or build debian-12 --uefi for a Gen2 image (one ext4 root).",
            )
        minimum = 2048 if self.layout is Layout.lvm_xfs else 1024
        if self.size_bytes < minimum * mib or self.size_bytes % mib:
            raise SourceError(
                f"--size {self.size_bytes} bytes: the image must be at least {minimum // 1024} GiB and a "
                "whole number of MiB",
                hint="Use e.g. --size 2G (the rootfs needs ~600 MiB; cloud-init grows it on first boot).",
            )

    @property
    def all_packages(self) -> tuple[str, ...]:
        extra = (UEFI_PACKAGES if self.firmware is Firmware.uefi else ()) + (
            LVM_XFS_PACKAGES if self.layout is Layout.lvm_xfs else ()
        )
        return self.packages + extra

    @property
    def sku(self) -> str:
        return "12" + self._suffix

    @property
    def _suffix(self) -> str:
        """``-lvm-xfs`` and/or ``-gen2``, in Azure's order (the generation last)."""
        layout = "" if self.layout is Layout.ext4 else f"-{self.layout}"
        return layout + ("-gen2" if self.firmware is Firmware.uefi else "")

    @property
    def key(self) -> str:
        doc = {
            "script_version": SCRIPT_VERSION,
            "suite": self.suite,
            "mirror": self.mirror.rstrip("/"),
            "size_bytes": self.size_bytes,
            "firmware": str(self.firmware),
            "packages": sorted(self.all_packages),
            "files": IMAGE_FILES,
            "units": ENABLED_UNITS,
        }
        if self.firmware is Firmware.uefi:
            doc["efi_grub_cfg"] = EFI_GRUB_CFG
        if self.layout is not Layout.ext4:  # absent for ext4, so that existing caches stay valid
            doc["layout"] = {"layout": str(self.layout), "vg": VOLUME_GROUP, "boot": BOOT_MIB, "var": VAR_MIB}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def file_name(self) -> str:
        return f"{NAME}{self._suffix}-{self.key[:16]}.qcow2"


def parse_size(text: str) -> int:
    """``2G``, ``2048M``, ``4GiB``, or a byte count → bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise SourceError(f"--size {text!r} is not a size", hint="Use e.g. --size 2G or --size 4096M.")
    factor = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[m.group(2).upper()]
    return int(m.group(1)) * factor


def image_version(built_at: datetime.datetime) -> str:
    """Azure-style ``0.YYYYMMDD.HHMMSS`` (UTC) version: three integers, later builds sort higher.

    Azure's Debian images use ``0.<date>.<build number>``; we have no build counter, so the time of day
    of the build stands in for it (``0.20261126.61405`` = built 06:14:05 UTC on 2026-11-26).
    """
    utc = built_at.astimezone(datetime.UTC)
    return f"0.{utc:%Y%m%d}.{int(utc.strftime('%H%M%S'))}"

# ---------------------------------------------------------------------------------------------------
# Cache


def sidecar(image: Path) -> Path:
    """The ``.json`` record kept beside a built ``image`` (written by ``debian_build.build_image``)."""
    return image.with_suffix(".json")


def _read_sidecar(image: Path, recipe: DebianRecipe) -> BuiltImage | None:
    side = sidecar(image)
    if not image.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        if meta.get("recipe_key") != recipe.key or meta.get("size") != image.stat().st_size:
            return None
        return BuiltImage(
            path=image, format="qcow2", urn=meta["urn"], sha256=meta["sha256"], recipe_key=recipe.key,
            built_at=meta["built_at"], build_seconds=float(meta["build_seconds"]), reused=True,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable cache record %s: %s", side, exc)
        return None


def cached_image(recipe: DebianRecipe, cache_dir: Path) -> BuiltImage | None:
    """The cached build of ``recipe`` in ``cache_dir``, or None (no lock, no build)."""
    return _read_sidecar(cache_dir / recipe.file_name(), recipe)
