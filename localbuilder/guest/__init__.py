"""Booting and talking to guests: what the build orchestrator asks of the machinery, and the machinery.

The orchestrator (``localbuilder.orchestrator``) talks only to the ``Platform`` protocol and the records
below, so its unit tests run on fakes (``tests/build/fakes.py``). The modules of this package implement
it:

    local.py      LocalPlatform: the real Platform (catalog, guests, checkpoints, deprovision, conversion)
    linux.py      linux_guest(): a Linux guest over SSH (NoCloud seed, cloud-init wait)
    windows.py    windows_guest(): a Windows guest over WinRM (first-boot media, pinned certificate)
    lifetime.py   what both share: the overlay, a start on a free port, the power-off and clean-up
    bootwatch.py  boot diagnostics: names a guest that will never answer, in seconds
    timed.py      TimedGuest: times the power-off part of deprovision

Dependencies run one way: ``orchestrator → guest → (communicator, hypervisor, checkpoints, deprovision,
windows, quiesce …)``; nothing below imports this package.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from localbuilder.checkpoints import Entry, LiveMeta
from localbuilder.communicator import CommandResult, Communicator
from localbuilder.errors import LocalBuilderError
from localbuilder.hypervisor import Guest
from localbuilder.provisioning import Provisioning
from localbuilder.state import KeptGuest
from localbuilder.template.model import OsType

__all__ = [
    "BootedGuest", "DeprovisionOutcome", "GuestRequest", "Inspection", "Platform", "RunCommand", "Settle",
    "SourceImage",
]

# ``Communicator.run``-shaped: what a settle hook runs its command through (the build's StepContext.run,
# which streams the output to customization.log and bounds it by the build's deadline).
RunCommand = Callable[..., CommandResult]
# After a reboot inside a step: wait until the guest is settled again; returns a line for the log.
Settle = Callable[[RunCommand, float], str]


@dataclasses.dataclass(frozen=True)
class SourceImage:
    path: Path
    format: str  # qemu-img format name: qcow2, raw, vpc …
    os: OsType
    label: str  # what the user called it (URN, resource id)
    uefi: bool = False
    provisioning: Provisioning | None = None  # how its build guest is provisioned (Linux sources)


@dataclasses.dataclass(frozen=True)
class GuestRequest:
    image: SourceImage
    workdir: Path
    disk_size_bytes: int | None
    vm_size: str
    purpose: str  # "build" | "validation"
    timeout: float  # readiness bound (the remaining build time caps it)
    checkpoint: Entry | None = None  # continue from this checkpoint instead of the image


@dataclasses.dataclass
class BootedGuest:
    """A running guest with a connected communicator. ``keep()`` stops the platform from removing it."""

    guest: Guest
    comm: Communicator
    host: str
    port: int
    user: str
    key_file: Path
    overlay: Path
    overlay_format: str
    serial_log: Path | None
    backend: str
    kept: KeptGuest | None = None
    host_keys: tuple[str, ...] = ()  # pinned SSH host keys (kept with a live checkpoint)
    seed_iso: Path | None = None  # the seed the guest booted with (a live resume needs the same one)
    layers: int = 0  # live checkpoints taken so far: each put a new overlay on top
    pid: int | None = None  # the hypervisor process (direct qemu), for recovery after a SIGKILLed build
    libvirt_uri: str | None = None  # where the domain lives (libvirt), for the same
    settle: Settle | None = None  # after a reboot inside a step (Linux: cloud-init finishes again)
    _keep: Callable[[], KeptGuest] | None = None

    def keep(self) -> KeptGuest:
        if self.kept is None:
            if self._keep is None:
                raise LocalBuilderError("this guest backend cannot keep a guest running")
            self.kept = self._keep()
        return self.kept


@dataclasses.dataclass(frozen=True)
class DeprovisionOutcome:
    user_script: bool  # the template wrote /tmp/DeprovisioningScript.sh and it replaced ours
    script_seconds: float
    poweroff_seconds: float

    @classmethod
    def timed(cls, user_script: bool, total_seconds: float, poweroff_seconds: float) -> DeprovisionOutcome:
        """Split the step's wall time into the script's part and the guest's power-off (``TimedGuest``)."""
        return cls(user_script, max(0.0, total_seconds - poweroff_seconds), poweroff_seconds)


@dataclasses.dataclass(frozen=True)
class Inspection:
    problems: tuple[str, ...]  # checks that ran and failed: the image is not generalized
    report: dict[str, Any]
    # Checks that could not run (no reader could open the root: libguestfs missing, no OS found): said,
    # never a failure — a VHD is not thrown away for what localbuilder cannot read.
    warnings: tuple[str, ...] = ()


class Platform(Protocol):
    def resolve(self, source: Any) -> SourceImage: ...

    def boot(self, request: GuestRequest) -> contextlib.AbstractContextManager[BootedGuest]: ...

    def deprovision(self, booted: BootedGuest, *, timeout: float) -> DeprovisionOutcome:
        """Run AIB's hidden deprovision step and wait for the guest to power off."""
        ...

    def convert(self, src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        """Fixed, MiB-aligned, footer-verified VHD at ``dst``; returns its virtual size."""
        ...

    def inspect(self, vhd: Path, build_user: str) -> Inspection: ...

    def checkpoint_traits(self, image: SourceImage) -> Mapping[str, Any] | None:
        """What besides the template shapes a booted guest (backend, accelerator, network …), for the
        checkpoint keys; None when this platform cannot take checkpoints of ``image``'s guests."""
        ...

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
        """Quiesce the guest (writing ``mark``, the checkpoint's key, into it), freeze its disk into
        ``staging/disk.qcow2`` (rebased onto ``backing``) and, where the backend can, its memory for a
        live resume (then returns what that resume needs). Refuses (CheckpointError) when the checkpoint
        would leave too little room in ``room_for`` for the conversion that follows."""
        ...

    def check_layer(self, disk: Path) -> str | None:
        """Structural check of a checkpoint's disk layer before a build uses it; None when sound."""
        ...
