"""libvirt backend: the GuestSpec as a transient domain (``createXML``), local or remote URIs.

The domain XML is built with ElementTree by ``domain_xml()`` (pure, pinned by golden files). What
FACTS §3b measured on libvirt 9.0 (Debian 12) shapes it:

* networking is QEMU user-mode (slirp) through ``<qemu:commandline>`` passthrough, because libvirt 9.0
  rejects the passt backend and ``<portForward>``; the passthrough NIC needs an explicit PCI address
  (``bus=pci.0,addr=0x10``) or it collides with the disks. libvirt then marks the domain "tainted:
  custom-argv", which is expected;
* no ``<graphics>`` at all (type ``none`` is invalid) and ``<video><model type='none'/>``;
* **per-domain DAC seclabel** ``<seclabel type='static' model='dac' relabel='no'><label>+0:+0``: on
  ``qemu:///system`` qemu otherwise runs as ``libvirt-qemu`` and libvirt chowns the overlay, the seed
  ISO and the overlay's **backing file** (the catalog's source image) and does not restore the last
  two; and every parent directory would have to be traversable by that user. With this label qemu runs
  as root for this one domain and nothing is relabelled. (Alternatives: ``qemu:///session``, or keeping
  all images in a world-traversable tree.)

Transient domains disappear when they stop, so a crashed localbuilder leaves nothing defined; a
*running* one is destroyed by ``destroy()`` from the session's cleanup. Reboots are counted from
libvirt's REBOOT lifecycle events (one event-loop thread per process).

Remote URIs (``qemu+ssh://host/system``): the XML references paths *on the libvirt host*. The overlay,
seed ISO and workdir must therefore be at the same path on both machines (a shared mount), and the
SSH port forward binds 127.0.0.1 *on that host*: reach it with an SSH tunnel (``ssh -L``). This is
documented in docs/guests.md and not tested here.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from localbuilder.errors import BackendError
from localbuilder.hypervisor.qemu import OVMF_CODE, OVMF_VARS, PortInUse, netdev_arg
from localbuilder.hypervisor.spec import Accel, DeviceSet, Firmware, GuestSpec
from localbuilder.paths import ensure_private_dir

log = logging.getLogger("localbuilder.hypervisor.libvirt")

DEFAULT_URI = "qemu:///system"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# The passthrough NIC's PCI slot: far from the slots libvirt assigns to disks (FACTS §3b).
NIC_ADDRESS = "bus=pci.0,addr=0x10"
_HINT_DAEMON = ("Is libvirtd running and reachable? Start it (`bash tests/start-services.sh` here, or "
                "`systemctl start libvirtd`) and check `virsh -c URI version`.")


def _import_libvirt() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise BackendError("the libvirt backend needs libvirt-python",
                           hint="pip install 'localbuilder[libvirt]' (needs libvirt-dev and pkg-config), "
                                "or use --hypervisor qemu") from exc
    return libvirt


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def domain_xml(spec: GuestSpec, *, ovmf_code: Path = OVMF_CODE, ovmf_vars: Path = OVMF_VARS) -> str:
    """The transient domain for ``spec``. Pure: touches no file."""
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.Element("domain", {"type": "kvm" if spec.accel is Accel.kvm else "qemu"})
    _sub(dom, "name", spec.name)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.cpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=spec.machine)
    if spec.firmware is Firmware.uefi:
        _sub(os_el, "loader", str(ovmf_code), readonly="yes", type="pflash")
        # libvirt copies the template to the nvram path on first start: a private variable store.
        _sub(os_el, "nvram", str(spec.workdir / "OVMF_VARS.fd"), template=str(ovmf_vars))
    _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")  # system_powerdown / shutdown --mode=acpi needs it
    _sub(features, "apic")
    if spec.accel is Accel.kvm:
        _sub(dom, "cpu", mode="host-passthrough")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")  # guests reboot during builds; counted from REBOOT events
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=spec.disk_format, discard="unmap")
    _sub(disk, "source", file=str(spec.disk))
    compat = spec.devices is DeviceSet.compat
    _sub(disk, "target", dev="sda" if compat else "vda", bus="sata" if compat else "virtio")
    if spec.seed_iso is not None:
        seed = _sub(devices, "disk", type="file", device="cdrom" if compat else "disk")
        _sub(seed, "driver", name="qemu", type="raw")
        _sub(seed, "source", file=str(spec.seed_iso))
        _sub(seed, "target", dev="sdb" if compat else "vdb", bus="sata" if compat else "virtio")
        _sub(seed, "readonly")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(spec.serial_log))
    _sub(serial, "target", port="0")
    _sub(devices, "controller", type="usb", model="none")
    video = _sub(devices, "video")
    _sub(video, "model", type="none")
    _sub(devices, "memballoon", model="none")
    seclabel = _sub(dom, "seclabel", type="static", model="dac", relabel="no")
    _sub(seclabel, "label", "+0:+0")
    cmdline = _sub(dom, f"{{{QEMU_NS}}}commandline")
    nic = "e1000" if compat else "virtio-net-pci"
    for arg in ["-netdev", netdev_arg(spec), "-device", f"{nic},netdev=n0,{NIC_ADDRESS}"]:
        _sub(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


# ---- event loop: one daemon thread per process, started before the first connection -----------------

_loop_lock = threading.Lock()
_loop_started = False


def _ensure_event_loop(libvirt: Any) -> None:
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class LibvirtGuest:
    def __init__(self, hv: LibvirtHypervisor, spec: GuestSpec, dom: Any) -> None:
        self.hv = hv
        self.spec = spec
        self.dom = dom
        self.uuid = dom.UUIDString()
        self._resets = 0
        self._callback_ids: list[int] = []
        libvirt = hv.libvirt

        def on_reboot(conn: Any, d: Any, opaque: Any) -> None:
            if d.UUIDString() == self.uuid:
                self._resets += 1

        self._callback_ids.append(hv.conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, on_reboot, None))

    def _lookup(self) -> Any | None:
        try:
            return self.hv.conn.lookupByUUIDString(self.uuid)
        except self.hv.libvirt.libvirtError:
            return None  # a transient domain that stopped no longer exists

    def is_running(self) -> bool:
        dom = self._lookup()
        try:
            return dom is not None and bool(dom.isActive())
        except self.hv.libvirt.libvirtError:
            return False

    def reset_count(self) -> int:
        return self._resets

    def status(self) -> str:
        """The domain's state in QMP's words (the boot watch reads both): running, paused, io-error,
        guest-panicked, shutdown; "exited" when the transient domain is gone."""
        libvirt = self.hv.libvirt
        dom = self._lookup()
        if dom is None:
            return "exited"
        try:
            state, reason = dom.state()
        except libvirt.libvirtError:
            return "exited"
        if state == libvirt.VIR_DOMAIN_PAUSED:
            return "io-error" if reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR else "paused"
        if state == libvirt.VIR_DOMAIN_CRASHED:
            return "guest-panicked"
        if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTDOWN):
            return "shutdown"
        return "running"

    def wait_shutdown(self, timeout: float) -> bool:
        end = time.monotonic() + max(0.0, timeout)
        while self.is_running():
            if time.monotonic() >= end:
                return False
            time.sleep(0.25)
        self._release()
        return True

    def shutdown(self, timeout: float) -> bool:
        dom = self._lookup()
        if dom is None:
            self._release()
            return True
        try:
            dom.shutdownFlags(self.hv.libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        except self.hv.libvirt.libvirtError as exc:
            log.debug("ACPI shutdown of %s: %s", self.spec.name, exc)
        if self.wait_shutdown(timeout):
            return True
        log.warning("guest %s did not power off within %.0f s after ACPI power-down; destroying it",
                    self.spec.name, timeout)
        self.destroy()
        return False

    def destroy(self) -> None:
        dom = self._lookup()
        if dom is not None:
            with contextlib.suppress(self.hv.libvirt.libvirtError):  # already gone: fine
                dom.destroy()
        self._release()

    def _release(self) -> None:
        for cid in self._callback_ids:
            with contextlib.suppress(self.hv.libvirt.libvirtError):
                self.hv.conn.domainEventDeregisterAny(cid)
        self._callback_ids.clear()


class LibvirtHypervisor:
    name = "libvirt"

    def __init__(self, *, uri: str | None = None, ovmf_code: Path = OVMF_CODE,
                 ovmf_vars: Path = OVMF_VARS) -> None:
        self.libvirt = _import_libvirt()
        self.uri = uri or DEFAULT_URI
        self.ovmf_code = ovmf_code
        self.ovmf_vars = ovmf_vars
        _ensure_event_loop(self.libvirt)
        # libvirt prints its errors to stderr by default; we raise them as BackendError instead.
        self.libvirt.registerErrorHandler(lambda ctx, err: None, None)
        try:
            self.conn = self.libvirt.open(self.uri)
        except self.libvirt.libvirtError as exc:
            raise BackendError(f"cannot connect to libvirt at {self.uri}: {exc}", hint=_HINT_DAEMON) from exc
        self.conn.setKeepAlive(5, 3)

    @property
    def is_remote(self) -> bool:
        """True for URIs naming another host (``qemu+ssh://h/system``, ``qemu://h/system``)."""
        parts = urlsplit(self.uri)
        transport = parts.scheme.partition("+")[2]
        return bool(parts.hostname) or transport in ("ssh", "libssh", "libssh2", "tcp", "tls")

    def start(self, spec: GuestSpec) -> LibvirtGuest:
        if not self.is_remote:
            if not spec.disk.is_file():
                raise BackendError(f"guest disk {spec.disk} does not exist", hint="Check the image path.")
            ensure_private_dir(spec.workdir)
            if shutil.which("qemu-system-x86_64") is None:
                raise BackendError("qemu-system-x86_64 not found", hint="apt-get install qemu-system-x86")
        xml = domain_xml(spec, ovmf_code=self.ovmf_code, ovmf_vars=self.ovmf_vars)
        log.debug("domain XML:\n%s", xml)
        try:
            dom = self.conn.createXML(xml, 0)
        except self.libvirt.libvirtError as exc:
            text = str(exc)
            hint = "Rerun with --debug to see the domain XML."
            error: type[BackendError] = BackendError
            if "already exists" in text:
                hint = f"A domain named {spec.name} is running: `virsh -c {self.uri} destroy {spec.name}`."
            elif "host forwarding" in text:
                error, hint = PortInUse, "Another process took the forwarded port; retry."
            elif "Could not open" in text or "No such file" in text:
                hint = f"Check that {spec.disk} exists and is readable on the libvirt host."
            raise error(f"libvirt could not start guest {spec.name}: {text}", hint=hint) from exc
        try:
            log.debug("libvirt domain %s started (%s)", spec.name, dom.UUIDString())
            return LibvirtGuest(self, spec, dom)
        except BaseException:
            # Ctrl-C/SIGTERM (or a libvirt error) right after createXML: nobody owns the domain yet.
            with contextlib.suppress(self.libvirt.libvirtError):
                dom.destroy()
            raise

    def remove_domain(self, name: str) -> bool:
        """Destroy (and undefine, if persistent) the domain ``name``: True when it was running, False
        when it was not (or is not there at all). Used by recovery for a SIGKILLed build's guest."""
        try:
            dom = self.conn.lookupByName(name)
        except self.libvirt.libvirtError:
            return False
        stopped = False
        with contextlib.suppress(self.libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
                stopped = True
        with contextlib.suppress(self.libvirt.libvirtError):
            if dom.isPersistent():
                dom.undefine()
        return stopped

    def domains(self) -> list[str]:
        """Names of the running domains (for tests and leak checks)."""
        return [d.name() for d in self.conn.listAllDomains()]

    def close(self) -> None:
        with contextlib.suppress(self.libvirt.libvirtError):
            self.conn.close()
