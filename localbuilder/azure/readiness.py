"""Azure-readiness of a Linux image, checked offline before an upload (warnings, never errors).

The classic "boots on KVM, not on Azure" traps (https://learn.microsoft.com/azure/virtual-machines/linux/
create-upload-generic):
- the Hyper-V drivers (``hv_vmbus``, ``hv_storvsc``, ``hv_netvsc``) must be built into the kernel or
  present in the initramfs, or the root disk is never found on Azure;
- ``console=ttyS0`` on the kernel command line, or the serial console and boot diagnostics stay empty;
- a provisioning agent: waagent, or cloud-init with the Azure datasource enabled.
Read through ``diskread.Ext4Reader`` (debugfs, no mount, no boot).
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, cast

from localbuilder import vhd
from localbuilder.diskread import Ext4Reader, ReadAt, detect_filesystem, parse_partitions
from localbuilder.errors import CommandError, InspectionError
from localbuilder.run import run

HYPERV_MODULES = ("hv_vmbus", "hv_storvsc", "hv_netvsc")
_CONFIG_OF = {
    "hv_vmbus": "CONFIG_HYPERV",
    "hv_storvsc": "CONFIG_HYPERV_STORAGE",
    "hv_netvsc": "CONFIG_HYPERV_NET",
}


class Reader(Protocol):
    spec: str

    def read_text(self, path: str) -> str | None: ...

    def listdir(self, path: str) -> dict[str, object] | None: ...


@dataclasses.dataclass(frozen=True)
class ReadinessFinding:
    check: str
    ok: bool
    message: str
    hint: str | None = None

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def dump_file(reader: Reader, path: str) -> bytes | None:
    """Binary contents of ``path`` in the image (debugfs ``dump``), or None when absent."""
    with tempfile.TemporaryDirectory(prefix="localbuilder-ready-") as tmp:
        dest = Path(tmp) / "file"
        try:
            run(["debugfs", "-c", "-R", f'dump "{path}" "{dest}"', reader.spec], timeout=300)
        except CommandError as exc:
            raise InspectionError(f"debugfs could not dump {path}: {exc.stderr_tail.strip()}") from exc
        return dest.read_bytes() if dest.exists() and dest.stat().st_size else None


def _decompress(data: bytes) -> bytes | None:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00" or data[:3] == b"\x5d\x00\x00":
        return lzma.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":  # zstd: Debian 12's initramfs-tools default
        with tempfile.TemporaryDirectory(prefix="localbuilder-zstd-") as tmp:
            src, dst = Path(tmp) / "in.zst", Path(tmp) / "out"
            src.write_bytes(data)
            try:
                # -d on a concatenation decodes every frame; trailing garbage is an error, hence -f off.
                run(["zstd", "-d", "-q", "-o", dst, src])
            except CommandError as exc:
                raise InspectionError(
                    "cannot decompress a zstd initramfs", hint="apt-get install zstd"
                ) from exc
            return dst.read_bytes()
    return None


def cpio_names(data: bytes) -> Iterator[str]:
    """File names in an initramfs: concatenated newc cpio archives, the last ones usually compressed."""
    pos = 0
    while pos < len(data):
        if data[pos : pos + 6] in (b"070701", b"070702"):
            namesize = int(data[pos + 94 : pos + 102], 16)
            filesize = int(data[pos + 54 : pos + 62], 16)
            name = data[pos + 110 : pos + 110 + namesize - 1].decode("utf-8", "replace")
            pos += 110 + namesize
            pos = (pos + 3) & ~3
            pos += filesize
            pos = (pos + 3) & ~3
            if name != "TRAILER!!!":
                yield name
            continue
        if data[pos] == 0:  # padding between archives
            pos += 1
            continue
        rest = _decompress(data[pos:])
        if rest is None:
            return
        yield from cpio_names(rest)
        return


def check_hyperv_drivers(reader: Reader) -> list[ReadinessFinding]:
    boot = reader.listdir("/boot") or {}
    kernels = sorted(n[len("vmlinuz-") :] for n in boot if n.startswith("vmlinuz-"))
    if not kernels:
        return [ReadinessFinding("hyperv-drivers", False, "no kernel (/boot/vmlinuz-*) found")]
    version = kernels[-1]
    config = reader.read_text(f"/boot/config-{version}") or ""
    builtin = {m for m in HYPERV_MODULES if re.search(rf"^{_CONFIG_OF[m]}=y$", config, re.M)}
    missing = [m for m in HYPERV_MODULES if m not in builtin]
    if missing:
        initrd = dump_file(reader, f"/boot/initrd.img-{version}")
        names = set() if initrd is None else {Path(n).name.split(".ko")[0] for n in cpio_names(initrd)}
        missing = [m for m in missing if m not in names]
    if missing:
        return [
            ReadinessFinding(
                "hyperv-drivers", False,
                f"kernel {version}: {', '.join(missing)} neither built in nor in the initramfs; "
                "the image will not find its disk or network on Azure",
                hint="List them in /etc/initramfs-tools/modules (or dracut add_drivers); rebuild initramfs.",
            )
        ]  # fmt: skip
    how = "built into the kernel" if not (set(HYPERV_MODULES) - builtin) else "available at boot"
    return [ReadinessFinding("hyperv-drivers", True, f"kernel {version}: Hyper-V drivers {how}")]


def check_serial_console(reader: Reader) -> list[ReadinessFinding]:
    cfg = reader.read_text("/boot/grub/grub.cfg") or reader.read_text("/boot/grub2/grub.cfg") or ""
    lines = [ln for ln in cfg.splitlines() if re.match(r"\s*linux(efi)?\s", ln)]
    if lines and all("console=ttyS0" in ln for ln in lines):
        return [ReadinessFinding("serial-console", True, "console=ttyS0 is on the kernel command line")]
    return [
        ReadinessFinding(
            "serial-console", False,
            "console=ttyS0 is not on every kernel command line in grub.cfg: Azure's serial console and boot "
            "diagnostics will be empty",
            hint="Add console=ttyS0 to GRUB_CMDLINE_LINUX in /etc/default/grub and run update-grub.",
        )
    ]  # fmt: skip


def check_agent(reader: Reader) -> list[ReadinessFinding]:
    waagent = reader.read_text("/usr/sbin/waagent") is not None
    cloud = reader.read_text("/etc/cloud/cloud.cfg")
    azure_ds = False
    if cloud is not None:
        texts = [cloud]
        for name in sorted((reader.listdir("/etc/cloud/cloud.cfg.d") or {}).keys()):
            if name.endswith(".cfg"):
                texts.append(reader.read_text(f"/etc/cloud/cloud.cfg.d/{name}") or "")
        lists = [m.group(1) for t in texts for m in re.finditer(r"datasource_list\s*:\s*\[([^\]]*)\]", t)]
        # The last datasource_list wins; without one, cloud-init tries every datasource, Azure included.
        azure_ds = not lists or "azure" in lists[-1].lower()
    if waagent or azure_ds:
        what = " and ".join(
            filter(None, ["waagent" if waagent else "", "cloud-init (Azure datasource)" if azure_ds else ""])
        )
        return [ReadinessFinding("agent", True, f"provisioning agent present: {what}")]
    return [
        ReadinessFinding(
            "agent", False,
            "neither waagent nor cloud-init with the Azure datasource: Azure cannot provision VMs from it",
            hint="Install walinuxagent or cloud-init and keep Azure in datasource_list.",
        )
    ]  # fmt: skip


def check_readiness(reader: Reader) -> list[ReadinessFinding]:
    return check_hyperv_drivers(reader) + check_serial_console(reader) + check_agent(reader)


def open_root(image: Path) -> Reader | None:
    """A reader on the Linux root filesystem of a fixed VHD or raw image, or None when there is none.

    A fixed VHD is the raw disk followed by a 512-byte footer (``conectix``), so debugfs reads it in
    place at the partition's offset: no conversion, no copy. The root is the first ext partition that
    holds ``/etc/passwd`` (a separate ``/boot`` is ext too, but has no ``/etc``).
    """
    footer = vhd.fixed_vhd_footer(image)
    disk_size = footer.current_size if footer is not None else image.stat().st_size
    read_at = ReadAt(image, disk_size)
    for part in parse_partitions(read_at, disk_size):
        if detect_filesystem(read_at, part.start).startswith("ext"):
            fs = Ext4Reader(image, part.start)
            if fs.read_text("/etc/passwd") is not None:
                # Ext4Reader.listdir returns dict[str, Entry]: the Protocol's dict[str, object] is the
                # read-only view the checks need (dict is invariant, hence the cast).
                return cast(Reader, fs)
    return None
