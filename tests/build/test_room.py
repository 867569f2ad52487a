"""localbuilder.room: the output and run directories are probed, and sized, before any guest boots.

Real filesystems where they matter: tmpfs mounts (read-only, too small, full) need root, and are always
unmounted. vfat (no sparse files) cannot be mounted on this kernel, so the sparse probe's verdict is
tested on a faked allocation, and the real probe on tmpfs and on the filesystem under tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from localbuilder import room
from localbuilder.errors import UsageError
from tests.build.mounts import tmpfs

MIB = 1024**2

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def no_probe_files(directory: Path) -> bool:
    return not any(p.name.startswith(".localbuilder-probe-") for p in directory.iterdir())


def probe(path: Path) -> room.Place:
    return room.probe(path, label=f"--output-dir {path}", hint=room.OUTPUT_HINT)


# -- probing a directory -------------------------------------------------------------------------------


def test_a_directory_to_create_is_probed_in_its_nearest_ancestor_and_not_created(tmp_path: Path) -> None:
    place = probe(tmp_path / "a" / "b")
    assert place.existing == tmp_path
    assert place.free > 0 and place.sparse
    assert not (tmp_path / "a").exists()
    assert no_probe_files(tmp_path)


def test_an_existing_directory(tmp_path: Path) -> None:
    place = probe(tmp_path)
    assert place.existing == tmp_path == place.path
    assert no_probe_files(tmp_path)


def test_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError) as err:
        probe(tmp_path / "f")
    assert err.value.message == f"--output-dir {tmp_path / 'f'}: {tmp_path / 'f'} exists and is a file"
    assert err.value.hint == room.OUTPUT_HINT


def test_a_path_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match=r"cannot be created: .*/f is a file, not a directory"):
        probe(tmp_path / "f" / "out" / "deeper")
    assert (tmp_path / "f").read_text() == "x"


def test_a_dangling_symlink_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        probe(tmp_path / "link")


@needs_root
def test_a_read_only_mount_is_refused(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        with pytest.raises(UsageError, match=r"ro is on a read-only filesystem$"):
            probe(mnt)
        with pytest.raises(UsageError, match=r"read-only filesystem \(it would be created in .*/ro\)"):
            probe(mnt / "out")


@needs_root
def test_a_remounted_read_only_filesystem_is_refused(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "m", "size=1m") as mnt:
        (mnt / "out").mkdir()
        probe(mnt / "out")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(UsageError, match="read-only filesystem"):
            probe(mnt / "out")


@needs_root
def test_a_read_only_filesystem_is_found_by_writing_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """statvfs's ST_RDONLY is not the only signal: EROFS from the scratch file says the same."""
    real = os.statvfs

    class Writable:
        def __init__(self, st: os.statvfs_result) -> None:
            self._st = st
            self.f_flag = st.f_flag & ~os.ST_RDONLY

        def __getattr__(self, name: str) -> object:
            return getattr(self._st, name)

    monkeypatch.setattr(room.os, "statvfs", lambda p: Writable(real(p)))
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        with pytest.raises(UsageError, match="is on a read-only filesystem"):
            probe(mnt)


@needs_root
def test_a_full_filesystem_is_refused(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "size=1m") as mnt:
        with open(mnt / "filler", "wb") as fh:
            with contextlib.suppress(OSError):
                fh.write(b"\1" * (2 * MIB))
        with pytest.raises(UsageError, match=r"the filesystem of .*/full is full"):
            probe(mnt / "out")
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]


@needs_root
def test_root_ignores_permission_bits_and_so_does_the_probe(tmp_path: Path) -> None:
    d = tmp_path / "locked"
    d.mkdir(mode=0o500)
    assert probe(d / "out").existing == d  # root may write there: the build would succeed
    assert no_probe_files(d)


# -- sparse files --------------------------------------------------------------------------------------


def test_sparse_verdict() -> None:
    assert room.holds_holes(4096)  # one block for the one byte
    assert room.holds_holes(0)  # not flushed yet, or inline data
    assert not room.holds_holes(MIB + 4096)  # vfat: everything before the byte is allocated too
    assert not room.holds_holes(MIB)


@needs_root
def test_the_real_probe_finds_sparse_files_on_tmpfs(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "t", "size=8m") as mnt:
        assert probe(mnt).sparse


def test_the_real_probe_finds_sparse_files_under_tmp_path(tmp_path: Path) -> None:
    assert probe(tmp_path).sparse  # ext4/overlayfs/tmpfs here


