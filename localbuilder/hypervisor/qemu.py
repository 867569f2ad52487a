"""Direct qemu-system backend: no daemon, one qemu process per guest, controlled over QMP.

The command line is FACTS §3's measured one, built declaratively from the GuestSpec by ``qemu_argv()``
(a pure function, pinned by golden files). Deliberate choices:

* ``-nodefaults -display none -vga none``: no default NIC/CD/monitor, nothing graphical; the serial
  console goes to a file, which the user can read when a boot hangs;
* the disk is the build's qcow2 overlay with ``discard=unmap`` so that fstrim in the guest keeps the
  overlay (and later the VHD's allocated extents) small;
* ``-netdev user,restrict=on``: slirp with DHCP and the 127.0.0.1 port forward only, no outbound
  traffic (``NetworkMode.user`` lifts the restriction);
* no ``-no-reboot``: guests reboot during builds (``sudo reboot`` customizers, Windows restarts);
  reboots are counted from QMP ``RESET`` events instead;
* UEFI: the read-only OVMF code plus a private copy of the variable store per guest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from localbuilder.errors import BackendError
from localbuilder.hypervisor.qmp import QMPClient, QMPClosed
from localbuilder.hypervisor.spec import Accel, DeviceSet, Firmware, GuestSpec, NetworkMode
from localbuilder.paths import ensure_private_dir
from localbuilder.run import Popen, TimeoutExpired, spawn

log = logging.getLogger("localbuilder.hypervisor.qemu")

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
QMP_READY_TIMEOUT = 30.0
# sun_path holds 108 bytes: a QMP socket deeper than this goes to a private directory under /tmp.
MAX_SOCKET_PATH = 100
SHORT_DIR_PREFIX = "lb-qmp-"
LIFECYCLE_EVENTS = frozenset({"SHUTDOWN", "RESET", "STOP", "RESUME", "GUEST_PANICKED"})


class PortInUse(BackendError):
    """qemu could not bind a host port forward (another process took the port): pick another."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the kernel's pick). Another process may take it
    before qemu binds it; the caller retries on PortInUse."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class GuestFiles:
    """Per-guest files in the spec's workdir."""

    qmp_socket: Path
    stderr_log: Path
    ovmf_vars: Path | None

    @classmethod
    def for_spec(cls, spec: GuestSpec) -> GuestFiles:
        return cls(
            qmp_socket=spec.workdir / "qmp.sock",
            stderr_log=spec.workdir / "qemu.stderr",
            ovmf_vars=spec.workdir / "OVMF_VARS.fd" if spec.firmware is Firmware.uefi else None,
        )


def _opt(path: Path) -> str:
    """A path inside a qemu option value: commas separate options, so a literal comma is doubled."""
    return str(path).replace(",", ",,")


def netdev_arg(spec: GuestSpec, netdev_id: str = "n0") -> str:
    """``-netdev user,…`` with the spec's forwards; shared with the libvirt backend's passthrough."""
    parts = [f"user,id={netdev_id}", f"restrict={'off' if spec.network is NetworkMode.user else 'on'}"]
    for fwd in spec.forwards:
        parts.append(f"hostfwd=tcp:{fwd.host_addr}:{fwd.host_port}-:{fwd.guest_port}")
    return ",".join(parts)


