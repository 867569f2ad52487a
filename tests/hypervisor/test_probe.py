"""KVM usability probe: fake qemu for the verdicts, the real qemu (TCG) for the hand-made payload."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localbuilder.errors import AcceleratorError, UsageError
from localbuilder.hypervisor import probe
from localbuilder.hypervisor.spec import Accel

from .conftest import MockCommand

VERSION = 'if [ "$1" = --version ]; then echo "QEMU emulator version 7.2.99 (fake)"; exit 0; fi\n'


@pytest.fixture
def device(tmp_path: Path) -> Path:
    # Stands in for /dev/kvm: exists and is read-writable, so the probe goes on to boot the payload.
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    return dev


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # setup_logging() elsewhere may stop propagation; attach the capture handler to our logger directly.
    logger = logging.getLogger("localbuilder")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="localbuilder")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_boot_sector_layout() -> None:
    sector = probe.boot_sector(1000)
    assert len(sector) == 512
    assert sector[-2:] == b"\x55\xaa"
    assert sector[3:7] == (1000).to_bytes(4, "little")
    with pytest.raises(ValueError):
        probe.boot_sector(0)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
def test_payload_really_exits_qemu_under_tcg(tmp_path: Path) -> None:
    # The hand-assembled bytes must run the loop and leave through isa-debug-exit with status 33.
    image = tmp_path / "probe.img"
    image.write_bytes(probe.boot_sector())
    start = time.monotonic()
    proc = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "16", "-nodefaults",
         "-no-user-config", "-display", "none", "-vga", "none",
         "-drive", f"file={image},format=raw,if=ide",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, timeout=30, check=False,
    )
    assert proc.returncode == probe.EXPECTED_STATUS, proc.stderr
    assert time.monotonic() - start < 10


def test_usable(mock_command: MockCommand, device: Path, lb_home: Path) -> None:
    calls = mock_command("qemu-system-x86_64", VERSION + "exit 33\n")
    result = probe.probe_kvm(device=device)
    assert result.usable and result.seconds is not None and result.seconds < 3
    argv = calls.read_text()
    assert "-accel kvm" in argv and "isa-debug-exit,iobase=0xf4,iosize=0x04" in argv
    assert probe.resolve_accel("auto", device=device) is Accel.kvm
    assert probe.resolve_accel("kvm", device=device) is Accel.kvm


def test_too_slow_falls_back_loudly(
    mock_command: MockCommand, device: Path, lb_home: Path, warnings: pytest.LogCaptureFixture
) -> None:
    mock_command("qemu-system-x86_64", VERSION + "exec sleep 60\n")
    start = time.monotonic()
    result = probe.probe_kvm(device=device, deadline=0.5)
    assert time.monotonic() - start < 5, "the probe must kill a hanging guest at its deadline"
    assert not result.usable and "did not finish" in result.reason

    monkey_deadline = probe.DEADLINE
    probe.DEADLINE = 0.5
    try:
        assert probe.resolve_accel("auto", device=device) is Accel.tcg
    finally:
        probe.DEADLINE = monkey_deadline
    text = warnings.text
    assert "FALLING BACK TO TCG" in text and "×4" in text
    with pytest.raises(AcceleratorError) as err:
        probe.resolve_accel("kvm", device=device)
    assert err.value.hint and "--accel tcg" in err.value.hint


def test_cannot_open_kvm(mock_command: MockCommand, device: Path, lb_home: Path) -> None:
    mock_command(
        "qemu-system-x86_64",
        VERSION
        + 'echo "Could not access KVM kernel module: Permission denied" >&2\n'
        + 'echo "qemu-system-x86_64: failed to initialize kvm: Permission denied" >&2\nexit 1\n',
    )
    result = probe.probe_kvm(device=device)
    assert not result.usable and not result.cacheable
    assert "failed to initialize kvm: Permission denied" in result.reason
    with pytest.raises(AcceleratorError, match="Permission denied"):
        probe.resolve_accel("kvm", device=device)
    # Not cached: fixing the permission must take effect on the next run.
    assert not (lb_home / "cache" / probe.CACHE_FILE).exists()


def test_missing_device(mock_command: MockCommand, tmp_path: Path, lb_home: Path) -> None:
    calls = mock_command("qemu-system-x86_64", VERSION + "exit 33\n")
    with pytest.raises(AcceleratorError, match="does not exist"):
        probe.resolve_accel("kvm", device=tmp_path / "no-kvm")
    assert "-accel kvm" not in calls.read_text()


def test_verdict_is_cached_per_host(mock_command: MockCommand, device: Path, lb_home: Path) -> None:
    calls = mock_command("qemu-system-x86_64", VERSION + "exit 33\n")
    assert probe.resolve_accel("auto", device=device) is Accel.kvm
    assert probe.resolve_accel("auto", device=device) is Accel.kvm
    assert calls.read_text().count("-accel kvm") == 1
    cache = json.loads((lb_home / "cache" / probe.CACHE_FILE).read_text())
    (key,) = cache
    assert "7.2.99 (fake)" in key and cache[key]["usable"] is True
    # Another qemu build is another host key: probed again.
    mock_command("qemu-system-x86_64", 'if [ "$1" = --version ]; then echo "QEMU 8.0"; exit 0; fi\nexit 33\n')
    assert probe.resolve_accel("auto", device=device) is Accel.kvm
    assert calls.read_text().count("-accel kvm") == 2


def test_tcg_needs_no_probe_and_bad_value(mock_command: MockCommand, device: Path) -> None:
    calls = mock_command("qemu-system-x86_64", "exit 1\n")
    assert probe.resolve_accel("TCG", device=device) is Accel.tcg
    assert not calls.exists()
    with pytest.raises(UsageError, match="hvf"):
        probe.resolve_accel("hvf", device=device)
