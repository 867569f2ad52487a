"""Run state, shaped like AIB's ``lastRunStatus`` and ``runOutputs``, kept in ``state.json``.

Layout: ``<home>/runs/<template>/<run-id>/`` holds ``state.json``, ``build.log`` (debug),
``customization.log`` (guest output, like AIB's customization.log in the staging storage account),
the guest's work directory and, by default, the output VHDs. ``state.json`` is rewritten atomically
(tmp + fsync + rename) at every change, so a reader in another terminal (``show-runs``, ``cancel``)
never sees a torn file, and a crash leaves the last consistent state. ``process`` records the pid
and host of the build so ``cancel`` can signal it and ``show-runs`` can tell a run whose process
died (crash, SIGKILL, reboot) from one still running.

Field names in the JSON follow AIB's REST shapes (``lastRunStatus.runState`` …) so scripts written
against ``az image builder show`` read them the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from localbuilder import paths
from localbuilder.errors import LocalBuilderError, UsageError

log = logging.getLogger("localbuilder.state")

STATE_FILE = "state.json"
CANCEL_FILE = "cancel-requested"
SCHEMA_VERSION = 1


class RunState(enum.StrEnum):
    Running = "Running"
    Canceling = "Canceling"
    Succeeded = "Succeeded"
    PartiallySucceeded = "PartiallySucceeded"
    Failed = "Failed"
    Canceled = "Canceled"

    @property
    def finished(self) -> bool:
        return self not in (RunState.Running, RunState.Canceling)


class RunSubState(enum.StrEnum):
    Queued = "Queued"
    Building = "Building"
    Customizing = "Customizing"
    Optimizing = "Optimizing"
    Validating = "Validating"
    Distributing = "Distributing"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class LastRunStatus:
    start_time: str
    run_state: RunState
    run_sub_state: RunSubState
    message: str = ""
    end_time: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "startTime": self.start_time,
            "endTime": self.end_time,
            "runState": str(self.run_state),
            "runSubState": str(self.run_sub_state),
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LastRunStatus:
        return cls(
            start_time=str(d["startTime"]),
            end_time=d.get("endTime"),
            run_state=RunState(d["runState"]),
            run_sub_state=RunSubState(d["runSubState"]),
            message=str(d.get("message", "")),
        )


@dataclasses.dataclass(frozen=True)
class RunOutput:
    """One distribute target's result (AIB ``runOutputs/<runOutputName>``)."""

    name: str
    provisioning_state: str  # Succeeded | Failed (AIB's provisioningState values)
    artifact_uri: str | None = None
    artifact_id: str | None = None
    artifact_tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    type: str = ""  # VHD | ManagedImage | SharedImage
    note: str = ""  # e.g. "not uploaded (Azure distribution not implemented yet)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "provisioningState": self.provisioning_state,
            "artifactUri": self.artifact_uri,
            "artifactId": self.artifact_id,
            "artifactTags": dict(self.artifact_tags),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunOutput:
        return cls(
            name=str(d["name"]),
            type=str(d.get("type", "")),
            provisioning_state=str(d["provisioningState"]),
            artifact_uri=d.get("artifactUri"),
            artifact_id=d.get("artifactId"),
            artifact_tags=dict(d.get("artifactTags") or {}),
            note=str(d.get("note", "")),
        )


