"""Hypervisor backends behind one small interface.

A ``Hypervisor`` starts a ``Guest`` from a ``GuestSpec``. Backends: ``qemu`` (direct qemu-system, the
default: no daemon needed), ``libvirt`` (libvirt-python, local or remote URIs) and ``fake`` (in-memory,
for unit tests). ``get_backend(name, **options)`` picks one.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from localbuilder.hypervisor.spec import Accel, DeviceSet, Firmware, GuestSpec, NetworkMode, PortForward

__all__ = [
    "Accel", "DeviceSet", "Firmware", "Guest", "GuestSpec", "Hypervisor", "NetworkMode", "PortForward",
    "get_backend", "BACKENDS",
]


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


BACKENDS = ("qemu", "libvirt", "fake")


def get_backend(name: str, **options: Any) -> Hypervisor:
    """The backend called ``name``; ``options`` go to its constructor (e.g. ``uri=`` for libvirt).

    Backends are imported lazily: libvirt-python is an optional dependency, and importing it costs time.
    """
    from localbuilder.errors import UsageError

    if name == "qemu":
        from localbuilder.hypervisor.qemu import QemuHypervisor

        return QemuHypervisor(**options)
    if name == "libvirt":
        from localbuilder.hypervisor.libvirt import LibvirtHypervisor

        return LibvirtHypervisor(**options)
    if name == "fake":
        from localbuilder.hypervisor.fake import FakeHypervisor

        return FakeHypervisor(**options)
    raise UsageError(f"unknown hypervisor backend {name!r}", hint=f"Use one of: {', '.join(BACKENDS)}.")
