"""Reading a disk through libguestfs: for the layouts the rootless readers in ``diskread`` cannot open.

LVM, XFS, btrfs and NTFS need a kernel that has them, and this host's kernel has no device-mapper (FACTS
§8b). libguestfs boots its own small appliance VM with its own kernel, opens the disk read-only there and
answers file requests: one launch (~14 s under TCG) serves every request of an inspection.

We drive ``guestfish`` (Debian: libguestfs-tools) over a pipe rather than the C or Python bindings, so
that it goes through the one subprocess chokepoint and needs nothing in the venv. Each request is one
command line followed by ``echo <sentinel>``; the reply is everything before the sentinel. Every command
is prefixed with ``-`` so that guestfish reports an error and carries on instead of exiting; errors are
the ``*stdin*:N: libguestfs: error: …`` lines. File contents never pass through that pipe: ``download``
copies a file into a private host directory, byte for byte. The sentinel carries a random token, so a
hostile file name in an ``ls`` reply cannot end a reply early.

The appliance is a child of guestfish and libguestfs's recovery process kills it when guestfish dies;
guestfish exits when its stdin closes. So no appliance outlives the inspection, even if we are killed.

Like every VM here the appliance is kept off a KVM that does not work (FACTS §1): ``force_tcg`` unless the
caller says KVM is usable. A user's own ``LIBGUESTFS_BACKEND*`` settings win.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import selectors
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from types import TracebackType

from localbuilder import run as runmod
from localbuilder.diskread import Entry, fstab_mounts
from localbuilder.errors import InspectionError

log = logging.getLogger("localbuilder.guestfs")

LAUNCH_TIMEOUT = 600.0  # the first launch also builds the appliance (supermin): minutes under TCG
CALL_TIMEOUT = 180.0
_ERROR = re.compile(r"^(?:\*stdin\*:\d+: )?(?:libguestfs: )?error: (.*)$")


def unavailable() -> str | None:
    """Why libguestfs cannot run on this host (with the fix), or None when it can."""
    if runmod.which("guestfish") is None:
        return "libguestfs is not installed (apt-get install libguestfs-tools)"
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        return ("libguestfs needs a Linux kernel on the host to build its appliance, and /boot has none "
                "(apt-get install linux-image-amd64)")
    if not any(os.access(k, os.R_OK) for k in kernels):
        return (f"libguestfs cannot read the host kernel {kernels[-1]} as this user (run as root, or make it "
                f"readable: chmod 0644 {kernels[-1]})")
    return None


def _quote(arg: str) -> str:
    """One guestfish argument: double-quoted, with C-style escapes for what would break the line."""
    out = []
    for ch in arg:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class GuestfsError(InspectionError):
    """A guestfish request failed; ``message`` is libguestfs's own."""