def test_without_sparse_files_the_full_virtual_size_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(room, "_allocated", lambda fd: MIB + 4096)  # what vfat reports
    place = probe(tmp_path)
    assert not place.sparse
    size = room.VhdSize(virtual=64 * MIB, data=5 * MIB)
    assert size.on(place) == 64 * MIB + 512
    # On the same filesystem, no hard links either (vfat): the work VHD and one copy per target.
    needs = room.plan(size, 2, output_dir=tmp_path / "out", run_dir=tmp_path / "runs")
    assert [(n.what, n.bytes) for n in needs] == [
        ("the work VHD", 64 * MIB + 512),
        ("2 output VHDs", 2 * (64 * MIB + 512)),
    ]


# -- sizes and the check -------------------------------------------------------------------------------


def test_vhd_size_measures_the_data_of_a_compressed_looking_image(tmp_path: Path) -> None:
    image = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 6M", str(image)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    size = room.vhd_size(image, "qcow2", None)
    assert size is not None
    assert size.virtual == 64 * MIB
    assert 6 * MIB <= size.data < 7 * MIB  # the data plus a little qcow2 metadata
    grown = room.vhd_size(image, "qcow2", 1)  # osDiskSizeGB grows the disk; the data stays
    assert grown == room.VhdSize(1024 * MIB, size.data)


def test_vhd_size_without_a_source(tmp_path: Path) -> None:
    assert room.vhd_size(None, None, None) is None
    assert room.vhd_size(None, None, 2) == room.VhdSize(2048 * MIB, 0)


def test_same_filesystem_needs_one_vhd(tmp_path: Path) -> None:
    size = room.VhdSize(virtual=64 * MIB, data=5 * MIB)
    needs = room.plan(size, 3, output_dir=tmp_path / "out", run_dir=tmp_path / "runs")
    assert [(n.what, n.bytes) for n in needs] == [("the work VHD", 5 * MIB)]  # the targets are hard links
    assert room.plan(size, 3, output_dir=None, run_dir=tmp_path / "runs")[0].bytes == 5 * MIB
    room.check(needs)


@needs_root
def test_a_too_small_output_filesystem_is_refused(tmp_path: Path) -> None:
    size = room.VhdSize(virtual=2048 * MIB, data=20 * MIB)
    with tmpfs(tmp_path / "small", "size=8m") as mnt:
        needs = room.plan(size, 1, output_dir=mnt / "out", run_dir=tmp_path / "runs")
        assert [(n.what, n.bytes) for n in needs] == [
            ("the work VHD", 20 * MIB),
            ("the output VHD", 20 * MIB),
        ]
        with pytest.raises(UsageError) as err:
            room.check(needs)
        assert err.value.message == (
            f"--output-dir {mnt / 'out'}: not enough room: the output VHD needs 20 MiB, 8 MiB free on the "
            f"filesystem of {mnt} (a sparse VHD takes the disk's data, measured from the source; "
            "customizations add to it)"
        )
        assert err.value.hint == room.OUTPUT_HINT
        # Two targets copy twice; a small enough VHD fits.
        room.check(room.plan(room.VhdSize(2048 * MIB, 3 * MIB), 2, output_dir=mnt, run_dir=tmp_path))
        with pytest.raises(UsageError, match=r"2 output VHDs needs 10 MiB"):
            room.check(room.plan(room.VhdSize(2048 * MIB, 5 * MIB), 2, output_dir=mnt, run_dir=tmp_path))
        assert list(mnt.iterdir()) == []


@needs_root
def test_a_too_small_run_filesystem_is_refused(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "home", "size=8m") as mnt:
        with pytest.raises(UsageError) as err:
            room.check(room.plan(room.VhdSize(64 * MIB, 20 * MIB), 1, output_dir=None, run_dir=mnt / "runs"))
        assert err.value.message.startswith(f"run directory {mnt / 'runs'}: not enough room: the work VHD "
                                            "needs 20 MiB, 8 MiB free")  # fmt: skip
        assert "LOCALBUILDER_HOME" in (err.value.hint or "")


def test_needs_are_summed_per_filesystem(tmp_path: Path) -> None:
    place = probe(tmp_path)
    half = place.free // 2 + MIB
    room.check([room.Need(place, half, "a")])
    with pytest.raises(UsageError, match=r"needs .* \(a .* \+ b .*\)"):
        room.check([room.Need(place, half, "a"), room.Need(place, half, "b")])
