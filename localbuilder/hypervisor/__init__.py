"""Hypervisor backends behind one small interface.

A ``Hypervisor`` starts a ``Guest`` from a ``GuestSpec``. Backends (``localbuilder.hypervisor.backends``):
``qemu`` (direct qemu-system, the default: no daemon needed), ``libvirt`` (libvirt-python, local or
remote URIs) and ``fake`` (in-memory, for unit tests).

What only some backends can do is a small optional protocol (``HasPid``, ``Checkpointable``,
``HasStatus``, ``HasLifecycleEvents``, ``HasStderr``): callers test for it with ``isinstance`` instead of
probing attributes, so a backend that gains the feature needs no change elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from localbuilder.hypervisor.spec import Accel, DeviceSet, Firmware, GuestSpec, NetworkMode, PortForward

__all__ = [
    "Accel", "BACKENDS", "Checkpointable", "DeviceSet", "Firmware", "Guest", "GuestSpec",
    "HasLifecycleEvents", "HasPid", "HasStatus", "HasStderr", "Hypervisor", "NetworkMode", "PortForward",
]

BACKENDS = ("qemu", "libvirt", "fake")


@runtime_checkable
class Guest(Protocol):
    """A running guest. Every method is safe to call after the guest has gone away."""

    spec: GuestSpec

    def is_running(self) -> bool: ...

    def reset_count(self) -> int:
        """How many guest resets/reboots the backend has observed since start (reboot detection)."""
        ...

    def wait_shutdown(self, timeout: float) -> bool:
        """Wait for the guest to power itself off; True if it did within ``timeout`` seconds."""
        ...

    def shutdown(self, timeout: float) -> bool:
        """ACPI power-down, wait up to ``timeout``; then kill. True if the power-down was clean."""
        ...

    def destroy(self) -> None:
        """Kill the guest now and release everything the backend holds (idempotent)."""
        ...


class Hypervisor(Protocol):
    name: str

    def start(self, spec: GuestSpec) -> Guest: ...


# -- optional features ----------------------------------------------------------------------------------


@runtime_checkable
class HasPid(Protocol):
    """A guest that is a process of this host (direct qemu): recovery finds it again by its pid."""

    @property
    def pid(self) -> int: ...


@runtime_checkable
class Checkpointable(Protocol):
    """A guest whose disk (and memory) can be frozen into a checkpoint and resumed (FACTS §3e)."""

    @property
    def top_image(self) -> Path:
        """The disk layer the guest writes now (a checkpoint puts a new one on top)."""
        ...

    def checkpoint(self, new_top: Path, state_file: Path | None, *, timeout: float) -> None:
        """Freeze the current top layer, go on writing into ``new_top``; with ``state_file``, save the
        memory there too (a live checkpoint)."""
        ...

    def restore(self, state_file: Path, *, timeout: float) -> None:
        """Load a live checkpoint's memory into a guest started with ``spec.incoming``."""
        ...


@runtime_checkable
class HasStatus(Protocol):
    """The hypervisor's run state of the guest: running, paused, io-error, guest-panicked …"""

    def status(self) -> str: ...


@runtime_checkable
class HasLifecycleEvents(Protocol):
    """Power events the hypervisor saw (QMP SHUTDOWN with its reason, RESET …), oldest first."""

    def lifecycle_events(self) -> list[dict[str, Any]]: ...


@runtime_checkable
class HasStderr(Protocol):
    """A guest whose hypervisor process writes a log of its own (qemu's stderr)."""

    def stderr_tail(self, lines: int = 20) -> str: ...
