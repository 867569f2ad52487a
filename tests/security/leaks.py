"""Searching run artefacts for secret values: every file of a tree (sparse disk images included), in the
encodings a secret could take on its way through logs and scripts."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from localbuilder.azure.extents import allocated_extents


def forms(name: str, secret: str) -> dict[str, bytes]:
    """``secret`` as text, URL-encoded text, UTF-16LE (PowerShell strings) and the stable middle part of
    its base64 in each of the three alignments (``-EncodedCommand`` scripts, basic-auth headers)."""
    from urllib.parse import quote

    raw = {"": secret.encode(), " (utf-16le)": secret.encode("utf-16-le")}
    out = {f"{name}{label}": data for label, data in raw.items()}
    if quote(secret, safe="") != secret:
        out[f"{name} (url-encoded)"] = quote(secret, safe="").encode()
    for label, data in raw.items():
        for shift in range(3):
            encoded = base64.b64encode(b"\0" * shift + data)
            # The first 4 and last 4 characters depend on the neighbouring bytes: drop them.
            core = encoded[4:-4]
            if len(core) >= 8:
                out[f"{name}{label} (base64, shift {shift})"] = core
    return out


def chunks(path: Path, size: int = 8 << 20, overlap: int = 512) -> Iterator[bytes]:
    """The allocated data of ``path`` in chunks that overlap by ``overlap`` bytes, so that a needle
    across a chunk border is still found (holes are skipped: a fixed VHD is mostly sparse)."""
    with open(path, "rb") as fh:
        total = os.fstat(fh.fileno()).st_size
        for extent in allocated_extents(fh.fileno(), total):
            fh.seek(extent.offset)
            left, carry = extent.length, b""
            while left > 0 and (data := fh.read(min(size, left))):
                left -= len(data)
                yield carry + data
                carry = data[-overlap:]


def leaks(path: Path, needles: Mapping[str, bytes]) -> list[str]:
    """Names of the needles found in the file ``path``."""
    found: set[str] = set()
    for chunk in chunks(path):
        found |= {name for name, needle in needles.items() if needle in chunk}
    return sorted(found)


def leaks_in_tree(root: Path, needles: Mapping[str, bytes]) -> dict[str, list[str]]:
    """{relative path: needles found} for every regular file under ``root`` that holds any."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            if found := leaks(path, needles):
                out[str(path.relative_to(root))] = found
    return out


def leaks_in_text(label: str, data: bytes | str, needles: Mapping[str, bytes]) -> dict[str, list[str]]:
    raw = data.encode() if isinstance(data, str) else data
    found = sorted(name for name, needle in needles.items() if needle in raw)
    return {label: found} if found else {}
