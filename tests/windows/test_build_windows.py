"""A Windows corpus template through the build orchestrator, against the WS-Man server and the guest model.

What is real here: template loading and validation, the orchestrator (``Build``), the customizer classes
(PowerShell, WindowsRestart, File, WindowsUpdate), ``WinRMCommunicator`` over real pywinrm (HTTPS,
NTLM, pinned certificate) and ``deprovision_windows``. What is not: the guest (the model).

``test_corpus_windows_template`` uses a minimal platform (placeholder disk). ``test_windows_boot_path_
through_build`` goes through ``guest.windows.boot_for_build``: a real qcow2 overlay, the first-boot ISO
(whose certificate and password the fake guest serves), the fake hypervisor counting resets, Sysprep and
a real fixed-VHD conversion. The offline inspection is Linux-only and skipped in both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localbuilder.guest import BootedGuest, DeprovisionOutcome, GuestRequest, Inspection, SourceImage
from localbuilder.hypervisor.fake import FakeGuest
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.state import RunState
from localbuilder.template import parse_template
from localbuilder.template.load import load_documents
from localbuilder.template.model import OsType, Template
from localbuilder.windows import deprovision_windows
from tests.windows.guest_model import SEALED, WindowsGuest
from tests.windows.helpers import USER, ServerGuest, connect, server_from_media
from tests.windows.wsman_server import WSManServer, decode_powershell

TEMPLATE = (
    "Azure__azvmimagebuilder__quickquickstarts__0_Creating_a_Custom_Windows_Managed_Image__"
    "helloImageTemplateWin.json"
)

# What the template's scriptUri (danielsollondon/azvmimagebuilder testPsScript.ps1) does: create the
# build directory the later File step writes into.
TEST_PS_SCRIPT = "Write-Host 'Creating build path'\r\nmkdir c:\\buildArtifacts\r\n"


class WindowsTestPlatform:
    """The Platform the orchestrator drives: the WS-Man server plays the booted Windows guest."""

    def __init__(self, srv: WSManServer, model: WindowsGuest, tmp: Path) -> None:
        self.srv = srv
        self.model = model
        self.tmp = tmp
        self.deprovisions = 0

    def resolve(self, source: Any) -> SourceImage:
        return SourceImage(path=self.tmp / "win.vhd", format="vpc", os=OsType.windows,
                           label=f"{source.publisher}:{source.offer}:{source.sku}:{source.version}")

    @contextlib.contextmanager
    def boot(self, request: GuestRequest) -> Iterator[BootedGuest]:
        from localbuilder.hypervisor import GuestSpec

        comm = connect(self.srv)
        comm.wait_ready(request.timeout)
        overlay = self.tmp / "overlay.qcow2"
        overlay.write_bytes(b"")
        guest = ServerGuest(self.srv, self.model, GuestSpec(name="win", disk=overlay, workdir=self.tmp))
        yield BootedGuest(guest=guest, comm=comm, host="127.0.0.1", port=self.srv.port, user=USER,
                          key_file=Path("/nonexistent"), overlay=overlay, overlay_format="qcow2",
                          serial_log=None, backend="fake")

    def deprovision(self, booted: BootedGuest, *, timeout: float) -> DeprovisionOutcome:
        self.deprovisions += 1
        user = deprovision_windows(booted.comm, booted.guest, timeout=timeout, shutdown_timeout=10)
        return DeprovisionOutcome(user_script=user, script_seconds=0.0, poweroff_seconds=0.0)

    def convert(self, src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        dst.write_bytes(b"placeholder: the disk is not part of this test")
        return 1024 * 1024

    def inspect(self, vhd: Path, build_user: str) -> Inspection:
        return Inspection(problems=(), report={"note": "offline inspection of Windows disks is not done"})


def test_corpus_windows_template(corpus_dir: Path, tmp_path: Path, wsman, monkeypatch) -> None:
    # Packer's 10 s / 5 s pauses of the restart loop, shortened for the test
    monkeypatch.setattr("localbuilder.windows.restart.PENDING_INTERVAL", 0.05)
    monkeypatch.setattr("localbuilder.windows.restart.CHECK_INTERVAL", 0.05)
    srv, model = wsman(https=True, auth="ntlm")
    script = tmp_path / "testPsScript.ps1"
    script.write_text(TEST_PS_SCRIPT)
    index = tmp_path / "index.html"
    index.write_text("<html>Azure Image Builder</html>\n")
    # The template's URIs point at GitHub; the test has no network, so they are redirected to local files
    # the same way a user can (--set).
    loaded = load_documents(
        corpus_dir / TEMPLATE,
        sets=[
            f"properties.customize[0].scriptUri={script.as_uri()}",
            f"properties.customize[2].sourceUri={index.as_uri()}",
            # ManagedImage distribution is not this test's subject (and needs Azure): keep the VHD
            'properties.distribute=[{"type": "VHD", "runOutputName": "win"}]',
        ],
    )
    template, result = parse_template(loaded[0])
    assert template is not None, [str(f) for f in result.findings]
    assert str(template.os_type) == "windows"

    platform = WindowsTestPlatform(srv, model, tmp_path)
    options = BuildOptions(runs_root=tmp_path / "runs", output_dir=tmp_path / "out", interactive=False)
    record = Build(template, corpus_dir / TEMPLATE, platform, options).execute()

    assert record.run_state is RunState.Succeeded, record
    # The guest went through exactly what AIB would do, in order:
    assert [e for e in model.events if not e.startswith("upload c:\\windows\\temp")] == [
        "mkdir c:\\buildartifacts",  # customize[0] PowerShell scriptUri
        "restart", "boot 2",  # customize[1] WindowsRestart
        "write c:\\buildartifacts\\azureimagebuilderrestart.txt",  # its restartCheckCommand
        "upload c:\\buildartifacts\\index.html",  # customize[2] File
        "mkdir c:\\buildactions", "write c:\\buildactions\\buildactionsoutput.txt",  # customize[3]
        "task SYSTEM", "update 101", "restart", "boot 3",  # customize[4] WindowsUpdate …
        "task SYSTEM", "update 101", "restart", "boot 4",
        "task SYSTEM", "update 0",
        "upload c:\\deprovisioningscript.ps1", "sysprep", "power off",  # the hidden deprovision step
    ]
    assert model.read("c:\\buildArtifacts\\index.html") == index.read_bytes()
    assert model.update_calls[0]["SearchCriteria"] == "IsInstalled=0"
    assert model.update_calls[0]["Filters"] == ["exclude:$_.Title -like '*Preview*'", "include:$true"]
    assert model.update_calls[0]["UpdateLimit"] == "20"
    assert model.image_state == SEALED and model.powered_off
    assert srv.resets == 3
    assert model.unmodelled == []
    # runElevated=false PowerShell steps ran over WinRM directly, not through a task
    scripts = [decode_powershell(c) or c for c in srv.commands]
    assert sum("$taskName" in s for s in scripts) == 0  # launchers run with -File, not encoded
    steps = [line for line in customization_log(tmp_path).splitlines() if "WindowsUpdate" in line]
    assert steps, "the customization log names the WindowsUpdate step"


def customization_log(tmp_path: Path) -> str:
    logs = sorted((tmp_path / "runs").rglob("customization.log"))
    assert logs, "no customization.log in the run directory"
    return logs[-1].read_text()


class FakeHypervisorPlatform:
    """The real Windows boot path (overlay, first-boot ISO, port forward, pinned WinRM, Sysprep,
    fixed-VHD conversion) with the fake hypervisor: its guests are WS-Man servers set up from the ISO."""

    def __init__(self, base: Path, tmp: Path) -> None:
        from localbuilder.hypervisor.fake import FakeHypervisor

        self.base = base
        self.tmp = tmp
        self.models: list[ModelledGuest] = []
        self.servers: list[WSManServer] = []
        self.booted: list[BootedGuest] = []
        self.hv = FakeHypervisor(script=self._boot)

    def _boot(self, spec: Any) -> Any:
        from localbuilder.hypervisor.fake import FakeBehaviour

        model = ModelledGuest()
        self.models.append(model)
        self.servers.append(server_from_media(spec, model, self.tmp))
        return FakeBehaviour()

    def resolve(self, source: Any) -> SourceImage:
        return SourceImage(path=self.base, format="qcow2", os=OsType.windows, label="win (test)", uefi=True)

    @contextlib.contextmanager
    def boot(self, request: GuestRequest) -> Iterator[BootedGuest]:
        from localbuilder.guest.windows import boot_for_build
        from localbuilder.hypervisor.spec import Accel

        with boot_for_build(request, hypervisor=self.hv, accel=Accel.kvm) as booted:
            self.models[-1].fake_guest = booted.guest
            self.booted.append(booted)
            yield booted

    def deprovision(self, booted: BootedGuest, *, timeout: float) -> DeprovisionOutcome:
        from localbuilder.guest.windows import deprovision_for_build

        return deprovision_for_build(booted, timeout=timeout)

    def convert(self, src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        from localbuilder.disk import to_fixed_vhd

        return to_fixed_vhd(src, src_format, dst, size_bytes=size_bytes, progress=False).virtual_size

    def inspect(self, vhd: Path, build_user: str) -> Inspection:
        return Inspection(problems=(), report={"note": "offline inspection of Windows disks is not done"})


class ModelledGuest(WindowsGuest):
    """The guest model, reporting resets and its power-off to the fake hypervisor's guest."""

    fake_guest: Any = None

    def on_boot(self) -> None:
        super().on_boot()
        self.fake_guest.simulate_reset()

    def shutdown(self, command: str) -> int:
        code = super().shutdown(command)
        if self.powered_off:
            self.fake_guest.simulate_poweroff()
        return code


