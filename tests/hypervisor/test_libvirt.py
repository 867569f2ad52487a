"""libvirt backend: golden domain XML, URI handling; a real transient domain when libvirtd runs."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from localbuilder.hypervisor.libvirt import domain_xml
from localbuilder.hypervisor.spec import Accel, Firmware, GuestSpec, NetworkMode, PortForward
from tests.fixtures.golden import Golden

WORK = Path("/var/lib/lb/guest")


def spec(**kw: object) -> GuestSpec:
    base: dict[str, object] = dict(
        name="lb-test", disk=WORK / "overlay.qcow2", workdir=WORK, cpus=2, memory_mib=2048,
        seed_iso=WORK / "seed" / "seed.iso", forwards=(PortForward(22, 40022),),
    )
    base.update(kw)
    return GuestSpec(**base)  # type: ignore[arg-type]


def test_domain_xml_bios_tcg(golden: Golden) -> None:
    golden(domain_xml(spec()), "libvirt-bios-tcg.xml")


def test_domain_xml_uefi_kvm(golden: Golden) -> None:
    golden(domain_xml(spec(firmware=Firmware.uefi, accel=Accel.kvm, network=NetworkMode.user, seed_iso=None)),
           "libvirt-uefi-kvm.xml")


def test_domain_xml_invariants() -> None:
    root = ET.fromstring(domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.find("devices/graphics") is None
    assert root.find("devices/video/model").get("type") == "none"  # type: ignore[union-attr]
    label = root.find("seclabel")
    assert label is not None and label.get("relabel") == "no" and label.findtext("label") == "+0:+0"
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22" in args
    assert "virtio-net-pci,netdev=n0,bus=pci.0,addr=0x10" in args
    assert root.find("devices/disk[2]/readonly") is not None


@pytest.mark.parametrize(("uri", "remote"), [
    ("qemu:///system", False), ("qemu:///session", False), ("qemu+unix:///system", False),
    ("qemu+ssh://root@builder/system", True), ("qemu://builder/system", True), ("qemu+tls://h/system", True),
])
def test_remote_uri_detection(uri: str, remote: bool) -> None:
    from localbuilder.hypervisor.libvirt import LibvirtHypervisor

    hv = LibvirtHypervisor.__new__(LibvirtHypervisor)  # no connection needed for the URI parser
    hv.uri = uri
    assert hv.is_remote is remote


@pytest.mark.integration
@pytest.mark.libvirt
def test_transient_domain_does_not_relabel_backing_file(tmp_path: Path, libvirt_uri: str) -> None:
    """The DAC seclabel: qemu (as root) opens files in a 0700 tree and chowns nothing, not even the
    overlay's backing file (FACTS §3b). The payload is the KVM-probe boot sector: it halts at once."""
    from localbuilder.hypervisor.backends import get_backend
    from localbuilder.hypervisor.probe import boot_sector
    from localbuilder.run import run

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    base = private / "base.raw"
    base.write_bytes(boot_sector(1000) + b"\0" * (1024 * 1024 - 512))
    os.chmod(base, 0o600)
    overlay = private / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)])
    before = {p: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in (base, overlay)}
    hv = get_backend("libvirt", uri=libvirt_uri)
    name = f"lb-test-{os.getpid()}"
    guest = hv.start(spec(name=name, disk=overlay, workdir=private / "w", seed_iso=None,
                          forwards=(PortForward(22, 40000 + os.getpid() % 20000),)))
    try:
        time.sleep(0.5)
        assert guest.is_running() and name in hv.domains()  # type: ignore[attr-defined]
        after = {p: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in (base, overlay)}
        assert after == before
    finally:
        guest.destroy()
    assert not guest.is_running() and name not in hv.domains()  # type: ignore[attr-defined]
    guest.destroy()  # idempotent


def test_domain_xml_compat_devices_for_windows(golden: Golden) -> None:
    from localbuilder.hypervisor.spec import DeviceSet

    text = domain_xml(spec(devices=DeviceSet.compat))
    golden(text, "libvirt-compat.xml")
    root = ET.fromstring(text)
    assert {t.get("bus") for t in root.iter("target") if t.get("dev")} == {"sata"}
    assert root.find("devices/disk[@device='cdrom']") is not None
    assert "virtio" not in text
