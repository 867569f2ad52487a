"""``localbuilder image …`` through ``__main__.main``: exit codes, output, hints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from localbuilder.__main__ import main
from localbuilder.catalog import Catalog
from localbuilder.images.debian import DebianRecipe
from tests.images.test_debian import _fake_cached

GALLERY = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/win"


def test_add_list_rm(lb_home: Path, make_disk, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    disk = make_disk("a.vhd", fmt="vpc", size_mib=32)
    assert main(["image", "add", str(disk), "--urn", "Debian:debian-12:12:1.0.0"]) == 0
    assert capsys.readouterr().out == "Debian:debian-12:12:1.0.0\n"
    assert (
        main(
            [
                "image",
                "add",
                str(disk),
                "--id",
                f"{GALLERY}/versions/1.0.0",
                "--os",
                "windows",
                "--generation",
                "V2",
                "--copy",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["image", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["os"], e["generation"], e["format"], e["stored"]) for e in listed] == [
        ("PlatformImage", "linux", "V1", "vpc", False),
        ("SharedImageVersion", "windows", "V2", "vpc", True),
    ]
    assert listed[0]["virtual_size"] == 33_562_624  # 32 MiB rounded up to CHS geometry (no force_size)
    assert main(["image", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["SOURCE", "TYPE", "OS"]
    assert table[1].startswith("Debian:debian-12:12:1.0.0 ") and str(disk) in table[1]
    assert main(["image", "rm", f"{GALLERY.upper()}/versions/1.0.0"]) == 0
    assert [e.ref for e in Catalog().entries()] == ["Debian:debian-12:12:1.0.0"]


def test_rm_unknown_is_an_error_with_hint(lb_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "rm", "Debian:debian-12:12:9.9.9"]) == 1
    err = capsys.readouterr().err
    assert "Debian:debian-12:12:9.9.9 is not in the catalog" in err
    assert "hint: 'localbuilder image list'" in err
    assert "Traceback" not in err


def test_add_bad_file_is_an_error_not_a_traceback(
    lb_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a disk\n")
    assert main(["image", "add", str(bad), "--urn", "A:b:c:1.0.0"]) == 1
    err = capsys.readouterr().err
    assert "not a whole number of 512-byte sectors" in err and "hint:" in err and "Traceback" not in err


def test_usage_errors(lb_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image"]) == 2
    assert "missing COMMAND" in capsys.readouterr().err
    assert main(["image", "add", "x.qcow2"]) == 2  # neither --urn nor --id
    assert main(["image", "build", "ubuntu-24"]) == 2


def test_empty_list(lb_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["image", "list"]) == 0
    assert "catalog is empty" in capsys.readouterr().err


def test_build_needs_root(
    lb_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["image", "build", "debian-12", "--cache-dir", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert "needs root" in err and "hint: Run it as root" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "lots"], "is not a size"),
        (["--size", "512M"], "at least 1 GiB"),
        (["--mirror", "ftp.example.org"], "not an http(s)://"),
    ],
)
def test_build_bad_options(
    lb_home: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["image", "build", "debian-12", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "hint:" in err


def test_build_reuses_cache_and_registers_once(
    lb_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A cached build (made here with qemu-img, not debootstrap) and a non-root user: reuse needs no root.
    cache = tmp_path / "cache"
    image = _fake_cached(DebianRecipe(size_bytes=3 * 1024**3), cache)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    argv = ["image", "build", "debian-12", "--size", "3G", "--cache-dir", str(cache)]
    assert main(argv) == 0
    assert capsys.readouterr().out == "Debian:debian-12:12:0.20260101.1\n"
    [entry] = Catalog().entries()
    assert (entry.path, entry.sha256, str(entry.os), str(entry.generation)) == (
        image,
        "ab" * 32,
        "linux",
        "V1",
    )
    before = Catalog().file.read_bytes()
    assert main(argv) == 0
    assert "already in the catalog" in capsys.readouterr().err
    assert Catalog().file.read_bytes() == before


def test_build_uefi_registers_gen2(lb_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from localbuilder.images.debian import Firmware

    cache = tmp_path / "cache"
    image = _fake_cached(
        DebianRecipe(firmware=Firmware.uefi), cache, urn="Debian:debian-12:12-gen2:0.20260101.5"
    )
    assert main(["image", "build", "debian-12", "--uefi", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out == "Debian:debian-12:12-gen2:0.20260101.5\n"
    [entry] = Catalog().entries()
    assert (entry.path, str(entry.generation)) == (image, "V2")
    from localbuilder.template.model import PlatformImageSource

    source = PlatformImageSource(publisher="Debian", offer="debian-12", sku="12-GEN2", version="latest")
    assert Catalog().resolve(source).path == image
