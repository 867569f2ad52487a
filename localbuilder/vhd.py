"""Read and verify the footer of a fixed VHD, in Python, without qemu.

A fixed VHD is the raw disk followed by a 512-byte footer ("Virtual Hard Disk Image Format
Specification", Microsoft, v1.0, 2006, "Hard Disk Footer Format"). All fields are big-endian:

    offset size field
         0    8 cookie "conectix"
         8    4 features (bit 1 "reserved" is always set)
        12    4 file format version 0x00010000
        16    8 data offset: 0xFFFFFFFFFFFFFFFF for a fixed disk (no dynamic header)
        24    4 time stamp: seconds since 2000-01-01 00:00:00 UTC
        28    4 creator application ("qemu", "win ", "vpc ", …)
        32    4 creator version
        36    4 creator host OS ("Wi2k", "Mac ")
        40    8 original size (bytes)
        48    8 current size (bytes): the virtual disk size
        56    4 disk geometry: cylinders (2 bytes), heads (1), sectors per track (1)
        60    4 disk type: 2 fixed, 3 dynamic, 4 differencing
        64    4 checksum: ones' complement of the sum of all footer bytes, this field taken as zero
        68   16 unique id
        84    1 saved state
        85  427 reserved (zero)

Azure adds its own rules on top (https://learn.microsoft.com/azure/virtual-machines/linux/create-upload-generic,
"General Linux installation notes"): the VHD must be *fixed* (VHDX and dynamic VHD are rejected), its
virtual size must be aligned to 1 MiB, and qemu's vpc driver cannot write more than 2040 GiB (FACTS §5).
``check_fixed_vhd()`` enforces all of that and names exactly what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import os
import struct
import uuid
from pathlib import Path

from localbuilder.errors import ConversionError

FOOTER_SIZE = 512
COOKIE = b"conectix"
FORMAT_VERSION = 0x00010000
FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
MIB = 1024 * 1024
GIB = 1024 * MIB
# qemu's vpc driver refuses larger images ("VHD size 2040 GiB max"): a hard limit for what we can write.
MAX_SIZE = 2040 * GIB
# The VHD epoch: time stamps count seconds from 2000-01-01 00:00:00 UTC.
EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)

# cookie, features, version, data offset, timestamp, creator app, creator version, creator OS,
# original size, current size, cylinders, heads, sectors/track, disk type, checksum, unique id, saved state
_LAYOUT = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427x")
assert _LAYOUT.size == FOOTER_SIZE
CHECKSUM_OFFSET = 64

FIX_HINT = (
    "Convert it again: localbuilder converts with "
    "'qemu-img convert -O vpc -o subformat=fixed,force_size=on' after rounding the size up to a whole MiB."
)


class DiskType(enum.IntEnum):
    none = 0
    reserved = 1
    fixed = 2
    dynamic = 3
    differencing = 4


@dataclasses.dataclass(frozen=True)
class Geometry:
    cylinders: int
    heads: int
    sectors_per_track: int

    @property
    def size(self) -> int:
        """Bytes the CHS geometry addresses: what qemu rounds to without ``force_size`` (FACTS §5)."""
        return self.cylinders * self.heads * self.sectors_per_track * 512


@dataclasses.dataclass(frozen=True)
class VhdFooter:
    cookie: bytes
    features: int
    format_version: int
    data_offset: int
    timestamp: datetime.datetime
    creator_application: str
    creator_version: int
    creator_host_os: str
    original_size: int
    current_size: int
    geometry: Geometry
    disk_type: int  # a DiskType value when it is a known one; kept raw so bad values can be reported
    checksum: int
    computed_checksum: int
    unique_id: uuid.UUID
    saved_state: int

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.computed_checksum

    @property
    def disk_type_name(self) -> str:
        try:
            return DiskType(self.disk_type).name
        except ValueError:
            return f"unknown ({self.disk_type})"

    def as_dict(self) -> dict[str, object]:
        return {
            "cookie": self.cookie.decode("ascii", errors="replace"),
            "features": self.features,
            "format_version": f"0x{self.format_version:08x}",
            "data_offset": f"0x{self.data_offset:016x}",
            "timestamp": self.timestamp.isoformat(),
            "creator_application": self.creator_application,
            "creator_version": f"0x{self.creator_version:08x}",
            "creator_host_os": self.creator_host_os,
            "original_size": self.original_size,
            "current_size": self.current_size,
            "geometry": dataclasses.asdict(self.geometry),
            "disk_type": self.disk_type_name,
            "checksum": f"0x{self.checksum:08x}",
            "checksum_ok": self.checksum_ok,
            "unique_id": str(self.unique_id),
            "saved_state": self.saved_state,
        }


def footer_checksum(footer: bytes) -> int:
    """Ones' complement of the byte sum, with the 4 checksum bytes counted as zero (VHD spec)."""
    if len(footer) != FOOTER_SIZE:
        raise ValueError(f"a VHD footer is {FOOTER_SIZE} bytes, got {len(footer)}")
    total = sum(footer) - sum(footer[CHECKSUM_OFFSET : CHECKSUM_OFFSET + 4])
    return ~total & 0xFFFFFFFF


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace")


