"""Overlays and the fixed-VHD conversion: the exact qemu-img argv (golden), then real qemu-img runs."""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from localbuilder import disk, vhd
from localbuilder.errors import ConversionError

MIB = 1024 * 1024
GIB = 1024 * MIB


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _raw_with_data(path: Path, size: int) -> Path:
    """A sparse raw disk with ~6 MiB of recognisable data at its start, middle and end."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 2 - (size // 2) % 512, size - 2 * MIB):
            f.seek(offset)
            f.write(os.urandom(2 * MIB))
    return path


def _record(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every argv disk.py runs, while still running it for real."""
    calls: list[list[str]] = []
    real_run, real_spawn = disk.run, disk.spawn

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def inner(cmd: list[Any], *args: Any, **kwargs: Any) -> Any:
            calls.append([os.fspath(c) for c in cmd])
            return real(cmd, *args, **kwargs)

        return inner

    monkeypatch.setattr(disk, "run", wrap(real_run))
    monkeypatch.setattr(disk, "spawn", wrap(real_spawn))
    return calls


def test_conversion_argv_golden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, golden: Callable[[str, str], None]
) -> None:
    src = _raw_with_data(tmp_path / "src.raw", 8 * MIB + 4096)  # not MiB-aligned: grown via an overlay
    calls = _record(monkeypatch)
    disk.to_fixed_vhd(src, "raw", tmp_path / "out.vhd", progress=False)
    text = "\n".join(shlex.join(c) for c in calls).replace(str(tmp_path), "TMP") + "\n"
    golden(text, "disk-to-fixed-vhd.argv")


def test_convert_argv_forces_the_size() -> None:
    assert disk.convert_argv(Path("/a.qcow2"), "qcow2", Path("/b.vhd.partial")) == [
        "qemu-img", "convert", "-p", "-f", "qcow2", "-O", "vpc",
        "-o", "subformat=fixed,force_size=on", "/a.qcow2", "/b.vhd.partial",
    ]  # fmt: skip


def test_qemu_img_info(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True)
    info = disk.qemu_img_info(base, "qcow2")
    assert (info.format, info.virtual_size, info.backing_file) == ("qcow2", 64 * MIB, None)
    with pytest.raises(ConversionError, match="image not found"):
        disk.qemu_img_info(tmp_path / "none.qcow2")
    with pytest.raises(ConversionError, match="qemu-img cannot read .* as vpc"):
        disk.qemu_img_info(base, "vpc")


def test_overlay_grows_and_never_writes_the_base(tmp_path: Path) -> None:
    base = _raw_with_data(tmp_path / "base.raw", 16 * MIB)
    before = _sha(base)
    info = disk.create_overlay(base, "raw", tmp_path / "ov.qcow2", 32 * MIB)
    assert info.virtual_size == 32 * MIB and info.backing_file == str(base) and info.backing_format == "raw"
    same = disk.create_overlay(base, "raw", tmp_path / "same.qcow2")
    assert same.virtual_size == 16 * MIB
    assert _sha(base) == before


def test_overlay_refuses_to_shrink(tmp_path: Path) -> None:
    base = _raw_with_data(tmp_path / "base.raw", 16 * MIB)
    with pytest.raises(
        ConversionError, match=f"requested {8 * MIB} bytes .* smaller than its virtual size {16 * MIB}"
    ):
        disk.create_overlay(base, "raw", tmp_path / "ov.qcow2", 8 * MIB)
    assert not (tmp_path / "ov.qcow2").exists()


@pytest.mark.parametrize("virtual", [2 * GIB, 30 * GIB])
def test_real_conversion_is_exact_sparse_and_identical(tmp_path: Path, virtual: int) -> None:
    src = _raw_with_data(tmp_path / "src.raw", 2 * GIB)
    qcow = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", src, qcow], check=True)
    before = _sha(qcow)
    out = disk.to_fixed_vhd(qcow, "qcow2", tmp_path / "out.vhd", size_bytes=virtual, progress=False)
    assert out.virtual_size == virtual and out.source_size == 2 * GIB
    assert os.path.getsize(out.path) == virtual + 512
    assert out.footer.current_size == virtual and out.footer.disk_type == vhd.DiskType.fixed
    assert out.allocated < 64 * MIB, f"output not sparse: {out.allocated} bytes allocated"
    # Same data; the grown tail reads as zeros (qemu-img compare treats the size difference that way).
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "vpc", src, out.path], check=True)
    assert _sha(qcow) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.vhd", "src.qcow2", "src.raw"]


