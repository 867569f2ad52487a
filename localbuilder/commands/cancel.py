"""`localbuilder cancel RUN`: stop a running build (or a guest kept by --on-error abort).

A running build is asked twice, so that it works even when its pid cannot be signalled (another
host sharing the runs directory, a different user): a cancel-request file in the run directory,
which the build's watchdog polls, and SIGTERM to the build process. The build then stops its guest
and ends ``Canceled``. For a finished run whose guest was kept (``--on-error abort``), the guest is
stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import time

from localbuilder.errors import LocalBuilderError
from localbuilder.recovery import recover_and_warn, remove_guest_files, stop_kept_guest
from localbuilder.state import RunState, find_run, now_iso, reconcile

NAME = "cancel"
HELP = "cancel a running build, or stop the guest a failed build kept (--on-error abort)"

log = logging.getLogger("localbuilder.commands.cancel")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_ref", metavar="RUN", help="run id, unique prefix, or TEMPLATE/RUN")
    parser.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for the build to end (default 120)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    recover_and_warn()  # builds that were killed: stop their guests, mark their runs
    rundir = find_run(args.run_ref)
    record = reconcile(rundir)
    if record.run_state.finished:
        kept = record.kept_guest
        if kept is None:
            print(f"run {record.run_id} already ended: {record.run_state}")
            return 0
        stopped = stop_kept_guest(kept.pid, kept.domain, kept.backend)
        # The guest's files stayed for it (the build keeps them while it runs): only its serial log stays.
        remove_guest_files(rundir, record)
        rundir.write(dataclasses.replace(record, kept_guest=None))
        print(f"stopped the guest kept by run {record.run_id}" if stopped else "the guest was already gone")
        return 0

    rundir.request_cancel()
    rundir.write(record.with_status(run_state=RunState.Canceling))
    proc = record.process
    if proc is not None and proc.is_alive():
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            log.warning("cannot signal pid %d (%s); the build will see the cancel request", proc.pid, exc)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        record = reconcile(rundir)
        if record.run_state.finished:
            print(f"run {record.run_id}: {record.run_state}")
            return 0 if record.run_state is RunState.Canceled else 1
        time.sleep(0.5)
    raise LocalBuilderError(
        f"run {record.run_id} did not end within {args.wait:.0f} s of the cancel request ({now_iso()})",
        hint="It may be stopping its guest; check 'localbuilder show-runs' again, or raise --wait.",
    )
