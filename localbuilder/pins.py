"""Pins: checkpoints that ``prune`` keeps because a finished run still needs them.

A running build holds a shared ``flock`` on every entry of its chain (``checkpoints.Holder``), so prune
never deletes a layer in use. That lock ends with the build process, but two kinds of finished runs still
depend on their chain:

* a run that **kept its guest** (``--on-error abort``): the running qemu's overlay is backed by the
  chain's layers, and after a live resume its printed ``ssh -i …`` command uses the entry's build key.
  Deleting them breaks the guest under the user's feet;
* a **resumable** run (Failed, Canceled, PartiallySucceeded): ``localbuilder build --resume RUN``
  continues from the deepest checkpoint of its chain.

A build writes ``<cache>/pins/<run-id>.json`` (the run directory and the keys of its chain) as the chain
grows — a SIGKILLed build never reaches its end, and recovery then marks it Failed — and again when it
ends, before it releases its locks (``build.Build._release_checkpoints``). Prune reads the pins and
checks each one against the run's ``state.json`` every time: a pin whose run directory is gone, whose
run succeeded meanwhile (a resume), or none of whose checkpoints are still cached is stale and removed.
A pinned key pins its ancestors (every layer below it is a backing file). ``cache prune --force``
overrides pins: it stops the kept guests whose checkpoints it is about to delete (as ``localbuilder
cancel RUN`` does), then deletes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from localbuilder import paths
from localbuilder.errors import LocalBuilderError
from localbuilder.recovery import remove_guest_files, stop_kept_guest
from localbuilder.state import (
    ProcessInfo,
    RunDir,
    RunRecord,
    RunState,
    _start_ticks,
    now_iso,
    write_json_atomic,
)

log = logging.getLogger("localbuilder.pins")

PINS_DIR = "pins"
FORMAT = 1


def pins_dir(cache_root: Path) -> Path:
    """``<cache>/pins`` beside ``<cache>/checkpoints`` (``cache_root``)."""
    return cache_root.parent / PINS_DIR


@dataclasses.dataclass(frozen=True)
class Pin:
    """What a finished run needs from the cache, as written when it ended."""

    run_id: str
    run_dir: str
    template: str
    keys: tuple[str, ...]  # the chain's entries this run built on or saved, root first
    created: str
    host: str
    backend: str | None = None  # of the kept guest, if any
    guest_pid: int | None = None  # the kept qemu (direct QEMU backend)
    guest_start_ticks: int | None = None  # /proc/<pid>/stat field 22: a reused pid is not our guest
    guest_domain: str | None = None  # the kept libvirt domain

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "runId": self.run_id, "runDir": self.run_dir, "template": self.template,
            "keys": list(self.keys), "created": self.created, "host": self.host, "backend": self.backend,
            "guestPid": self.guest_pid, "guestStartTicks": self.guest_start_ticks,
            "guestDomain": self.guest_domain,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Pin:
        pid, ticks = d.get("guestPid"), d.get("guestStartTicks")
        return cls(
            run_id=str(d["runId"]), run_dir=str(d["runDir"]), template=str(d.get("template", "")),
            keys=tuple(str(k) for k in d["keys"]), created=str(d.get("created", "")),
            host=str(d.get("host", "")), backend=d.get("backend"),
            guest_pid=int(pid) if pid is not None else None,
            guest_start_ticks=int(ticks) if ticks is not None else None, guest_domain=d.get("guestDomain"),
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ActivePin:
    """A pin that still holds: the run, its current record and why it needs its chain."""

    pin: Pin
    record: RunRecord
    guest_alive: bool  # a kept guest is running on the chain

    @property
    def run_id(self) -> str:
        return self.pin.run_id

    @property
    def kind(self) -> str:
        if self.guest_alive:
            return "kept guest"
        if not self.record.run_state.finished:
            return "running"
        return "resumable"

    def reason(self) -> str:
        """``run X keeps its failed guest running (qemu pid N, --on-error abort)`` and the like."""
        run = f"run {self.pin.template}/{self.run_id}" if self.pin.template else f"run {self.run_id}"
        if self.guest_alive:
            pin = self.pin
            what = f"qemu pid {pin.guest_pid}" if pin.guest_pid else f"domain {pin.guest_domain}"
            return (f"{run} keeps its failed guest running ({what}, --on-error abort; "
                    f"stop it with 'localbuilder cancel {self.run_id}')")
        if not self.record.run_state.finished:
            return f"{run} is running again (--resume)"
        return (f"{run} ended {self.record.run_state}: 'localbuilder build --resume {self.run_id}' "
                "continues from it")


# -- writing ------------------------------------------------------------------------------------------------


def _pin_file(cache_root: Path, run_id: str) -> Path:
    return pins_dir(cache_root) / f"{run_id}.json"


def record_run(cache_root: Path, run_path: Path, record: RunRecord, keys: Sequence[str]) -> Pin | None:
    """Pin ``keys`` for a run that ended needing them (kept guest, resumable); unpin a succeeded one."""
    path = _pin_file(cache_root, record.run_id)
    if record.run_state is RunState.Succeeded or not keys:
        path.unlink(missing_ok=True)
        return None
    kept = record.kept_guest
    pin = Pin(
        run_id=record.run_id, run_dir=str(run_path.absolute()), template=record.template_name,
        keys=tuple(keys), created=now_iso(), host=socket.gethostname(),
        backend=kept.backend if kept else None, guest_pid=kept.pid if kept else None,
        guest_start_ticks=_start_ticks(kept.pid) if kept and kept.pid is not None else None,
        guest_domain=kept.domain if kept else None,
    )  # fmt: skip
    # 0700/0600 like the checkpoints: a pin names run directories.
    paths.ensure_private_dir(pins_dir(cache_root))
    write_json_atomic(path, pin.as_dict())
    return pin


# -- reading ------------------------------------------------------------------------------------------------


def _guest_alive(pin: Pin, record: RunRecord) -> bool:
    kept = record.kept_guest
    if kept is None:
        return False  # `localbuilder cancel` stopped it (and cleared the record)
    if kept.pid is not None:
        return ProcessInfo(kept.pid, pin.host, pin.guest_start_ticks).is_alive() is not False
    return kept.domain is not None  # libvirt: cancel clears the record when it destroys the domain


def _check(pin: Pin) -> ActivePin | None:
    run = RunDir(Path(pin.run_dir))
    if not run.state_file.is_file():
        return None  # the run directory was removed: nothing can resume it
    try:
        record = run.read()
    except LocalBuilderError:
        return None
    if record.run_id != pin.run_id or record.run_state is RunState.Succeeded:
        return None
    return ActivePin(pin, record, _guest_alive(pin, record))


def load(cache_root: Path, present: Iterable[str] | None = None) -> list[ActivePin]:
    """The pins that still hold; stale pin files are removed. ``present``: the cached keys (a pin none
    of whose keys is cached any more pins nothing)."""
    directory = pins_dir(cache_root)
    if not directory.is_dir():
        return []
    cached = set(present) if present is not None else None
    active: list[ActivePin] = []
    for path in sorted(directory.glob("*.json")):
        try:
            pin = Pin.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            log.debug("removing unreadable pin %s", path)
            path.unlink(missing_ok=True)
            continue
        checked = _check(pin)
        if checked is None or (cached is not None and not cached.intersection(pin.keys)):
            log.debug("removing stale pin of run %s", pin.run_id)
            path.unlink(missing_ok=True)
            continue
        active.append(checked)
    return active


def pinned_keys(active: Iterable[ActivePin], parents: Mapping[str, str | None]) -> dict[str, list[ActivePin]]:
    """Cached key → the pins that hold it: each pinned key and all its ancestors (its backing files).
    ``parents``: every cached key → its parent's key (None for a root)."""
    out: dict[str, list[ActivePin]] = {}
    for ap in active:
        for key in ap.pin.keys:
            current: str | None = key
            while current is not None and current in parents:
                holders = out.setdefault(current, [])
                if ap in holders:
                    break  # this pin already holds the rest of the chain below
                holders.append(ap)
                current = parents[current]
    return out


