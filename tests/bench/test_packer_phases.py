"""Phase breakdown of a Packer run from its time-stamped console lines (bench/packer.py)."""

from __future__ import annotations

import pytest

from bench.packer import after_guest_ready, packer_phases, table

# Trimmed from a real Packer 1.6.6 run of examples/debian-hello.json (seconds since `packer build`).
LINES = [
    (0.3, "==> qemu: Creating required virtual machine disks"),
    (2.3, "==> qemu: Waiting 10s for boot..."),
    (12.5, "==> qemu: Waiting for SSH to become available..."),
    (62.7, "==> qemu: Connected to SSH!"),
    (62.7, "==> qemu: Provisioning with shell script: /tmp/p/packer-shell4133550173"),
    (81.9, "==> qemu: Provisioning with shell script: /tmp/p/packer-shell3587264059"),
    (82.9, "    qemu: built from Debian GNU/Linux 12 (bookworm)"),
    (83.8, "==> qemu: Provisioning with shell script: /cache/fetch/755efe27f741"),
    (84.9, "==> qemu: Uploading /cache/fetch/e4acad62cfb7 => /tmp/index.html"),
    (85.1, "==> qemu: Provisioning with shell script: /tmp/p/packer-shell1649609193"),
    (86.7, "==> qemu: Uploading /tmp/p/deprovision.sh => /tmp/localbuilder-deprovision.sh"),
    (86.8, "==> qemu: Gracefully halting virtual machine..."),
    (98.4, "Build 'qemu' finished after 1 minute 37 seconds."),
]


def test_phases_from_markers() -> None:
    phases = packer_phases(LINES, 98.4, provisioners=6)
    assert phases["setup"] == pytest.approx(12.5)
    assert phases["boot"] == pytest.approx(81.9 - 12.5)  # until the cloud-init wait is over
    assert phases["customize"] == pytest.approx(86.7 - 81.9)
    assert phases["deprovision"] == pytest.approx(98.4 - 86.7)
    assert phases["ssh_login_at"] == pytest.approx(62.7)


def test_unexpected_output_gives_no_breakdown() -> None:
    assert packer_phases(LINES, 98.4, provisioners=7) == {}  # a provisioner start is missing
    assert packer_phases([x for x in LINES if "halting" not in x[1]], 98.4, provisioners=6) == {}


def test_table_sums_setup_and_boot_and_shows_totals() -> None:
    lb_phases = {"setup": 0.2, "boot": 71.2, "customize": 4.7, "deprovision": 15.2, "conversion": 1.3,
                 "inspect+distribute": 0.1}
    lb = {"total_seconds": 93.1, "phases": lb_phases}
    packer = {"total_seconds": 100.8,
              "phases": packer_phases(LINES, 98.4, provisioners=6) | {"conversion": 2.4}}
    text = table(lb, packer)
    ready = next(line for line in text.splitlines() if line.startswith("start -> guest ready"))
    assert ready.split()[-2:] == ["71.4", "81.9"]
    assert text.splitlines()[-2].split()[-2:] == ["93.1", "100.8"]


def test_after_guest_ready_excludes_setup_and_boot() -> None:
    packer = {"total_seconds": 100.8, "phases": packer_phases(LINES, 98.4, provisioners=6)}
    assert after_guest_ready(packer) == pytest.approx(100.8 - 81.9, abs=0.05)
    assert after_guest_ready({"total_seconds": 100.8, "phases": {}}) is None


def test_table_with_a_warm_column_and_the_checkpoint_row() -> None:
    cold = {"total_seconds": 93.1, "phases": {"setup": 0.2, "boot": 71.2, "customize": 4.7}}
    warm = {"total_seconds": 20.4, "phases": {"setup": 0.2, "boot": 3.0, "checkpoints": 0.0,
                                              "deprovision": 10.2}}
    packer = {"total_seconds": 100.8, "phases": packer_phases(LINES, 98.4, provisioners=6)}
    lines = table(cold, packer, warm).splitlines()
    assert lines[0].split()[-4:] == ["localbuilder", "lb", "warm", "packer"]
    ready = next(line for line in lines if line.startswith("start -> guest ready"))
    assert ready.split()[-3:] == ["71.4", "3.2", "81.9"]
    saves = next(line for line in lines if line.startswith("saving checkpoints"))
    assert saves.split()[-3:] == ["-", "0.0", "-"]
    assert lines[-2].split()[-3:] == ["93.1", "20.4", "100.8"]