class Guestfish:
    """One guestfish process with its appliance; ``call()`` sends one command and returns its lines."""

    def __init__(self, *, tcg: bool = True) -> None:
        self.tcg = tcg
        self._proc: runmod.Popen[bytes] | None = None
        self._token = secrets.token_hex(8)
        self._count = 0
        self._buffer = b""
        self._stuck = False  # a request timed out: guestfish may never read its stdin again
        self._newline_due = False
        self._scratch = Path(tempfile.mkdtemp(prefix="localbuilder-guestfs-"))

    def __enter__(self) -> Guestfish:
        env = {"LIBGUESTFS_BACKEND": os.environ.get("LIBGUESTFS_BACKEND", "direct")}
        if self.tcg and "LIBGUESTFS_BACKEND_SETTINGS" not in os.environ:
            env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
        # stderr joins stdout so that an error line arrives before the sentinel that follows it.
        self._proc = runmod.spawn(["guestfish"], stdin=runmod.PIPE, stdout=runmod.PIPE,
                                  stderr=runmod.STDOUT, env=env)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # guestfish exits at EOF and shuts its appliance down
                if self._stuck:
                    proc.terminate()  # its recovery process then stops the appliance
                proc.wait(timeout=60)
            except (OSError, runmod.TimeoutExpired):
                proc.kill()
                proc.wait()
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _read_until(self, sentinel: bytes, timeout: float) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while (at := self._buffer.find(sentinel)) < 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._stuck = True
                    raise GuestfsError(f"libguestfs did not answer within {timeout:.0f} s",
                                       hint="Run with --debug to see its output; under TCG the first launch "
                                       "builds the appliance and takes minutes.")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    tail = self._buffer.decode(errors="replace").strip().splitlines()[-5:]
                    raise GuestfsError(
                        "guestfish exited unexpectedly: " + (" | ".join(tail) or "no output"),
                        hint="Run with --debug; LIBGUESTFS_DEBUG=1 shows the appliance's boot.",
                    )
                self._buffer += chunk
        reply, self._buffer = self._buffer[:at], self._buffer[at + len(sentinel):]
        if self._newline_due:  # the previous sentinel's newline came in a later read
            reply = reply.removeprefix(b"\n")
        self._newline_due = not self._buffer.startswith(b"\n")
        self._buffer = self._buffer.removeprefix(b"\n")
        return reply

    def call(self, *args: str, timeout: float = CALL_TIMEOUT) -> list[str]:
        """Run one command; its output lines. Raises GuestfsError with libguestfs's message on failure."""
        if self._proc is None or self._proc.stdin is None:
            raise GuestfsError("guestfish is not running")
        self._count += 1
        mark = f"@@localbuilder-{self._token}-{self._count}@@"
        line = "-" + " ".join([args[0], *map(_quote, args[1:])])
        log.debug("guestfish: %s", line[:300])
        try:
            self._proc.stdin.write(f"{line}\necho {mark}\n".encode())
            self._proc.stdin.flush()
        except BrokenPipeError as exc:
            raise GuestfsError("guestfish exited unexpectedly") from exc
        reply = self._read_until(mark.encode(), timeout).decode("utf-8", errors="surrogateescape")
        lines = reply.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        errors = [m.group(1) for m in map(_ERROR.match, lines) if m]
        if errors:
            raise GuestfsError(f"{args[0]}: {errors[-1]}")
        return lines

    def launch(self, disk: Path, fmt: str) -> None:
        self.call("add-drive", str(disk), "readonly:true", f"format:{fmt}")
        started = time.monotonic()
        self.call("run", timeout=LAUNCH_TIMEOUT)
        log.debug("libguestfs appliance up in %.1f s", time.monotonic() - started)

    def download(self, path: str) -> Path | None:
        """Copy guest file ``path`` to a private host file; None if it is not a regular file."""
        if self.call("is-file", path) != ["true"]:
            return None
        self._count += 1
        local = self._scratch / f"f{self._count}"
        self.call("download", path, str(local))
        return local


# ---------------------------------------------------------------------------------------------------
# The disk as libguestfs sees it


@dataclasses.dataclass(frozen=True)
class Volume:
    """A logical volume (LVM) and what is on it."""

    name: str  # "rootvg/rootlv"
    device: str  # "/dev/rootvg/rootlv"
    size: int
    filesystem: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GuestOS:
    """What ``inspect-os`` found: the root device, the OS, and the mounts it would make at boot."""

    root: str  # "/dev/sda1", "/dev/rootvg/rootlv"
    type: str  # "linux", "windows", …
    distro: str
    product: str
    filesystem: str
    mounts: tuple[tuple[str, str], ...]  # (mount point, device), shortest mount point first
    windows_root: str = ""  # "/Windows" (Windows only)


