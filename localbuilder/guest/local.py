"""``LocalPlatform``, the real ``guest.Platform``: the image catalog, guest sessions on this host's
QEMU or libvirt, checkpoints, deprovision, qemu-img conversion, offline inspection.

The orchestrator (``localbuilder.orchestrator``) talks only to the ``Platform`` protocol so its unit tests run
on fakes; this module wires the protocol to the modules that do the work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from localbuilder import provisioning
from localbuilder.catalog import Catalog, Generation
from localbuilder.checkpoints import (
    KEY,
    SEED,
    STATE,
    CheckpointCache,
    Entry,
    LiveMeta,
    LiveState,
    check_layer,
)
from localbuilder.communicator.ssh import SSHCommunicator
from localbuilder.communicator.winrm import WinRMCommunicator
from localbuilder.deprovision import deprovision_linux
from localbuilder.disk import copy_layer, to_fixed_vhd
from localbuilder.errors import BackendError, CheckpointError, CommandError, LocalBuilderError
from localbuilder.guest import BootedGuest, DeprovisionOutcome, GuestRequest, Inspection, SourceImage
from localbuilder.guest import windows as windows_guest
from localbuilder.guest.lifetime import ABORT_SHUTDOWN_TIMEOUT, power_off
from localbuilder.guest.linux import linux_guest, settle_after_reboot
from localbuilder.guest.timed import TimedGuest
from localbuilder.hypervisor import Checkpointable, Firmware, HasPid, Hypervisor, NetworkMode
from localbuilder.hypervisor.backends import get_backend
from localbuilder.hypervisor.probe import resolve_accel
from localbuilder.hypervisor.sizes import guest_shape
from localbuilder.hypervisor.spec import Accel
from localbuilder.inspect import inspect_image
from localbuilder.provisioning import provisioning_request
from localbuilder.quiesce import confirm, quiesced
from localbuilder.room import measured_data
from localbuilder.run import run
from localbuilder.state import KeptGuest
from localbuilder.template.model import OsType

log = logging.getLogger("localbuilder.guest.local")

# Freezing takes a sync + FIFREEZE per filesystem: ~0.1-1 s here; a guest that needs longer is in trouble.
QUIESCE_SECONDS = 120.0
# Reading the checkpoint marker back after a resume (one SSH command).
CONFIRM_SECONDS = 60.0
# Left free beside a checkpoint and the conversion's estimate: filesystems misbehave when completely full.
SPACE_MARGIN = 256 * 1024**2


def _human(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _virtual_size(top: Path) -> int:
    try:
        info = json.loads(run(["qemu-img", "info", "-U", "--output=json", top]).stdout)
        return int(info["virtual-size"])
    except (CommandError, ValueError, KeyError, TypeError):
        return 1 << 62  # unknown: measure instead


def _chain_data(top: Path) -> int:
    """What converting the guest's disk will write (a sparse VHD takes about its data): the allocated
    size of every layer above the base, plus the base's data uncompressed (``qemu-img measure``)."""
    try:
        chain = json.loads(run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", top]).stdout)
    except (CommandError, ValueError):
        return 0
    if not isinstance(chain, list) or not chain:
        return 0
    total = sum(int(layer.get("actual-size", 0)) for layer in chain[:-1])
    base = chain[-1]
    measured = measured_data(Path(base["filename"]), str(base.get("format", "raw")))
    return total + (measured if measured is not None else int(base.get("actual-size", 0)))


def _cache_note(staging: Path) -> str:
    cache = CheckpointCache(staging.parent)
    held = sum(e.size() for e in cache.entries())
    return f"the checkpoint cache ({cache.root}) holds {_human(held)}"


_SPACE_HINT = ("Free space with 'localbuilder cache prune' (e.g. --max-size 5G, or --all), lower "
               "LOCALBUILDER_CACHE_MAX_SIZE, or build with --no-cache.")


def _check_room(top: Path, staging: Path, room_for: Path, *, memory: int) -> None:
    """Never let a checkpoint take the room the build needs to finish: the checkpoint (its new disk
    layer, at most the current top's allocation, plus the memory state) must fit beside the conversion
    when both land on the same filesystem."""
    try:
        layer = top.stat().st_blocks * 512
        free = _free(staging)
        same_fs = staging.stat().st_dev == room_for.stat().st_dev
    except OSError:
        return
    need = layer + memory + SPACE_MARGIN
    if free >= need + _virtual_size(top) + SPACE_MARGIN:
        return  # even a fully allocated VHD fits beside it: no need to measure the disk's data
    conversion = _chain_data(top) if same_fs else 0
    if free < need + conversion:
        raise CheckpointError(
            f"not enough space for a checkpoint: {_human(free)} free on the filesystem of "
            f"{staging.parent}; the checkpoint needs ~{_human(need)}"
            + (f" and the conversion ~{_human(conversion)}" if conversion else "")
            + f"; {_cache_note(staging)}; this build goes on without checkpoints",
            hint=_SPACE_HINT,
        )


def _space_error(exc: BaseException, staging: Path) -> BaseException:
    """A failed save that ran out of space says so, with the cache's size and how to free it."""
    text = exc.message if isinstance(exc, LocalBuilderError) else str(exc)
    full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text
    with contextlib.suppress(OSError):
        full = full or _free(staging) < 16 * 1024**2
    if not full:
        return exc
    first = text.splitlines()[0] if text else "ENOSPC"
    return CheckpointError(f"saving the checkpoint ran out of space ({first}); {_cache_note(staging)}",
                           hint=_SPACE_HINT)


class LocalPlatform:
    def __init__(
        self,
        *,
        backend: str = "qemu",
        libvirt_uri: str | None = None,
        accel: str = "auto",
        network: bool = False,
        progress: bool = True,
        provisioning: str = "auto",
    ) -> None:
        self.provisioning = provisioning_request(provisioning)
        self.backend = backend
        self.libvirt_uri = libvirt_uri
        self.accel_request = accel
        self.network = network
        self.progress = progress
        self._accel: Accel | None = None
        self._qemu_version: str | None = None

    def resolve(self, source: Any) -> SourceImage:
        entry = Catalog().resolve(source)
        os_type = OsType(str(entry.os))
        how = None
        if os_type is OsType.linux:
            # Before any guest boots: would this source's cloud-init read our NoCloud seed at all? (A
            # libguestfs appliance, if reading it needs one, follows the KVM probe: no accelerator is
            # resolved, and no fallback warning printed, before the build decides to boot.)
            how = provisioning.for_source(entry.path, entry.sha256, entry.ref, request=self.provisioning)
        return SourceImage(
            path=entry.path,
            format=str(entry.format),
            os=os_type,
            label=entry.ref,
            uefi=entry.generation is Generation.V2,
            provisioning=how,
        )

    def _hypervisor(self) -> Hypervisor:
        return get_backend(self.backend, **({"uri": self.libvirt_uri} if self.backend == "libvirt" else {}))

    def _domain_uri(self) -> str | None:
        """Where a libvirt guest's domain lives (recorded for recovery); None for the other backends."""
        return self.libvirt_uri if self.backend == "libvirt" else None

    def _accel_value(self) -> Accel:
        if self._accel is None:
            self._accel = resolve_accel(self.accel_request)
        return self._accel

    # -- checkpoints --------------------------------------------------------------------------------

    def checkpoint_traits(self, image: SourceImage) -> Mapping[str, Any] | None:
        if image.os is not OsType.linux:
            return None  # Windows guests: not yet (no way to test them here; see docs/windows.md)
        if self.backend != "qemu":
            log.info("checkpoints need the direct QEMU backend (--hypervisor qemu); building without them")
            return None
        return {"backend": self.backend, "accel": str(self._accel_value().value), "network": self.network}

    def qemu_version(self) -> str:
        if self._qemu_version is None:
            out = run(["qemu-system-x86_64", "--version"]).stdout
            self._qemu_version = out.splitlines()[0].strip() if out else "unknown"
        return self._qemu_version

    def check_layer(self, disk: Path) -> str | None:
        return check_layer(disk)

    def checkpoint(
        self,
        booted: BootedGuest,
        staging: Path,
        *,
        backing: Path,
        backing_format: str,
        timeout: float,
        mark: str,
        room_for: Path,
    ) -> LiveMeta | None:
        guest = booted.guest
        if not isinstance(guest, Checkpointable):
            raise BackendError(f"the {self.backend} backend cannot take checkpoints")
        frozen = guest.top_image
        if not isinstance(booted.comm, SSHCommunicator):
            raise CheckpointError("checkpoints need an SSH guest (its filesystems are frozen for the cut)")
        # Live only where a resume can rebuild the same machine: BIOS guests with a seed (UEFI would also
        # need its variable store frozen; disk-only checkpoints still work there).
        live = booted.seed_iso is not None and guest.spec.firmware is Firmware.bios
        _check_room(frozen, staging, room_for, memory=guest.spec.memory_mib * 1024**2 if live else 0)
        booted.layers += 1
        new_top = frozen.parent / f"disk-{booted.layers}.qcow2"
        try:
            # The layer must hold the step's writes on its own (a disk-only resume has nothing else):
            # the guest flushes and freezes its filesystems around the cut (localbuilder.quiesce).
            with quiesced(booted.comm, mark, timeout=min(QUIESCE_SECONDS, timeout)):
                guest.checkpoint(new_top, staging / STATE if live else None, timeout=timeout)
        except (BackendError, OSError) as exc:
            mapped = _space_error(exc, staging)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            booted.overlay = guest.top_image  # where the guest writes now
        try:
            copy_layer(frozen, staging / "disk.qcow2", backing, backing_format)
        except (LocalBuilderError, OSError) as exc:
            mapped = _space_error(exc, staging)
            if mapped is exc:
                raise
            raise mapped from exc
        if not live:
            return None
        assert booted.seed_iso is not None
        shutil.copyfile(booted.seed_iso, staging / SEED)
        shutil.copyfile(booted.key_file, staging / KEY)
        for name in (SEED, KEY, STATE):
            (staging / name).chmod(0o600)
        spec = guest.spec
        return LiveMeta(user=booted.user, host_keys=booted.host_keys, cpus=spec.cpus,
                        memory_mib=spec.memory_mib, accel=str(spec.accel.value),
                        qemu_version=self.qemu_version())

    def _live_state(self, entry: Entry, cpus: int, memory_mib: int) -> LiveState | None:
        live = entry.meta.live
        state = entry.live_state()
        if live is None or state is None:
            return None
        if self.backend != "qemu" or (live.cpus, live.memory_mib) != (cpus, memory_mib):
            return None
        if live.accel != str(self._accel_value().value) or live.qemu_version != self.qemu_version():
            log.info("the checkpoint's memory was saved by %s (%s); booting its disk instead",
                     live.qemu_version, live.accel)
            return None
        return state

    # -- guests --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def boot(self, request: GuestRequest) -> Iterator[BootedGuest]:
        entry = request.checkpoint
        if entry is not None:
            shape = guest_shape(request.vm_size or None)
            resume = self._live_state(entry, shape.cpus, shape.memory_mib)
            if resume is not None:
                started = False
                try:
                    with self._boot_guest(request, resume=resume) as booted:
                        started = True
                        confirm(booted.comm, entry.key, timeout=CONFIRM_SECONDS)
                        yield booted
                    return
                except BackendError as exc:
                    if started:
                        raise
                    log.warning("could not resume the live checkpoint (%s); booting its disk instead",
                                exc.message)
        with self._boot_guest(request, resume=None) as booted:
            if entry is not None:
                # Booted from the checkpoint's disk alone: the guest must say it is that checkpoint.
                confirm(booted.comm, entry.key, timeout=CONFIRM_SECONDS)
            yield booted

    @contextlib.contextmanager
    def _boot_guest(self, request: GuestRequest, *, resume: LiveState | None) -> Iterator[BootedGuest]:
        shape = guest_shape(request.vm_size or None)
        network = NetworkMode.user if self.network else NetworkMode.restricted
        if request.image.os is not OsType.linux:
            # Windows: first-boot ISO (unattend + WinRM over HTTPS with a pinned certificate) and WinRM.
            # Proven against the WS-Management test server only; see docs/windows.md.
            with windows_guest.boot_for_build(
                request,
                hypervisor=self._hypervisor(),
                accel=self._accel_value(),
                cpus=shape.cpus,
                memory_mib=max(shape.memory_mib, 2048),
                network=network,
                libvirt_uri=self._domain_uri(),
            ) as booted:
                yield booted
            return
        request.workdir.mkdir(parents=True, exist_ok=True)
        # A checkpoint replaces the source image: its disk (booted afresh, new seed) or, with ``resume``,
        # its memory too (the guest continues; no boot at all).
        base, base_format = request.image.path, request.image.format
        if request.checkpoint is not None:
            base, base_format = request.checkpoint.disk, "qcow2"
        # keep=True: the session then leaves the guest running when the block raises. Whether to keep
        # it is decided at failure time (--on-error abort/ask), so every other failure stops the guest
        # here first — the session then sees it stopped and cleans up as usual.
        with linux_guest(
            base,
            base_format,
            workdir=request.workdir,
            hypervisor=self._hypervisor(),
            accel=self._accel_value(),
            cpus=shape.cpus,
            memory_mib=shape.memory_mib,
            disk_size_bytes=request.disk_size_bytes,
            network=network,
            boot_timeout=request.timeout,
            firmware=Firmware.uefi if request.image.uefi else Firmware.bios,
            keep=True,
            progress=self.progress,
            resume=resume,
        ) as session:
            guest = session.guest
            booted = BootedGuest(
                guest=guest,
                comm=session.communicator,
                host=session.host,
                port=session.port,
                user=session.user,
                key_file=Path(session.key_file),
                overlay=Path(session.overlay_path),
                overlay_format="qcow2",
                serial_log=session.serial_log,
                backend=self.backend,
                host_keys=tuple(session.host_keys),
                seed_iso=session.guest.spec.seed_iso,
                pid=guest.pid if isinstance(guest, HasPid) else None,
                libvirt_uri=self._domain_uri(),
                settle=settle_after_reboot,
                _keep=lambda: self._kept(booted),
            )
            try:
                yield booted
            except BaseException:
                if booted.kept is None:
                    # A failed/canceled build discards the guest: a short ACPI chance, then kill.
                    session.communicator.close()
                    power_off(guest, ABORT_SHUTDOWN_TIMEOUT)
                raise

    def _kept(self, booted: BootedGuest) -> KeptGuest:
        return KeptGuest(
            ssh_host=booted.host,
            ssh_port=booted.port,
            user=booted.user,
            key_file=str(booted.key_file),
            backend=self.backend,
            pid=booted.pid,
            domain=booted.guest.spec.name if self.backend == "libvirt" else None,
        )

    def deprovision(self, booted: BootedGuest, *, timeout: float) -> DeprovisionOutcome:
        if isinstance(booted.comm, WinRMCommunicator):
            return windows_guest.deprovision_for_build(booted, timeout=timeout)
        timed = TimedGuest(booted.guest)
        result = deprovision_linux(booted.comm, timed, booted.user, timeout=timeout)
        return DeprovisionOutcome.timed(result.user_script, result.seconds, timed.wait_seconds)

    def convert(self, src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        result = to_fixed_vhd(src, src_format, dst, size_bytes=size_bytes, progress=self.progress)
        return result.virtual_size

    def inspect(self, vhd: Path, build_user: str) -> Inspection:
        # libguestfs's appliance (for roots debugfs cannot read) runs on the build's accelerator.
        report = inspect_image(vhd, build_user=build_user, tcg=self._accel_value() is Accel.tcg)
        problems = tuple(f"{c.check}: {c.message}" for c in report.failures)
        warnings = () if report.inspected else (f"not inspected: {report.reason}",)
        return Inspection(problems=problems, report=report.as_dict(), warnings=warnings)
