"""Offline inspection time per root filesystem, on 4 GiB raw disks: ext4 (debugfs), XFS on LVM, btrfs and
NTFS (libguestfs), each cold and warm.

- ext4: the debian-12 test image; XFS on LVM: the debian-12-lvm-xfs test image (both from
  ``.cache/test-images``, built by ``make test``), converted to raw and grown to 4 GiB;
- btrfs: the inspection tests' Linux tree on a 4 GiB btrfs (``mkfs.btrfs --rootdir``);
- NTFS: a 4 GiB Windows-shaped NTFS with real hives (``tests.disk.ntfs``).

Cold: the page cache dropped (as root) and, for libguestfs, its cached appliance removed, i.e. the first
inspection on a fresh machine; warm: the same inspection right after. Ratios are against warm ext4.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from localbuilder.images.debian import DebianRecipe, Layout, cached_image
from localbuilder.inspect import inspect_image
from tests.disk import craft, ntfs
from tests.disk.test_inspect import BASE, LINKS

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / ".cache" / "test-images"
SIZE = 4 * 1024**3


def _drop_caches() -> None:
    if os.geteuid() == 0:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _drop_appliance() -> None:
    for cache in Path("/var/tmp").glob(f".guestfs-{os.geteuid()}"):
        shutil.rmtree(cache, ignore_errors=True)


def _raw_from(image: Path, dest: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(dest)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "raw", str(dest), str(SIZE)], check=True)
    return dest


def _test_image(layout: Layout) -> Path:
    found = cached_image(dataclasses.replace(DebianRecipe(), layout=layout), IMAGES)
    if found is None:
        raise SystemExit(f"no cached {layout} test image in {IMAGES}: run 'make test' (as root) first")
    return found.path


def _btrfs(tmp: Path) -> Path:
    tree = craft.make_tree(tmp / "tree", BASE, LINKS)
    fs = tmp / "root.btrfs"
    with open(fs, "wb") as f:
        f.truncate(SIZE - 2 * craft.MIB)
    subprocess.run(["mkfs.btrfs", "-q", "--rootdir", str(tree), str(fs)], check=True)
    disk = craft.disk_with_partitions(tmp / "btrfs.raw", [(0x83, fs)], disk_mib=SIZE // craft.MIB)
    fs.unlink()
    return disk


def _time(disk: Path, *, cold: bool) -> tuple[float, str]:
    if cold:
        _drop_caches()
        _drop_appliance()
    start = time.perf_counter()
    report = inspect_image(disk, build_user="packer")
    elapsed = time.perf_counter() - start
    if not report.inspected:
        raise SystemExit(f"{disk.name} was not inspected: {report.reason}")
    return elapsed, report.reader


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lb-bench-inspect-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        windows = tmp / "ntfs.raw"
        ntfs.make({windows: ntfs.WindowsDisk(size_mib=SIZE // craft.MIB)})
        disks = {
            "ext4": _raw_from(_test_image(Layout.ext4), tmp / "ext4.raw"),
            "xfs-on-lvm": _raw_from(_test_image(Layout.lvm_xfs), tmp / "lvm.raw"),
            "btrfs": _btrfs(tmp),
            "ntfs": windows,
        }
        rows: dict[str, dict[str, Any]] = {}
        for name, disk in disks.items():
            cold, reader = _time(disk, cold=True)
            warm, _ = _time(disk, cold=False)
            rows[name] = {"reader": reader, "cold_s": round(cold, 2), "warm_s": round(warm, 2)}
        base = rows["ext4"]["warm_s"]
        for row in rows.values():
            row["warm_vs_ext4_warm"] = round(row["warm_s"] / base, 1) if base else None
        for name, row in rows.items():
            print(f"{name:<11} {row['reader']:<10} cold {row['cold_s']:6.2f} s  warm {row['warm_s']:6.2f} s  "
                  f"(×{row['warm_vs_ext4_warm']} ext4 warm)")
        return {"disk_bytes": SIZE, "root": os.geteuid() == 0, "filesystems": rows}
