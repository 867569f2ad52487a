"""The build orchestrator: AIB's phases, in AIB's order, on a local guest.

    Queued       preflight (step types, File destinations, outputs), fetch + checksum every
                 scriptUri/sourceUri, resolve the source image — all before any guest boots
    Building     boot the source image (overlay; the source is never written)
    Customizing  customize[] in order, the first failure stops; then the hidden deprovision step
                 (AIB's DeprovisioningScript.sh, or the user's) and the guest's own power-off
    Optimizing   convert the generalized disk to a MiB-aligned fixed VHD, verify its footer, and
                 inspect it offline (build user, host keys, cloud-init state …)
    Validating   validate.inVMValidations in a guest booted from the *generalized output* (FACTS §6),
                 or from the source with sourceValidationOnly
    Distributing each distribute[] target independently

``buildTimeoutInMinutes`` bounds the whole run. Every blocking call gets the remaining time as its
timeout, and a watchdog thread interrupts the main thread (SIGUSR1 → BuildTimeout) in case some call
blocks anyway; ``localbuilder cancel`` works the same way (SIGTERM, or a cancel-request file the
watchdog polls). Interrupts fire once: the cleanup that follows (guest power-down) is not interrupted.

The guest and disk services are injected through ``Platform`` so the whole flow runs in unit tests on
``FakeHypervisor`` + ``FakeCommunicator``; ``localbuilder.platform.LocalPlatform`` is the real one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from localbuilder import checkpoints, pins, validators
from localbuilder.bootwatch import DEFAULT_BOOT_TIMEOUT
from localbuilder.communicator import Communicator
from localbuilder.customizers import Customizer, StepContext, customizer_for
from localbuilder.distributors import AzureOptions, DistributeContext, distributor_for
from localbuilder.errors import (
    BuildTimeout,
    Canceled,
    CheckpointMismatch,
    CommunicatorError,
    CommunicatorTimeout,
    CustomizerError,
    DeprovisionError,
    InspectionError,
    LocalBuilderError,
    UsageError,
)
from localbuilder.fetch import FetchRequest, fetch_all
from localbuilder.hypervisor import Guest
from localbuilder.log import add_file_handler, complete_step, format_duration, remove_handler
from localbuilder.recovery import release_short_workdirs
from localbuilder.redact import hide_query as redact
from localbuilder.runlog import CustomizationLog, phase_table
from localbuilder.state import (
    ActiveGuest,
    KeptGuest,
    PhaseTiming,
    ProcessInfo,
    RunDir,
    RunOutput,
    RunRecord,
    RunState,
    RunSubState,
    now_iso,
    write_json_atomic,
)
from localbuilder.template import model
from localbuilder.template.model import OsType

log = logging.getLogger("localbuilder.build")

# AIB waits 20 min for SSH (FACTS §6); under TCG the first login took ~65 s here.
SSH_WAIT_SECONDS = DEFAULT_BOOT_TIMEOUT  # --boot-timeout overrides it (BuildOptions.boot_timeout)
DEPROVISION_SECONDS = 10 * 60
CLOUD_INIT_WAIT_SECONDS = 10 * 60
# 108-byte sun_path minus "/lb-XXXXXXXXXX/qmp.sock" (23) and some slack for the backend's own names.
MAX_WORKDIR_BYTES = 75
CANCELED_MESSAGE = "the build was canceled; nothing was left running"
INVOCATION_FILE = "invocation.json"
WORK_VHD = "image.vhd"  # the converted VHD in the run directory, before the distributors place it


# Saving a checkpoint: ~0.5 s pause + the memory write under TCG here (FACTS §3e).
CHECKPOINT_SECONDS = 5 * 60


# ---------------------------------------------------------------------------------------------------------
# What the orchestrator needs from the machinery (real: localbuilder.platform; tests: fakes)


@dataclasses.dataclass(frozen=True)
class SourceImage:
    path: Path
    format: str  # qemu-img format name: qcow2, raw, vpc …
    os: OsType
    label: str  # what the user called it (URN, resource id)
    uefi: bool = False


@dataclasses.dataclass
class BootedGuest:
    """A running guest with a connected communicator. ``keep()`` stops the platform from removing it."""

    guest: Guest
    comm: Communicator
    host: str
    port: int
    user: str
    key_file: Path
    overlay: Path
    overlay_format: str
    serial_log: Path | None
    backend: str
    kept: KeptGuest | None = None
    host_keys: tuple[str, ...] = ()  # pinned SSH host keys (kept with a live checkpoint)
    seed_iso: Path | None = None  # the seed the guest booted with (a live resume needs the same one)
    layers: int = 0  # live checkpoints taken so far: each put a new overlay on top
    _keep: Callable[[], KeptGuest] | None = None

    def keep(self) -> KeptGuest:
        if self.kept is None:
            if self._keep is None:
                raise LocalBuilderError("this guest backend cannot keep a guest running")
            self.kept = self._keep()
        return self.kept


@dataclasses.dataclass(frozen=True)
class GuestRequest:
    image: SourceImage
    workdir: Path
    disk_size_bytes: int | None
    vm_size: str
    purpose: str  # "build" | "validation"
    timeout: float  # SSH readiness bound (the remaining build time caps it)
    checkpoint: checkpoints.Entry | None = None  # continue from this checkpoint instead of the image


@dataclasses.dataclass(frozen=True)
class DeprovisionOutcome:
    user_script: bool  # the template wrote /tmp/DeprovisioningScript.sh and it replaced ours
    script_seconds: float
    poweroff_seconds: float


@dataclasses.dataclass(frozen=True)
class Inspection:
    problems: tuple[str, ...]  # findings that mean "not generalized"
    report: dict[str, Any]


class Platform(Protocol):
    def resolve(self, source: Any) -> SourceImage: ...

    def boot(self, request: GuestRequest) -> contextlib.AbstractContextManager[BootedGuest]: ...

    def deprovision(self, booted: BootedGuest, *, timeout: float) -> DeprovisionOutcome:
        """Run AIB's hidden deprovision step and wait for the guest to power off."""
        ...

    def convert(self, src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        """Fixed, MiB-aligned, footer-verified VHD at ``dst``; returns its virtual size."""
        ...

    def inspect(self, vhd: Path, build_user: str) -> Inspection: ...

    def checkpoint_traits(self, image: SourceImage) -> Mapping[str, Any] | None:
        """What besides the template shapes a booted guest (backend, accelerator, network …), for the
        checkpoint keys; None when this platform cannot take checkpoints of ``image``'s guests."""
        ...

    def checkpoint(
        self,
        booted: BootedGuest,
        staging: Path,
        *,
        backing: Path,
        backing_format: str,
        timeout: float,
        mark: str,
        room_for: Path,
    ) -> checkpoints.LiveMeta | None:
        """Quiesce the guest (writing ``mark``, the checkpoint's key, into it), freeze its disk into
        ``staging/disk.qcow2`` (rebased onto ``backing``) and, where the backend can, its memory for a
        live resume (then returns what that resume needs). Refuses (CheckpointError) when the checkpoint
        would leave too little room in ``room_for`` for the conversion that follows."""
        ...

    def check_layer(self, disk: Path) -> str | None:
        """Structural check of a checkpoint's disk layer before a build uses it; None when sound."""
        ...


# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    output_dir: Path | None = None  # default: <run dir>/outputs
    on_error: model.OnBuildError | None = None  # --on-error cleanup/abort; None: the template's errorHandling
    ask_on_error: bool = False  # --on-error ask: on a terminal, retry the step / keep the guest / clean up
    allow_any_destination: bool = False
    force: bool = False
    timeout_seconds: float | None = None  # overrides buildTimeoutInMinutes (tests, --timeout)
    prompt: Callable[[str], str] | None = None  # for --on-error ask; None = input() on a TTY
    interactive: bool | None = None  # None: stdin is a TTY
    runs_root: Path | None = None  # default paths.runs_dir()
    azure: AzureOptions = AzureOptions()  # --staging / --staging-account-id / --dry-run-azure
    use_cache: bool = True  # False: --no-cache (neither use nor store customizer checkpoints)
    resume_run: Path | None = None  # --resume: continue this (failed) run directory instead of a new one
    invocation: Mapping[str, Any] | None = None  # the CLI arguments, kept as invocation.json for --resume
    boot_timeout: float = SSH_WAIT_SECONDS  # --boot-timeout: the SSH wait per boot (build timeout bounds it)


@dataclasses.dataclass(frozen=True)
class FailurePolicy:
    mode: model.OnBuildError
    ask: bool  # ask on a terminal first (--on-error ask); without one, ``mode`` is cleanup
    prompt: Callable[[str], str] | None


class _Interrupts:
    """Deadline and cancel-request watchdog; raises into the main thread exactly once per cause."""

    def __init__(self, deadline: float, cancel_file: Path) -> None:
        self.deadline = deadline
        self.cancel_file = cancel_file
        self.armed = True
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="build-watchdog", daemon=True)
        self._main = threading.main_thread().ident
        self._in_main = threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if self._in_main:
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        self._stop.set()
        self._thread.join(timeout=2)
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def disarm(self) -> None:
        self.armed = False

    def check(self) -> None:
        """Raise the pending interrupt, if any (also used between steps)."""
        if self.cancel_file.exists():
            self.reason = "cancel"
        if self.reason == "cancel":
            raise Canceled("the build was canceled")
        if time.monotonic() >= self.deadline:
            self.reason = "timeout"
            raise BuildTimeout("buildTimeoutInMinutes expired")

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM:
            self.reason = self.reason or "cancel"
        if not self.armed:
            return  # cleanup in progress: let it finish (the final state records the cancel)
        self.armed = False  # once: what follows is cleanup
        if self.reason == "timeout":
            raise BuildTimeout("buildTimeoutInMinutes expired")
        raise Canceled("the build was canceled")

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            if not self.armed:
                continue
            if self.cancel_file.exists():
                self.reason = "cancel"
            elif time.monotonic() >= self.deadline:
                self.reason = "timeout"
            else:
                continue
            if self._in_main and self._main is not None:
                signal.pthread_kill(self._main, signal.SIGUSR1)
            return


