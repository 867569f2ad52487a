"""Building the Debian 12 image of a recipe (``debian.py``): debootstrap, disk, GRUB, qcow2.

Everything the build mounts or attaches (tmpfs, loop device, partition nodes, bind mounts, and the
proc/sys mounts debootstrap makes itself) is undone in ``finally``, with SIGINT/SIGTERM held back while
that runs, so neither a failure nor Ctrl-C leaks a loop device or a mount.

``ensure_image()`` returns the cached build of a recipe or builds it, under a file lock so that two
processes never build the same image twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from localbuilder import run as runmod
from localbuilder.errors import CommandError, SourceError
from localbuilder.images import BuiltImage, lvm, progress_enabled, require_root
from localbuilder.images.debian import (
    BOOT_MIB,
    EFI_GRUB_CFG,
    ENABLED_UNITS,
    IMAGE_FILES,
    NAME,
    OFFER,
    PUBLISHER,
    SCRIPT_VERSION,
    VAR_MIB,
    VOLUME_GROUP,
    DebianRecipe,
    Firmware,
    Layout,
    cached_image,
    image_version,
    sidecar,
)
from localbuilder.log import complete_step

log = logging.getLogger("localbuilder.images.debian_build")

CHROOT_ENV = (
    "/usr/bin/env", "-i",
    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "DEBIAN_FRONTEND=noninteractive",
)  # fmt: skip

REQUIRED_TOOLS = ("debootstrap", "losetup", "partx", "sfdisk", "mkfs.ext4", "mount", "umount",
                  "chroot", "fstrim", "qemu-img", "cp")
UEFI_TOOLS = ("mkfs.vfat", "mmd", "mcopy")
LVM_XFS_TOOLS = ("lvm", "mkfs.xfs")


# ---------------------------------------------------------------------------------------------------
# Cache: one build per recipe at a time


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building the same image (lock %s)", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_image(recipe: DebianRecipe, cache_dir: Path, *, scratch: Path | None = None) -> BuiltImage:
    """Return the cached image for ``recipe`` or build it; safe against parallel callers."""
    cache_dir = cache_dir.absolute()  # the path ends up in the catalog
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / recipe.file_name()
    found = cached_image(recipe, cache_dir)
    if found is not None:
        return found
    with _file_lock(cache_dir / f".{recipe.file_name()}.lock"):
        found = cached_image(recipe, cache_dir)  # built by the process we waited for
        if found is not None:
            return found
        return build_image(recipe, dest, scratch=scratch)


def sha256_file(path: Path, *, desc: str | None = None) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as fh,
        tqdm(total=size, unit="B", unit_scale=True, desc=desc or f"sha256 {path.name}",
             disable=not progress_enabled(), leave=False) as bar,
    ):
        while chunk := fh.read(4 * 1024**2):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Mount / loop bookkeeping: everything attached is recorded and undone, innermost first.


def _mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root`` from /proc/self/mountinfo, deepest first."""
    found = []
    prefix = str(root).rstrip("/")
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped (proc(5)).
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _umount_all(root: Path, *, keep_root: bool = False) -> list[Path]:
    """Unmount everything below ``root`` (and ``root`` itself unless ``keep_root``); returns what is
    still mounted afterwards."""
    left = []
    for point in _mounts_under(root):
        if keep_root and point == root:
            continue
        try:
            runmod.run(["umount", point])
        except CommandError as exc:
            log.warning("umount %s failed (%s); detaching it lazily", point, exc.stderr_tail.strip())
            try:
                runmod.run(["umount", "--lazy", point])
            except CommandError:
                left.append(point)
    return [p for p in _mounts_under(root) if not (keep_root and p == root)]


