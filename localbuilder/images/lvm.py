"""LVM volumes written on a host without device-mapper: metadata by the LVM tools, data through loop devices.

This host's kernel has no device-mapper (FACTS §8b), so a logical volume can be created but never
activated here. LVM's ``global/activation = 0`` makes ``pvcreate``/``vgcreate``/``lvcreate`` write only
the on-disk metadata and never call device-mapper (``lvcreate -an -Zn -Wn``: no activation, no zeroing, no
signature wiping, which would all need the volume open). A linear volume with one segment is a contiguous
run of extents on its physical volume, so its bytes start at ``partition + pe_start + first extent ×
extent size``: a loop device over exactly that range is the volume, and mkfs and mount work on it. The
guest's kernel later activates the same metadata through device-mapper as usual.

Backups and archives are off, so nothing of the image's volume group lands in the host's /etc/lvm.
"""

from __future__ import annotations

import dataclasses
import re

from localbuilder import run as runmod
from localbuilder.errors import CommandError, SourceError

# No device-mapper, no host-side metadata copies, no udev (there is none on these hosts), and no devices
# file (which would record the image's PV as one of the host's).
LVM_CONFIG = (
    "global { activation = 0 } "
    "backup { backup = 0 archive = 0 } "
    "devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 }"
)
ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}


@dataclasses.dataclass(frozen=True)
class LinearVolume:
    name: str
    offset: int  # bytes from the start of the physical volume's device
    size: int


def _lvm(*args: str) -> str:
    try:
        return runmod.run(["lvm", args[0], "--config", LVM_CONFIG, *args[1:]], env=ENV).stdout
    except CommandError as exc:
        raise SourceError(f"lvm {args[0]} failed: {exc.stderr_tail.strip()}",
                          hint="Is lvm2 installed (apt-get install lvm2)?") from exc


def create(pv: str, vg: str, volumes: list[tuple[str, int | None]]) -> list[LinearVolume]:
    """Make ``pv`` a physical volume holding volume group ``vg`` with linear ``volumes`` ((name, MiB); None:
    the rest), in that order; return where each one's bytes lie on ``pv``."""
    _lvm("pvcreate", "--force", "--force", "--yes", pv)
    _lvm("vgcreate", "--yes", vg, pv)
    for name, mib in volumes:
        amount = ["--size", f"{mib}m"] if mib is not None else ["--extents", "100%FREE"]
        _lvm("lvcreate", "--activate", "n", "--zero", "n", "--wipesignatures", "n", "--yes",
             "--name", name, *amount, vg)
    bytes_ = ("--noheadings", "--nosuffix", "--units", "b")
    pe_start = int(_lvm("pvs", *bytes_, "-o", "pe_start", pv).strip())
    extent = int(_lvm("vgs", *bytes_, "-o", "vg_extent_size", vg).strip())
    out = []
    listing = _lvm("lvs", *bytes_, "--separator", "|", "-o", "lv_name,seg_pe_ranges,lv_size", vg)
    for line in listing.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 3:
            continue
        name, ranges, size = fields[:3]
        m = re.fullmatch(r".+:(\d+)-(\d+)", ranges)
        if m is None:  # more than one segment: not one contiguous range
            raise SourceError(f"logical volume {vg}/{name} is not one linear segment ({ranges})")
        out.append(LinearVolume(name, pe_start + int(m.group(1)) * extent, int(size)))
    order = [name for name, _ in volumes]
    return sorted(out, key=lambda v: order.index(v.name))