class StepFailure(Exception):
    """Internal: a step failed and the policy says stop. Carries the step and the user-facing error."""

    def __init__(self, step: str, error: LocalBuilderError, kept: KeptGuest | None) -> None:
        super().__init__(error.message)
        self.step = step
        self.error = error
        self.kept = kept

    def summary(self) -> str:
        """``customize[1] Shell 'x' failed with exit code 2`` + the output tail, named once."""
        text = self.error.message
        return text if text.startswith(self.step) else f"{self.step}: {text}"


class Build:
    """One run of one template."""

    def __init__(
        self,
        template: model.Template,
        template_file: Path,
        platform: Platform,
        options: BuildOptions = BuildOptions(),
    ) -> None:
        self.template = template
        self.template_file = template_file
        self.platform = platform
        self.options = options
        self.resumed: RunRecord | None = None
        if options.resume_run is not None:
            self.run, self.resumed = self._reopen(options.resume_run)
        else:
            self.run = RunDir.create(template.name, template_file, root=options.runs_root)
        if options.invocation is not None:
            # What --resume needs to run this build again; the CLI leaves secrets (SAS, keys) out.
            write_json_atomic(self.run.path / INVOCATION_FILE, dict(options.invocation))
        self.record = self.run.read()
        self.phases: list[PhaseTiming] = []
        self.output_dir = (options.output_dir or self.run.path / "outputs").absolute()
        self.record = dataclasses.replace(self.record, output_dir=str(self.output_dir))
        self.os = OsType(str(template.os_type))
        self.clog = CustomizationLog(self.run.customization_log)
        seconds = options.timeout_seconds or template.build_timeout_minutes * 60
        self.timeout_seconds = float(seconds)
        self.deadline = time.monotonic() + self.timeout_seconds
        self.interrupts = _Interrupts(self.deadline, self.run.cancel_file)
        self.fetched: dict[str, Path] = {}
        self.digests: dict[str, str] = {}  # uri → sha256 of what was fetched (checkpoint keys)
        self.chain: checkpoints.BuildChain | None = None
        self.checkpoint_seconds = 0.0
        self.user_deprovision = False
        self.source_image: SourceImage | None = None  # OS type + Hyper-V generation for Azure targets
        self.distribute_hints: list[str] = []  # of the failed targets, for the final message

    # -- state ------------------------------------------------------------------------------------------

    @staticmethod
    def _reopen(path: Path) -> tuple[RunDir, RunRecord]:
        """``--resume``: the same run directory, state back to Running; the steps that succeeded last
        time come back from their checkpoints."""
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

    def _save(self) -> None:
        self.record = dataclasses.replace(self.record, phases=tuple(self.phases))
        self.run.write(self.record)

    def _sub_state(self, sub: RunSubState, message: str = "") -> None:
        self.record = self.record.with_status(run_sub_state=sub, message=message)
        self._save()
        log.debug("runSubState=%s", sub)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.phases.append(PhaseTiming(name, time.monotonic() - start, ok))
            self._save()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    # -- the run ----------------------------------------------------------------------------------------

    def execute(self) -> RunRecord:
        handler = add_file_handler(self.run.build_log)
        log.info("run %s of %s (run directory %s)", self.run.run_id, self.template.name, self.run.path)
        if self.resumed is not None:
            was = self.resumed.last_run_status
            first = was.message.splitlines()[0] if was.message else ""
            self.clog.event(f"resuming run {self.run.run_id} (it ended {was.run_state}: {first})")
            log.info("resuming run %s (it ended %s)", self.run.run_id, was.run_state)
        final: tuple[RunState, str] = (RunState.Failed, "")
        try:
            with self.interrupts:
                try:
                    final = self._run_phases()
                except StepFailure as exc:
                    message = exc.summary()
                    if exc.kept is not None:
                        message += (
                            f"\nthe guest is still running: {exc.kept.ssh_command()}"
                            f"\nstop it with: localbuilder cancel {self.run.run_id}"
                        )
                    final = (RunState.Failed, message)
                    self.record = dataclasses.replace(self.record, failed_step=exc.step, kept_guest=exc.kept)
                except (Canceled, KeyboardInterrupt):
                    final = (RunState.Canceled, CANCELED_MESSAGE)
                except BuildTimeout:
                    final = (RunState.Failed, self._timeout_message())
                except LocalBuilderError as exc:
                    if self.interrupts.reason == "timeout":
                        final = (RunState.Failed, self._timeout_message())
                    else:
                        final = (RunState.Failed, exc.message)
                    if exc.hint:
                        final = (final[0], final[1] + f"\nhint: {exc.hint}")
                except BaseException as exc:
                    final = (RunState.Failed, f"internal error: {type(exc).__name__}: {exc}")
                    raise
                finally:
                    self.interrupts.disarm()
                    self._remove_work_vhd()
                    self._finish(*final)
        finally:
            self._release_checkpoints()
            self.clog.close()
            remove_handler(handler)
        return self.record

    def _remove_work_vhd(self) -> None:
        """No VHD stays in the run directory, whatever ended the run (docs/reliability.md): the targets
        hold their own links or copies. Except under a validation guest kept by --on-error abort: its
        overlay is backed by the VHD, and ``localbuilder cancel`` removes both."""
        if self.record.kept_guest is not None:
            return
        try:
            (self.run.path / WORK_VHD).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove the work VHD: %s", exc)

    def _release_checkpoints(self) -> None:
        """The end of this build's use of the cache: pin what the run still needs (a kept guest, a
        ``--resume``), then release its locks and prune. The pin is written while the locks are still
        held, so no prune in between can take the chain."""
        chain, self.chain = self.chain, None
        if chain is None:
            return
        record = self.record
        keys = [entry.key for _, entry in sorted(chain.saved.items())]
        try:
            pin = pins.record_run(chain.cache.root, self.run.path, record, keys)
        except OSError as exc:
            log.warning("could not pin the checkpoints of run %s: %s", record.run_id, exc)
            pin = None
        if pin is not None:
            log.info("checkpoints of run %s pinned (%s): prune keeps them while the run needs them",
                     record.run_id, "kept guest" if record.kept_guest else "resumable with --resume")
        try:
            result = chain.close(prune_to=checkpoints.default_max_size())
        except (OSError, LocalBuilderError) as exc:
            log.warning("could not prune the checkpoint cache: %s", exc)
            return
        if result is None:
            return
        others = [(e, why) for e, why in result.pinned if e.key not in keys]
        for reason in sorted({why for _, why in others}):
            n = sum(1 for _, why in others if why == reason)
            log.info("checkpoint cache: kept %d pinned checkpoints: %s", n, reason)
        if result.removed:
            log.info("checkpoint cache: removed %d old checkpoints (%.1f GiB) to stay under %s",
                     len(result.removed), result.freed / 1024**3, checkpoints.MAX_SIZE_ENV)

    def _timeout_message(self) -> str:
        return (
            f"the build exceeded buildTimeoutInMinutes ({format_duration(self.timeout_seconds)}) during "
            f"{self.record.last_run_status.run_sub_state}; nothing was left running"
        )

    def _finish(self, state: RunState, message: str) -> None:
        if state is RunState.Failed and self.interrupts.reason == "cancel":
            state, message = RunState.Canceled, CANCELED_MESSAGE
        # Every guest has stopped by now (a kept one is recorded in keptGuest instead).
        self.record = dataclasses.replace(self.record, guest=None)
        if self.record.kept_guest is None:
            release_short_workdirs(self.run.path)
        self.record = self.record.with_status(run_state=state, message=message, end_time=now_iso())
        self._save()
        self.clog.event(f"run ended: {state}" + (f": {message.splitlines()[0]}" if message else ""))
        table = phase_table(self.phases)
        if table:
            log.info("phase timings:\n%s", table)
        level = logging.INFO if state is RunState.Succeeded else logging.ERROR
        log.log(level, "%s %s: %s", self.template.name, state, message or "all phases completed")
        for out in self.record.run_outputs:
            note = out.note if out.note and out.note not in message else ""  # said once
            log.info("runOutput %s: %s %s%s", out.name, out.provisioning_state, out.artifact_uri or "",
                     f" ({note})" if note else "")

    def _run_phases(self) -> tuple[RunState, str]:
        tpl = self.template
        validate = tpl.validate
        with complete_step("Preparing (fetching inputs, resolving the source image)"):
            with self._phase("prepare"):
                self._preflight()
                self.fetched = self._fetch()
                image = self.platform.resolve(tpl.source)
                self.source_image = image
        self.interrupts.check()
        if validate is not None and validate.source_validation_only:
            # "The image specified in source is validated directly; no separate build" (swagger).
            failure = self._validate(image)
            if failure:
                return RunState.Failed, failure
            return RunState.Succeeded, "source validated (sourceValidationOnly: no image was built)"

        vhd = self._build_image(image)
        validation_failure = ""
        if validate is not None and validate.in_vm_validations:
            boot_image = SourceImage(vhd, "vpc", image.os, f"{tpl.name} output", image.uefi)
            validation_failure = self._validate(boot_image)
            if validation_failure and not validate.continue_distribute_on_failure:
                return RunState.Failed, validators.outcome_message(validation_failure, distributed=False)
        outputs = self._distribute(vhd)
        failed = [o for o in outputs if o.provisioning_state != "Succeeded"]
        if validation_failure:
            # FACTS §6: continueDistributeOnFailure distributes, but the run still fails.
            return RunState.Failed, validators.outcome_message(validation_failure, distributed=True)
        if failed:
            message = "; ".join(f"{o.name}: {o.note}" for o in failed)
            message += "".join(f"\nhint: {h}" for h in dict.fromkeys(self.distribute_hints))
            return (RunState.Failed if len(failed) == len(outputs) else RunState.PartiallySucceeded), message
        return RunState.Succeeded, ""

    # -- Queued -----------------------------------------------------------------------------------------

    def _preflight(self) -> None:
        problems: list[str] = []
        steps: list[tuple[str, Any]] = [
            (f"properties.customize[{i}]", s) for i, s in enumerate(self.template.customize)
        ]
        if self.template.validate is not None:
            steps += [
                (f"properties.validate.inVMValidations[{i}]", s)
                for i, s in enumerate(self.template.validate.in_vm_validations)
            ]
        for where, step in steps:
            try:
                factory = validators.validator_for if ".validate." in where else customizer_for
                factory(step).preflight(
                    self.os, allow_any_destination=self.options.allow_any_destination, where=where
                )
            except LocalBuilderError as exc:
                problems.append(exc.message + (f"\n    hint: {exc.hint}" if exc.hint else ""))
        ctx = self._distribute_context(Path("/nonexistent"))
        for i, target in enumerate(self.template.distribute):
            try:
                distributor_for(target).preflight(ctx, f"properties.distribute[{i}]")
            except LocalBuilderError as exc:
                problems.append(exc.message + (f"\n    hint: {exc.hint}" if exc.hint else ""))
        if problems:
            raise CustomizerError("the template cannot be built:\n" + "\n".join(problems))

    def _fetch(self) -> dict[str, Path]:
        requests: list[FetchRequest] = []
        for section, steps in self._sections():
            for i, step in enumerate(steps):
                for attr, field in (("script_uri", "scriptUri"), ("source_uri", "sourceUri")):
                    uri = getattr(step, attr, None)
                    if uri:
                        sha = getattr(step, "sha256_checksum", "") or None
                        requests.append(FetchRequest(uri, sha, f"properties.{section}[{i}].{field}"))
        if not requests:
            return {}
        fetched = fetch_all(requests, base_dir=self.template_file.parent)
        for f in fetched.values():
            cached = ", cached" if f.cached else ""
            self.clog.event(f"fetched {redact(f.uri)} sha256={f.sha256} ({f.size} bytes{cached})")
        self.digests = {uri: f.sha256 for uri, f in fetched.items()}
        return {uri: f.path for uri, f in fetched.items()}

    def _sections(self) -> list[tuple[str, Sequence[Any]]]:
        out: list[tuple[str, Sequence[Any]]] = [("customize", self.template.customize)]
        if self.template.validate is not None:
            out.append(("validate.inVMValidations", self.template.validate.in_vm_validations))
        return out

    # -- Building / Customizing / deprovision / Optimizing ----------------------------------------------

    def _guest_workdir(self, purpose: str) -> Path:
        """``<run>/vm-<purpose>``, unless that is too long for the guest's unix sockets.

        The session nests ``<workdir>/lb-XXXXXXXXXX/qmp.sock`` and a unix socket path is limited to
        108 bytes (sun_path); a deep LOCALBUILDER_HOME or a long template name exceeds that. Then the
        guest lives in a short private directory under /var/tmp, linked from the run directory.
        """
        preferred = self.run.path / f"vm-{purpose}"
        if len(os.fsencode(preferred)) <= MAX_WORKDIR_BYTES:
            return preferred
        n = 1
        while preferred.exists() or preferred.is_symlink():  # a resumed run keeps the last attempt's logs
            n += 1
            preferred = self.run.path / f"vm-{purpose}-{n}"
        short = Path(tempfile.mkdtemp(prefix="lb-", dir="/var/tmp"))
        preferred.symlink_to(short, target_is_directory=True)
        log.debug("guest work directory %s (linked from %s: too long for sockets)", short, preferred)
        return short

    def _guest_request(self, image: SourceImage, purpose: str) -> GuestRequest:
        size_gb = self.template.vm_profile.os_disk_size_gb
        return GuestRequest(
            image=image,
            workdir=self._guest_workdir(purpose),
            disk_size_bytes=size_gb * 1024**3 if size_gb else None,
            vm_size=self.template.vm_profile.vm_size,
            purpose=purpose,
            timeout=min(self.options.boot_timeout, self.remaining()),
        )

    def _policy(self, template_default: model.OnBuildError) -> FailurePolicy:
        if self.options.ask_on_error:
            return FailurePolicy(model.OnBuildError.cleanup, True, self.options.prompt)
        return FailurePolicy(self.options.on_error or template_default, False, self.options.prompt)

    @contextlib.contextmanager
    def _booted(
        self, image: SourceImage, purpose: str, checkpoint: checkpoints.Entry | None = None
    ) -> Iterator[BootedGuest]:
        self._sub_state(RunSubState.Building if purpose == "build" else RunSubState.Validating)
        start = time.monotonic()
        ok = False
        what = f"the checkpoint after {checkpoint.meta.title}" if checkpoint is not None else image.label
        with complete_step(f"Booting {what} ({purpose} guest)"):
            request = dataclasses.replace(self._guest_request(image, purpose), checkpoint=checkpoint)
            cm = self.platform.boot(request)
            try:
                booted = cm.__enter__()
                ok = True
            except CommunicatorTimeout:
                self.interrupts.check()  # a wait bounded by the build deadline: report the timeout
                raise
            finally:
                name = "boot" if purpose == "build" else "validation boot"
                self.phases.append(PhaseTiming(name, time.monotonic() - start, ok))
                self._save()
        try:
            try:
                self._after_boot(booted)
                yield booted
            except BaseException as exc:
                if not cm.__exit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                cm.__exit__(None, None, None)
        finally:
            self._after_guest_gone()

    def _after_boot(self, booted: BootedGuest) -> None:
        self.clog.event(f"guest up: ssh {booted.user}@{booted.host}:{booted.port}")
        # Recorded so that a SIGKILLed build's guest is found and stopped on the next start
        # (localbuilder.recovery); cleared by _after_guest_gone/_finish.
        guest = booted.guest
        pid = getattr(guest, "pid", None) if booted.backend == "qemu" else None
        uri = getattr(self.platform, "libvirt_uri", None) if booted.backend == "libvirt" else None
        validating = self.record.last_run_status.run_sub_state is RunSubState.Validating
        purpose = "validation" if validating else "build"
        active = ActiveGuest.for_process(
            booted.backend, guest.spec.name, guest.spec.workdir, purpose,
            pid if isinstance(pid, int) else None, uri if isinstance(uri, str) else None,
        )  # fmt: skip
        self.record = dataclasses.replace(self.record, guest=active)
        self._save()

    def _after_guest_gone(self) -> None:
        """Call when a ``_booted`` guest has been stopped (its context exited): nothing to recover."""
        if self.record.guest is not None:
            self.record = dataclasses.replace(self.record, guest=None)
            self._save()

    def _cloud_init_wait(self, ctx: StepContext) -> None:
        # FACTS §3c: after a reboot cloud-init finishes its stages again before the next step.
        if ctx.os is not OsType.linux:
            return
        result = ctx.run("cloud-init status --wait >/dev/null 2>&1; echo $?", timeout=CLOUD_INIT_WAIT_SECONDS)
        ctx.note(f"guest is back (cloud-init status exit {result.stdout_tail.strip() or '?'})")

    def _build_image(self, image: SourceImage) -> Path:
        tpl = self.template
        if image.os is not self.os:
            raise CustomizerError(
                f"the source image {image.label} is a {image.os} image but the template is for {self.os}",
                hint="Check properties.source and the catalog entry's --os.",
            )
        vhd = self.run.path / WORK_VHD
        policy = self._policy(tpl.error_handling.on_customizer_error)
        self.chain = self._checkpoint_chain(image)
        with self._booted_build(image) as (booted, restore):
            self._sub_state(RunSubState.Customizing)
            first = 0
            if restore is not None:
                first = restore.meta.depth
                self._note_restored(restore)
            else:
                self._save_checkpoint(0, booted)
            self._run_steps("customize", tpl.customize, booted, policy, first=first,
                            on_success=lambda index: self._save_checkpoint(index + 1, booted))
            if self.checkpoint_seconds:
                self.phases.append(PhaseTiming("checkpoints", self.checkpoint_seconds))
            self.interrupts.check()
            self._deprovision(booted, policy)
            self._sub_state(RunSubState.Optimizing)
            with complete_step("Converting to a fixed VHD"), self._phase("conversion"):
                size = self.platform.convert(
                    booted.overlay, booted.overlay_format, vhd, size_bytes=self._disk_size()
                )
            self.clog.event(f"fixed VHD: {vhd} ({size} bytes virtual)")
        with complete_step("Inspecting the image offline"), self._phase("inspection"):
            result = self.platform.inspect(vhd, booted.user)
        (self.run.path / "generalization.json").write_text(json.dumps(result.report, indent=2) + "\n")
        if result.problems:
            text = "\n".join(f"  - {p}" for p in result.problems)
            if self.user_deprovision:
                log.warning("the image is not fully generalized (your DeprovisioningScript.sh ran):\n%s",
                            text)
            else:
                vhd.unlink(missing_ok=True)
                raise InspectionError(
                    f"the output image is not generalized:\n{text}",
                    hint="This is a localbuilder deprovision bug unless a customizer undid it; see "
                    "generalization.json in the run directory.",
                )
        return vhd

    # -- checkpoints (localbuilder.checkpoints) ----------------------------------------------------------

    def _checkpoint_chain(self, image: SourceImage) -> checkpoints.BuildChain | None:
        if not self.options.use_cache:
            self.clog.event("checkpoints: off (--no-cache)")
            return None
        if image.os is not OsType.linux:
            return None  # Windows guests: not yet (nothing to test them on here; docs/windows.md)
        traits = self.platform.checkpoint_traits(image)
        if traits is None:
            return None
        try:
            st = image.path.stat()
        except OSError:
            return None
        base = {
            # The catalog stores images under their digest; size + mtime catch an in-place change.
            "source": {"path": str(image.path.absolute()), "format": image.format, "size": st.st_size,
                       "mtime_ns": st.st_mtime_ns},
            "diskBytes": self._disk_size(),
            "uefi": image.uefi,
            "vmSize": self.template.vm_profile.vm_size,
            "os": str(image.os),
            **traits,
        }  # fmt: skip
        steps = list(self.template.customize)
        digests = [
            {uri: self.digests[uri] for attr in ("script_uri", "source_uri")
             if (uri := getattr(step, attr, None)) and uri in self.digests}
            for step in steps
        ]  # fmt: skip
        titles = ["booted source"] + [customizer_for(s).describe(i, "customize") for i, s in enumerate(steps)]
        return checkpoints.BuildChain(
            checkpoints.CheckpointCache(), checkpoints.chain_keys(base, steps, digests), titles,
            template=self.template.name, run_id=self.run.run_id, source=image.path.absolute(),
            source_format=image.format, layer_check=self.platform.check_layer,
        )

    @contextlib.contextmanager
    def _booted_build(self, image: SourceImage) -> Iterator[tuple[BootedGuest, checkpoints.Entry | None]]:
        """The build guest: resumed from the deepest checkpoint that proves sound, else booted from the
        source. A checkpoint whose files fail their digests is discarded before it is used
        (``BuildChain.restore_point``); one whose guest, once up, does not say it is that checkpoint
        (``quiesce.confirm`` in the platform's boot) is discarded too, and the next one down is tried."""
        chain = self.chain
        while True:
            restore = chain.restore_point() if chain is not None else None
            if chain is not None and chain.verified_bytes:
                self.clog.event(f"checkpoints verified: {chain.verified_bytes / 1e6:.0f} MB in "
                                f"{chain.verify_seconds:.2f} s")
                self.phases = [p for p in self.phases if p.name != "checkpoint verification"]
                self.phases.append(PhaseTiming("checkpoint verification", chain.verify_seconds))
            for entry, why in chain.rejected if chain is not None else ():
                self.clog.event(f"checkpoint {entry.key[:12]} after {entry.meta.title} discarded: {why}")
            if chain is not None:
                chain.rejected.clear()
            self._pin_progress()
            entered = False
            try:
                with self._booted(image, "build", restore) as booted:
                    entered = True
                    yield booted, restore
                return
            except CheckpointMismatch as exc:
                if entered or chain is None or restore is None:
                    raise
                self.interrupts.check()
                chain.reject(restore, exc.message)
                self.clog.event(f"checkpoint {restore.key[:12]} refused: {exc.message}")

    def _note_restored(self, entry: checkpoints.Entry) -> None:
        """Record which steps did not run because the checkpoint already holds their result."""
        kind = "live" if entry.meta.live is not None else "disk"
        for index, step in enumerate(self.template.customize[: entry.meta.depth]):
            title = customizer_for(step).describe(index, "customize")
            self.clog.event(f"{title}: restored from checkpoint {entry.key[:12]} (not run again)")
        log.info("continuing from the %s checkpoint after %s (%s, saved by run %s): %d of %d steps to run",
                 kind, entry.meta.title, entry.key[:12], entry.meta.run_id or "?",
                 len(self.template.customize) - entry.meta.depth, len(self.template.customize))

    def _save_checkpoint(self, depth: int, booted: BootedGuest) -> None:
        chain = self.chain
        if chain is None or not chain.enabled:
            return
        start = time.monotonic()
        title = chain.titles[depth]

        def capture(staging: Path, backing: Path, backing_format: str) -> checkpoints.LiveMeta | None:
            return self.platform.checkpoint(booted, staging, backing=backing, backing_format=backing_format,
                                            timeout=min(CHECKPOINT_SECONDS, self.remaining()),
                                            mark=chain.keys[depth], room_for=self.run.path)

        try:
            with complete_step(f"Saving a checkpoint after {title}"):
                entry = chain.save(depth, capture)
        except (BuildTimeout, Canceled):
            raise
        except (LocalBuilderError, OSError) as exc:
            # A checkpoint is an optimization: the build goes on without (later ones would lack a parent).
            chain.enabled = False
            message = exc.message if isinstance(exc, LocalBuilderError) else str(exc)
            log.warning("could not save a checkpoint after %s (%s); continuing without checkpoints",
                        title, message)
            self.clog.event(f"checkpoint after {title} failed: {message}")
            return
        finally:
            self.checkpoint_seconds += time.monotonic() - start
        if entry is not None:
            self.clog.event(f"checkpoint {entry.key[:12]} after {title} "
                            f"({'live' if entry.meta.live else 'disk only'})")
            self._pin_progress()

    def _pin_progress(self) -> None:
        """Pin this run's chain as it grows, not only when the run ends: a build that is SIGKILLed never
        reaches its end, and recovery then marks it Failed — resumable, so its chain must stay."""
        chain = self.chain
        if chain is None or not chain.saved:
            return
        keys = [entry.key for _, entry in sorted(chain.saved.items())]
        try:
            pins.record_run(chain.cache.root, self.run.path, self.record, keys)
        except OSError as exc:
            log.debug("could not pin the checkpoints of this run yet: %s", exc)

    def _disk_size(self) -> int | None:
        size_gb = self.template.vm_profile.os_disk_size_gb
        return size_gb * 1024**3 if size_gb else None

    def _deprovision(self, booted: BootedGuest, policy: FailurePolicy) -> None:
        step = "deprovision"
        while True:
            self.clog.begin(step, "Deprovision")
            start = time.monotonic()
            try:
                with complete_step("Deprovisioning and powering off"):
                    outcome = self.platform.deprovision(
                        booted, timeout=min(DEPROVISION_SECONDS, self.remaining())
                    )
            except (DeprovisionError, CommunicatorError) as exc:
                self.phases.append(PhaseTiming("deprovision", time.monotonic() - start, False))
                self.interrupts.check()
                self.clog.end(step, "Deprovision", time.monotonic() - start, False, exc.message)
                self._on_failure(step, exc, booted, policy)  # returns only to retry
                continue
            break
        self.user_deprovision = outcome.user_script
        self.phases.append(PhaseTiming("deprovision", outcome.script_seconds))
        self.phases.append(PhaseTiming("power-off", outcome.poweroff_seconds))
        self._save()
        which = "the template's DeprovisioningScript.sh" if outcome.user_script else "localbuilder's"
        self.clog.end(step, "Deprovision", time.monotonic() - start, True, f"ran {which}")

    def _step_context(self, index: int, section: str, booted: BootedGuest) -> StepContext:
        return StepContext(
            index=index,
            comm=booted.comm,
            os=self.os,
            build_user=booted.user,
            deadline=self.deadline,
            guest=booted.guest,
            fetched=self.fetched,
            output=self.clog.output,
            allow_any_destination=self.options.allow_any_destination,
            section=section,
            after_reboot=self._cloud_init_wait,
        )

    def _run_steps(
        self,
        section: str,
        steps: Sequence[Any],
        booted: BootedGuest,
        policy: FailurePolicy,
        factory: Callable[[Any], Customizer] = customizer_for,
        *,
        first: int = 0,
        on_success: Callable[[int], None] | None = None,
    ) -> None:
        for index, step in enumerate(steps):
            if index < first:
                continue  # restored from a checkpoint (see _note_restored)
            self.interrupts.check()
            customizer = factory(step)
            title = customizer.describe(index, section)
            while True:
                ok = False
                start = time.monotonic()
                self.clog.begin(title, customizer.type_name)
                error: LocalBuilderError | None = None
                try:
                    with complete_step(title), self._phase(title):
                        customizer.apply(self._step_context(index, section, booted))
                    ok = True
                except (BuildTimeout, Canceled):
                    raise
                except (CustomizerError, CommunicatorError) as exc:
                    self.interrupts.check()
                    error = exc
                finally:
                    detail = error.message.splitlines()[0] if error is not None else ""
                    self.clog.end(title, customizer.type_name, time.monotonic() - start, ok, detail)
                if error is None:
                    break
                self._on_failure(title, error, booted, policy)  # returns only to retry
            if on_success is not None:
                on_success(index)

    def _on_failure(
        self, step: str, error: LocalBuilderError, booted: BootedGuest, policy: FailurePolicy
    ) -> str:
        """Apply --on-error / errorHandling. Returns "retry" or raises StepFailure."""
        mode = policy.mode
        log.error("%s failed: %s", step, error.message)
        if policy.ask:
            interactive = self.options.interactive
            if interactive is None:
                interactive = sys.stdin.isatty()
            if not interactive and policy.prompt is None:
                log.warning("--on-error ask needs a terminal; cleaning up instead")
                mode = model.OnBuildError.cleanup
            else:
                ask = policy.prompt or input
                answer = ""
                while answer not in ("r", "a", "c"):
                    answer = ask(f"{step} failed. [r]etry the step, [a]bort (keep the guest), [c]lean up? ")
                    answer = answer.strip().lower()[:1]
                if answer == "r":
                    self.clog.event(f"retrying {step} (user choice)")
                    return "retry"
                mode = model.OnBuildError.abort if answer == "a" else model.OnBuildError.cleanup
        kept = None
        if mode is model.OnBuildError.abort and booted.guest.is_running():
            kept = booted.keep()
            self.clog.event(f"guest kept running for inspection: {kept.ssh_command()}")
            log.warning(
                "the guest is still running for inspection:\n    %s\n  stop it with: localbuilder cancel %s",
                kept.ssh_command(),
                self.run.run_id,
            )
        raise StepFailure(step, error, kept)

    # -- Validating -------------------------------------------------------------------------------------

    def _validate(self, image: SourceImage) -> str:
        """Run inVMValidations in a guest booted from ``image``; "" when they pass, else the message."""
        validate = self.template.validate
        assert validate is not None
        policy = self._policy(self.template.error_handling.on_validation_error)
        with self._booted(image, "validation") as booted:
            self._sub_state(RunSubState.Validating)
            try:
                self._run_steps(
                    validators.SECTION, validate.in_vm_validations, booted, policy, validators.validator_for
                )
            except StepFailure as exc:
                self.record = dataclasses.replace(self.record, failed_step=exc.step, kept_guest=exc.kept)
                return f"validation failed: {exc.summary()}"
        return ""

    # -- Distributing -----------------------------------------------------------------------------------

    def _distribute_context(self, vhd: Path) -> DistributeContext:
        return DistributeContext(
            vhd=vhd,
            output_dir=self.output_dir,
            force=self.options.force,
            run_id=self.run.run_id,
            template_name=self.template.name,
            azure=self.options.azure,
            os_type="Windows" if self.os is OsType.windows else "Linux",
            generation="V2" if self.source_image is not None and self.source_image.uefi else "V1",
            source_version=getattr(self.template.source, "version", None),
        )

    def _distribute(self, vhd: Path) -> list[RunOutput]:
        self._sub_state(RunSubState.Distributing)
        ctx = self._distribute_context(vhd)
        outputs: list[RunOutput] = []
        for i, target in enumerate(self.template.distribute):
            self.interrupts.check()
            distributor = distributor_for(target)
            title = distributor.describe(i)
            try:
                with complete_step(title), self._phase(title):
                    out = distributor.distribute(ctx)
            except (BuildTimeout, Canceled):
                raise  # the run ends (Canceled / timeout), not just this target
            except LocalBuilderError as exc:
                # The reason is said once, in the run's final message (with the hint); not here too.
                if exc.hint:
                    self.distribute_hints.append(exc.hint)
                out = RunOutput(
                    name=distributor.run_output_name,
                    type=distributor.type_name,
                    provisioning_state="Failed",
                    artifact_tags=dict(target.artifact_tags),
                    note=exc.message,
                )
            if out.provisioning_state != "Succeeded" and i + 1 < len(self.template.distribute):
                log.warning("%s failed; the other targets still run (the reason is in the summary)", title)
            elif out.note and out.provisioning_state == "Succeeded":
                log.warning("%s: %s", title, out.note)
            outputs.append(out)
            self.record = dataclasses.replace(self.record, run_outputs=tuple(outputs))
            self._save()
        # The targets hold their own links/copies; the work file is no longer needed.
        vhd.unlink(missing_ok=True)
        return outputs


def exit_code(record: RunRecord) -> int:
    state = record.run_state
    if state is RunState.Succeeded:
        return 0
    if state is RunState.Canceled:
        return Canceled.exit_code
    return 1