def _detach_loops(backing: Path) -> None:
    """Detach every loop device whose backing file is ``backing`` (and drop its partitions)."""
    try:
        out = runmod.run(["losetup", "--noheadings", "--output", "NAME", "--associated", backing]).stdout
    except CommandError as exc:
        log.warning("cannot list loop devices of %s: %s", backing, exc)
        return
    for dev in out.split():
        with contextlib.suppress(CommandError):
            runmod.run(["partx", "--delete", dev])
        try:
            runmod.run(["losetup", "--detach", dev])
        except CommandError as exc:
            log.error("could not detach %s (backing %s): %s", dev, backing, exc)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while tearing down: a second Ctrl-C must not leave a mount behind."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _scratch_area(parent: Path | None, size_bytes: int) -> Iterator[Path]:
    """A private directory for the rootfs and the raw disk; a dedicated tmpfs when RAM allows.

    debootstrap on tmpfs took ~80 s here against several minutes on disk (dpkg fsyncs every file).
    The raw disk is sparse, so the tmpfs only has to hold what is written: rootfs + its copy (~1.2 GiB).
    """
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="lb-debian-", dir=parent))
    os.chmod(base, 0o755)
    try:
        # rootfs with its .debs (~0.6 GiB) + its copy in the raw disk + ext4 metadata of a big disk.
        need = 3 * 1024**3 + size_bytes // 32
        if parent is None and _mem_available() > need + 2 * 1024**3:
            runmod.run(["mount", "-t", "tmpfs", "-o", f"size={need},mode=0755", "lb-debian-scratch", base])
            log.debug("scratch tmpfs at %s", base)
        yield base
    finally:
        with _signals_held():
            # Order matters: the partition must be unmounted before its loop device can go, and the
            # loop device holds the raw file open on the tmpfs, which can only then be unmounted.
            left = _umount_all(base, keep_root=True)
            if not left:
                _detach_loops(base / "disk.raw")
                left = _umount_all(base)
            # Never rmtree while anything is still mounted below: a bind-mounted /dev would be emptied.
            if left:
                log.error("still mounted, leaving %s in place: %s", base, ", ".join(map(str, left)))
            else:
                shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Build steps


def _stream(cmd: Sequence[str | os.PathLike[str]], on_line: Callable[[str], None]) -> None:
    """Run ``cmd`` feeding each output line to ``on_line``; CommandError with the tail on failure."""
    proc = runmod.spawn(cmd, stdout=runmod.PIPE, stderr=runmod.STDOUT)
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            log.debug("%s", line)
            tail = (tail + [line])[-30:]
            on_line(line)
        rc = proc.wait()
    except BaseException:
        # Ctrl-C lands here (the child runs in its own session): stop it before teardown unmounts.
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except runmod.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if rc != 0:
        raise CommandError([os.fspath(c) for c in cmd], rc, "\n".join(tail))


def _debootstrap(recipe: DebianRecipe, root: Path) -> None:
    cmd: list[str | os.PathLike[str]] = [
        "debootstrap",
        "--variant=minbase",
        "--include=" + ",".join(recipe.all_packages),
        recipe.suite,
        root,
        recipe.mirror,
    ]  # fmt: skip
    # debootstrap prints "I: Retrieving/Validating/Unpacking/Configuring <pkg>…": count those lines as
    # progress (the total is unknown until it has resolved dependencies).
    with tqdm(desc="debootstrap", unit=" pkg-steps", disable=not progress_enabled(), leave=False) as bar:
        def on_line(line: str) -> None:
            if line.startswith("I: "):
                bar.update(1)
                bar.set_postfix_str(line[3:60], refresh=False)

        try:
            _stream(cmd, on_line)
        except CommandError as exc:
            raise SourceError(
                f"debootstrap of {recipe.suite} from {recipe.mirror} failed:\n{exc.stderr_tail}",
                hint="Check that the mirror is reachable and carries bookworm/main for amd64 "
                "(--mirror URL); the full output is in the log with --debug.",
            ) from exc


def _chroot(root: Path, *cmd: str) -> str:
    return runmod.run(["chroot", root, *CHROOT_ENV, *cmd]).stdout


