"""Room for the VHD: the checks ``localbuilder build`` makes before any guest boots (issue #12 item 4).

A build that boots, customizes for half an hour and then cannot write its VHD wastes that half hour, so
before the run directory is even created the CLI checks both places a build writes a VHD:

* the output directory (``--output-dir``, default ``<run dir>/outputs``): it exists or can be created
  (its nearest existing ancestor is a directory), and is writable — tested by creating and removing a
  file there, because root ignores permission bits and ``os.access`` does not see a read-only mount;
* the run directory (under ``$LOCALBUILDER_HOME/runs``), where the work ``image.vhd`` is converted before
  the distributors link or copy it;

and that each filesystem has room for what lands on it. A fixed VHD is the disk's virtual size + 512
bytes, but written sparse (``qemu-img convert`` skips zeros, ``cp --sparse=always``), so on a filesystem
that keeps holes it takes about the disk's data: measured as the source image's allocated data
(``qemu-img measure``; a compressed qcow2's ``actual-size`` would understate it ~3×). A filesystem that
cannot hold a sparse file (vfat, some network filesystems) needs the full size. Which of the two is
probed: write one byte at offset 1 MiB into a scratch file and look at its allocated blocks.

When the output directory is on the run directory's filesystem, the distributors hard-link the work VHD
(``distributors.place``): one VHD's room in total. Otherwise each distribute target copies it there.

What customizers add to the disk cannot be known before they run: the estimate is a floor, and a build
that grows its disk beyond it can still fill the filesystem during conversion or distribution (then the
run fails cleanly, see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from localbuilder.disk import qemu_img_info, round_up_mib
from localbuilder.errors import CommandError, ConversionError, UsageError
from localbuilder.run import run

log = logging.getLogger("localbuilder.room")

MIB = 1024**2
GIB = 1024**3
FOOTER = 512  # a fixed VHD is its virtual size plus a 512-byte footer
# The sparse probe writes one byte this far into an empty file: a filesystem that keeps holes allocates
# one block (4 KiB); one that cannot (vfat) allocates everything before it too.
PROBE_OFFSET = MIB


def _size(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f}".removesuffix(".0") + " MiB"


@dataclasses.dataclass(frozen=True)
class Place:
    """A directory a build will write to, as probed: where it is (or would be created) and what it holds."""

    path: Path  # the directory asked about
    existing: Path  # ``path`` itself, or its nearest existing ancestor (where it would be created)
    label: str  # how the error names it: "--output-dir /x", "run directory /home/…/runs/t"
    hint: str  # what the user can do instead (another --output-dir, LOCALBUILDER_HOME)
    device: int
    free: int  # bytes this process may still write there
    sparse: bool  # the filesystem keeps holes: a sparse VHD takes only its data


@dataclasses.dataclass(frozen=True)
class VhdSize:
    """How big the VHD of a build will be."""

    virtual: int  # MiB-aligned virtual size; the file is this + 512 bytes
    data: int  # what a sparse copy takes: the source's measured data (a floor; customizers add to it)

    def on(self, place: Place) -> int:
        return self.data if place.sparse else self.virtual + FOOTER


@dataclasses.dataclass(frozen=True)
class Need:
    place: Place
    bytes: int
    what: str  # "the work VHD", "2 output VHDs (distribute[0], distribute[1])"


# ---------------------------------------------------------------------------------------------------------
# Probing a directory


def holds_holes(allocated: int) -> bool:
    """True when a file with one byte written at ``PROBE_OFFSET`` has ``allocated`` bytes: sparse."""
    return allocated < PROBE_OFFSET


def _allocated(fd: int) -> int:
    # st_blocks is in 512-byte units whatever the filesystem's block size (stat(2)). ext4 and btrfs count
    # delayed-allocation blocks here already, so no fsync is needed.
    return os.fstat(fd).st_blocks * 512


def _nearest_existing(path: Path) -> Path:
    current = path
    while not os.path.lexists(current):
        if current.parent == current:
            break
        current = current.parent
    return current


def probe(path: Path, *, label: str, hint: str) -> Place:
    """Check that ``path`` is, or can be created as, a writable directory; measure its free room.

    Creates nothing that stays: a scratch file in ``path`` (or in the ancestor it would be created in) is
    written and removed again. Raises UsageError naming ``label`` and the fix."""
    path = path.absolute()
    existing = _nearest_existing(path)
    if existing == path and not path.is_dir():
        what = "a file" if path.is_file() else "not a directory"
        raise UsageError(f"{label}: {path} exists and is {what}", hint=hint)
    if not existing.is_dir():
        raise UsageError(
            f"{label}: {path} cannot be created: {existing} is a file, not a directory", hint=hint
        )
    where = "" if existing == path else f" (it would be created in {existing})"
    try:
        st = os.statvfs(existing)
    except OSError as exc:
        raise UsageError(f"{label}: cannot examine {existing}: {exc.strerror or exc}", hint=hint) from exc
    if st.f_flag & os.ST_RDONLY:
        raise UsageError(f"{label}: {existing} is on a read-only filesystem{where}", hint=hint)
    # Root may write into the blocks reserved for it (ext4: 5 % by default); everyone else may not.
    free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
    try:
        fd, scratch = tempfile.mkstemp(prefix=".localbuilder-probe-", dir=existing)
    except OSError as exc:
        raise _unwritable(exc, label, existing, where, hint) from exc
    try:
        try:
            os.pwrite(fd, b"\1", PROBE_OFFSET)
            sparse = holds_holes(_allocated(fd))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UsageError(f"{label}: the filesystem of {existing} is full{where}", hint=hint) from exc
            raise _unwritable(exc, label, existing, where, hint) from exc
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(scratch)
    place = Place(path, existing, label, hint, os.stat(existing).st_dev, free, sparse)
    log.debug("%s: %s free on the filesystem of %s (%s)", label, _size(free), existing,
              "sparse files" if sparse else "no sparse files")  # fmt: skip
    return place


def _unwritable(exc: OSError, label: str, existing: Path, where: str, hint: str) -> UsageError:
    if exc.errno == errno.EROFS:
        return UsageError(f"{label}: {existing} is on a read-only filesystem{where}", hint=hint)
    reason = exc.strerror or str(exc)
    return UsageError(f"{label}: cannot write in {existing}{where}: {reason}", hint=hint)


# ---------------------------------------------------------------------------------------------------------
# The VHD's size


def measured_data(image: Path, fmt: str) -> int | None:
    """The allocated data of ``image``, uncompressed: ``qemu-img measure -O qcow2``'s "required" (data +
    a little qcow2 metadata). None when qemu-img cannot tell."""
    argv = ["qemu-img", "measure", "--output=json", "-O", "qcow2", "-f", fmt, os.fspath(image)]
    try:
        data = json.loads(run(argv).stdout)
        return int(data["required"])
    except (CommandError, ValueError, KeyError, TypeError) as exc:
        log.debug("qemu-img measure %s: %s", image, exc)
        return None


def vhd_size(image: Path | None, fmt: str | None, os_disk_size_gb: int | None) -> VhdSize | None:
    """The VHD a build of ``image`` makes: virtual size from osDiskSizeGB or the image; data measured.

    None when neither is known (the source image could not be resolved and no osDiskSizeGB is set)."""
    wanted = os_disk_size_gb * GIB if os_disk_size_gb else 0
    if image is None or fmt is None:
        if not wanted:
            return None
        # Unknown data: only a filesystem without sparse files can be judged (it needs the full size).
        return VhdSize(round_up_mib(wanted), 0)
    try:
        info = qemu_img_info(image, fmt)
    except ConversionError as exc:
        log.debug("cannot size %s: %s", image, exc.message)
        return VhdSize(round_up_mib(wanted), 0) if wanted else None
    virtual = round_up_mib(max(wanted, info.virtual_size))
    data = measured_data(image, fmt)
    if data is None:
        data = info.actual_size or 0
    return VhdSize(virtual, min(data, virtual + FOOTER))


# ---------------------------------------------------------------------------------------------------------
# What a build needs, and the check


OUTPUT_HINT = "Choose another --output-dir (a writable directory with room for the VHD)."
RUN_HINT = (
    "Free space there, or point LOCALBUILDER_HOME at a filesystem with room (runs, checkpoints and the "
    "work VHD live under it)."
)


def plan(size: VhdSize | None, targets: int, *, output_dir: Path | None, run_dir: Path) -> list[Need]:
    """Probe the output and run directories (UsageError when one is unusable) and list what they need.

    ``targets``: distribute targets, each of which places a VHD in the output directory. ``run_dir`` may
    not exist yet (a new run): its nearest existing ancestor is probed."""
    output = None
    if output_dir is not None:
        output = probe(output_dir, label=f"--output-dir {output_dir}", hint=OUTPUT_HINT)
    runs = probe(run_dir, label=f"run directory {run_dir}", hint=RUN_HINT)
    if size is None or targets == 0:
        return []
    needs = [Need(runs, size.on(runs), "the work VHD")]
    # Same filesystem: the targets are hard links to the work VHD. A filesystem without sparse files
    # (vfat) has no hard links either: there each target is a copy.
    if output is not None and (output.device != runs.device or not output.sparse):
        what = "the output VHD" if targets == 1 else f"{targets} output VHDs"
        needs.append(Need(output, size.on(output) * targets, what))
    elif output is None and not runs.sparse:
        needs.append(Need(runs, size.on(runs) * targets, "the output VHDs in the run directory"))
    return needs


def check(needs: Iterable[Need]) -> None:
    """UsageError when a filesystem lacks room for everything that lands on it (summed per filesystem)."""
    by_device: dict[int, list[Need]] = {}
    for need in needs:
        by_device.setdefault(need.place.device, []).append(need)
    for group in by_device.values():
        total = sum(n.bytes for n in group)
        place = group[-1].place  # the output directory when both share the filesystem: the one to change
        free = min(n.place.free for n in group)
        log.debug(
            "room on the filesystem of %s: needs %s, %s free", place.existing, _size(total), _size(free)
        )
        if total <= free:
            continue
        labels = list(dict.fromkeys(n.place.label for n in group))
        if len(group) == 1:
            needed = f"{group[0].what} needs {_size(total)}"
        else:
            needed = f"needs {_size(total)} (" + " + ".join(f"{n.what} {_size(n.bytes)}" for n in group) + ")"
        why = (
            "a fixed VHD's full size: this filesystem cannot hold sparse files"
            if not place.sparse
            else "a sparse VHD takes the disk's data, measured from the source; customizations add to it"
        )
        hints = list(dict.fromkeys(n.place.hint for n in reversed(group)))
        if not place.sparse:
            hints.append("Or lower properties.vmProfile.osDiskSizeGB.")
        raise UsageError(
            f"{' and '.join(labels)}: not enough room: {needed}, {_size(free)} free on the filesystem of "
            f"{place.existing} ({why})",
            hint=" ".join(hints),
        )
