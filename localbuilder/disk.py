"""Disk images: ``qemu-img info``, copy-on-write overlays, and the conversion to a fixed VHD for Azure.

Every qemu-img call goes through ``localbuilder.run``. Two rules hold throughout:

* the source image is never written: growing happens in a temporary qcow2 overlay on top of it;
* no partial VHD ever appears at the destination: qemu-img writes ``DST.partial`` next to it, the
  footer is verified, and only then is it renamed over ``DST`` (an atomic rename in one directory).
  Any failure, Ctrl-C included, removes the partial file.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Never

from tqdm import tqdm

from localbuilder import vhd
from localbuilder.errors import CommandError, ConversionError
from localbuilder.run import PIPE, run, spawn

log = logging.getLogger("localbuilder.disk")

MIB = vhd.MIB
GIB = vhd.GIB
MAX_VHD_SIZE = vhd.MAX_SIZE

# qemu-img -p writes "    (12.34/100%)\r" to stdout, whether or not stdout is a terminal.
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """The parts of ``qemu-img info --output=json`` that localbuilder uses."""

    path: Path
    format: str
    virtual_size: int
    actual_size: int | None  # bytes allocated on the host (sparse files count only their data)
    backing_file: str | None
    backing_format: str | None
    dirty: bool

    def as_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


@dataclasses.dataclass(frozen=True)
class FixedVhd:
    """The result of ``to_fixed_vhd``: where it is, how big, and its verified footer."""

    path: Path
    virtual_size: int  # bytes, a whole number of MiB
    source_size: int  # the source's virtual size before rounding/growing
    allocated: int  # bytes actually allocated on the host (the file is sparse)
    seconds: float
    footer: vhd.VhdFooter

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "virtual_size": self.virtual_size,
            "source_size": self.source_size,
            "allocated": self.allocated,
            "seconds": round(self.seconds, 3),
            "footer": self.footer.as_dict(),
        }


def round_up_mib(size: int) -> int:
    return -(-size // MIB) * MIB


def _size(n: int) -> str:
    return f"{n} bytes ({n / GIB:.2f} GiB)"


def qemu_img_info(path: Path, fmt: str | None = None) -> ImageInfo:
    """``qemu-img info`` as a record. Give ``fmt`` whenever it is known: probing a raw file is unsafe and
    a fixed VHD has no header, so qemu probes it as raw unless told ``vpc`` (FACTS §5)."""
    if not path.exists():
        raise ConversionError(f"image not found: {path}", hint="Check the path.")
    argv: list[str | os.PathLike[str]] = [
        "qemu-img", "info",
        "--output=json",
        *(["-f", fmt] if fmt else []),
        path,
    ]  # fmt: skip
    try:
        proc = run(argv)
    except CommandError as exc:
        raise ConversionError(
            f"qemu-img cannot read {path}{f' as {fmt}' if fmt else ''}: {exc.stderr_tail.strip()}",
            hint="Is the format right, and is the image not in use by a running guest?",
        ) from exc
    try:
        data = json.loads(proc.stdout)
        return ImageInfo(
            path=path,
            format=str(data["format"]),
            virtual_size=int(data["virtual-size"]),
            actual_size=int(data["actual-size"]) if "actual-size" in data else None,
            backing_file=data.get("backing-filename"),
            backing_format=data.get("backing-filename-format"),
            dirty=bool(data.get("dirty-flag", False)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"unexpected qemu-img info output for {path}: {exc}") from exc


def create_overlay(base: Path, base_format: str, dst: Path, size_bytes: int | None = None) -> ImageInfo:
    """Create a qcow2 overlay ``dst`` backed by ``base`` (which is never written), optionally larger.

    Only growing is possible: a smaller ``size_bytes`` than the base's virtual size would cut off the
    end of its partitions, so it is refused with both sizes named.
    """
    base = base.absolute()  # a relative backing path would be resolved against dst's directory
    info = qemu_img_info(base, base_format)
    if size_bytes is not None and size_bytes < info.virtual_size:
        raise ConversionError(
            f"cannot shrink {base}: requested {_size(size_bytes)} is smaller than its virtual size "
            f"{_size(info.virtual_size)}",
            hint="Disks can only grow: use a size at least as large as the source image "
            "(vmProfile.osDiskSizeGB), or 0/omit it to keep the source size.",
        )
    argv: list[str | os.PathLike[str]] = [
        "qemu-img", "create",
        "-q",
        "-f", "qcow2",
        "-F", base_format,  # qemu 7.2 refuses an overlay without the backing format (FACTS §3d)
        "-b", base,
        dst,
        *([str(size_bytes)] if size_bytes is not None and size_bytes != info.virtual_size else []),
    ]  # fmt: skip
    try:
        run(argv)
    except CommandError as exc:
        raise ConversionError(
            f"cannot create overlay {dst} on {base}: {exc.stderr_tail.strip()}",
            hint=_space_hint(dst) if _is_enospc(exc.stderr_tail) else "Is the directory writable?",
        ) from exc
    return qemu_img_info(dst, "qcow2")


def copy_layer(src: Path, dst: Path, backing: Path, backing_format: str) -> None:
    """Copy the qcow2 layer ``src`` (an image nobody writes any more) to ``dst`` and point its header
    at ``backing``. The copy keeps only this layer's clusters; ``rebase -u`` rewrites nothing but the
    backing file name, which is right because ``backing`` holds the same data as the old one."""
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o600)
    argv: list[str | os.PathLike[str]] = [
        "qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", backing_format, "-b", backing.absolute(), dst,
    ]  # fmt: skip
    try:
        run(argv)
    except CommandError as exc:
        raise ConversionError(
            f"cannot point the checkpoint layer {dst} at {backing}: {exc.stderr_tail.strip()}",
            hint=_space_hint(dst) if _is_enospc(exc.stderr_tail) else "Is the cache directory writable?",
        ) from exc


def _is_enospc(text: str) -> bool:
    return "No space left on device" in text or os.strerror(errno.ENOSPC) in text


def _space_hint(dst: Path) -> str:
    return f"The disk holding {dst.parent} is full: free some space there or choose another output directory."


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def convert_argv(src: Path, src_format: str, dst: Path) -> list[str]:
    """The one qemu-img command that writes the VHD.

    ``force_size=on`` keeps the exact virtual size; without it qemu rounds to a CHS geometry (2 GiB
    becomes 2,147,991,552 bytes) and Azure rejects the VHD as not MiB-aligned (FACTS §5). The output
    stays sparse: qemu-img skips runs of zeros (its default ``-S 4k``).
    """
    return [
        "qemu-img", "convert",
        "-p",
        "-f", src_format,
        "-O", "vpc",
        "-o", "subformat=fixed,force_size=on",
        os.fspath(src),
        os.fspath(dst),
    ]  # fmt: skip


def _run_with_progress(argv: list[str], *, progress: bool, label: str) -> None:
    """Run qemu-img -p, feeding its percentage into a tqdm bar; raise CommandError on failure."""
    show = progress and sys.stderr.isatty()
    with tempfile.TemporaryFile() as err, tqdm(
        total=100.0, desc=label, unit="%", disable=not show, leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
    ) as bar:  # fmt: skip
        proc = spawn(argv, stdout=PIPE, stderr=err)
        try:
            _pump_progress(proc.stdout, bar)
            rc = proc.wait()
        finally:
            # Ctrl-C or any error while pumping: qemu-img runs in its own session, so end it here.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if rc != 0:
            err.seek(0)
            tail = err.read().decode("utf-8", errors="replace")[-4000:]
            raise CommandError(argv, rc, tail)


def _pump_progress(stream: IO[bytes] | None, bar: tqdm[Never]) -> None:
    if stream is None:
        return
    buf = b""
    done = 0.0
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buf += chunk
        # Progress lines end in "\r"; keep only the unfinished tail between reads.
        *complete, buf = re.split(rb"[\r\n]", buf)
        for line in complete:
            m = _PROGRESS.search(line)
            if m:
                pct = float(m.group(1))
                if pct > done:
                    bar.update(pct - done)
                    done = pct


def to_fixed_vhd(
    src: Path,
    src_format: str,
    dst: Path,
    *,
    size_bytes: int | None = None,
    progress: bool = True,
) -> FixedVhd:
    """Convert ``src`` into a fixed VHD at ``dst`` that Azure accepts, and verify its footer.

    The virtual size is ``size_bytes`` (if given; it may only grow the disk) or the source's, rounded
    up to a whole MiB: Azure requires MiB alignment (https://learn.microsoft.com/azure/virtual-machines/
    linux/create-upload-generic). Growing goes through a temporary qcow2 overlay next to ``dst`` so
    ``src`` is never modified.
    """
    start = time.monotonic()
    src = src.absolute()
    dst = dst.absolute()
    if src == dst:
        raise ConversionError(
            f"source and destination are the same file: {src}", hint="Choose another output path."
        )
    info = qemu_img_info(src, src_format)
    wanted = info.virtual_size if size_bytes is None else size_bytes
    if wanted < info.virtual_size:
        raise ConversionError(
            f"cannot shrink {src}: requested {_size(wanted)} is smaller than its virtual size "
            f"{_size(info.virtual_size)}",
            hint="Disks can only grow: request at least the source's size.",
        )
    target = round_up_mib(wanted)
    if target > MAX_VHD_SIZE:
        raise ConversionError(
            f"a VHD cannot hold {_size(target)}: qemu's vpc driver and Azure's fixed VHD stop at 2040 GiB",
            hint="Use osDiskSizeGB of at most 2040.",
        )
    if not dst.parent.is_dir():
        raise ConversionError(f"output directory does not exist: {dst.parent}", hint="Create it first.")
    if target != info.virtual_size:
        log.debug(
            "growing %s from %d to %d bytes (MiB-aligned) in a temporary overlay",
            src,
            info.virtual_size,
            target,
        )

    partial = dst.with_name(dst.name + ".partial")
    grow = dst.with_name(f".{dst.name}.grow.qcow2")
    try:
        conv_src, conv_fmt = src, src_format
        if target != info.virtual_size:
            create_overlay(src, src_format, grow, target)
            conv_src, conv_fmt = grow, "qcow2"
        partial.unlink(missing_ok=True)
        argv = convert_argv(conv_src, conv_fmt, partial)
        try:
            _run_with_progress(argv, progress=progress, label=f"converting to {dst.name}")
        except CommandError as exc:
            if _is_enospc(exc.stderr_tail):
                raise ConversionError(
                    f"disk full while writing {partial}: {exc.stderr_tail.strip()}",
                    hint=_space_hint(dst) + " The VHD is sparse: it needs as much space as the disk's data.",
                ) from exc
            raise ConversionError(
                f"qemu-img could not convert {src} to a fixed VHD: {exc.stderr_tail.strip()}",
                hint="Check that the source is readable and not in use by a running guest.",
            ) from exc
        footer = vhd.check_fixed_vhd(partial)
        if footer.current_size != target:
            raise ConversionError(
                f"{partial}: VHD size {footer.current_size} != requested {target}",
                hint="This is a qemu-img bug or a race with another writer; convert again.",
            )
        # Durable before visible: the rename must never expose a VHD whose blocks are still in flight.
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, dst)
        dfd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ConversionError(f"disk full while writing {dst}", hint=_space_hint(dst)) from exc
        raise ConversionError(f"cannot write {dst}: {exc.strerror or exc}") from exc
    finally:
        # Also on KeyboardInterrupt: a half-written VHD must never be mistaken for a result.
        partial.unlink(missing_ok=True)
        grow.unlink(missing_ok=True)
    result = FixedVhd(
        path=dst,
        virtual_size=target,
        source_size=info.virtual_size,
        allocated=_allocated(dst),
        seconds=time.monotonic() - start,
        footer=footer,
    )
    log.debug(
        "%s: fixed VHD, %d bytes virtual, %d bytes allocated, %.1f s",
        dst, result.virtual_size, result.allocated, result.seconds,
    )  # fmt: skip
    return result