def _configure_tree(root: Path) -> None:
    """Guest configuration done on the directory tree, before it is copied onto the disk."""
    for rel, text in IMAGE_FILES.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    # Host keys are regenerated by cloud-init on first boot: an image must not carry them (every VM
    # made from it would share them).
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # An empty machine-id makes systemd generate a fresh one on first boot (same reason).
    (root / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()
    _chroot(root, "systemctl", "enable", *ENABLED_UNITS)
    # debootstrap leaves every downloaded .deb and the package lists behind: ~150 MiB nobody needs
    # (customize steps run `apt-get update` first, as on Azure).
    _chroot(root, "apt-get", "clean")
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()


def _copy_tree(src: Path, dst: Path) -> None:
    total = sum(len(dirs) + len(files) for _, dirs, files in os.walk(src))
    # `cp -a` keeps owners, modes, hard links, device nodes and xattrs (file capabilities); -v gives
    # one line per entry, which drives the bar.
    cmd = ["cp", "-a", "-v", f"{src}/.", f"{dst}/"]
    with tqdm(total=total, desc="copy rootfs", unit=" files", disable=not progress_enabled(),
              leave=False) as bar:
        def on_line(_line: str) -> None:
            bar.update(1)

        _stream(cmd, on_line)


def _block_node(node: Path, device: str, mode: int) -> None:
    """Make ``node`` a block device node for kernel block device ``device`` (``loop3p1``), from sysfs."""
    major, minor = (int(x) for x in (Path("/sys/class/block") / device / "dev").read_text().split(":"))
    os.mknod(node, mode | stat.S_IFBLK, os.makedev(major, minor))


def _partition_node(loop: str, number: int) -> str:
    """``/dev/loopNpM``; created from sysfs when devtmpfs did not (no udev on these hosts, FACTS §2)."""
    node = f"{loop}p{number}"
    deadline = time.monotonic() + 5
    name = f"{Path(loop).name}p{number}"
    while not Path(node).exists():
        if (Path("/sys/class/block") / name / "dev").exists() and time.monotonic() > deadline - 4:
            with contextlib.suppress(FileExistsError):
                _block_node(Path(node), name, 0o660)
        if time.monotonic() > deadline:
            raise SourceError(
                f"partition node {node} did not appear after partx --add {loop}",
                hint="Check 'ls /sys/class/block' and that the loop driver supports partitions "
                "(max_part); free loop devices with 'losetup -D' if they are exhausted.",
            )
        time.sleep(0.1)
    return node


# Partition layouts. BIOS (Gen1): MBR, one bootable Linux partition from sector 2048 (1 MiB alignment).
# UEFI (Gen2): GPT bootable by both SeaBIOS and OVMF, as Azure's Gen2 images are: a BIOS boot partition
# for GRUB's core.img, an EFI system partition, and the root file system last so that cloud-init's
# growpart can grow it into a larger OS disk.
_MBR_LAYOUT = "label: dos\nstart=2048, type=83, bootable\n"
_GPT_LAYOUT = (
    "label: gpt\n"
    "start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"
    "start=4096, size=262144, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
    "start=266240, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs\n"
)


def _mount_api_fs(mnt: Path) -> None:
    for sub, args in (("dev", ["--bind", "/dev"]), ("proc", ["-t", "proc", "proc"]),
                      ("sys", ["--bind", "/sys"])):
        runmod.run(["mount", *args, mnt / sub])


def _install_bootloader(mnt: Path, loop: str, part: str, root: str, *, initramfs: bool = False) -> None:
    """GRUB for BIOS into the disk's boot track, and a grub.cfg whose kernel line says ``root=<root>``
    (``UUID=…``, or a /dev/mapper path for a logical volume). ``initramfs``: rebuild it first, after the
    disk's fstab is in place (its hooks read it: LVM activation for a root on a logical volume)."""
    _mount_api_fs(mnt)
    if initramfs:
        _chroot(mnt, "update-initramfs", "-u", "-k", "all")
    _chroot(mnt, "grub-install", "--target=i386-pc", loop)
    _chroot(mnt, "update-grub")
    # Without udev there is no /dev/disk/by-uuid, so grub-mkconfig writes root=/dev/loopNp1: point it at
    # the file system UUID (or the volume's /dev/mapper name) instead (FACTS §2).
    cfg = mnt / "boot/grub/grub.cfg"
    text = cfg.read_text()
    fixed = text.replace(f"root={part} ", f"root={root} ")
    if f"root={root} " not in fixed or re.search(r"root=/dev/loop", fixed):
        kernel_lines = re.findall(r"linux\s+\S+\s+\S+", text)[:2]
        raise SourceError(
            f"{cfg}: could not set root={root} (kernel lines: {kernel_lines})",
            hint="This is a bug in the Debian recipe; rerun with --debug and report the grub.cfg.",
        )
    cfg.write_text(fixed)
    for sub in ("sys", "proc", "dev"):
        runmod.run(["umount", mnt / sub])


def _install_efi_loader(mnt: Path, esp: str, root_uuid: str) -> None:
    """A standalone GRUB EFI binary on the ESP as the removable-media path ``\\EFI\\BOOT\\BOOTX64.EFI``.

    This host's kernel cannot mount FAT and ``grub-install --target=x86_64-efi`` refuses a non-FAT
    directory (FACTS §2), so the ESP is written with mtools and GRUB is built with grub-mkstandalone:
    all modules in a memdisk, plus a small config that finds the root file system by UUID and reads the
    same /boot/grub/grub.cfg that update-grub maintains for BIOS boots. The prefix stays in the memdisk
    so that ``insmod`` finds the x86_64-efi modules there.
    """
    embedded = mnt / "tmp/lb-grub-embedded.cfg"
    embedded.write_text(EFI_GRUB_CFG.replace("@ROOT_UUID@", root_uuid))
    _chroot(mnt, "grub-mkstandalone", "--format=x86_64-efi", "--output=/tmp/BOOTX64.EFI",
            "--locales=", "--fonts=", "boot/grub/grub.cfg=/tmp/lb-grub-embedded.cfg")
    runmod.run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"])
    runmod.run(["mcopy", "-i", esp, mnt / "tmp/BOOTX64.EFI", "::/EFI/BOOT/BOOTX64.EFI"])
    embedded.unlink()
    (mnt / "tmp/BOOTX64.EFI").unlink()


def _partitioned_loop(raw: Path, size_bytes: int, layout: str) -> str:
    """A sparse ``raw`` disk partitioned by the sfdisk script ``layout``, attached to a loop device whose
    partitions the kernel knows; the loop device's path. ``_release`` undoes it."""
    with open(raw, "wb") as fh:
        fh.truncate(size_bytes)  # sparse
    runmod.run(["sfdisk", "--quiet", raw], input=layout)
    loop = runmod.run(["losetup", "--find", "--show", raw]).stdout.strip()
    log.debug("attached %s to %s", raw, loop)
    runmod.run(["partx", "--add", loop])
    return loop


def _release(loop: str) -> None:
    runmod.run(["partx", "--delete", loop])
    runmod.run(["losetup", "--detach", loop])


def _make_disk(recipe: DebianRecipe, tree: Path, raw: Path, mnt: Path) -> None:
    uefi = recipe.firmware is Firmware.uefi
    loop = _partitioned_loop(raw, recipe.size_bytes, _GPT_LAYOUT if uefi else _MBR_LAYOUT)
    part = _partition_node(loop, 3 if uefi else 1)
    root_uuid = str(uuid.uuid4())
    runmod.run(["mkfs.ext4", "-q", "-U", root_uuid, "-L", "cloudimg-rootfs", part])
    fstab = f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n"
    esp = ""
    if uefi:
        esp = _partition_node(loop, 2)
        volume_id = uuid.uuid4().hex[:8].upper()
        # FAT32 with 512-byte clusters: 128 MiB gives 262k clusters, above FAT32's 65,525 minimum.
        runmod.run(["mkfs.vfat", "-F", "32", "-s", "1", "-S", "512", "-n", "ESP", "-i", volume_id, esp])
        # nofail: a guest that never touches the ESP must still boot if it is damaged.
        fstab += f"UUID={volume_id[:4]}-{volume_id[4:]}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t1\n"
    mnt.mkdir()
    runmod.run(["mount", part, mnt])
    _copy_tree(tree, mnt)
    (mnt / "etc/fstab").write_text(fstab)
    if uefi:
        (mnt / "boot/efi").mkdir(exist_ok=True)
    _install_bootloader(mnt, loop, part, f"UUID={root_uuid}")
    if uefi:
        _install_efi_loader(mnt, esp, root_uuid)
    # Give the unused blocks back to the sparse file so the qcow2 conversion skips them.
    runmod.run(["fstrim", mnt])
    runmod.run(["umount", mnt])
    _release(loop)


# lvm-xfs (BIOS): /boot as an ext4 partition (GRUB reads only it, so its core needs no LVM or XFS module),
# then one LVM partition (type 8e) for the volume group, from _LVM_PV_SECTOR to the end.
_LVM_PV_SECTOR = 2048 + BOOT_MIB * 2048
_LVM_LAYOUT = (
    f"label: dos\nstart=2048, size={BOOT_MIB * 2048}, type=83, bootable\nstart={_LVM_PV_SECTOR}, type=8e\n"
)


def _make_lvm_disk(recipe: DebianRecipe, tree: Path, raw: Path, mnt: Path) -> None:
    """RHEL's layout: /boot on ext4, / and /var as XFS on logical volumes of ``rootvg`` (``lvm.py`` says
    how, without device-mapper). Everything is mounted where the guest mounts it, then the tree copied."""
    loop = _partitioned_loop(raw, recipe.size_bytes, _LVM_LAYOUT)
    boot, pv = _partition_node(loop, 1), _partition_node(loop, 2)
    boot_uuid = str(uuid.uuid4())
    runmod.run(["mkfs.ext4", "-q", "-U", boot_uuid, "-L", "boot", boot])
    pv_start = _LVM_PV_SECTOR * 512
    vols = {v.name: v for v in lvm.create(pv, VOLUME_GROUP, [("varlv", VAR_MIB), ("rootlv", None)])}
    devices = {}
    for name, vol in vols.items():
        devices[name] = runmod.run(["losetup", "--find", "--show", "--offset", str(pv_start + vol.offset),
                                    "--sizelimit", str(vol.size), raw]).stdout.strip()
        runmod.run(["mkfs.xfs", "-q", "-L", name.removesuffix("lv"), devices[name]])
    mapper = {name: f"/dev/mapper/{VOLUME_GROUP}-{name}" for name in vols}
    # GRUB's 10_linux writes no menu entry when / is a loop device over a file (/dev/loopN): mount the
    # root volume through a second node of the same device under another name.
    root_node = Path(f"/dev/lb-rootlv-{Path(devices['rootlv']).name}")
    root_node.unlink(missing_ok=True)
    _block_node(root_node, Path(devices["rootlv"]).name, 0o600)
    try:
        mnt.mkdir()
        runmod.run(["mount", root_node, mnt])
        for sub, dev in (("boot", boot), ("var", devices["varlv"])):
            (mnt / sub).mkdir()
            runmod.run(["mount", dev, mnt / sub])
        _copy_tree(tree, mnt)
        (mnt / "etc/fstab").write_text(
            f"{mapper['rootlv']}\t/\txfs\tdefaults\t0\t0\n"
            f"UUID={boot_uuid}\t/boot\text4\tdefaults\t0\t2\n"
            f"{mapper['varlv']}\t/var\txfs\tdefaults\t0\t0\n"
        )
        _install_bootloader(mnt, loop, str(root_node), mapper["rootlv"], initramfs=True)
        for point in (mnt / "var", mnt / "boot", mnt):
            runmod.run(["fstrim", point])
            runmod.run(["umount", point])
    finally:
        root_node.unlink(missing_ok=True)
    for dev in devices.values():
        runmod.run(["losetup", "--detach", dev])
    _release(loop)


def build_image(recipe: DebianRecipe, dest: Path, *, scratch: Path | None = None) -> BuiltImage:
    """Build the image for ``recipe`` into ``dest`` (qcow2, zstd-compressed) plus a ``.json`` record."""
    require_root("building the Debian 12 image")
    tools = REQUIRED_TOOLS + (UEFI_TOOLS if recipe.firmware is Firmware.uefi else ()) + (
        LVM_XFS_TOOLS if recipe.layout is Layout.lvm_xfs else ()
    )
    for tool in tools:
        if runmod.which(tool) is None:
            fallback = {"cp": "coreutils", "chroot": "coreutils", "mmd": "mtools"}.get(tool, tool)
            pkg = runmod.PACKAGE_OF.get(tool, fallback)
            raise SourceError(f"{tool} not found", hint=f"Install it: apt-get install {pkg}")
    started = time.monotonic()
    built_at = datetime.datetime.now(datetime.UTC)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    size_mib = recipe.size_bytes // 1024**2
    with complete_step(f"Building {NAME} image from {recipe.mirror} ({size_mib} MiB disk)"):
        with _scratch_area(scratch, recipe.size_bytes) as work:
            tree = work / "rootfs"
            with complete_step("debootstrap (minbase + cloud packages)"):
                _debootstrap(recipe, tree)
            with complete_step("Configuring the guest (network, cloud-init, GRUB defaults)"):
                _configure_tree(tree)
            with complete_step("Partitioning, copying the tree, installing GRUB"):
                make = _make_lvm_disk if recipe.layout is Layout.lvm_xfs else _make_disk
                make(recipe, tree, work / "disk.raw", work / "mnt")
            with complete_step("Compressing to qcow2 (zstd)"):
                try:
                    runmod.run([
                        "qemu-img", "convert",
                        "-f", "raw",
                        "-O", "qcow2",
                        "-c", "-o", "compression_type=zstd",
                        work / "disk.raw",
                        part,
                    ])  # fmt: skip
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
        digest = sha256_file(part)
        os.chmod(part, 0o644)  # read-only to everyone but root; libvirt's qemu user must read it
        os.replace(part, dest)
    seconds = time.monotonic() - started
    urn = f"{PUBLISHER}:{OFFER}:{recipe.sku}:{image_version(built_at)}"
    built_at_text = built_at.isoformat(timespec="seconds")
    record = {
        "urn": urn,
        "sha256": digest,
        "recipe_key": recipe.key,
        "size": dest.stat().st_size,
        "built_at": built_at_text,
        "build_seconds": round(seconds, 1),
        "recipe": {**dataclasses.asdict(recipe), "script_version": SCRIPT_VERSION},
    }
    side = sidecar(dest)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, side)
    log.info("built %s (%.0f MiB) in %.0f s", dest, dest.stat().st_size / 1024**2, seconds)
    return BuiltImage(path=dest, format="qcow2", urn=urn, sha256=digest, recipe_key=recipe.key,
                      built_at=built_at_text, build_seconds=seconds, reused=False)
