"""GuestSpec: everything a backend needs to start one guest, independent of QEMU or libvirt."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path


class Accel(enum.StrEnum):
    kvm = "kvm"
    tcg = "tcg"


class Firmware(enum.StrEnum):
    bios = "bios"  # Azure Hyper-V generation V1
    uefi = "uefi"  # Azure Hyper-V generation V2 (OVMF)


class NetworkMode(enum.StrEnum):
    restricted = "restricted"  # slirp restrict=on: DHCP and port forwards only, no outbound traffic
    user = "user"  # slirp with outbound NAT (reach a package mirror on the host, …)


class DeviceSet(enum.StrEnum):
    """The emulated disk controller and NIC.

    ``virtio`` is fast and what Linux cloud images expect. ``compat`` (AHCI/SATA disk and CD-ROM, e1000
    NIC) is for images without virtio drivers: Azure's Windows images ship Hyper-V drivers, not virtio,
    and would stop with INACCESSIBLE_BOOT_DEVICE on a virtio disk.
    """

    virtio = "virtio"
    compat = "compat"


@dataclasses.dataclass(frozen=True)
class PortForward:
    guest_port: int
    host_port: int
    host_addr: str = "127.0.0.1"  # never 0.0.0.0: a build guest must not be reachable from the LAN


@dataclasses.dataclass(frozen=True)
class GuestSpec:
    name: str
    disk: Path  # the qcow2 overlay the guest writes to (never the source image)
    workdir: Path  # per-guest private directory: serial log, QMP socket, pid file
    disk_format: str = "qcow2"
    cpus: int = 1
    memory_mib: int = 1024
    accel: Accel = Accel.tcg
    firmware: Firmware = Firmware.bios
    seed_iso: Path | None = None  # cloud-init NoCloud (Linux) or unattend ISO (Windows)
    forwards: tuple[PortForward, ...] = ()
    network: NetworkMode = NetworkMode.restricted
    devices: DeviceSet = DeviceSet.virtio
    machine: str = "pc"  # pin a versioned type (pc-i440fx-7.2) when live snapshots must resume
    # Start paused, waiting for a migration stream (a live checkpoint) instead of booting (FACTS §3e).
    incoming: bool = False

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"
