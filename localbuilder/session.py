"""Boot a Linux guest from a base image and hand over a connected SSH communicator.

``linux_guest()`` is the one place that strings the pieces together:

1. a qcow2 overlay on the base image (``disk.create_overlay``: the base is never written; growing only);
2. a NoCloud seed with a fresh build key and pinned host keys (``hypervisor.seed``);
3. the backend (direct qemu or libvirt) with a free 127.0.0.1 port forwarded to the guest's port 22;
4. wait for SSH (tqdm bar on a terminal; the serial log is kept for when it never comes), then
   ``cloud-init status --wait``: SSH answers while first-boot cloud-init is still running, and a reboot
   sent then re-runs the unfinished stages (FACTS §3c);
5. on exit — normal, exception, Ctrl-C, or SIGTERM (which ``__main__`` turns into KeyboardInterrupt) —
   ACPI power-down with a deadline, then kill, then remove the temporary files (keys, seed, sockets,
   the overlay unless ``keep_overlay``). The serial log stays: it is the record of what the guest did.

``keep=True`` (``--on-error abort``) skips step 5 when the block raises: the guest keeps running and
its connection details are logged so the user can get in and look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from localbuilder import disk
from localbuilder.bootwatch import BootWatch
from localbuilder.communicator.ssh import SSHCommunicator
from localbuilder.errors import BackendError, CommunicatorError, ConversionError
from localbuilder.hypervisor import Guest, Hypervisor, get_backend
from localbuilder.hypervisor.probe import timeout_scale
from localbuilder.hypervisor.qemu import PortInUse, free_port
from localbuilder.hypervisor.seed import make_seed
from localbuilder.hypervisor.spec import Accel, Firmware, GuestSpec, NetworkMode, PortForward
from localbuilder.log import complete_step
from localbuilder.paths import ensure_private_dir
from localbuilder.quiesce import after_resume_command

log = logging.getLogger("localbuilder.session")

SSH_HOST = "127.0.0.1"
# ACPI power-down → qemu exit took ~4-6 s here under TCG (FACTS §3/§3b); the scale covers slow hosts.
SHUTDOWN_TIMEOUT = 30.0
# After an error or Ctrl-C the guest is discarded: give ACPI a short chance, then kill. A guest still in
# its boot loader or early kernel ignores the power button, and nobody should wait minutes for that.
ABORT_SHUTDOWN_TIMEOUT = 10.0
CLOUD_INIT_TIMEOUT = 600.0
PORT_ATTEMPTS = 3
# Loading a checkpoint's memory: ~1-3 s for 1 GiB under TCG here; generous for slow disks.
RESTORE_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class LinuxGuest:
    guest: Guest
    communicator: SSHCommunicator
    host: str
    port: int
    user: str
    key_file: Path
    host_keys: tuple[str, ...]
    overlay_path: Path
    serial_log: Path
    workdir: Path
    # Phase durations in seconds ("start", "ssh", "cloud-init"); "shutdown" is added on exit.
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def ssh_command(self) -> str:
        """How a user reaches this guest by hand (printed for --on-error abort)."""
        return shlex.join([
            "ssh", "-i", str(self.key_file), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            f"{self.user}@{self.host}",
        ])


@dataclasses.dataclass(frozen=True)
class LiveState:
    """A guest frozen by a live checkpoint (``QemuGuest.checkpoint``), ready to resume (FACTS §3e).

    The resumed guest must see the same devices, so it gets the very seed it booted with; and it has
    the same SSH user, build key and host keys as when it was frozen."""

    disk: Path  # the frozen qcow2 layer (never written again; the resumed guest gets an overlay)
    state_file: Path  # RAM + device state
    seed_iso: Path
    key_file: Path
    host_keys: tuple[str, ...]
    user: str


def _progress_bar(enabled: bool | None, desc: str) -> tqdm[Any]:
    if enabled is None:
        level = logging.getLogger("localbuilder").getEffectiveLevel()
        enabled = sys.stderr.isatty() and level <= logging.INFO
    return tqdm(desc=desc, total=None, bar_format="{desc}: {elapsed} {postfix}", file=sys.stderr,
                disable=not enabled, leave=False)


def _start(hv: Hypervisor, make_spec: Any) -> tuple[Guest, int]:
    """Start with a fresh free port, retrying when another process grabs it first."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port(SSH_HOST)
        try:
            return hv.start(make_spec(port)), port
        except PortInUse:
            if attempt == PORT_ATTEMPTS:
                raise
            log.debug("port %d was taken before qemu bound it; retrying", port)
    raise AssertionError("unreachable")