def filesystems(gf: Guestfish) -> dict[str, str]:
    """What is on every partition and logical volume (a whole disk without partitions too): device → type.

    One ``vfs-type`` (blkid) per device rather than ``list-filesystems``, which also probes each one by
    mounting it: 13.6 s against ~1 s for an LVM disk under TCG.
    """
    devices = gf.call("list-partitions") + gf.call("lvs")
    if not devices:
        devices = gf.call("list-devices")
    found = {}
    for dev in devices:
        try:
            kind = gf.call("vfs-type", dev)
        except GuestfsError:
            kind = []
        name = kind[0] if kind and kind[0] else "unknown"
        found[dev] = {"LVM2_member": "lvm2"}.get(name, name)
    return found


def volumes(gf: Guestfish, fs_of: dict[str, str]) -> tuple[Volume, ...]:
    out = []
    for dev in gf.call("lvs"):
        size = int(gf.call("blockdev-getsize64", dev)[0])
        name = dev.removeprefix("/dev/")
        out.append(Volume(name, dev, size, fs_of.get(dev, "unknown")))
    return tuple(out)


def find_os(gf: Guestfish, fs_of: dict[str, str]) -> GuestOS | None:
    """The operating system on the disk (the first one ``inspect-os`` reports), or None.

    libguestfs's own inspection wants more than the checks need (a Linux root with /bin and /etc/fstab or
    /etc/hosts; Windows with readable SOFTWARE and SYSTEM hives and ``cmd.exe``'s architecture). A volume
    it passes over is still found by what the checks read: ``_fallback_root``.
    """
    try:
        roots = gf.call("inspect-os")
    except GuestfsError as exc:
        log.info("libguestfs's own inspection failed (%s); looking for a root by its files", exc.message)
        roots = []
    if not roots:
        return _fallback_root(gf, fs_of)
    root = roots[0]
    kind = gf.call("inspect-get-type", root)[0]
    mounts = []
    for line in gf.call("inspect-get-mountpoints", root):
        point, _, dev = line.partition(": ")
        mounts.append((point, dev))
    if "/" not in {point for point, _ in mounts}:  # an fstab without a / line: the root is still the root
        mounts.append(("/", root))
    mounts.sort(key=lambda m: len(PurePosixPath(m[0]).parts))
    return GuestOS(
        root=root, type=kind, distro=gf.call("inspect-get-distro", root)[0],
        product=gf.call("inspect-get-product-name", root)[0], filesystem=fs_of.get(root, "unknown"),
        mounts=tuple(mounts),
        windows_root=gf.call("inspect-get-windows-systemroot", root)[0] if kind == "windows" else "",
    )  # fmt: skip


def _fallback_root(gf: Guestfish, fs_of: dict[str, str]) -> GuestOS | None:
    """The first filesystem holding ``/etc/passwd`` (Linux; its fstab's other mounts resolved by UUID,
    LABEL or device name) or ``Windows/System32/config/SOFTWARE`` (Windows)."""
    for dev, fs in fs_of.items():
        if fs in ("swap", "unknown", "vfat", "lvm2"):
            continue
        try:
            gf.call("mount-ro", dev, "/")
        except GuestfsError:
            continue
        try:
            reader = GuestfsReader(gf)
            windows = reader.case_path("/Windows") if fs == "ntfs" else None
            if windows is not None and reader.case_path(f"{windows}/System32/config/SOFTWARE") is not None:
                return GuestOS(root=dev, type="windows", distro="windows", product="Windows (not identified)",
                               filesystem=fs, mounts=(("/", dev),), windows_root=windows)
            if fs != "ntfs" and gf.call("is-file", "/etc/passwd") == ["true"]:
                mounts = [("/", dev)] + _fstab_mounts(gf, reader.read_text("/etc/fstab"))
                mounts.sort(key=lambda m: len(PurePosixPath(m[0]).parts))
                return GuestOS(root=dev, type="linux", distro="unknown", product="", filesystem=fs,
                               mounts=tuple(mounts))
        finally:
            gf.call("umount-all")
    return None