def vhd_template(corpus_dir: Path, tmp_path: Path) -> Template:
    """The corpus template with its script and page as local files, one VHD target ``win`` and a 1 GiB OS
    disk: what the builds through ``FakeHypervisorPlatform`` run."""
    script = tmp_path / "testPsScript.ps1"
    script.write_text(TEST_PS_SCRIPT)
    index = tmp_path / "index.html"
    index.write_text("<html>Azure Image Builder</html>\n")
    loaded = load_documents(
        corpus_dir / TEMPLATE,
        sets=[
            f"properties.customize[0].scriptUri={script.as_uri()}",
            f"properties.customize[2].sourceUri={index.as_uri()}",
            'properties.distribute=[{"type": "VHD", "runOutputName": "win"}]',
            "properties.vmProfile.osDiskSizeGB=1",
        ],
    )
    template, _ = parse_template(loaded[0])
    assert template is not None
    return template


def test_windows_boot_path_through_build(corpus_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("localbuilder.windows.restart.CHECK_INTERVAL", 0.05)
    from localbuilder.run import run
    from localbuilder.vhd import check_fixed_vhd

    base = tmp_path / "win.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"])
    template = vhd_template(corpus_dir, tmp_path)
    platform = FakeHypervisorPlatform(base, tmp_path)
    # A guest that is a host process (direct qemu: HasPid) is recorded with its pid, so that recovery
    # finds a SIGKILLed build's Windows guest as it finds a Linux one.
    monkeypatch.setattr(FakeGuest, "pid", property(lambda self: 4242), raising=False)
    try:
        options = BuildOptions(runs_root=tmp_path / "runs", output_dir=tmp_path / "out", interactive=False)
        record = Build(template, corpus_dir / TEMPLATE, platform, options).execute()
        assert record.run_state is RunState.Succeeded, record
        assert [b.pid for b in platform.booted] == [4242] and platform.booted[0].libvirt_uri is None
        model = platform.models[0]
        assert model.events[-3:] == ["upload c:\\deprovisioningscript.ps1", "sysprep", "power off"]
        # WindowsRestart + two update rounds, as the "hypervisor" counted them
        assert platform.hv.guests[0].resets == 3
        spec = platform.hv.specs[0]
        assert spec.firmware.value == "uefi" and spec.forwards[0].guest_port == 5986
        assert spec.seed_iso is not None and not spec.seed_iso.exists()  # the media (password) is gone
        vhd = tmp_path / "out" / "win.vhd"
        check_fixed_vhd(vhd)
        assert vhd.stat().st_size == 1024**3 + 512  # osDiskSizeGB=1 → 1 GiB fixed VHD + footer
    finally:
        for srv in platform.servers:
            srv.stop()
