"""What every guest session shares, Linux or Windows: where it lives, its disk, its start, its end.

A session is one ``contextlib.ExitStack``; each piece registers its own undo as it is made, so the undo
runs in reverse order whatever ended the session (normal exit, exception, Ctrl-C, or SIGTERM, which
``__main__`` turns into KeyboardInterrupt):

1. ``workspace()``: a private directory ``<workdir>/<name>`` and a qcow2 overlay on the base image (the
   base is never written); its undo removes the backend's files and the overlay. The serial log stays:
   it is the record of what the guest did.
2. ``start()``: the backend with a free 127.0.0.1 port forwarded to the guest's service port, retried when
   another process takes the port first; its undo is an ACPI power-down with a deadline (the full one
   after success, ``ABORT_SHUTDOWN_TIMEOUT`` after a failure), then kill.
3. the communicator's ``close`` (registered by the caller once connected: it runs first).

``kept()``: with ``keep=True`` (``--on-error abort``) a block that raises while the guest still runs
leaves everything as it is — the stack's undo is dropped — so the user can get in and look.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from localbuilder import disk
from localbuilder.errors import BackendError, ConversionError
from localbuilder.hypervisor import Guest, Hypervisor
from localbuilder.hypervisor.qemu import PortInUse, free_port
from localbuilder.hypervisor.spec import GuestSpec
from localbuilder.log import complete_step
from localbuilder.paths import ensure_private_dir

log = logging.getLogger("localbuilder.guest")

HOST = "127.0.0.1"
PORT_ATTEMPTS = 3
# After an error or Ctrl-C the guest is discarded: give ACPI a short chance, then kill. A guest still in
# its boot loader or early kernel ignores the power button, and nobody should wait minutes for that.
ABORT_SHUTDOWN_TIMEOUT = 10.0
# What a backend leaves in the guest directory besides the disk and the serial log.
BACKEND_FILES = ("seed", "qmp.sock", "qemu.stderr", "OVMF_VARS.fd")
OVERLAY = "disk.qcow2"


def remove_files(guest_dir: Path, *, keep_overlay: bool) -> None:
    for name in BACKEND_FILES:
        path = guest_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if not keep_overlay:
        (guest_dir / OVERLAY).unlink(missing_ok=True)
        # Layers a live checkpoint put on top (disk-1.qcow2 …): the chain is one overlay, logically.
        for layer in guest_dir.glob("disk-*.qcow2"):
            layer.unlink(missing_ok=True)


def workspace(
    stack: contextlib.ExitStack,
    workdir: Path,
    name: str,
    base: Path,
    base_format: str,
    disk_size_bytes: int | None,
    *,
    keep_overlay: bool,
) -> tuple[Path, Path]:
    """The guest's private directory and its overlay on ``base``: ``(guest_dir, overlay)``."""
    guest_dir = ensure_private_dir(workdir / name)
    stack.callback(remove_files, guest_dir, keep_overlay=keep_overlay)
    overlay = guest_dir / OVERLAY
    try:
        disk.create_overlay(base, base_format, overlay, disk_size_bytes)
    except ConversionError as exc:
        raise BackendError(exc.message, hint=exc.hint) from exc
    return guest_dir, overlay


def start(
    stack: contextlib.ExitStack,
    hypervisor: Hypervisor,
    make_spec: Callable[[int], GuestSpec],
    *,
    shutdown_timeout: float,
    timings: dict[str, float],
) -> tuple[Guest, int]:
    """Start the guest with a fresh free host port (``make_spec(port)``), retrying when another process
    grabs the port first; register its power-off. Returns ``(guest, port)``."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port(HOST)
        try:
            guest = hypervisor.start(make_spec(port))
            break
        except PortInUse:
            if attempt == PORT_ATTEMPTS:
                raise
            log.debug("port %d was taken before the guest bound it; retrying", port)
    else:  # pragma: no cover - the loop either breaks or raises
        raise AssertionError("unreachable")

    def on_exit(exc_type: type[BaseException] | None, exc: BaseException | None,
                tb: TracebackType | None) -> bool:
        t = time.monotonic()
        try:
            power_off(guest, ABORT_SHUTDOWN_TIMEOUT if exc_type is not None else shutdown_timeout)
        finally:
            timings["shutdown"] = time.monotonic() - t
        return False

    stack.push(on_exit)
    return guest, port


def power_off(guest: Guest, deadline: float) -> None:
    """ACPI power-down, waiting up to ``deadline`` seconds, then kill. Whatever interrupts the wait (a
    second Ctrl-C), the guest is killed before it propagates."""
    try:
        if guest.is_running():
            with complete_step("Powering off the guest"):
                guest.shutdown(deadline)
    finally:
        guest.destroy()  # idempotent: releases sockets, QMP, libvirt callbacks


@contextlib.contextmanager
def kept(stack: contextlib.ExitStack, guest: Guest, *, keep: bool,
         on_keep: Callable[[], None] | None = None) -> Iterator[None]:
    """Around the caller's use of the guest: with ``keep``, a block that raises while the guest runs
    drops the stack's undo (the guest, its files and its connection stay); ``on_keep`` says so."""
    try:
        yield
    except BaseException:
        if keep and guest.is_running():
            stack.pop_all()  # never closed: nothing registered so far is undone
            if on_keep is not None:
                on_keep()
        raise
