"""windows_guest(): overlay, first-boot ISO, port forward, pinned WinRM — with the fake hypervisor.

The fake backend's "guest" is the WS-Man test server, started on the forwarded host port with the
certificate and password **read from the first-boot ISO** the session built: the session only gets in
if the media it made carries what the communicator pins and presents.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localbuilder.errors import BackendError
from localbuilder.guest.windows import windows_guest
from localbuilder.hypervisor import GuestSpec
from localbuilder.hypervisor.fake import FakeBehaviour, FakeHypervisor
from localbuilder.hypervisor.spec import Accel
from localbuilder.run import run
from tests.windows.guest_model import WindowsGuest
from tests.windows.helpers import server_from_media
from tests.windows.wsman_server import WSManServer


@pytest.fixture
def base_image(tmp_path: Path) -> Path:
    base = tmp_path / "win.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"])
    return base


def test_windows_guest_connects_with_media_credentials(tmp_path: Path, base_image: Path) -> None:
    servers: list[WSManServer] = []

    def boot(spec: GuestSpec) -> FakeBehaviour:
        servers.append(server_from_media(spec, WindowsGuest(), tmp_path))
        return FakeBehaviour()

    hv = FakeHypervisor(script=boot)
    try:
        with windows_guest(base_image, "qcow2", workdir=tmp_path / "work", hypervisor=hv, accel=Accel.kvm,
                           boot_timeout=10) as wg:
            assert wg.communicator.run("echo hello").stdout_tail == "hello"
            assert wg.user == "packer"
            iso = hv.specs[0].seed_iso
            assert iso is not None and iso.exists()
            assert (iso.stat().st_mode & 0o777) == 0o600
        assert not iso.exists()  # the media (it holds the password) is gone afterwards
        assert hv.guests[0].calls[-1] == "destroy"
        assert not wg.overlay_path.exists()
    finally:
        for srv in servers:
            srv.stop()


def test_windows_guest_that_stops_while_booting(tmp_path: Path, base_image: Path) -> None:
    hv = FakeHypervisor()

    def stopped_guest(spec: GuestSpec) -> FakeBehaviour:
        return FakeBehaviour()

    hv.script = stopped_guest
    original_start = hv.start

    def start(spec: GuestSpec):  # type: ignore[no-untyped-def]
        guest = original_start(spec)
        guest.simulate_poweroff()  # nothing listens on the port and the guest is gone
        return guest

    hv.start = start  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="stopped while booting") as info:
        with windows_guest(base_image, "qcow2", workdir=tmp_path / "work", hypervisor=hv, accel=Accel.kvm,
                           boot_timeout=10):
            pass
    assert "e1000" in (info.value.hint or "")