@dataclasses.dataclass(frozen=True)
class PhaseTiming:
    name: str  # "boot", "customize[0] Shell 'x'", "deprovision", "power-off", "conversion", …
    seconds: float
    ok: bool = True

    def __post_init__(self) -> None:
        # Centiseconds are plenty, and the in-memory record then equals what state.json holds.
        object.__setattr__(self, "seconds", round(self.seconds, 2))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": self.seconds, "ok": self.ok}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PhaseTiming:
        return cls(name=str(d["name"]), seconds=float(d["seconds"]), ok=bool(d.get("ok", True)))


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Who runs the build: lets ``cancel`` signal it and ``show-runs`` detect a dead build."""

    pid: int
    host: str
    start_ticks: int | None = None  # /proc/<pid>/stat field 22: guards against pid reuse

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "host": self.host, "startTicks": self.start_ticks}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProcessInfo:
        ticks = d.get("startTicks")
        start_ticks = int(ticks) if ticks is not None else None
        return cls(pid=int(d["pid"]), host=str(d["host"]), start_ticks=start_ticks)

    @classmethod
    def current(cls) -> ProcessInfo:
        return cls(pid=os.getpid(), host=socket.gethostname(), start_ticks=_start_ticks(os.getpid()))

    def is_alive(self) -> bool | None:
        """True/False on this host; None when the build runs on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        fields = _stat_fields(self.pid)
        if fields and fields[0] == "Z":
            return False  # exited, not yet reaped by its parent
        ticks = _start_ticks(self.pid)
        return self.start_ticks is None or ticks is None or ticks == self.start_ticks


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on; [] when unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[-1].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class KeptGuest:
    """A guest left running by ``--on-error abort``: how to reach it and how to stop it."""

    ssh_host: str
    ssh_port: int
    user: str
    key_file: str
    backend: str
    pid: int | None = None  # qemu's pid (direct QEMU) — what `localbuilder cancel` kills
    domain: str | None = None  # libvirt domain name

    def ssh_command(self) -> str:
        # The guest's host key is new and throwaway: do not pollute ~/.ssh/known_hosts with it.
        return (
            f"ssh -i {self.key_file} -p {self.ssh_port} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null {self.user}@{self.ssh_host}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "sshHost": self.ssh_host,
            "sshPort": self.ssh_port,
            "user": self.user,
            "keyFile": self.key_file,
            "backend": self.backend,
            "pid": self.pid,
            "domain": self.domain,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeptGuest:
        return cls(
            ssh_host=str(d["sshHost"]),
            ssh_port=int(d["sshPort"]),
            user=str(d["user"]),
            key_file=str(d["keyFile"]),
            backend=str(d["backend"]),
            pid=d.get("pid"),
            domain=d.get("domain"),
        )


@dataclasses.dataclass(frozen=True)
class ActiveGuest:
    """The guest a build has running right now, so a later start can stop it if the build was killed.

    A direct-QEMU guest runs in its own session: a SIGKILLed ``localbuilder build`` (no cleanup, no
    parent-death signal) leaves it running. ``localbuilder.recovery`` finds it again through this record,
    and ``pid`` + ``start_ticks`` + ``name`` in the process's command line prove it is still the same
    process (a pid reused by something else is never killed).
    """

    backend: str  # qemu | libvirt | fake
    name: str  # qemu's -name / the libvirt domain: lb-<random>, also the guest directory's name
    workdir: str  # the guest's private directory (overlay, seed, sockets, serial log)
    purpose: str = "build"  # build | validation
    pid: int | None = None  # qemu's pid (direct QEMU)
    start_ticks: int | None = None  # /proc/<pid>/stat field 22 when the guest came up
    libvirt_uri: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "name": self.name,
            "workdir": self.workdir,
            "purpose": self.purpose,
            "pid": self.pid,
            "startTicks": self.start_ticks,
            "libvirtUri": self.libvirt_uri,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ActiveGuest:
        pid, ticks = d.get("pid"), d.get("startTicks")
        return cls(
            backend=str(d["backend"]),
            name=str(d["name"]),
            workdir=str(d["workdir"]),
            purpose=str(d.get("purpose", "build")),
            pid=int(pid) if pid is not None else None,
            start_ticks=int(ticks) if ticks is not None else None,
            libvirt_uri=d.get("libvirtUri"),
        )

    @classmethod
    def for_process(cls, backend: str, name: str, workdir: Path, purpose: str, pid: int | None,
                    libvirt_uri: str | None = None) -> ActiveGuest:
        ticks = _start_ticks(pid) if pid is not None else None
        return cls(backend, name, str(workdir), purpose, pid, ticks, libvirt_uri)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    template_name: str
    template_file: str
    last_run_status: LastRunStatus
    run_outputs: tuple[RunOutput, ...] = ()
    phases: tuple[PhaseTiming, ...] = ()
    process: ProcessInfo | None = None
    kept_guest: KeptGuest | None = None
    output_dir: str | None = None
    failed_step: str | None = None  # "customize[2] Shell 'install'" when a step failed
    guest: ActiveGuest | None = None  # the guest running now (recovery after a SIGKILL)
    # When each `build --resume` continued this run; lastRunStatus.startTime stays the first start.
    resume_times: tuple[str, ...] = ()
    provisioning: Mapping[str, Any] | None = None  # how the build guest was provisioned, and why

    def as_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": SCHEMA_VERSION,
            "runId": self.run_id,
            "templateName": self.template_name,
            "templateFile": self.template_file,
            "lastRunStatus": self.last_run_status.as_dict(),
            "runOutputs": [o.as_dict() for o in self.run_outputs],
            "phases": [p.as_dict() for p in self.phases],
            "process": self.process.as_dict() if self.process else None,
            "keptGuest": self.kept_guest.as_dict() if self.kept_guest else None,
            "outputDir": self.output_dir,
            "failedStep": self.failed_step,
            "guest": self.guest.as_dict() if self.guest else None,
            "resumeTimes": list(self.resume_times),
            "provisioning": dict(self.provisioning) if self.provisioning else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        return cls(
            run_id=str(d["runId"]),
            template_name=str(d["templateName"]),
            template_file=str(d.get("templateFile", "")),
            last_run_status=LastRunStatus.from_dict(d["lastRunStatus"]),
            run_outputs=tuple(RunOutput.from_dict(o) for o in d.get("runOutputs") or ()),
            phases=tuple(PhaseTiming.from_dict(p) for p in d.get("phases") or ()),
            process=ProcessInfo.from_dict(d["process"]) if d.get("process") else None,
            kept_guest=KeptGuest.from_dict(d["keptGuest"]) if d.get("keptGuest") else None,
            output_dir=d.get("outputDir"),
            failed_step=d.get("failedStep"),
            guest=ActiveGuest.from_dict(d["guest"]) if d.get("guest") else None,
            resume_times=tuple(str(t) for t in d.get("resumeTimes") or ()),
            provisioning=d.get("provisioning") or None,
        )

    @property
    def run_state(self) -> RunState:
        return self.last_run_status.run_state

    def with_status(self, **changes: Any) -> RunRecord:
        return dataclasses.replace(self, last_run_status=dataclasses.replace(self.last_run_status, **changes))


def new_run_id() -> str:
    # Sortable by start time, unique without coordination; short enough to type a prefix of.
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return cleaned or "template"


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` so that readers see either the old or the new file, even across a crash."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # 0600 whatever the umask: run state names key files and guest ports (ARCHITECTURE: private state).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


class RunDir:
    """One run's directory and its ``state.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, template_name: str, template_file: Path, *, root: Path | None = None) -> RunDir:
        base = paths.ensure_private_dir((root or paths.runs_dir()) / _safe_name(template_name))
        run_id = new_run_id()
        path = base / run_id
        path.mkdir(mode=0o700)
        run = cls(path)
        record = RunRecord(
            run_id=run_id,
            template_name=template_name,
            template_file=str(template_file),
            last_run_status=LastRunStatus(
                start_time=now_iso(), run_state=RunState.Running, run_sub_state=RunSubState.Queued
            ),
            process=ProcessInfo.current(),
        )
        run.write(record)
        return run

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def cancel_file(self) -> Path:
        return self.path / CANCEL_FILE

    @property
    def build_log(self) -> Path:
        return self.path / "build.log"

    @property
    def customization_log(self) -> Path:
        return self.path / "customization.log"

    def read(self) -> RunRecord:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            return RunRecord.from_dict(data)
        except FileNotFoundError:
            raise LocalBuilderError(f"{self.state_file}: no state file (not a run directory?)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LocalBuilderError(
                f"{self.state_file}: unreadable run state ({exc})",
                hint="The file was edited or written by another version; remove the run directory.",
            ) from exc

    def write(self, record: RunRecord) -> None:
        write_json_atomic(self.state_file, record.as_dict())

    def cancel_requested(self) -> bool:
        return self.cancel_file.exists()

    def request_cancel(self) -> None:
        self.cancel_file.write_text(now_iso() + "\n")


def iter_runs(template: str | None = None, *, root: Path | None = None) -> Iterator[RunDir]:
    base = root or paths.runs_dir()
    if not base.is_dir():
        return
    dirs = [base / _safe_name(template)] if template else sorted(p for p in base.iterdir() if p.is_dir())
    for tdir in dirs:
        if not tdir.is_dir():
            continue
        for rdir in sorted(tdir.iterdir()):
            if (rdir / STATE_FILE).is_file():
                yield RunDir(rdir)


def find_run(ref: str, *, root: Path | None = None) -> RunDir:
    """A run by id, unique id prefix, ``template/run-id`` or directory path."""
    as_path = Path(ref)
    if (as_path / STATE_FILE).is_file():
        return RunDir(as_path.absolute())
    template, _, prefix = ref.rpartition("/")
    matches = [r for r in iter_runs(template or None, root=root) if r.run_id.startswith(prefix)]
    exact = [r for r in matches if r.run_id == prefix]
    if exact:
        matches = exact
    if not matches:
        raise UsageError(f"no run matches {ref!r}", hint="List runs with 'localbuilder show-runs'.")
    if len(matches) > 1:
        shown = ", ".join(f"{r.path.parent.name}/{r.run_id}" for r in matches[:10])
        raise UsageError(
            f"{ref!r} matches {len(matches)} runs: {shown}", hint="Give more characters of the run id."
        )
    return matches[0]


def reconcile(run: RunDir) -> RunRecord:
    """Read a run; a Running/Canceling run whose build process is gone is marked Failed on disk."""
    record = run.read()
    if record.run_state.finished or record.process is None:
        return record
    if record.process.is_alive() is False:
        canceled = run.cancel_requested()
        record = record.with_status(
            run_state=RunState.Canceled if canceled else RunState.Failed,
            end_time=now_iso(),
            message=(record.last_run_status.message + "\n" if record.last_run_status.message else "")
            + f"the build process (pid {record.process.pid}) ended without recording a result "
            "(killed or crashed)",
        )
        run.write(record)
    return record