def parse_footer(raw: bytes) -> VhdFooter:
    """Decode 512 footer bytes. Does not judge them: that is ``check_fixed_vhd()``'s job."""
    (
        cookie, features, version, data_offset, stamp, app, app_version, host_os,
        original, current, cylinders, heads, sectors, disk_type, checksum, unique, saved,
    ) = _LAYOUT.unpack(raw)  # fmt: skip
    return VhdFooter(
        cookie=cookie,
        features=features,
        format_version=version,
        data_offset=data_offset,
        timestamp=EPOCH + datetime.timedelta(seconds=stamp),
        creator_application=_ascii(app),
        creator_version=app_version,
        creator_host_os=_ascii(host_os),
        original_size=original,
        current_size=current,
        geometry=Geometry(cylinders, heads, sectors),
        disk_type=disk_type,
        checksum=checksum,
        computed_checksum=footer_checksum(raw),
        unique_id=uuid.UUID(bytes=unique),
        saved_state=saved,
    )


def read_footer(path: Path) -> VhdFooter:
    """Read the footer (the last 512 bytes) of ``path``."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < FOOTER_SIZE:
                raise ConversionError(
                    f"{path}: {size} bytes is too small to be a VHD "
                    f"(the footer alone is {FOOTER_SIZE} bytes)",
                    hint=FIX_HINT,
                )
            f.seek(size - FOOTER_SIZE)
            raw = f.read(FOOTER_SIZE)
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return parse_footer(raw)


def fixed_vhd_footer(path: Path) -> VhdFooter | None:
    """The footer of ``path`` when it is a fixed VHD (the raw disk, then the footer), else None: a raw
    image, another format, or a file too small to be a VHD."""
    try:
        footer = read_footer(path)
    except ConversionError:
        return None
    return footer if footer.cookie == COOKIE and footer.disk_type == DiskType.fixed else None


def _size(n: int) -> str:
    return f"{n} bytes ({n / GIB:.3f} GiB)"


def check_fixed_vhd(path: Path) -> VhdFooter:
    """Verify that ``path`` is a fixed VHD that Azure accepts; return its footer.

    Raises ConversionError naming the first problem found, in the order a reader would care about:
    not a VHD at all, wrong kind of VHD, corrupted footer, then the Azure size rules.
    """
    footer = read_footer(path)
    file_size = path.stat().st_size
    if footer.cookie != COOKIE:
        raise ConversionError(
            f"{path}: not a VHD: the last 512 bytes start with {footer.cookie!r}, not the cookie b'conectix'",
            hint=FIX_HINT,
        )
    if footer.disk_type != DiskType.fixed:
        raise ConversionError(
            f"{path}: VHD disk type is {footer.disk_type_name} ({footer.disk_type}); Azure accepts only "
            f"fixed VHDs (type 2)",
            hint="Convert it: qemu-img convert -f vpc -O vpc -o subformat=fixed,force_size=on SRC DST",
        )
    if footer.data_offset != FIXED_DATA_OFFSET:
        raise ConversionError(
            f"{path}: data offset is 0x{footer.data_offset:016x}; a fixed VHD has 0xFFFFFFFFFFFFFFFF",
            hint=FIX_HINT,
        )
    if footer.format_version != FORMAT_VERSION:
        raise ConversionError(
            f"{path}: file format version 0x{footer.format_version:08x}, expected 0x00010000",
            hint=FIX_HINT,
        )
    if not footer.checksum_ok:
        raise ConversionError(
            f"{path}: footer checksum mismatch: stored 0x{footer.checksum:08x}, computed "
            f"0x{footer.computed_checksum:08x} (the footer is corrupted)",
            hint=FIX_HINT,
        )
    if footer.current_size % MIB:
        raise ConversionError(
            f"{path}: virtual size {_size(footer.current_size)} is not a whole number of MiB "
            f"({footer.current_size % MIB} bytes over); Azure rejects it",
            hint="Round the size up to a MiB multiple before converting (localbuilder's to_fixed_vhd does).",
        )
    if file_size != footer.current_size + FOOTER_SIZE:
        raise ConversionError(
            f"{path}: file size {file_size} bytes != current size {footer.current_size} + 512-byte footer "
            f"(expected {footer.current_size + FOOTER_SIZE}); the file is truncated or has trailing data",
            hint=FIX_HINT,
        )
    if footer.current_size > MAX_SIZE:
        raise ConversionError(
            f"{path}: virtual size {_size(footer.current_size)} exceeds the 2040 GiB VHD limit",
            hint="Use a smaller osDiskSizeGB (at most 2040).",
        )
    return footer
