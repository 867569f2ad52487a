"""deprovision_linux() against the in-tree FakeCommunicator and FakeGuest, and the guest script
itself (syntax, header, the ovf-env.xml it writes)."""

from __future__ import annotations

import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from localbuilder import deprovision as dp
from localbuilder.communicator.fake import FakeCommunicator, FakeReply
from localbuilder.errors import DeprovisionError
from localbuilder.hypervisor import GuestSpec
from localbuilder.hypervisor.fake import FakeBehaviour, FakeGuest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "guest_scripts" / "deprovision.sh"


def comm_for(probe: int | FakeReply, script: int | FakeReply = 0) -> FakeCommunicator:
    """A connected fake guest: ``probe`` answers ``test -f /tmp/DeprovisioningScript.sh``, ``script`` the
    sudo command; anything else fails the test (strict)."""
    return FakeCommunicator(
        {re.compile(r"^test -f /tmp/DeprovisioningScript\.sh$"): probe, re.compile(r"^sudo -n sh "): script},
        strict=True,
        connected=True,
    )


def guest(tmp_path: Path, powers_off: bool = True) -> FakeGuest:
    spec = GuestSpec(name="t", disk=tmp_path / "d.qcow2", workdir=tmp_path)
    return FakeGuest(spec, FakeBehaviour(powers_off_by_itself=powers_off))


def test_default_uploads_and_runs_our_script_then_waits_for_power_off(tmp_path: Path) -> None:
    comm = comm_for(probe=1)
    g = guest(tmp_path)
    result = dp.deprovision_linux(comm, g, "lbuser", timeout=30)
    assert [(u.data, u.dst, u.mode) for u in comm.uploads] == [
        (SCRIPT.read_bytes(), "/tmp/localbuilder-deprovision.sh", 0o755)
    ]
    assert comm.commands == [
        "test -f /tmp/DeprovisioningScript.sh",
        "sudo -n sh /tmp/localbuilder-deprovision.sh lbuser",
    ]
    assert not result.user_script and result.exit_status == 0 and not result.disconnected
    assert result.script == "/tmp/localbuilder-deprovision.sh"
    assert g.calls == ["wait_shutdown"] and not g.is_running() and comm.events[-1] == "close"
    assert set(result.as_dict()) == {"user_script", "script", "exit_status", "disconnected", "seconds"}


def test_users_script_replaces_ours_and_runs_as_root_with_power_off(tmp_path: Path) -> None:
    comm = comm_for(probe=0)
    result = dp.deprovision_linux(comm, guest(tmp_path), "lbuser", timeout=30)
    assert result.user_script and result.script == "/tmp/DeprovisioningScript.sh"
    assert comm.uploads == []
    # The command is one root shell: our checkpoint marker removed (never in an image, whoever's script
    # deprovisions), the user's script, then the detached power-off on success.
    argv = shlex.split(comm.commands[-1])
    assert argv[:4] == ["sudo", "-n", "sh", "-c"]
    inner = argv[4]
    assert inner.startswith("rm -rf /var/lib/localbuilder; "
                            "chmod +x /tmp/DeprovisioningScript.sh && /tmp/DeprovisioningScript.sh; rc=$?;")
    assert "systemctl poweroff" in inner and inner.endswith('exit "$rc"')
    subprocess.run(["sh", "-n", "-c", inner], check=True)


def test_disconnect_while_powering_off_is_success(tmp_path: Path) -> None:
    comm = comm_for(probe=1, script=FakeReply(stdout="deprovision: done\n", disconnect=True))
    result = dp.deprovision_linux(comm, guest(tmp_path), "lbuser", timeout=30)
    assert result.disconnected and result.exit_status is None


def test_script_failure_names_the_status_and_hint(tmp_path: Path) -> None:
    comm = comm_for(
        probe=1, script=FakeReply(3, stderr="deprovision: waagent -force -deprovision+user failed")
    )
    g = guest(tmp_path)
    with pytest.raises(DeprovisionError, match="exited with status 3\ndeprovision: waagent") as info:
        dp.deprovision_linux(comm, g, "lbuser", timeout=30)
    assert info.value.hint and "waagent" in info.value.hint
    assert g.calls == []  # no waiting for a power-off that was never scheduled