def qemu_argv(
    spec: GuestSpec, files: GuestFiles, *, qemu: str = QEMU, ovmf_code: Path = OVMF_CODE
) -> list[str]:
    """The complete qemu command line for ``spec``. Pure: touches no file."""
    argv = [
        qemu,
        "-name", spec.name,
        "-machine", spec.machine,
        "-accel", spec.accel.value,
        *(["-cpu", "host"] if spec.accel is Accel.kvm else []),
        "-smp", str(spec.cpus),
        "-m", str(spec.memory_mib),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-vga", "none",
        "-serial", f"file:{_opt(spec.serial_log)}",
        "-qmp", f"unix:{_opt(files.qmp_socket)},server=on,wait=off",
    ]  # fmt: skip
    if spec.firmware is Firmware.uefi:
        assert files.ovmf_vars is not None
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(ovmf_code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_opt(files.ovmf_vars)}",
        ]  # fmt: skip
    if spec.devices is DeviceSet.compat:
        # AHCI: port 0 the disk, port 1 the first-boot media as a CD-ROM (Windows Setup looks for
        # autounattend.xml on removable media and CDs).
        argv += [
            "-device", "ahci,id=ahci",
            "-drive", f"file={_opt(spec.disk)},if=none,id=disk0,format={spec.disk_format},discard=unmap",
            "-device", "ide-hd,drive=disk0,bus=ahci.0",
            "-netdev", netdev_arg(spec),
            "-device", "e1000,netdev=n0",
        ]  # fmt: skip
        if spec.seed_iso is not None:
            argv += [
                "-drive", f"file={_opt(spec.seed_iso)},if=none,id=cd0,media=cdrom,format=raw,readonly=on",
                "-device", "ide-cd,drive=cd0,bus=ahci.1",
            ]  # fmt: skip
        return argv
    argv += [
        "-drive", f"file={_opt(spec.disk)},if=virtio,format={spec.disk_format},discard=unmap",
        "-netdev", netdev_arg(spec),
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    if spec.seed_iso is not None:
        # read-only: the seed is never written, and live snapshots refuse a writable non-qcow2 drive (§3e).
        argv += ["-drive", f"file={_opt(spec.seed_iso)},if=virtio,format=raw,readonly=on"]
    if spec.incoming:
        # "defer": the stream arrives later as a passed fd (QMP migrate-incoming), never via a shell.
        argv += ["-incoming", "defer"]
    return argv


def _startup_hint(stderr: str, spec: GuestSpec) -> tuple[type[BackendError], str]:
    if "host forwarding rule" in stderr or "Address already in use" in stderr:
        return PortInUse, "Another process took the forwarded port; retry (localbuilder picks a new one)."
    if "Could not open" in stderr or "Image is not in" in stderr or "not in qcow2 format" in stderr:
        return BackendError, (f"Check that {spec.disk} exists, is readable and is really "
                              f"{spec.disk_format} (`qemu-img info {spec.disk}`).")
    if "kvm" in stderr.lower() and spec.accel is Accel.kvm:
        return BackendError, "KVM failed: use --accel tcg (or --accel auto to probe)."
    if "pflash" in stderr or "OVMF" in stderr:
        return BackendError, "UEFI firmware missing: apt-get install ovmf."
    return BackendError, "Rerun with --debug to see the full qemu command line."


def _remove_socket(files: GuestFiles) -> None:
    files.qmp_socket.unlink(missing_ok=True)
    if files.qmp_socket.parent.name.startswith(SHORT_DIR_PREFIX):
        with contextlib.suppress(OSError):
            files.qmp_socket.parent.rmdir()


class QemuGuest:
    """One running qemu process. Every method is safe after the guest has gone."""

    def __init__(self, spec: GuestSpec, proc: Popen[bytes], files: GuestFiles, qmp: QMPClient) -> None:
        self.spec = spec
        self.proc = proc
        self.files = files
        self.qmp = qmp
        self._resets = 0
        self._top = spec.disk

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_running(self) -> bool:
        return self.proc.poll() is None

    def reset_count(self) -> int:
        if not self.qmp.closed:
            self.qmp.events()
        return len([e for e in self.qmp.seen if e.get("event") == "RESET"])

    def lifecycle_events(self) -> list[dict[str, Any]]:
        """QMP events about the guest's run state since start, oldest first: SHUTDOWN (``data.reason``:
        guest-shutdown, guest-panic, host-signal, …), RESET, STOP, RESUME, GUEST_PANICKED. Kept after
        qemu exits, so the boot watch can tell a guest power-off from a crash."""
        if not self.qmp.closed:
            with contextlib.suppress(OSError, BackendError):
                self.qmp.events()
        return [e for e in self.qmp.seen if e.get("event") in LIFECYCLE_EVENTS]

    # ---- live checkpoints (FACTS §3e) -------------------------------------------------------------

    def _disk_device(self) -> str:
        """The QMP device name of the guest's disk: the one whose top image is the current overlay."""
        for dev in self.qmp.execute("query-block"):
            inserted = dev.get("inserted") or {}
            if inserted.get("file") == str(self._top) or (inserted.get("image") or {}).get("filename") == str(
                self._top
            ):
                return str(dev["device"])
        raise BackendError(f"guest {self.spec.name}: no block device has {self._top} as its top image")

    @property
    def top_image(self) -> Path:
        """The qcow2 file the guest writes to now (the spec's disk until the first checkpoint)."""
        return self._top

    def checkpoint(self, new_top: Path, state_file: Path | None, *, timeout: float) -> None:
        """Freeze the current disk top under a new empty qcow2 layer ``new_top`` and, with
        ``state_file``, save RAM + device state there: afterwards the old top is an immutable image of
        the guest's disk at this instant and ``state_file`` resumes exactly this moment.

        The guest is paused around both operations so that disk and memory agree (~0.5 s + the RAM
        write); it runs on afterwards, now writing to ``new_top``."""
        deadline = time.monotonic() + timeout
        self.qmp.execute("stop")
        try:
            device = self._disk_device()
            self.qmp.execute("blockdev-snapshot-sync", {
                "device": device, "snapshot-file": str(new_top), "format": "qcow2", "mode": "absolute-paths",
            }, timeout=timeout)  # fmt: skip
            self._top = new_top
            if state_file is not None:
                # The default migration bandwidth limit (128 MiB/s) only makes sense across a network.
                self.qmp.execute("migrate-set-parameters", {"max-bandwidth": 64 * 1024**3})
                # 0600: the memory state holds whatever the guest had in RAM (keys, tokens).
                fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with open(fd, "wb") as stream:
                    self.qmp.pass_fd("lb-checkpoint", stream.fileno())
                    self.qmp.execute("migrate", {"uri": "fd:lb-checkpoint"})
                    self._wait_migration(deadline, "saving the guest's memory")
                    stream.flush()
                    os.fsync(stream.fileno())
        finally:
            if self.is_running():
                self.qmp.execute("cont")

    def restore(self, state_file: Path, *, timeout: float) -> None:
        """Load a state saved by ``checkpoint()`` into this guest (started with ``spec.incoming``) and
        let it run: the guest continues where the checkpoint was taken."""
        deadline = time.monotonic() + timeout
        with open(state_file, "rb") as stream:
            self.qmp.pass_fd("lb-checkpoint", stream.fileno())
            self.qmp.execute("migrate-incoming", {"uri": "fd:lb-checkpoint"})
            self._wait_migration(deadline, "loading the checkpoint's memory")
        self.qmp.execute("cont")

    def _wait_migration(self, deadline: float, what: str) -> None:
        while True:
            status = str((self.qmp.execute("query-migrate") or {}).get("status", "none"))
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                info = self.qmp.execute("query-migrate") or {}
                # QEMU often leaves error-desc out ("failed: failed" said nothing): its stderr has the why.
                why = str(info.get("error-desc") or "").strip() or self.stderr_tail(3) or status
                raise BackendError(f"{what} failed: {why}",
                                   hint=f"See {self.files.stderr_log}; 'localbuilder cache prune --all' "
                                   "drops checkpoints a changed qemu can no longer load.")
            if not self.is_running():
                raise BackendError(f"{what} failed: qemu exited ({self.stderr_tail(5)})")
            if time.monotonic() > deadline:
                with contextlib.suppress(BackendError):
                    self.qmp.execute("migrate_cancel")
                raise BackendError(f"{what} did not finish in time (migration status {status!r})")
            time.sleep(0.05)

    def status(self) -> str:
        """QMP query-status ("running", "paused", "shutdown", …); "exited" when qemu is gone."""
        try:
            return str(self.qmp.execute("query-status")["status"])
        except QMPClosed:
            return "exited"

    def wait_shutdown(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=max(0.0, timeout))
        except TimeoutExpired:
            return False
        self._after_exit()
        return True

    def shutdown(self, timeout: float) -> bool:
        if not self.is_running():
            self._after_exit()
            return True
        try:
            self.qmp.execute("system_powerdown", timeout=10)
        except BackendError as exc:  # qemu exiting right now, or wedged: kill it below
            log.debug("system_powerdown: %s", exc)
        if self.wait_shutdown(timeout):
            return True
        log.warning("guest %s did not power off within %.0f s after ACPI power-down; killing it",
                    self.spec.name, timeout)
        self.destroy()
        return False

    def destroy(self) -> None:
        if self.proc.poll() is None:
            # spawn() put qemu in its own session: kill the whole group in case a wrapper was used.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        self._after_exit()

    def _after_exit(self) -> None:
        if not self.qmp.closed:
            with contextlib.suppress(OSError, BackendError):
                self.qmp.events()  # keep the last events (SHUTDOWN, RESET) for reset_count()
            self.qmp.close()
        _remove_socket(self.files)
        stderr = self.stderr_tail()
        if stderr:
            log.debug("qemu stderr:\n%s", stderr)

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.files.stderr_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class QemuHypervisor:
    name = "qemu"

    def __init__(self, *, qemu: str = QEMU, ovmf_code: Path = OVMF_CODE, ovmf_vars: Path = OVMF_VARS) -> None:
        self.qemu = qemu
        self.ovmf_code = ovmf_code
        self.ovmf_vars = ovmf_vars

    def start(self, spec: GuestSpec) -> QemuGuest:
        if shutil.which(self.qemu) is None and not Path(self.qemu).is_file():
            raise BackendError(f"{self.qemu} not found", hint="Install it: apt-get install qemu-system-x86")
        if not spec.disk.is_file():
            raise BackendError(f"guest disk {spec.disk} does not exist", hint="Check the image path.")
        ensure_private_dir(spec.workdir)
        files = GuestFiles.for_spec(spec)
        if len(os.fsencode(files.qmp_socket)) > MAX_SOCKET_PATH:
            short = Path(tempfile.mkdtemp(prefix=SHORT_DIR_PREFIX))  # 0700, removed in _after_exit()
            files = dataclasses.replace(files, qmp_socket=short / "qmp.sock")
        files.qmp_socket.unlink(missing_ok=True)
        if files.ovmf_vars is not None:
            for firmware in (self.ovmf_code, self.ovmf_vars):
                if not firmware.is_file():
                    raise BackendError(f"UEFI firmware {firmware} not found", hint="apt-get install ovmf")
            # Each guest gets its own writable variable store; the packaged one stays pristine.
            shutil.copyfile(self.ovmf_vars, files.ovmf_vars)
            os.chmod(files.ovmf_vars, 0o600)
        argv = qemu_argv(spec, files, qemu=self.qemu, ovmf_code=self.ovmf_code)
        # stderr to a file, not a pipe: nobody reads a pipe while the guest runs and a full one would
        # block qemu. The file is shown when qemu dies during start-up.
        stderr: IO[bytes]
        with open(files.stderr_log, "wb") as stderr:
            proc = spawn(argv, stderr=stderr)
        guest: QemuGuest | None = None
        try:
            qmp = QMPClient.connect(files.qmp_socket, deadline=time.monotonic() + QMP_READY_TIMEOUT,
                                    alive=lambda: proc.poll() is None)
            guest = QemuGuest(spec, proc, files, qmp)
            # A disk qemu cannot open fails before QMP; a port that cannot be bound may fail just after.
            time.sleep(0.1)
            if proc.poll() is not None:
                raise QMPClosed("qemu exited right after start-up")
        except (BackendError, KeyboardInterrupt) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            if guest is not None:
                guest._after_exit()
            else:
                _remove_socket(files)
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = files.stderr_log.read_text(errors="replace").strip() if files.stderr_log.exists() else ""
            cls, hint = _startup_hint(text, spec)
            raise cls(f"qemu failed to start guest {spec.name} (exit status {proc.returncode}):\n"
                      f"{text or '(no output)'}", hint=hint) from exc
        log.debug("qemu pid %d started for %s", proc.pid, spec.name)
        return guest
