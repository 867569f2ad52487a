"""``get_backend(name, **options)``: the hypervisor backend called ``name``.

Kept apart from the package's protocols so that the backends (which import those protocols) can be
imported here at module level. libvirt-python itself is imported only when a libvirt backend is made.
"""

from __future__ import annotations

from typing import Any

from localbuilder.errors import UsageError
from localbuilder.hypervisor import BACKENDS, Hypervisor
from localbuilder.hypervisor.fake import FakeHypervisor
from localbuilder.hypervisor.libvirt import LibvirtHypervisor
from localbuilder.hypervisor.qemu import QemuHypervisor


def get_backend(name: str, **options: Any) -> Hypervisor:
    """The backend called ``name``; ``options`` go to its constructor (e.g. ``uri=`` for libvirt)."""
    if name == "qemu":
        return QemuHypervisor(**options)
    if name == "libvirt":
        return LibvirtHypervisor(**options)
    if name == "fake":
        return FakeHypervisor(**options)
    raise UsageError(f"unknown hypervisor backend {name!r}", hint=f"Use one of: {', '.join(BACKENDS)}.")
