"""Where a build keeps its run: ``--resume`` reopening a run directory, and the guests' work
directories inside it (or beside it, when a unix socket path would be too long)."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
from pathlib import Path

from localbuilder.errors import UsageError
from localbuilder.state import ProcessInfo, RunDir, RunRecord, RunState, RunSubState, now_iso

log = logging.getLogger("localbuilder.build")

# 108-byte sun_path minus "/lb-XXXXXXXXXX/qmp.sock" (23) and some slack for the backend's own names.
MAX_WORKDIR_BYTES = 75


def reopen(path: Path) -> tuple[RunDir, RunRecord]:
    """``--resume``: the same run directory, state back to Running; the steps that succeeded last time
    come back from their checkpoints. Returns the run and its previous record."""
    run = RunDir(path.absolute())
    previous = run.read()
    if not previous.run_state.finished:
        raise UsageError(
            f"run {previous.run_id} is still {previous.run_state}",
            hint=f"Wait for it, or stop it with 'localbuilder cancel {previous.run_id}'.",
        )
    if previous.run_state is RunState.Succeeded:
        raise UsageError(f"run {previous.run_id} succeeded: there is nothing to resume",
                         hint="Build the template again instead.")
    kept = previous.kept_guest
    pid = kept.pid if kept is not None else None
    if pid is not None and ProcessInfo(pid, socket.gethostname()).is_alive():
        raise UsageError(
            f"run {previous.run_id} still has its failed guest running (--on-error abort)",
            hint=f"Stop it first: localbuilder cancel {previous.run_id}",
        )
    run.cancel_file.unlink(missing_ok=True)
    # The run keeps its start time (show-runs, AIB's lastRunStatus.startTime); each resume is recorded.
    record = dataclasses.replace(
        previous, process=ProcessInfo.current(), failed_step=None, kept_guest=None, run_outputs=(),
        phases=(), resume_times=(*previous.resume_times, now_iso()),
    ).with_status(run_state=RunState.Running, run_sub_state=RunSubState.Queued, message="", end_time=None)
    run.write(record)
    return run, previous



def guest_workdir(run_path: Path, purpose: str) -> Path:
    """``<run>/vm-<purpose>``, unless that is too long for the guest's unix sockets.

    The session nests ``<workdir>/lb-XXXXXXXXXX/qmp.sock`` and a unix socket path is limited to
    108 bytes (sun_path); a deep LOCALBUILDER_HOME or a long template name exceeds that. Then the
    guest lives in a short private directory under /var/tmp, linked from the run directory.
    """
    preferred = run_path / f"vm-{purpose}"
    if len(os.fsencode(preferred)) <= MAX_WORKDIR_BYTES:
        return preferred
    n = 1
    while preferred.exists() or preferred.is_symlink():  # a resumed run keeps the last attempt's logs
        n += 1
        preferred = run_path / f"vm-{purpose}-{n}"
    short = Path(tempfile.mkdtemp(prefix="lb-", dir="/var/tmp"))
    preferred.symlink_to(short, target_is_directory=True)
    log.debug("guest work directory %s (linked from %s: too long for sockets)", short, preferred)
    return short