def describe(holders: Sequence[ActivePin]) -> str:
    return "; ".join(ap.reason() for ap in holders)


# -- --force ------------------------------------------------------------------------------------------------


def stop_kept_guests(active: Iterable[ActivePin]) -> list[str]:
    """Stop the live kept guests of ``active`` as ``localbuilder cancel RUN`` does, and clear them from
    their runs' state (the runs stay resumable). Returns one line per guest stopped."""
    done: list[str] = []
    for ap in active:
        if not ap.guest_alive:
            continue
        run = RunDir(Path(ap.pin.run_dir))
        with contextlib.suppress(LocalBuilderError):
            record = run.read()
            kept = record.kept_guest
            if kept is None:
                continue
            # The pin's start time proves the pid is still the guest (cancel's own check is the pid alone).
            pid = kept.pid
            ticks = ap.pin.guest_start_ticks
            if pid is not None and ticks is not None and _start_ticks(pid) != ticks:
                pid = None
            stopped = stop_kept_guest(pid, kept.domain, kept.backend)
            remove_guest_files(run, record)  # as cancel does: only the serial log stays
            run.write(dataclasses.replace(record, kept_guest=None))
            what = f"qemu pid {kept.pid}" if kept.pid is not None else f"domain {kept.domain}"
            if stopped:
                done.append(f"stopped the guest kept by run {ap.run_id} ({what})")
    return done
