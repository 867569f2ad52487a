"""Azure vmSize → vCPUs/memory, capped to the host."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from localbuilder.hypervisor import sizes

BIG_HOST = (64, 512 * 1024)


@pytest.mark.parametrize(
    ("name", "cpus", "mib"),
    [
        ("Standard_D1_v2", 1, 3584),
        ("standard_d2_V2", 2, 7168),
        ("Standard_DS1_v2", 1, 3584),
        ("Standard_D2s_v3", 2, 8192),
        ("Standard_D4d_v4", 4, 16384),
        ("Standard_D2ds_v4", 2, 8192),
        ("Standard_D8s_v4", 8, 32768),
        ("Standard_B1s", 1, 1024),
        ("Standard_B2ms", 2, 8192),
        ("Standard_E4s_v5", 4, 32768),
        ("Standard_F8s_v2", 8, 16384),
        ("Standard_A1_v2", 1, 2048),
    ],
)
def test_known_sizes(name: str, cpus: int, mib: int) -> None:
    shape = sizes.guest_shape(name, host=BIG_HOST)
    assert (shape.cpus, shape.memory_mib, shape.notes) == (cpus, mib, ())


def test_default_is_d1_v2() -> None:
    shape = sizes.guest_shape(None, host=BIG_HOST)
    assert (shape.vm_size, shape.cpus, shape.memory_mib) == ("Standard_D1_v2", 1, 3584)
    assert sizes.guest_shape("", host=BIG_HOST).vm_size == "Standard_D1_v2"


def test_unknown_size_warns_and_uses_default() -> None:
    shape = sizes.guest_shape("Standard_NV999_v9", host=BIG_HOST)
    assert shape.vm_size == "Standard_D1_v2" and shape.cpus == 1
    assert any("Standard_NV999_v9" in n and "not in" in n for n in shape.notes)


def test_capped_to_host() -> None:
    shape = sizes.guest_shape("Standard_D8s_v3", host=(2, 8192))
    assert shape.cpus == 2 and shape.memory_mib == 4096
    assert len(shape.notes) == 2 and "capped" in shape.notes[0] and "half" in shape.notes[1]


def test_every_corpus_size_is_known(corpus_dir: Path) -> None:
    found: set[str] = set()
    for path in corpus_dir.rglob("*.json"):
        text = path.read_text(errors="replace")
        found.update(re.findall(r"Standard_[A-Za-z0-9]+_v\d|Standard_[A-Z]+\d+[a-z]*\b", text))
    vm_sizes = {s for s in found if not s.endswith(("LRS", "ZRS"))}
    assert vm_sizes, "expected vmSize values in the corpus"
    missing = sorted(s for s in vm_sizes if sizes.lookup(s) is None)
    assert not missing, json.dumps(missing)
