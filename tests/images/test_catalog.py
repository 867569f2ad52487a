"""Catalog: add/list/rm, Azure-style resolution (case, latest, gallery definitions), hints, atomicity."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from localbuilder.catalog import Catalog, Generation, parse_version
from localbuilder.diskformat import DiskFormat
from localbuilder.errors import CatalogError
from localbuilder.template.model import (
    ManagedImageSource,
    OsType,
    PlatformImageSource,
    SharedImageVersionSource,
    SourceType,
)

SUB = "/subscriptions/0000-1111/resourceGroups/rg-images/providers/Microsoft.Compute"
GALLERY_DEF = f"{SUB}/galleries/myGallery/images/ubuntu-base"


def platform(urn: str) -> PlatformImageSource:
    publisher, offer, sku, version = urn.split(":")
    return PlatformImageSource(publisher=publisher, offer=offer, sku=sku, version=version)


def test_add_list_roundtrip(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    disk = make_disk("a.qcow2", size_mib=16, data=b"\x01")
    cat = Catalog()
    entry = cat.add(disk, urn="Debian:debian-12:12:0.20250101.1")
    assert cat.file == lb_home / "images" / "catalog.json"
    [again] = Catalog().entries()
    assert again == entry
    assert (again.kind, again.format, again.virtual_size) == (
        SourceType.PlatformImage,
        DiskFormat.qcow2,
        16 * 1024**2,
    )
    assert (again.os, again.generation, again.stored, again.path) == (
        OsType.linux,
        Generation.V1,
        False,
        disk,
    )
    import hashlib

    assert again.sha256 == hashlib.sha256(disk.read_bytes()).hexdigest() == again.identity
    doc = json.loads(cat.file.read_text())
    assert doc["version"] == 1 and doc["images"][0]["ref"] == "Debian:debian-12:12:0.20250101.1"


def test_os_and_generation_guessed_from_urn(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    disk = make_disk("w.qcow2")
    entry = Catalog().add(disk, urn="MicrosoftWindowsServer:WindowsServer:2022-datacenter-g2:20348.1.1")
    assert (entry.os, entry.generation) == (OsType.windows, Generation.V2)
    other = Catalog().add(
        disk, urn="Debian:debian-12:12-gen2:1.0.0", os_type=OsType.linux, generation=Generation.V1
    )
    assert (other.os, other.generation) == (OsType.linux, Generation.V1)  # explicit wins


def test_latest_is_numeric_not_string_order(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog()
    disks = {}
    for i, version in enumerate(["1.9.0", "1.10.0", "1.2.30", "0.99.99"]):
        disks[version] = make_disk(f"v{i}.qcow2", data=bytes([i + 1]))
        cat.add(disks[version], urn=f"Canonical:ubuntu-24_04-lts:server:{version}")
    # A different sku must not count.
    cat.add(make_disk("other.qcow2", data=b"\x09"), urn="Canonical:ubuntu-24_04-lts:server-gen2:9.0.0")
    got = cat.resolve(platform("canonical:UBUNTU-24_04-LTS:Server:latest"))
    assert got.ref == "Canonical:ubuntu-24_04-lts:server:1.10.0"
    assert got.path == disks["1.10.0"]
    assert cat.resolve(platform("Canonical:ubuntu-24_04-lts:server:LATEST")).ref.endswith(":1.10.0")
    assert cat.resolve(platform("CANONICAL:ubuntu-24_04-lts:SERVER:1.2.30")).path == disks["1.2.30"]


def test_parse_version() -> None:
    assert parse_version("1.10.0") == (1, 10, 0)
    assert parse_version("0.20250101.1") == (0, 20250101, 1)
    assert parse_version("latest") is None
    assert parse_version("1.0") is None


def test_unknown_platform_source_hint_is_the_exact_command(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog()
    with pytest.raises(CatalogError, match="no catalog image for PlatformImage") as err:
        cat.resolve(platform("Canonical:0001-com-ubuntu-server-jammy:22_04-lts:latest"))
    assert err.value.hint == (
        "Register a local image file for it: "
        "localbuilder image add FILE --urn Canonical:0001-com-ubuntu-server-jammy:22_04-lts:1.0.0"
    )
    with pytest.raises(CatalogError) as err:
        cat.resolve(platform("MicrosoftWindowsServer:WindowsServer:2022-datacenter:20348.2113.231109"))
    assert err.value.hint is not None and err.value.hint.endswith(
        "--urn MicrosoftWindowsServer:WindowsServer:2022-datacenter:20348.2113.231109 --os windows"
    )
    # Debian 12 additionally points at the offline recipe; a registered other version is listed.
    cat.add(make_disk("d.qcow2"), urn="Debian:debian-12:12:1.0.0")
    with pytest.raises(CatalogError, match=r"registered: Debian:debian-12:12:1\.0\.0") as err:
        cat.resolve(platform("Debian:debian-12:12:2.0.0"))
    assert err.value.hint and "localbuilder image build debian-12" in err.value.hint


def test_managed_image_by_id_case_insensitive(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    rid = f"{SUB}/images/golden-2024"
    disk = make_disk("m.qcow2")
    entry = Catalog().add(disk, resource_id=rid)
    assert entry.kind is SourceType.ManagedImage
    got = Catalog().resolve(ManagedImageSource(image_id=rid.upper() + "/"))
    assert got == entry
    with pytest.raises(CatalogError) as err:
        Catalog().resolve(ManagedImageSource(image_id=f"{SUB}/images/other"))
    assert (
        err.value.hint
        == f"Register a local image file for it: localbuilder image add FILE --id {SUB}/images/other"
    )


def test_gallery_version_definition_and_latest(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog()
    for i, version in enumerate(["1.0.9", "1.0.10", "0.5.0"]):
        cat.add(
            make_disk(f"g{i}.qcow2", data=bytes([i + 1])), resource_id=f"{GALLERY_DEF}/versions/{version}"
        )
    # Another definition in the same gallery must not be picked.
    cat.add(
        make_disk("other.qcow2", data=b"\x07"),
        resource_id=f"{SUB}/galleries/myGallery/images/win/versions/9.9.9",
    )
    exact = cat.resolve(SharedImageVersionSource(image_version_id=f"{GALLERY_DEF.lower()}/versions/1.0.9"))
    assert exact.version == "1.0.9"
    by_definition = cat.resolve(SharedImageVersionSource(image_version_id=GALLERY_DEF.upper()))
    assert by_definition.version == "1.0.10"
    by_latest = cat.resolve(SharedImageVersionSource(image_version_id=f"{GALLERY_DEF}/versions/latest"))
    assert by_latest.version == "1.0.10"
    with pytest.raises(CatalogError, match="registered:") as err:
        cat.resolve(SharedImageVersionSource(image_version_id=f"{GALLERY_DEF}/versions/2.0.0"))
    assert err.value.hint and err.value.hint.endswith(f"--id {GALLERY_DEF}/versions/2.0.0")
    with pytest.raises(CatalogError) as err:
        cat.resolve(SharedImageVersionSource(image_version_id=f"{SUB}/galleries/g2/images/x"))
    assert err.value.hint and err.value.hint.endswith(f"--id {SUB}/galleries/g2/images/x/versions/1.0.0")


def test_community_gallery_id(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    rid = "/CommunityGalleries/contoso-1234/Images/base/Versions/2.1.0"
    Catalog().add(make_disk("c.qcow2"), resource_id=rid)
    got = Catalog().resolve(
        SharedImageVersionSource(image_version_id="/communitygalleries/contoso-1234/images/base")
    )
    assert got.ref == rid


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"urn": "Debian:debian-12:12"}, "is not publisher:offer:sku:version"),
        ({"urn": "Debian:debian-12:12:latest"}, "is not Major.Minor.Build"),
        ({"urn": "Debian::12:1.0.0"}, "is not publisher:offer:sku:version"),
        ({"resource_id": f"{GALLERY_DEF}"}, "names a gallery image definition"),
        ({"resource_id": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/foo"}, "is neither"),
        ({}, "exactly one of --urn or --id"),
    ],
)
def test_add_rejects_bad_references(lb_home: Path, make_disk, kwargs: dict[str, str], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CatalogError, match=message) as err:
        Catalog().add(make_disk("x.qcow2"), **kwargs)  # type: ignore[arg-type]
    assert err.value.hint


def test_duplicate_needs_replace(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    first, second = make_disk("1.qcow2", data=b"\x01"), make_disk("2.qcow2", data=b"\x02")
    cat = Catalog()
    cat.add(first, urn="Debian:debian-12:12:1.0.0")
    with pytest.raises(CatalogError, match="already in the catalog") as err:
        cat.add(second, urn="debian:DEBIAN-12:12:1.0.0")
    assert err.value.hint and "--replace" in err.value.hint
    cat.add(second, urn="debian:DEBIAN-12:12:1.0.0", replace=True)
    [entry] = cat.entries()
    assert entry.path == second


def test_copy_stores_and_rm_deletes_only_stored_files(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    src = make_disk("sparse.raw", fmt="raw", size_mib=64, data=b"\x05")
    cat = Catalog()
    copied = cat.add(src, urn="Debian:debian-12:12:1.0.0", copy=True)
    assert copied.stored and copied.path.parent == lb_home / "images" / "files"
    assert copied.path.name == f"{copied.sha256}.raw"
    assert copied.path.read_bytes() == src.read_bytes()
    assert copied.path.stat().st_blocks * 512 < 8 * 1024**2  # holes kept
    assert not os.access(copied.path, os.W_OK) or os.geteuid() == 0
    assert copied.path.stat().st_mode & 0o222 == 0  # read-only
    linked = cat.add(src, urn="Debian:debian-12:12:2.0.0")
    cat.remove("Debian:debian-12:12:1.0.0")
    assert not copied.path.exists()
    cat.remove("debian:debian-12:12:2.0.0")
    assert linked.path.exists()  # a linked file is the user's
    assert cat.entries() == []
    with pytest.raises(CatalogError, match="is not in the catalog") as err:
        cat.remove("Debian:debian-12:12:2.0.0")
    assert err.value.hint and "image list" in err.value.hint


def test_changed_or_missing_file_detected_at_resolve(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    disk = make_disk("d.qcow2")
    cat = Catalog()
    cat.add(disk, urn="Debian:debian-12:12:1.0.0")
    with open(disk, "ab") as fh:
        fh.write(b"\0" * 512)
    with pytest.raises(CatalogError, match="changed since it was added") as err:
        cat.resolve(platform("Debian:debian-12:12:latest"))
    assert err.value.hint and "--replace" in err.value.hint
    disk.unlink()
    with pytest.raises(CatalogError, match="is gone"):
        cat.resolve(platform("Debian:debian-12:12:latest"))


def test_corrupt_catalog_file(lb_home: Path) -> None:
    cat = Catalog()
    cat.root.mkdir(parents=True)
    cat.file.write_text("{not json")
    with pytest.raises(CatalogError, match="not a valid catalog") as err:
        cat.entries()
    assert err.value.hint and str(cat.file) in err.value.hint


def test_failed_write_keeps_the_old_catalog(
    lb_home: Path, make_disk, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog()
    cat.add(make_disk("1.qcow2", data=b"\x01"), urn="Debian:debian-12:12:1.0.0")
    before = cat.file.read_bytes()

    def broken_dump(obj: object, fh, **kwargs) -> None:  # type: ignore[no-untyped-def]
        fh.write('{"version": 1, "images": [')  # half a document, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError, match="No space"):
        cat.add(make_disk("2.qcow2", data=b"\x02"), urn="Debian:debian-12:12:2.0.0")
    assert cat.file.read_bytes() == before
    assert [p.name for p in cat.root.iterdir() if p.name.endswith(".tmp")] == []


def _add_one(home: str, disk: str, i: int) -> None:
    os.environ["LOCALBUILDER_HOME"] = home
    Catalog().add(Path(disk), urn=f"Debian:debian-12:12:1.0.{i}", sha256="0" * 64)


def test_parallel_adds_all_land(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    disk = make_disk("p.qcow2")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_one, args=(str(lb_home), str(disk), i)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    versions = sorted(e.version_key for e in Catalog().entries())
    assert versions == [(1, 0, i) for i in range(8)]


def test_as_dict_roundtrip(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    from localbuilder.catalog import CatalogImage

    entry = Catalog().add(
        make_disk("r.qcow2"), resource_id=f"{GALLERY_DEF}/versions/1.2.3", os_type=OsType.windows
    )
    assert CatalogImage.from_dict(json.loads(json.dumps(entry.as_dict()))) == entry
    bad = entry.as_dict() | {"format": "floppy"}
    with pytest.raises(CatalogError, match="malformed"):
        CatalogImage.from_dict(bad)


def test_resolve_ref_as_typed_by_a_user(lb_home: Path, make_disk) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog()
    urn_entry = cat.add(make_disk("u.qcow2", data=b"\x01"), urn="Debian:debian-12:12:1.0.0")
    managed = cat.add(make_disk("m.qcow2", data=b"\x02"), resource_id=f"{SUB}/images/golden")
    gallery = cat.add(make_disk("g.qcow2", data=b"\x03"), resource_id=f"{GALLERY_DEF}/versions/1.0.0")
    assert cat.resolve_ref("debian:debian-12:12:latest") == urn_entry
    assert cat.resolve_ref(f"{SUB.lower()}/images/golden/") == managed
    assert cat.resolve_ref(GALLERY_DEF) == gallery  # a definition id means latest
    for bad in ("debian-12", "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/z"):
        with pytest.raises(CatalogError, match="neither a URN") as err:
            cat.resolve_ref(bad)
        assert err.value.hint
