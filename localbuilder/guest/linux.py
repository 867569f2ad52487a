"""Boot a Linux guest from a base image and hand over a connected SSH communicator.

``linux_guest()`` strings the pieces together (the parts every guest shares are ``guest.lifetime``):

1. a private directory and a qcow2 overlay on the base image (the base is never written; growing only);
2. a NoCloud seed with a fresh build key and pinned host keys (``hypervisor.seed``);
3. the backend (direct qemu or libvirt) with a free 127.0.0.1 port forwarded to the guest's port 22;
4. wait for SSH (tqdm bar on a terminal; ``guest.bootwatch`` names a guest that will never answer), then
   ``cloud-init status --wait``: SSH answers while first-boot cloud-init is still running, and a reboot
   sent then re-runs the unfinished stages (FACTS §3c);
5. on exit, ACPI power-down with a deadline, then kill, then remove the temporary files (keys, seed,
   sockets, the overlay unless ``keep_overlay``).

``keep=True`` (``--on-error abort``) skips step 5 when the block raises: the guest keeps running and
its connection details are logged so the user can get in and look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from localbuilder.checkpoints import LiveState
from localbuilder.communicator.ssh import SSHCommunicator
from localbuilder.errors import BackendError, CommunicatorError
from localbuilder.guest import RunCommand, lifetime
from localbuilder.guest.bootwatch import DEFAULT_BOOT_TIMEOUT, BootWatch
from localbuilder.hypervisor import Checkpointable, Guest, Hypervisor
from localbuilder.hypervisor.backends import get_backend
from localbuilder.hypervisor.probe import timeout_scale
from localbuilder.hypervisor.seed import make_seed
from localbuilder.hypervisor.spec import Accel, Firmware, GuestSpec, NetworkMode, PortForward
from localbuilder.log import complete_step
from localbuilder.quiesce import after_resume_command

log = logging.getLogger("localbuilder.guest.linux")

SSH_HOST = lifetime.HOST
# ACPI power-down → qemu exit took ~4-6 s here under TCG (FACTS §3/§3b); the scale covers slow hosts.
SHUTDOWN_TIMEOUT = 30.0
CLOUD_INIT_TIMEOUT = 600.0
# ``--long`` shows what failed; cloud-init before 22.x lacks it.
CLOUD_INIT_WAIT = "cloud-init status --wait --long || cloud-init status --wait"
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


def _progress_bar(enabled: bool | None, desc: str) -> tqdm[Any]:
    if enabled is None:
        level = logging.getLogger("localbuilder").getEffectiveLevel()
        enabled = sys.stderr.isatty() and level <= logging.INFO
    return tqdm(desc=desc, total=None, bar_format="{desc}: {elapsed} {postfix}", file=sys.stderr,
                disable=not enabled, leave=False)


def wait_cloud_init(comm: SSHCommunicator, timeout: float) -> None:
    """``cloud-init status --wait`` after the first boot (FACTS §3c). Exit 2 means "done, with recoverable
    errors" (cloud-init ≥ 23.4), which must not stop a build; 1 is a real failure."""
    result = comm.run(CLOUD_INIT_WAIT, timeout=timeout)
    if result.exit_status not in (0, 2):
        raise BackendError(
            f"cloud-init failed in the guest (exit {result.exit_status}): {result.stdout_tail[-800:]}",
            hint="Look at /var/log/cloud-init.log in the guest (the serial log has the console).",
        )


def settle_after_reboot(run: RunCommand, timeout: float) -> str:
    """After a reboot inside a step, cloud-init finishes its stages again before the next step (FACTS
    §3c). Its verdict is noted, not enforced: the step that rebooted decides what a failure means."""
    result = run(CLOUD_INIT_WAIT, timeout=timeout)
    return f"guest is back (cloud-init status exit {result.exit_status})"


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
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
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
    scale = timeout_scale(accel)
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        guest_dir, overlay = lifetime.workspace(stack, workdir, name, base, base_format, disk_size_bytes,
                                                keep_overlay=keep_overlay)
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
            guest, port = lifetime.start(stack, hypervisor, make_spec,
                                         shutdown_timeout=SHUTDOWN_TIMEOUT * scale, timings=timings)
            if resume is not None:
                if not isinstance(guest, Checkpointable):
                    raise BackendError(f"the {hypervisor.name} backend cannot resume live checkpoints")
                guest.restore(resume.state_file, timeout=RESTORE_TIMEOUT * scale)
            timings["start"] = time.monotonic() - start
            serial_log = guest.spec.serial_log
            comm = SSHCommunicator(SSH_HOST, port, user, key_file, list(host_keys), serial_log=serial_log)
            stack.callback(comm.close)
            _wait_ssh(comm, guest, name=name, port=port, serial_log=serial_log, timeout=boot_timeout,
                      progress=progress)
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
        # The caller tells the user how to reach and stop a kept guest (build: `localbuilder cancel RUN`).
        with lifetime.kept(stack, guest, keep=keep,
                           on_keep=lambda: log.debug("leaving guest %s running (keep=True) in %s",
                                                     name, guest_dir)):
            yield LinuxGuest(guest=guest, communicator=comm, host=SSH_HOST, port=port, user=user,
                             key_file=key_file, host_keys=host_keys, overlay_path=overlay,
                             serial_log=serial_log, workdir=guest_dir, timings=timings)


def _wait_ssh(comm: SSHCommunicator, guest: Guest, *, name: str, port: int, serial_log: Path,
              timeout: float, progress: bool | None) -> None:
    bar = _progress_bar(progress, "waiting for SSH")
    # Console + hypervisor watch (bootwatch): names a guest that will never answer, in seconds;
    # it stays on the communicator, so every reconnect after a reboot is watched too.
    watch = BootWatch(serial_log, guest, name=name, target=f"{SSH_HOST}:{port}", heartbeat=bool(bar.disable))
    comm.watch = watch

    def on_wait(elapsed: float, status: str) -> None:
        bar.set_postfix_str(watch.last_line[-70:] or status, refresh=False)
        bar.update(0)

    try:
        comm.wait_ready(timeout, progress=on_wait)
    finally:
        bar.close()


def run_checked(lg: LinuxGuest, command: str, *, timeout: float | None = None) -> str:
    """Run ``command`` in the guest and return its stdout tail; CommunicatorError if it fails."""
    result = lg.communicator.run(command, timeout=timeout)
    if not result.ok:
        raise CommunicatorError(f"{command!r} failed in the guest (exit {result.exit_status}): "
                                f"{result.stderr_tail[-500:]}")
    return result.stdout_tail
