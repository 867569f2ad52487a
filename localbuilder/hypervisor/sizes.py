"""Azure ``vmProfile.vmSize`` → guest vCPUs and memory, capped to what this host can give.

The table covers the general-purpose, burstable, memory- and compute-optimised sizes that image
builds use (every size in the template corpus, plus their neighbours). Numbers are Azure's published
vCPU/memory per size [learn.microsoft.com/azure/virtual-machines/sizes]. Lookup is case-insensitive,
as Azure's is. An unknown size is not an error: the build still works, with a warning and the default.
"""

from __future__ import annotations

import dataclasses
import logging
import os

log = logging.getLogger("localbuilder.hypervisor.sizes")

# AIB's default build VM for generation 1 sources; generation 2 defaults to Standard_D2ds_v4 [AIB docs].
DEFAULT_SIZE = "Standard_D1_v2"
DEFAULT_SIZE_GEN2 = "Standard_D2ds_v4"


def _table() -> dict[str, tuple[int, float]]:
    t: dict[str, tuple[int, float]] = {}

    def family(pattern: str, shapes: dict[int, float]) -> None:
        for cpus, gib in shapes.items():
            t[pattern.format(n=cpus).casefold()] = (cpus, gib)

    def per_cpu(patterns: list[str], counts: list[int], gib_per_cpu: float) -> None:
        for pattern in patterns:
            family(pattern, {n: n * gib_per_cpu for n in counts})

    # Av2: 2 GiB per vCPU; Am_v2: 8 GiB per vCPU.
    per_cpu(["Standard_A{n}_v2"], [1, 2, 4, 8], 2)
    per_cpu(["Standard_A{n}m_v2"], [2, 4, 8], 8)
    # B-series (burstable), irregular shapes.
    family("Standard_B{n}ls", {1: 0.5})
    family("Standard_B{n}s", {1: 1, 2: 4})
    family("Standard_B{n}ms", {1: 2, 2: 8, 4: 16, 8: 32, 12: 48, 16: 64, 20: 80})
    family("Standard_B{n}ts_v2", {2: 1})
    family("Standard_B{n}ls_v2", {2: 4, 4: 8, 8: 16, 16: 32, 32: 64})
    family("Standard_B{n}s_v2", {2: 8, 4: 16, 8: 32, 16: 64, 32: 128})
    # D/DS v1 and v2: 3.5 GiB per vCPU; the 11-15 sizes are the memory-heavy ones.
    for pattern in ["Standard_D{n}", "Standard_DS{n}", "Standard_D{n}_v2", "Standard_DS{n}_v2"]:
        t.update({pattern.format(n=k).casefold(): v for k, v in {
            1: (1, 3.5), 2: (2, 7.0), 3: (4, 14.0), 4: (8, 28.0), 5: (16, 56.0),
            11: (2, 14.0), 12: (4, 28.0), 13: (8, 56.0), 14: (16, 112.0),
        }.items()})
    # D v3-v5 (and the AMD "a" and local-disk "d" variants): 4 GiB per vCPU; Dl: 2 GiB per vCPU.
    d_counts = [2, 4, 8, 16, 32, 48, 64]
    per_cpu([f"Standard_D{{n}}{s}_v3" for s in ["", "s"]], d_counts, 4)
    per_cpu([f"Standard_D{{n}}{s}_v4" for s in ["", "s", "d", "ds", "a", "as"]], d_counts + [96], 4)
    per_cpu([f"Standard_D{{n}}{s}_v5" for s in ["", "s", "d", "ds", "as", "ads"]], d_counts + [96], 4)
    per_cpu([f"Standard_D{{n}}{s}_v5" for s in ["ls", "lds"]], d_counts + [96], 2)
    per_cpu([f"Standard_D{{n}}{s}_v6" for s in ["s", "ds", "ls", "lds"]], d_counts + [96], 4)
    # E v3-v5: 8 GiB per vCPU.
    e_counts = [2, 4, 8, 16, 20, 32, 48, 64]
    per_cpu([f"Standard_E{{n}}{s}_v3" for s in ["", "s"]], e_counts, 8)
    per_cpu([f"Standard_E{{n}}{s}_v4" for s in ["", "s", "d", "ds", "a", "as"]], e_counts, 8)
    per_cpu([f"Standard_E{{n}}{s}_v5" for s in ["", "s", "d", "ds", "as", "ads"]], e_counts + [96], 8)
    # F (compute optimised): 2 GiB per vCPU.
    per_cpu(["Standard_F{n}", "Standard_F{n}s"], [1, 2, 4, 8, 16], 2)
    per_cpu(["Standard_F{n}s_v2"], [2, 4, 8, 16, 32, 48, 64, 72], 2)
    return t


SIZES: dict[str, tuple[int, float]] = _table()


@dataclasses.dataclass(frozen=True)
class GuestShape:
    vm_size: str  # the size the shape stands for (the default when the requested one was unknown)
    cpus: int
    memory_mib: int
    notes: tuple[str, ...] = ()  # what was changed and why (capped, unknown size), for the log


def host_resources() -> tuple[int, int]:
    """(usable CPUs, total RAM in MiB) of this host."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return cpus, memory


def lookup(vm_size: str) -> tuple[int, int] | None:
    """(vCPUs, memory MiB) for an Azure size name, case-insensitive; None if unknown."""
    entry = SIZES.get(vm_size.strip().casefold())
    if entry is None:
        return None
    return entry[0], int(entry[1] * 1024)


def guest_shape(
    vm_size: str | None,
    *,
    default: str = DEFAULT_SIZE,
    host: tuple[int, int] | None = None,
) -> GuestShape:
    """The guest's vCPUs/memory for ``vm_size``, capped to the host: vCPUs ≤ host CPUs, memory ≤
    half the host RAM (the rest is for the host, qemu's own overhead and parallel work)."""
    notes: list[str] = []
    name = (vm_size or "").strip() or default
    found = lookup(name)
    if found is None:
        notes.append(f"vmSize {name!r} is not in localbuilder's size table; using {default}")
        name = default
        found = lookup(default)
        if found is None:  # a caller passed an unknown default: a programming error
            raise ValueError(f"unknown default vm size {default!r}")
    cpus, memory = found
    host_cpus, host_memory = host if host is not None else host_resources()
    if cpus > host_cpus:
        notes.append(f"{name} has {cpus} vCPUs; capped to this host's {host_cpus}")
        cpus = host_cpus
    limit = max(512, host_memory // 2)
    if memory > limit:
        notes.append(f"{name} has {memory} MiB; capped to {limit} MiB (half of this host's RAM)")
        memory = limit
    shape = GuestShape(name, max(1, cpus), memory, tuple(notes))
    for note in notes:
        (log.warning if "not in" in note else log.info)("%s", note)
    return shape