def test_unaligned_source_is_rounded_up_to_a_mib(tmp_path: Path) -> None:
    src = _raw_with_data(tmp_path / "src.raw", 5 * MIB + 512)
    before = (_sha(src), src.stat().st_size)
    out = disk.to_fixed_vhd(src, "raw", tmp_path / "out.vhd", progress=False)
    assert out.virtual_size == 6 * MIB and out.source_size == 5 * MIB + 512
    vhd.check_fixed_vhd(out.path)
    assert (_sha(src), src.stat().st_size) == before
    with open(out.path, "rb") as f:
        data = f.read(5 * MIB + 512)
        tail = f.read(MIB - 512)
    assert data == src.read_bytes() and tail == bytes(MIB - 512)
    assert not list(tmp_path.glob(".*grow*")) and not list(tmp_path.glob("*.partial"))


def test_shrink_and_oversize_are_refused_before_writing(tmp_path: Path) -> None:
    src = _raw_with_data(tmp_path / "src.raw", 8 * MIB)
    with pytest.raises(ConversionError, match="cannot shrink"):
        disk.to_fixed_vhd(src, "raw", tmp_path / "a.vhd", size_bytes=4 * MIB, progress=False)
    with pytest.raises(ConversionError, match="2040 GiB") as info:
        disk.to_fixed_vhd(src, "raw", tmp_path / "b.vhd", size_bytes=2041 * GIB, progress=False)
    assert info.value.hint and "2040" in info.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.raw"]


def _fake_qemu_img(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    """qemu-img that works for info/create but writes half a file and fails on convert."""
    real = subprocess.run(["sh", "-c", "command -v qemu-img"], capture_output=True, text=True).stdout.strip()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "qemu-img"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = convert ]; then\n'
        "  for last; do :; done\n"
        '  head -c 65536 /dev/zero > "$last"\n'
        '  printf "    (0.00/100%%)\\r    (42.00/100%%)\\r"\n'
        f'  echo "qemu-img: error while writing at byte 1234: {message}" >&2\n'
        "  exit 1\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_disk_full_removes_the_partial_file_and_hints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _raw_with_data(tmp_path / "src.raw", 8 * MIB)
    _fake_qemu_img(tmp_path, monkeypatch, "No space left on device")
    with pytest.raises(ConversionError, match="disk full while writing") as info:
        disk.to_fixed_vhd(src, "raw", tmp_path / "out.vhd", progress=False)
    assert info.value.hint and "full" in info.value.hint
    assert not (tmp_path / "out.vhd").exists() and not (tmp_path / "out.vhd.partial").exists()


def test_qemu_img_failure_removes_the_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _raw_with_data(tmp_path / "src.raw", 8 * MIB + 512)  # also exercises the grow overlay cleanup
    _fake_qemu_img(tmp_path, monkeypatch, "Input/output error")
    with pytest.raises(ConversionError, match="qemu-img could not convert .*Input/output error"):
        disk.to_fixed_vhd(src, "raw", tmp_path / "out.vhd", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "src.raw"]


def test_ctrl_c_kills_qemu_img_and_removes_the_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _raw_with_data(tmp_path / "src.raw", 8 * MIB)
    dst = tmp_path / "out.vhd"
    dst.write_bytes(b"previous result")  # an earlier VHD must survive an interrupted conversion
    procs: list[Any] = []
    real_spawn = disk.spawn

    def spawn(cmd: list[Any], **kwargs: Any) -> Any:
        proc = real_spawn(
            ["sh", "-c", 'head -c 4096 /dev/zero > "$1"; exec sleep 30', "sh", cmd[-1]], **kwargs
        )
        procs.append(proc)
        return proc

    def interrupted(stream: Any, bar: Any) -> None:
        partial = tmp_path / "out.vhd.partial"
        for _ in range(200):
            if partial.exists():
                break
            os.sched_yield()
            __import__("time").sleep(0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(disk, "spawn", spawn)
    monkeypatch.setattr(disk, "_pump_progress", interrupted)
    with pytest.raises(KeyboardInterrupt):
        disk.to_fixed_vhd(src, "raw", dst, progress=False)
    assert procs and procs[0].poll() is not None, "qemu-img was left running"
    assert dst.read_bytes() == b"previous result"
    assert not (tmp_path / "out.vhd.partial").exists()


def test_progress_percentages_feed_the_bar() -> None:
    class Bar:
        n = 0.0

        def update(self, d: float) -> None:
            self.n += d

    r, w = os.pipe()
    os.write(w, b"    (0.00/100%)\r    (12.50/100\x25)\r    (12.50/100%)\r    (100.00/100%)\r\n")
    os.close(w)
    bar = Bar()
    with io.FileIO(r, "rb") as stream:
        disk._pump_progress(stream, bar)  # type: ignore[arg-type]
    assert bar.n == 100.0
