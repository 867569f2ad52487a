"""Real Windows registry hives for tests: an empty hive written here, filled by hivex (``hivexregedit``).

hivex edits hives but cannot create one, and no Debian package ships an empty hive, so ``empty_hive``
writes the smallest valid one by the format's rules (the "regf" base block with its XOR checksum, one
4 KiB "hbin" holding the root key's "nk" cell, its "sk" security cell and the free rest). Everything
after that — keys, values — is hivex's own writing, through ``hivexregedit --merge`` of a .reg file.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

BLOCK = 4096
FILETIME = 133_000_000_000_000_000  # any plausible time (2022)


def _cell(data: bytes) -> bytes:
    size = (4 + len(data) + 7) // 8 * 8
    return struct.pack("<i", -size) + data + b"\0" * (size - 4 - len(data))


def empty_hive(path: Path, name: str = "ROOT") -> Path:
    # Self-relative security descriptor with no owner, group or ACLs (revision 1, SE_SELF_RELATIVE).
    descriptor = struct.pack("<BBHIIII", 1, 0, 0x8000, 0, 0, 0, 0)
    nk_offset = 0x20
    nk_len = 0x4C + len(name)
    sk_offset = nk_offset + (4 + nk_len + 7) // 8 * 8
    nk = struct.pack(
        "<2sHQIIIIIIIIIIIIIIIHH",
        b"nk", 0x2C, FILETIME, 0, 0,  # flags: hive entry, no delete, compressed (ASCII) name
        0, 0, 0xFFFFFFFF, 0xFFFFFFFF,  # subkeys (stable, volatile) and their lists
        0, 0xFFFFFFFF,  # values and their list
        sk_offset, 0xFFFFFFFF,  # security cell, class name
        0, 0, 0, 0, 0,  # largest subkey name/class, value name/data; work var
        len(name), 0,
    ) + name.encode("ascii")
    sk = struct.pack("<2sHIIII", b"sk", 0, sk_offset, sk_offset, 1, len(descriptor)) + descriptor
    cells = _cell(nk) + _cell(sk)
    free = BLOCK - 0x20 - len(cells)
    hbin = struct.pack("<4sIIQQI", b"hbin", 0, BLOCK, 0, FILETIME, 0) + cells + struct.pack("<i", free)
    hbin += b"\0" * (BLOCK - len(hbin))
    base = bytearray(BLOCK)
    struct.pack_into("<4sIIQIIIIII", base, 0, b"regf", 1, 1, FILETIME, 1, 3, 0, 1, nk_offset, BLOCK)
    struct.pack_into("<I", base, 0x2C, 1)  # clustering factor
    checksum = 0
    for (word,) in struct.iter_unpack("<I", bytes(base[:508])):
        checksum ^= word
    struct.pack_into("<I", base, 508, checksum)
    path.write_bytes(bytes(base) + hbin)
    return path


def merge(hive: Path, keys: dict[str, dict[str, str]], prefix: str = "HKEY_LOCAL_MACHINE\\SOFTWARE") -> None:
    """Add ``keys`` (path below ``prefix`` → string values) to ``hive`` with hivex, as a .reg file; hivex
    creates a key only under an existing parent, so every ancestor gets its own section."""
    sections: dict[str, dict[str, str]] = {}
    for key, values in keys.items():
        parts = key.split("\\")
        for i in range(1, len(parts)):
            sections.setdefault("\\".join(parts[:i]), {})
        sections.setdefault(key, {}).update(values)
    lines = ["Windows Registry Editor Version 5.00", ""]
    for key, values in sections.items():
        lines.append(f"[{prefix}\\{key}]")
        lines += [f'"{name}"="{value.replace(chr(92), chr(92) * 2)}"' for name, value in values.items()]
        lines.append("")
    reg_file = hive.with_suffix(".reg")
    reg_file.write_text("\r\n".join(lines) + "\r\n")
    subprocess.run(["hivexregedit", "--merge", "--prefix", prefix, str(hive), str(reg_file)],
                   check=True, capture_output=True, text=True)
    reg_file.unlink()


def software_hive(path: Path, image_state: str | None, profiles: dict[str, str] | None = None) -> Path:
    """A SOFTWARE hive with ``Setup\\State`` ``ImageState`` (None: no value) and ProfileList entries
    (SID → ProfileImagePath)."""
    empty_hive(path)
    state = {"ImageState": image_state} if image_state is not None else {}
    keys = {"Microsoft\\Windows\\CurrentVersion\\Setup\\State": state}
    for sid, image_path in (profiles or {}).items():
        keys[f"Microsoft\\Windows NT\\CurrentVersion\\ProfileList\\{sid}"] = {"ProfileImagePath": image_path}
    merge(path, keys)
    return path
