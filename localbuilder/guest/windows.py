"""Boot a Windows guest from a generalized image and hand over a connected WinRM communicator.

The Windows counterpart of ``guest.linux.linux_guest`` (the parts both share are ``guest.lifetime``):

1. a private directory and a qcow2 overlay on the base image (the base is never written);
2. first-boot media (``windows.firstboot.make_first_boot_media``): answer file + ``windows-setup.ps1`` +
   a listener certificate generated here, with a fresh build-account password;
3. the backend with a free 127.0.0.1 port forwarded to the guest's 5986;
4. wait for WinRM over HTTPS with the certificate **pinned** (AIB waits 10 minutes; under TCG the
   wait is scaled) — giving up early if the guest stops;
5. on exit: close, ACPI power-down with a deadline, kill, and remove the first-boot media (it holds the
   password) and the overlay unless asked to keep it.

Not verified against a real Windows guest (see docs/windows.md). Azure's Windows images carry Hyper-V
drivers, not virtio: the guest gets AHCI/SATA disks and an e1000 NIC (``DeviceSet.compat``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from localbuilder.communicator.winrm import Transport, WinRMCommunicator
from localbuilder.errors import BackendError
from localbuilder.guest import BootedGuest, DeprovisionOutcome, GuestRequest, lifetime
from localbuilder.guest.timed import TimedGuest
from localbuilder.hypervisor import Guest, HasPid, Hypervisor
from localbuilder.hypervisor.probe import timeout_scale
from localbuilder.hypervisor.spec import Accel, DeviceSet, Firmware, GuestSpec, NetworkMode, PortForward
from localbuilder.log import complete_step
from localbuilder.paths import ensure_private_dir
from localbuilder.windows.firstboot import WINRM_HTTPS_PORT, make_first_boot_media
from localbuilder.windows.sysprep import deprovision_windows

log = logging.getLogger("localbuilder.guest.windows")

HOST = lifetime.HOST
WINRM_WAIT = 600.0  # AIB's WinRM timeout (FACTS §6)
SHUTDOWN_TIMEOUT = 120.0  # Windows takes longer than Linux to power down


@dataclasses.dataclass(frozen=True)
class WindowsGuest:
    guest: Guest
    communicator: WinRMCommunicator
    host: str
    port: int
    user: str
    cert_fingerprint: str
    overlay_path: Path
    serial_log: Path
    workdir: Path
    timings: dict[str, float]


@contextlib.contextmanager
def windows_guest(
    base: Path,
    base_format: str,
    *,
    workdir: Path,
    hypervisor: Hypervisor,
    accel: Accel,
    cpus: int = 2,
    memory_mib: int = 4096,
    disk_size_bytes: int | None = None,
    network: NetworkMode = NetworkMode.restricted,
    firmware: Firmware = Firmware.uefi,
    boot_timeout: float = WINRM_WAIT,
    transport: Transport = "ntlm",
    keep: bool = False,
    keep_overlay: bool = False,
    name: str | None = None,
) -> Iterator[WindowsGuest]:
    """Boot ``base`` and yield a ``WindowsGuest`` whose communicator is connected (module docstring)."""
    name = name or f"lb-{uuid.uuid4().hex[:8]}"  # also the computer name: at most 15 characters
    scale = timeout_scale(accel)
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as always:
        media_dir = workdir / name / "firstboot"
        # The media holds the build password: never leave it behind, not even for a kept guest
        # (Windows has read it at first boot). Outside ``stack``, whose undo a kept guest drops.
        always.callback(shutil.rmtree, media_dir, ignore_errors=True)
        with contextlib.ExitStack() as stack:
            guest_dir, overlay = lifetime.workspace(stack, workdir, name, base, base_format,
                                                    disk_size_bytes, keep_overlay=keep_overlay)
            media = make_first_boot_media(ensure_private_dir(media_dir), computer_name=name)

            def make_spec(port: int) -> GuestSpec:
                return GuestSpec(
                    name=name, disk=overlay, workdir=guest_dir, cpus=cpus, memory_mib=memory_mib,
                    accel=accel, firmware=firmware, seed_iso=media.iso, network=network,
                    forwards=(PortForward(WINRM_HTTPS_PORT, port, HOST),),
                    devices=DeviceSet.compat,  # Azure's Windows images have Hyper-V drivers, not virtio
                )

            start = time.monotonic()
            with complete_step(f"Booting {name} ({hypervisor.name}, {accel.value}, {cpus} vCPU, Windows)"):
                guest, port = lifetime.start(stack, hypervisor, make_spec,
                                             shutdown_timeout=SHUTDOWN_TIMEOUT * scale, timings=timings)
                timings["start"] = time.monotonic() - start
                comm = WinRMCommunicator(
                    HOST, port, media.username, media.password, transport=transport, https=True,
                    cert_fingerprint=media.cert_fingerprint,
                )
                stack.callback(comm.close)

                def on_wait(elapsed: float, status: str) -> None:
                    if not guest.is_running():
                        raise BackendError(
                            f"guest {name} stopped while booting (serial log: {guest.spec.serial_log})",
                            hint="Windows needs SATA/IDE disk and e1000 NIC emulation unless the image "
                            "has virtio drivers; see docs/windows.md.",
                        )
                    log.debug("waiting for WinRM (%.0f s): %s", elapsed, status)

                comm.wait_ready(boot_timeout * scale, on_wait=on_wait)
                timings["winrm"] = time.monotonic() - start

            def on_keep() -> None:
                creds = guest_dir / "winrm-credentials.json"
                fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as out:
                    json.dump({"endpoint": f"https://{HOST}:{port}/wsman", "username": media.username,
                               "password": media.password, "cert_sha256": media.cert_fingerprint}, out)
                log.warning(
                    "leaving Windows guest %s running for inspection: WinRM https://%s:%d/wsman, "
                    "credentials in %s (0600); stop it and remove %s afterwards",
                    name, HOST, port, creds, guest_dir,
                )

            with lifetime.kept(stack, guest, keep=keep, on_keep=on_keep):
                yield WindowsGuest(
                    guest=guest, communicator=comm, host=HOST, port=port, user=media.username,
                    cert_fingerprint=media.cert_fingerprint, overlay_path=overlay,
                    serial_log=guest.spec.serial_log, workdir=guest_dir, timings=timings,
                )


# -- what LocalPlatform needs for a Windows source (Platform.boot / .deprovision) ----------------------


@contextlib.contextmanager
def boot_for_build(
    request: GuestRequest,
    *,
    hypervisor: Hypervisor,
    accel: Accel,
    cpus: int = 2,
    memory_mib: int = 4096,
    network: NetworkMode = NetworkMode.restricted,
    libvirt_uri: str | None = None,
) -> Iterator[BootedGuest]:
    """``Platform.boot`` for a Windows source: ``windows_guest`` as a ``BootedGuest`` (``libvirt_uri``:
    where the domain lives, recorded for recovery)."""
    request.workdir.mkdir(parents=True, exist_ok=True)
    with windows_guest(
        request.image.path,
        request.image.format,
        workdir=request.workdir,
        hypervisor=hypervisor,
        accel=accel,
        cpus=cpus,
        memory_mib=memory_mib,
        disk_size_bytes=request.disk_size_bytes,
        network=network,
        firmware=Firmware.uefi if request.image.uefi else Firmware.bios,
        boot_timeout=min(WINRM_WAIT, request.timeout),
    ) as wg:
        yield BootedGuest(
            guest=wg.guest,
            comm=wg.communicator,
            host=wg.host,
            port=wg.port,
            user=wg.user,
            key_file=Path(),  # WinRM: password authentication, no key file
            overlay=wg.overlay_path,
            overlay_format="qcow2",
            serial_log=wg.serial_log,
            backend=hypervisor.name,
            pid=wg.guest.pid if isinstance(wg.guest, HasPid) else None,
            libvirt_uri=libvirt_uri,
        )


def deprovision_for_build(booted: BootedGuest, *, timeout: float) -> DeprovisionOutcome:
    """``Platform.deprovision`` for a Windows guest: Sysprep (or the user's script), then power-off."""
    timed = TimedGuest(booted.guest)
    start = time.monotonic()
    user_script = deprovision_windows(booted.comm, timed, timeout=timeout)
    return DeprovisionOutcome.timed(user_script, time.monotonic() - start, timed.wait_seconds)