def _fstab_mounts(gf: Guestfish, fstab: str | None) -> list[tuple[str, str]]:
    """(mount point, device) of the on-disk filesystems ``fstab`` mounts besides /; a source libguestfs
    cannot resolve is left out (the inspection then finds it unmapped and gives no verdict)."""
    found = []
    for spec, point in fstab_mounts(fstab):
        try:
            if spec.startswith(("UUID=", "LABEL=")):
                kind, _, value = spec.partition("=")
                dev = gf.call(f"findfs-{kind.lower()}", value.strip('"'))[0]
            elif spec.startswith("/dev/"):
                dev = gf.call("canonical-device-name", spec)[0]
            else:
                continue
        except GuestfsError:
            continue
        found.append((point, dev))
    return found


def mount_all(gf: Guestfish, os_: GuestOS) -> None:
    """Mount every filesystem the OS mounts at boot, read-only, parents first.

    A mount that fails is an error, not a skip: the checks would otherwise read the empty directory
    under it (a separate /var whose /var/lib/cloud they would then find clean).
    """
    for point, dev in os_.mounts:
        try:
            gf.call("mount-ro", dev, point)
        except GuestfsError as exc:
            raise InspectionError(
                f"cannot mount {dev} at {point} read-only: {exc.message}",
                hint="The filesystem may be damaged or unclean; the checks cannot see what is on it.",
            ) from exc


# ---------------------------------------------------------------------------------------------------
# Files, for the checks (the same interface as diskread.Ext4Reader)


class GuestfsReader:
    """Read-only files of the mounted guest. Paths are absolute guest paths."""

    STAT_BATCH = 64

    def __init__(self, gf: Guestfish) -> None:
        self.gf = gf

    @staticmethod
    def _stat(block: list[str]) -> dict[str, int]:
        fields = {}
        for line in block:
            key, _, value = line.strip().partition(": ")
            if key.startswith("st_") and value.lstrip("-").isdigit():
                fields[key] = int(value)
        return fields

    def _entry(self, name: str, st: dict[str, int]) -> Entry:
        return Entry(name, st.get("st_mode", 0), st.get("st_uid", 0), st.get("st_size", 0))

    def listdir(self, path: str) -> dict[str, Entry] | None:
        if self.gf.call("is-dir", path) != ["true"]:
            return None
        names = self.gf.call("ls", path)
        entries: dict[str, Entry] = {}
        plain = [n for n in names if n and not re.search(r"[\s\"'\\]", n)]
        for name in names:
            if name not in plain and name:
                entry = self.entry(str(PurePosixPath(path) / name))
                if entry is not None:
                    entries[name] = entry
        for i in range(0, len(plain), self.STAT_BATCH):
            batch = plain[i : i + self.STAT_BATCH]
            reply = self.gf.call("lstatnslist", path, " ".join(batch))
            blocks: list[list[str]] = []
            for line in reply:
                if re.match(r"^\[\d+\] = \{$", line):
                    blocks.append([])
                elif blocks and line != "}":
                    blocks[-1].append(line)
            if len(blocks) != len(batch):
                raise GuestfsError(f"lstatnslist {path}: {len(blocks)} results for {len(batch)} names")
            for name, block in zip(batch, blocks, strict=True):
                entries[name] = self._entry(name, self._stat(block))
        return entries

    def entry(self, path: str) -> Entry | None:
        p = PurePosixPath(path)
        if str(p) != "/" and self.gf.call("is-symlink", path) != ["true"] and \
                self.gf.call("exists", path) != ["true"]:
            return None
        return self._entry(p.name, self._stat(self.gf.call("lstatns", path)))

    def read_bytes(self, path: str) -> bytes | None:
        local = self.gf.download(path)  # is-file and download follow symlinks inside the guest root
        if local is None:
            return None
        try:
            return local.read_bytes()
        finally:
            local.unlink()

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", errors="replace")

    def case_path(self, path: str) -> str | None:
        """The real spelling of ``path`` on a case-insensitive (Windows) filesystem, or None."""
        try:
            found = self.gf.call("case-sensitive-path", path)[0]
        except GuestfsError:
            return None
        return found if self.gf.call("exists", found) == ["true"] else None