def _cleanup_files(guest_dir: Path, *, keep_overlay: bool) -> None:
    for name in ("seed", "qmp.sock", "qemu.stderr", "OVMF_VARS.fd"):
        path = guest_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if not keep_overlay:
        (guest_dir / "disk.qcow2").unlink(missing_ok=True)
        # Layers a live checkpoint put on top (disk-1.qcow2 …): the chain is one overlay, logically.
        for layer in guest_dir.glob("disk-*.qcow2"):
            layer.unlink(missing_ok=True)


def wait_cloud_init(comm: SSHCommunicator, timeout: float) -> None:
    """``cloud-init status --wait`` (FACTS §3c). Exit 2 means "done, with recoverable errors" (cloud-init
    ≥ 23.4), which must not stop a build; 1 is a real failure."""
    result = comm.run("cloud-init status --wait --long || cloud-init status --wait", timeout=timeout)
    if result.exit_status not in (0, 2):
        raise BackendError(
            f"cloud-init failed in the guest (exit {result.exit_status}): {result.stdout_tail[-800:]}",
            hint="Look at /var/log/cloud-init.log in the guest (the serial log has the console).",
        )


@contextlib.contextmanager
def linux_guest(
    base: Path,
    base_format: str,
    *,
    workdir: Path,
    backend: str = "qemu",
    accel: Accel,
    cpus: int = 1,
    memory_mib: int = 1024,
    disk_size_bytes: int | None = None,
    network: NetworkMode = NetworkMode.restricted,
    libvirt_uri: str | None = None,
    boot_timeout: float = 1200,
    firmware: Firmware = Firmware.bios,
    keep: bool = False,
    keep_overlay: bool = False,
    name: str | None = None,
    hypervisor: Hypervisor | None = None,
    wait_for_cloud_init: bool = True,
    progress: bool | None = None,
    resume: LiveState | None = None,
) -> Iterator[LinuxGuest]:
    """Boot ``base`` (never written) and yield a connected ``LinuxGuest``; see the module docstring.

    With ``resume``, ``base`` is ignored: the guest continues from that live checkpoint instead of
    booting (same seed, key and host keys; no cloud-init wait — it had finished when it was frozen).
    """
    if resume is not None:
        base, base_format = resume.disk, "qcow2"
    name = name or f"lb-{uuid.uuid4().hex[:10]}"
    guest_dir = ensure_private_dir(workdir / name)
    overlay = guest_dir / "disk.qcow2"
    scale = timeout_scale(accel)
    timings: dict[str, float] = {}
    guest: Guest | None = None
    comm: SSHCommunicator | None = None
    kept = False
    failed = True
    try:
        try:
            disk.create_overlay(base, base_format, overlay, disk_size_bytes)
        except ConversionError as exc:
            raise BackendError(exc.message, hint=exc.hint) from exc
        if resume is None:
            seed = make_seed(guest_dir / "seed", hostname=name)
            seed_iso, user, key_file, host_keys = seed.iso, seed.user, seed.key_file, seed.host_keys
        else:
            seed_iso, user = resume.seed_iso, resume.user
            key_file, host_keys = resume.key_file, resume.host_keys
        if hypervisor is None:
            hypervisor = get_backend(backend, **({"uri": libvirt_uri} if backend == "libvirt" else {}))

        def make_spec(port: int) -> GuestSpec:
            return GuestSpec(
                name=name, disk=overlay, workdir=guest_dir, cpus=cpus, memory_mib=memory_mib, accel=accel,
                firmware=firmware, seed_iso=seed_iso, forwards=(PortForward(22, port, SSH_HOST),),
                network=network, incoming=resume is not None,
            )

        start = time.monotonic()
        what = f"{hypervisor.name}, {accel.value}, {cpus} vCPU, {memory_mib} MiB"
        verb = "Resuming" if resume is not None else "Booting"
        with complete_step(f"{verb} {name} ({what})"):
            guest, port = _start(hypervisor, make_spec)
            if resume is not None:
                restore = getattr(guest, "restore", None)
                if restore is None:
                    raise BackendError(f"the {hypervisor.name} backend cannot resume live checkpoints")
                restore(resume.state_file, timeout=RESTORE_TIMEOUT * scale)
            timings["start"] = time.monotonic() - start
            serial_log = guest.spec.serial_log
            comm = SSHCommunicator(SSH_HOST, port, user, key_file, list(host_keys), serial_log=serial_log)
            bar = _progress_bar(progress, "waiting for SSH")
            # Console + hypervisor watch (bootwatch): names a guest that will never answer, in seconds;
            # it stays on the communicator, so every reconnect after a reboot is watched too.
            watch = BootWatch(serial_log, guest, name=name, target=f"{SSH_HOST}:{port}",
                              heartbeat=bool(bar.disable))
            comm.watch = watch

            def on_wait(elapsed: float, status: str) -> None:
                bar.set_postfix_str(watch.last_line[-70:] or status, refresh=False)
                bar.update(0)

            try:
                comm.wait_ready(boot_timeout, progress=on_wait)
            finally:
                bar.close()
            timings["ssh"] = time.monotonic() - start
        if resume is not None:
            # The checkpoint was cut with the guest's filesystems frozen (localbuilder.quiesce): thaw them
            # and stop the stale freeze holder. The guest clock stood still while it was frozen (FACTS
            # §3e): set it from the host before any step runs, or make/apt/TLS see a time in the past.
            result = comm.run(after_resume_command(), timeout=60 * scale)
            if not result.ok:
                log.warning("could not thaw the resumed guest or set its clock: %s",
                            result.stderr_tail.strip()[-200:])
        elif wait_for_cloud_init:
            t = time.monotonic()
            with complete_step("Waiting for cloud-init to finish"):
                wait_cloud_init(comm, CLOUD_INIT_TIMEOUT * scale)
            timings["cloud-init"] = time.monotonic() - t
        lg = LinuxGuest(guest=guest, communicator=comm, host=SSH_HOST, port=port, user=user,
                        key_file=key_file, host_keys=host_keys, overlay_path=overlay,
                        serial_log=serial_log, workdir=guest_dir, timings=timings)
        try:
            yield lg
            failed = False
        except BaseException:
            if keep and guest.is_running():
                kept = True
                # The caller tells the user how to reach and stop it (build: `localbuilder cancel RUN`).
                log.debug("leaving guest %s running (keep=True) in %s", name, guest_dir)
            raise
    finally:
        if not kept:
            if comm is not None:
                comm.close()
            if guest is not None:
                t = time.monotonic()
                try:
                    if guest.is_running():
                        deadline = ABORT_SHUTDOWN_TIMEOUT if failed else SHUTDOWN_TIMEOUT * scale
                        with complete_step("Powering off the guest"):
                            guest.shutdown(deadline)
                except KeyboardInterrupt:
                    # A second Ctrl-C during the power-down: stop waiting, kill it now.
                    guest.destroy()
                    raise
                finally:
                    guest.destroy()  # idempotent: releases sockets, QMP, libvirt callbacks
                    timings["shutdown"] = time.monotonic() - t
            _cleanup_files(guest_dir, keep_overlay=keep_overlay)


def run_checked(lg: LinuxGuest, command: str, *, timeout: float | None = None) -> str:
    """Run ``command`` in the guest and return its stdout tail; CommunicatorError if it fails."""
    result = lg.communicator.run(command, timeout=timeout)
    if not result.ok:
        raise CommunicatorError(f"{command!r} failed in the guest (exit {result.exit_status}): "
                                f"{result.stderr_tail[-500:]}")
    return result.stdout_tail