def test_users_failing_script_is_blamed(tmp_path: Path) -> None:
    comm = comm_for(probe=0, script=FakeReply(1, stderr="oops"))
    with pytest.raises(DeprovisionError, match="DeprovisioningScript.sh exited with status 1") as info:
        dp.deprovision_linux(comm, guest(tmp_path), "lbuser", timeout=30)
    assert info.value.hint and "user's own deprovision script" in info.value.hint


def test_missing_passwordless_sudo_is_explained(tmp_path: Path) -> None:
    comm = comm_for(probe=1, script=FakeReply(1, stderr="sudo: a password is required"))
    with pytest.raises(DeprovisionError) as info:
        dp.deprovision_linux(comm, guest(tmp_path), "lbuser", timeout=30)
    assert info.value.hint and "passwordless sudo" in info.value.hint


def test_no_power_off_is_a_timeout_error(tmp_path: Path) -> None:
    comm = comm_for(probe=1)
    with pytest.raises(DeprovisionError, match="did not power off within 30 s") as info:
        dp.deprovision_linux(comm, guest(tmp_path, powers_off=False), "lbuser", timeout=30)
    assert info.value.hint and "serial log" in info.value.hint


def test_hanging_script_is_a_timeout_error(tmp_path: Path) -> None:
    comm = comm_for(probe=1, script=FakeReply(hang=True))
    with pytest.raises(DeprovisionError, match="did not finish within 30 s"):
        dp.deprovision_linux(comm, guest(tmp_path), "lbuser", timeout=30)


def test_unreachable_guest_is_an_error(tmp_path: Path) -> None:
    comm = comm_for(probe=FakeReply(disconnect=True))
    with pytest.raises(DeprovisionError, match="cannot reach the guest"):
        dp.deprovision_linux(comm, guest(tmp_path), "lbuser", timeout=30)


@pytest.mark.parametrize("user", ["", "Root", "a b", "x;reboot", "-rf"])
def test_invalid_user_names_are_refused(tmp_path: Path, user: str) -> None:
    comm = comm_for(probe=1)
    with pytest.raises(DeprovisionError, match="invalid build user name"):
        dp.deprovision_linux(comm, guest(tmp_path), user, timeout=30)
    assert comm.commands == []


# ------------------------------------------------------------------------------------ the guest script


def test_packaged_script_is_the_guest_scripts_file() -> None:
    assert dp.script_text() == SCRIPT.read_bytes()


def test_script_syntax_and_header() -> None:
    subprocess.run(["sh", "-n", str(SCRIPT)], check=True)
    header = SCRIPT.read_text().split("\nset -u", 1)[0]
    for word in ("Inputs:", "Exit codes:", "Idempotency:", "waagent -force -deprovision+user", "FACTS §4"):
        assert word in header
    for code in ("0 ", "2 ", "3 ", "4 "):
        assert f"#   {code}" in header


@pytest.mark.parametrize("user", ["", "bad user", "x;id", "-r"])
def test_script_rejects_bad_user_names_before_doing_anything(user: str) -> None:
    # Safe to run on the host: argument checks come before any change (and as non-root it stops even earlier).
    proc = subprocess.run(["sh", str(SCRIPT), user], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "usage" in proc.stderr or "must run as root" in proc.stderr


def test_ovf_env_xml_satisfies_waagents_parser() -> None:
    """Extract the heredoc and check what waagent's OvfEnv parser looks up (namespaced elements)."""
    text = SCRIPT.read_text()
    body = text.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0].replace("$user", "lbuser")
    root = ET.fromstring(body)
    ovf, wa = "{http://schemas.dmtf.org/ovf/environment/1}", "{http://schemas.microsoft.com/windowsazure}"
    assert root.tag == f"{ovf}Environment"
    section = root.find(f"{wa}ProvisioningSection")
    assert section is not None and section.findtext(f"{wa}Version") == "1.0"
    conf = section.find(f"{wa}LinuxProvisioningConfigurationSet")
    assert conf is not None
    assert conf.findtext(f"{wa}UserName") == "lbuser" and conf.findtext(f"{wa}HostName")
    settings = root.find(f"{wa}PlatformSettingsSection/{wa}PlatformSettings")
    assert settings is not None and settings.findtext(f"{wa}ProvisionGuestAgent") == "true"
