"""Real guests: boot the Debian 12 test image, deprovision it, convert the disk to a fixed VHD and
inspect that offline. One run with localbuilder's default deprovision, one where the user's own
/tmp/DeprovisioningScript.sh replaces it."""

from __future__ import annotations

import shlex
from pathlib import Path

import paramiko
import pytest

from localbuilder import deprovision as dp
from localbuilder import disk, diskread, vhd
from localbuilder import inspect as ins
from localbuilder.deprovision import deprovision_linux
from localbuilder.errors import Disconnected
from localbuilder.guest.linux import linux_guest
from localbuilder.hypervisor.probe import resolve_accel, timeout_scale
from localbuilder.images import BuiltImage

pytestmark = pytest.mark.integration

USER_SCRIPT = b"""#!/bin/sh
# A user's own deprovision: generalizes only partly and leaves a marker, so the test can tell it ran.
set -e
rm -f /etc/ssh/ssh_host_*
cloud-init clean --logs
echo "ran as $(id -un)" > /root/user-deprovision-ran
sync
"""


def _public_key_line(key_file: Path) -> str:
    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    return f"{key.get_name()} {key.get_base64()}"


def _boot_deprovision_convert(
    tmp_path: Path, image: BuiltImage, *, user_script: bytes | None
) -> tuple[Path, str, str, bool]:
    accel = resolve_accel("auto")
    with linux_guest(image.path, image.format, workdir=tmp_path, accel=accel, keep_overlay=True) as lg:
        comm = lg.communicator
        # cloud-init provisioned the build user, host keys, instance state, sudoers and machine-id:
        # everything the deprovision must remove. Check the precondition, or a pass proves nothing.
        state = comm.run(
            "id -u && ls /etc/ssh/ssh_host_* && test -s /etc/machine-id && "
            "sudo test -e /etc/sudoers.d/90-cloud-init-users && test -e /var/lib/cloud/instance"
        )
        assert state.ok, state.stderr_tail
        if user_script is not None:
            put = comm.run("cat > /tmp/DeprovisioningScript.sh", stdin=user_script)
            assert put.ok, put.stderr_tail
        result = deprovision_linux(comm, lg.guest, lg.user, timeout=300 * timeout_scale(accel))
        assert result.user_script == (user_script is not None)
        assert not lg.guest.is_running()
        overlay, user, key = lg.overlay_path, lg.user, _public_key_line(lg.key_file)
    out = disk.to_fixed_vhd(overlay, "qcow2", tmp_path / "out.vhd", progress=False)
    assert out.virtual_size % vhd.MIB == 0 and out.footer.disk_type == vhd.DiskType.fixed
    return out.path, user, key, result.disconnected


def test_default_deprovision_generalizes_the_image(tmp_path: Path, debian_image: BuiltImage) -> None:
    vhd_path, user, key, _ = _boot_deprovision_convert(tmp_path, debian_image, user_script=None)
    report = ins.inspect_image(vhd_path, build_user=user, build_key=key)
    assert report.inspected and report.os == "linux" and "Debian" in report.os_name
    assert report.generalized, report.render()
    status = {c.check: c.status for c in report.checks}
    for check in ("build-user", "ssh-host-keys", "cloud-init", "machine-id", "sudoers", "tmp"):
        assert status[check] == ins.Status.passed, report.render()
    assert status["waagent"] == ins.Status.passed, report.render()  # the Debian image ships waagent
    # Debian's root has an empty authorized_keys: listed for information, not a failure.
    assert status["authorized-keys"] in (ins.Status.passed, ins.Status.info), report.render()
    assert report.tmp_leftovers == ()  # our script removed itself


def test_user_deprovisioning_script_replaces_ours(tmp_path: Path, debian_image: BuiltImage) -> None:
    vhd_path, user, key, _ = _boot_deprovision_convert(tmp_path, debian_image, user_script=USER_SCRIPT)
    report = ins.inspect_image(vhd_path, build_user=user, build_key=key)
    status = {c.check: c.status for c in report.checks}
    # The user's script ran as root and did what it does …
    assert report.root is not None
    marker = diskread.Ext4Reader(vhd_path, report.root.start).read_text("/root/user-deprovision-ran")
    assert marker == "ran as root\n"
    assert status["ssh-host-keys"] == ins.Status.passed and status["cloud-init"] == ins.Status.passed
    # … and ours did not: the build user, its key and the sudoers file are still there.
    assert status["build-user"] == ins.Status.failed
    assert status["authorized-keys"] == ins.Status.failed
    assert status["sudoers"] == ins.Status.failed
    assert "/tmp/DeprovisioningScript.sh" in report.tmp_leftovers
    assert not report.generalized


def test_deprovision_script_is_idempotent(tmp_path: Path, debian_image: BuiltImage) -> None:
    """Run deprovision.sh twice in one root shell (the second run finds the user already gone), the
    first without power-off: both must succeed, and the second must still power the guest off."""
    accel = resolve_accel("auto")
    with linux_guest(debian_image.path, debian_image.format, workdir=tmp_path, accel=accel) as lg:
        script = tmp_path / "deprovision.sh"
        script.write_bytes(dp.script_text())
        lg.communicator.upload(script, "/tmp/lb-first.sh", mode=0o755)
        lg.communicator.upload(script, "/tmp/lb-second.sh", mode=0o755)
        user = shlex.quote(lg.user)
        inner = f"LB_NO_POWEROFF=1 sh /tmp/lb-first.sh {user} && sh /tmp/lb-second.sh {user}"
        lines: list[str] = []
        try:
            result = lg.communicator.run(
                f"sudo -n sh -c {shlex.quote(inner)}",
                timeout=600,
                on_output=lambda stream, line: lines.append(line) if stream == "stdout" else None,
            )
            assert result.exit_status == 0, result.stderr_tail
        except Disconnected:
            pass  # the power-off won the race against the exit status; the power-off is what matters
        steps = [line for line in lines if line.startswith("deprovision: ")]
        # First run: the user exists; second run: already gone, so plain -deprovision, then power-off.
        assert steps.count(f"deprovision: user {lg.user} deleted") == 2, lines
        assert steps.index("deprovision: waagent -force -deprovision+user") < steps.index(
            "deprovision: waagent -force -deprovision"
        ), lines
        assert steps.count("deprovision: power-off scheduled") == 1, lines
        assert lg.guest.wait_shutdown(300 * timeout_scale(accel))
