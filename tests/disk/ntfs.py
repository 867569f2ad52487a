"""Windows-shaped disks for tests: a real NTFS (mkntfs, from ntfs-3g, run by libguestfs) holding real hives
(``tests.disk.hive``) where Windows keeps them, and whatever answer files and profiles a test asks for.

All disks of one call are made in a single libguestfs appliance session (one launch, ~15 s under TCG).
"""

from __future__ import annotations

import dataclasses
import struct
import tempfile
from pathlib import Path

from localbuilder.guestfs import Guestfish
from tests.disk import hive

MIB = 1024 * 1024
GENERALIZED = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
NOT_GENERALIZED = "IMAGE_STATE_COMPLETE"

# The answer file AIB users hand to Sysprep, before (plain) and after (sanitized) Sysprep consumed it.
UNATTEND_WITH_PASSWORD = """<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
  <settings pass="oobeSystem">
    <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64">
      <UserAccounts>
        <AdministratorPassword><Value>P@ssw0rd-in-the-image</Value><PlainText>true</PlainText></AdministratorPassword>
      </UserAccounts>
    </component>
  </settings>
</unattend>
"""
UNATTEND_SANITIZED = UNATTEND_WITH_PASSWORD.replace("P@ssw0rd-in-the-image", "*SENSITIVE*DATA*DELETED*")


def pe_console_x64() -> bytes:
    """The headers of an x86-64 console program: what libguestfs reads from cmd.exe to tell a Windows
    volume's architecture (``file`` says "PE32+ executable (console) x86-64")."""
    optional = bytearray(0xF0)
    struct.pack_into("<H", optional, 0, 0x20B)  # PE32+
    struct.pack_into("<H", optional, 68, 3)  # subsystem: Windows console
    coff = struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, len(optional), 0x0022)
    dos = bytearray(0x80)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    return bytes(dos) + b"PE\0\0" + coff + bytes(optional)


@dataclasses.dataclass(frozen=True)
class WindowsDisk:
    image_state: str | None = GENERALIZED
    unattend: dict[str, str] = dataclasses.field(default_factory=dict)  # path under C:\ → content
    profiles: dict[str, str] = dataclasses.field(default_factory=dict)  # SID → ProfileImagePath
    user_dirs: tuple[str, ...] = ("Public",)
    size_mib: int = 64
    cmd_exe: bool = True  # False: libguestfs's own inspection passes the volume over


def make(disks: dict[Path, WindowsDisk]) -> None:
    with tempfile.TemporaryDirectory(prefix="lb-ntfs-") as tmp, Guestfish() as gf:
        hives = {}
        for i, (path, spec) in enumerate(disks.items()):
            with open(path, "wb") as f:
                f.truncate(spec.size_mib * MIB)
            gf.call("add-drive", str(path), "format:raw")
            software = Path(tmp) / f"SOFTWARE.{i}"
            hives[path] = (hive.software_hive(software, spec.image_state, spec.profiles),
                           hive.empty_hive(Path(tmp) / f"SYSTEM.{i}", "SYSTEM"))
        cmd = Path(tmp) / "cmd.exe"
        cmd.write_bytes(pe_console_x64())
        gf.call("run", timeout=600)
        for i, (path, spec) in enumerate(disks.items()):
            dev = f"/dev/sd{chr(ord('a') + i)}"
            gf.call("part-disk", dev, "mbr")
            gf.call("part-set-mbr-id", dev, "1", "7")  # 0x07: NTFS/exFAT
            gf.call("mkfs", "ntfs", f"{dev}1")
            gf.call("mount", f"{dev}1", "/")
            for folder in ("/Windows/System32/config", "/Windows/Panther", "/Windows/System32/Sysprep"):
                gf.call("mkdir-p", folder)
            if spec.cmd_exe:
                gf.call("upload", str(cmd), "/Windows/System32/cmd.exe")
            software, system = hives[path]
            gf.call("upload", str(software), "/Windows/System32/config/SOFTWARE")
            gf.call("upload", str(system), "/Windows/System32/config/SYSTEM")
            for user in spec.user_dirs:
                gf.call("mkdir-p", f"/Users/{user}")
            for rel, text in spec.unattend.items():
                gf.call("write", rel, text)
            gf.call("umount", "/")
