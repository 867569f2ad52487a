"""Debian recipe: hashing, cache reuse and locking, input errors, and teardown of real mounts/loops."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from localbuilder.catalog import parse_version
from localbuilder.errors import CommandError, SourceError
from localbuilder.images import BuiltImage, debian, debian_build
from localbuilder.images.debian import DebianRecipe, Firmware


def test_recipe_key_covers_every_input(monkeypatch: pytest.MonkeyPatch) -> None:
    base = DebianRecipe()
    base_key = base.key  # a property computed from the module-level tables: keep the original
    assert DebianRecipe().key == base_key
    variants = [
        DebianRecipe(mirror="http://mirror.example/debian"),
        DebianRecipe(size_bytes=4 * 1024**3),
        DebianRecipe(firmware=Firmware.uefi),
        DebianRecipe(packages=(*debian.PACKAGES, "vim-tiny")),
    ]
    keys = {v.key for v in variants}
    assert len(keys) == len(variants) and base.key not in keys
    assert DebianRecipe(mirror=debian.DEFAULT_MIRROR + "/").key == base.key  # trailing slash is the same
    assert base.file_name() == f"debian-12-{base.key[:16]}.qcow2"
    assert DebianRecipe(firmware=Firmware.uefi).file_name().startswith("debian-12-gen2-")
    # Editing a file written into the image, or the script version, rebuilds.
    monkeypatch.setitem(debian.IMAGE_FILES, "etc/hostname", "other\n")
    assert DebianRecipe().key != base_key
    monkeypatch.undo()
    assert DebianRecipe().key == base_key
    monkeypatch.setattr(debian, "SCRIPT_VERSION", debian.SCRIPT_VERSION + 1)
    assert DebianRecipe().key != base_key


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2G", 2 * 1024**3),
        ("2048M", 2 * 1024**3),
        ("4GiB", 4 * 1024**3),
        ("1073741824", 1024**3),
        (" 3g ", 3 * 1024**3),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert debian.parse_size(text) == size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mirror": "deb.debian.org/debian"}, "not an http"),
        ({"size_bytes": 512 * 1024**2}, "at least 1 GiB"),
        ({"size_bytes": 2 * 1024**3 + 1}, "whole number of MiB"),
    ],
)
def test_recipe_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SourceError, match=message) as err:
        DebianRecipe(**kwargs)  # type: ignore[arg-type]
    assert err.value.hint


def test_parse_size_error() -> None:
    with pytest.raises(SourceError, match="is not a size") as err:
        debian.parse_size("two gigs")
    assert err.value.hint and "--size 2G" in err.value.hint


def test_image_version_sorts_by_build_time() -> None:
    utc = datetime.UTC
    early = debian.image_version(datetime.datetime(2026, 11, 26, 6, 9, 34, tzinfo=utc))
    later = debian.image_version(datetime.datetime(2026, 11, 26, 14, 0, 0, tzinfo=utc))
    next_day = debian.image_version(datetime.datetime(2026, 11, 27, 0, 0, 1, tzinfo=utc))
    assert early == "0.20261126.60934"
    v = [parse_version(x) for x in (early, later, next_day)]
    assert None not in v and v == sorted(v)  # type: ignore[type-var]


def test_build_requires_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SourceError, match="needs root") as err:
        debian_build.build_image(DebianRecipe(), tmp_path / "x.qcow2")
    assert err.value.hint and "sudo" in err.value.hint
    assert list(tmp_path.iterdir()) == []


def _fake_cached(recipe: DebianRecipe, cache: Path, urn: str = "Debian:debian-12:12:0.20260101.1") -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    image = cache / recipe.file_name()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    meta = {
        "urn": urn,
        "sha256": "ab" * 32,
        "recipe_key": recipe.key,
        "size": image.stat().st_size,
        "built_at": "2026-01-01T00:00:01+00:00",
        "build_seconds": 95.0,
    }
    image.with_suffix(".json").write_text(json.dumps(meta))
    return image


def test_ensure_image_reuses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = DebianRecipe()
    image = _fake_cached(recipe, tmp_path)

    def no_build(*args: object, **kwargs: object) -> BuiltImage:
        raise AssertionError("must not build")

    monkeypatch.setattr(debian_build, "build_image", no_build)
    got = debian_build.ensure_image(recipe, tmp_path)
    assert got.reused and got.path == image and got.urn == "Debian:debian-12:12:0.20260101.1"
    assert got.sha256 == "ab" * 32
    # A record for another recipe, or a file whose size changed, is not a cache hit.
    assert debian.cached_image(DebianRecipe(size_bytes=3 * 1024**3), tmp_path) is None
    with open(image, "ab") as fh:
        fh.write(b"x")
    assert debian.cached_image(recipe, tmp_path) is None


def test_ensure_image_builds_once_under_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = DebianRecipe()
    calls: list[float] = []

    def slow_build(r: DebianRecipe, dest: Path, *, scratch: Path | None = None) -> BuiltImage:
        calls.append(time.monotonic())
        time.sleep(0.5)
        _fake_cached(r, dest.parent)
        cached = debian.cached_image(r, dest.parent)
        assert cached is not None
        return cached

    monkeypatch.setattr(debian_build, "build_image", slow_build)
    results: list[BuiltImage] = []
    threads = [
        threading.Thread(target=lambda: results.append(debian_build.ensure_image(recipe, tmp_path)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3
    assert {r.path for r in results} == {tmp_path / recipe.file_name()}


def test_stream_reports_the_tail_on_failure() -> None:
    lines: list[str] = []
    with pytest.raises(CommandError) as err:
        debian_build._stream(["sh", "-c", "echo one; echo two >&2; exit 3"], lines.append)
    assert lines == ["one", "two"]
    assert err.value.returncode == 3 and "two" in err.value.stderr_tail


def test_stream_stops_the_child_on_interrupt(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    def on_line(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        debian_build._stream(["sh", "-c", f"echo $$ > {pidfile}; echo go; sleep 60"], on_line)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _loops_of(path: Path) -> str:
    return subprocess.run(["losetup", "--associated", str(path)], capture_output=True, text=True).stdout


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts)")


@root_only
@pytest.mark.parametrize("failure", ["command", "interrupt"])
def test_teardown_leaves_no_mount_or_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Real loop device, partition, ext4 mount and /dev,/proc,/sys binds, then a failure inside the
    chroot step: everything must be gone afterwards, and host /dev untouched."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("x\n")
    for sub in ("dev", "proc", "sys", "boot/grub"):
        (tree / sub).mkdir(parents=True)
    if failure == "interrupt":

        def interrupted(root: Path, *cmd: str) -> str:
            raise KeyboardInterrupt

        monkeypatch.setattr(debian_build, "_chroot", interrupted)
    seen: dict[str, object] = {}
    recipe = DebianRecipe(size_bytes=1024**3)
    host_dev = sorted(os.listdir("/dev"))
    expected = KeyboardInterrupt if failure == "interrupt" else CommandError
    with pytest.raises(expected):
        with debian_build._scratch_area(None, recipe.size_bytes) as work:
            seen["work"] = work

            real_install = debian_build._install_bootloader

            def spy(mnt: Path, loop: str, part: str, uuid: str) -> None:
                seen["loop"] = loop
                seen["mounts"] = debian_build._mounts_under(work)
                real_install(mnt, loop, part, uuid)

            monkeypatch.setattr(debian_build, "_install_bootloader", spy)
            debian_build._make_disk(recipe, tree, work / "disk.raw", work / "mnt")
    work = seen["work"]
    assert isinstance(work, Path)
    assert len(seen["mounts"]) >= 2  # type: ignore[arg-type]  # the ext4 partition (+ tmpfs) were mounted
    assert debian_build._mounts_under(work) == []
    assert not work.exists()
    assert str(seen["loop"]).startswith("/dev/loop")
    assert str(work) not in subprocess.run(["losetup", "--list"], capture_output=True, text=True).stdout
    assert set(host_dev) <= set(os.listdir("/dev"))  # the bind-mounted /dev was not emptied


@root_only
def test_bad_mirror_fails_cleanly(tmp_path: Path) -> None:
    recipe = DebianRecipe(mirror=f"file://{tmp_path}/no-such-mirror")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(SourceError, match="debootstrap of bookworm") as err:
        debian_build.build_image(recipe, tmp_path / "out" / "x.qcow2", scratch=scratch)
    assert err.value.hint and "--mirror" in err.value.hint
    assert not (tmp_path / "out" / "x.qcow2").exists()
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("firmware", [Firmware.bios, Firmware.uefi])
def test_partition_layout(tmp_path: Path, firmware: Firmware) -> None:
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as fh:
        fh.truncate(2 * 1024**3)
    layout = debian_build._GPT_LAYOUT if firmware is Firmware.uefi else debian_build._MBR_LAYOUT
    subprocess.run(["sfdisk", "--quiet", str(raw)], input=layout, text=True, check=True)
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    parts = table["partitions"]
    if firmware is Firmware.bios:
        assert table["label"] == "dos"
        assert [(p["start"], p["type"], p.get("bootable")) for p in parts] == [(2048, "83", True)]
        assert parts[0]["start"] + parts[0]["size"] == 2 * 1024**3 // 512
    else:
        assert table["label"] == "gpt"
        assert [p["type"] for p in parts] == [
            "21686148-6449-6E6F-744E-656564454649",  # BIOS boot (GRUB core.img for SeaBIOS)
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EFI system partition
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",  # Linux root, last so growpart can extend it
        ]
        assert all(p["start"] % 2048 == 0 for p in parts)  # 1 MiB aligned
        assert parts[1]["size"] * 512 == 128 * 1024**2
        # The root fills the disk up to the last 1 MiB boundary before the backup GPT.
        assert 0 <= table["lastlba"] + 1 - (parts[2]["start"] + parts[2]["size"]) < 2048
    assert len(parts) == (3 if firmware is Firmware.uefi else 1)
