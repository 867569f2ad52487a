"""A consistent disk layer for every checkpoint, and proof of where a resumed guest stands.

Cutting a checkpoint (``QemuGuest.checkpoint``) freezes the disk at QMP ``stop``. The guest's page cache
is not on that disk: a layer cut from a running guest lacks the writes the kernel had not flushed yet.
A live resume brings the page cache back with the memory state, so it never noticed; but a build that
boots the layer alone (a UEFI guest, a qemu upgrade that cannot load the memory state, a damaged memory
state) got an image without the steps' files — and said Succeeded. So, before every cut:

1. ``quiesced()`` runs ``guest_scripts/freeze.sh`` as root through ONE held SSH command: it writes the
   checkpoint's id to ``MARKER``, syncs, ``fsfreeze``\\ s every block-device filesystem (flushes dirty
   pages and the journal, blocks new writes) and prints ``frozen: …``; the host cuts the layer (and
   saves memory) while the command waits; one line on its stdin thaws the guest. No new process has to
   start in the guest while it is frozen — an SSH login or a ``sudo`` might want to write and hang.
   The script thaws on its own after ``HOLD_SECONDS`` of guest time; if it had to, the cut may not be
   consistent and the checkpoint is not kept (``CheckpointError``).
2. A live resume continues *inside* that frozen moment, with a holder whose SSH connection is gone:
   ``AFTER_RESUME`` stops the stale holder, thaws every filesystem and sets the clock (it stood still).
3. After any resume — live or booted from the disk layer — ``confirm()`` reads ``MARKER`` back and
   refuses a guest that is not at the expected checkpoint (``CheckpointMismatch``): no step is skipped
   without that proof. Deprovision removes ``MARKER_DIR`` (the image never keeps it; the offline
   inspection checks).

Windows guests take no checkpoints (docs/windows.md), so there is nothing to quiesce there yet; VSS
through qemu-guest-agent would be the Windows counterpart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import logging
import re
import shlex
import time
from collections.abc import Iterator

from localbuilder.communicator import CanHold, Communicator
from localbuilder.errors import CheckpointError, CheckpointMismatch, CommunicatorError

log = logging.getLogger("localbuilder.quiesce")

MARKER_DIR = "/var/lib/localbuilder"
MARKER = f"{MARKER_DIR}/checkpoint"
FREEZE_PID = "/run/localbuilder/freeze.pid"
# Guest seconds the guest stays frozen without the host's word. The guest's clock does not advance while
# qemu has it stopped (the cut and the memory save happen then), so this only has to cover the moments
# between "frozen" and QMP stop and between cont and our newline: well under a second here.
HOLD_SECONDS = 30
_KEY = re.compile(r"^[0-9a-f]{16,128}$")


@dataclasses.dataclass(frozen=True)
class Quiesced:
    frozen: tuple[str, ...]  # mount points frozen for the cut ("/" among them, or the cut is not kept)
    unfrozen: tuple[str, ...]  # block-device filesystems that cannot freeze (vfat ESP): synced only


def script_text() -> str:
    res = importlib.resources.files("localbuilder") / "resources" / "guest_scripts" / "freeze.sh"
    return res.read_text()


def freeze_command(mark: str, hold: int = HOLD_SECONDS) -> str:
    if not _KEY.match(mark):
        raise ValueError(f"checkpoint id {mark!r} is not hex")
    return f"sudo -n sh -c {shlex.quote(script_text())} localbuilder-freeze {hold} {mark}"


def parse_frozen(line: str) -> Quiesced:
    """``frozen: / /boot; unfrozen: /boot/efi`` → Quiesced (``none`` is an empty list)."""
    body = line.removeprefix("frozen:")
    frozen_part, _, unfrozen_part = body.partition("; unfrozen:")

    def names(text: str) -> tuple[str, ...]:
        words = [w.encode().decode("unicode_escape") if "\\" in w else w for w in text.split()]
        return tuple(w for w in words if w != "none")

    return Quiesced(frozen=names(frozen_part), unfrozen=names(unfrozen_part))


@contextlib.contextmanager
def quiesced(comm: CanHold, mark: str, *, timeout: float, hold: int = HOLD_SECONDS) -> Iterator[Quiesced]:
    """Write ``mark`` into the guest and keep its filesystems frozen while the block runs (see above).

    Raises CheckpointError when the root filesystem could not be frozen (before the block runs) or when
    the guest thawed on its own before the block ended (after it): either way the layer cut in the block
    may lack writes, and must not be kept."""
    start = time.monotonic()
    try:
        with comm.hold(freeze_command(mark, hold), ready="frozen:", timeout=timeout) as held:
            state = parse_frozen(held.line)
            if "/" not in state.frozen:
                raise CheckpointError(
                    f"the guest's root filesystem could not be frozen ({held.line.strip()})",
                    hint="fsfreeze (util-linux) is needed in the guest for checkpoints; build with "
                    "--no-cache if the image cannot have it.",
                )
            log.debug("guest frozen in %.2f s: %s", time.monotonic() - start, held.line)
            yield state
    except CommunicatorError as exc:
        raise CheckpointError(f"could not quiesce the guest for a checkpoint: {exc.message}",
                              hint=exc.hint) from exc
    result = held.result
    if result is None or result.exit_status != 0:
        said = (result.stdout_tail + result.stderr_tail).strip()[-300:] if result is not None else ""
        raise CheckpointError(
            "the guest thawed before the checkpoint was cut completely"
            + (f" (exit {result.exit_status}: {said})" if result is not None else ""),
            hint="The host was too slow (a very busy machine); the checkpoint is not kept.",
        )


def after_resume_command(now: float | None = None) -> str:
    """Run first in a guest resumed from a live checkpoint: stop the stale freeze holder, thaw every
    block-device filesystem (an already thawed one just says EINVAL), and set the clock from the host."""
    stamp = f"{now if now is not None else time.time():.0f}"
    inner = (
        f"pid=$(cat {FREEZE_PID} 2>/dev/null) && kill \"$pid\" 2>/dev/null; rm -f {FREEZE_PID}; "
        "for m in $(awk '$1 ~ \"^/dev/\" { print $2 }' /proc/mounts); do "
        "fsfreeze -u \"$(printf '%b' \"$m\")\" 2>/dev/null; done; "
        f"date -u -s @{stamp} >/dev/null"
    )
    return f"sudo -n sh -c {shlex.quote(inner)}"


def read_marker(comm: Communicator, *, timeout: float) -> str:
    result = comm.run(f"sudo -n cat {MARKER}", timeout=timeout)
    return result.stdout_tail.strip() if result.ok else ""


def confirm(comm: Communicator, expected: str, *, timeout: float) -> None:
    """Prove that the guest is at checkpoint ``expected``; CheckpointMismatch when it says otherwise."""
    found = read_marker(comm, timeout=timeout)
    if found != expected:
        raise CheckpointMismatch(
            f"the guest resumed from checkpoint {expected[:12]} says it is "
            + (f"checkpoint {found[:12]}" if found else f"no checkpoint (no {MARKER})")
            + ": its disk or memory state is not the one recorded",
            hint="The checkpoint is discarded and the build continues without it.",
        )
