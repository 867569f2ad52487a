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
import enum
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from localbuilder import validators
from localbuilder.communicator import Communicator
from localbuilder.customizers import Customizer, GuestOS, StepContext, customizer_for
from localbuilder.distributors import AzureOptions, DistributeContext, distributor_for
from localbuilder.errors import (
    BuildTimeout,
    Canceled,
    CommunicatorError,
    CommunicatorTimeout,
    CustomizerError,
    DeprovisionError,
    InspectionError,
    LocalBuilderError,
)
from localbuilder.fetch import FetchRequest, fetch_all
from localbuilder.hypervisor import Guest
from localbuilder.log import add_file_handler, complete_step, format_duration, remove_handler
from localbuilder.runlog import CustomizationLog, phase_table
from localbuilder.state import (
    KeptGuest,
    PhaseTiming,
    RunDir,
    RunOutput,
    RunRecord,
    RunState,
    RunSubState,
    now_iso,
)
from localbuilder.template import model

log = logging.getLogger("localbuilder.build")

# AIB waits 20 min for SSH (FACTS §6); under TCG the first login took ~65 s here.
SSH_WAIT_SECONDS = 20 * 60
DEPROVISION_SECONDS = 10 * 60
CLOUD_INIT_WAIT_SECONDS = 10 * 60
# 108-byte sun_path minus "/lb-XXXXXXXXXX/qmp.sock" (23) and some slack for the backend's own names.
MAX_WORKDIR_BYTES = 75
CANCELED_MESSAGE = "the build was canceled; nothing was left running"


class OnError(enum.StrEnum):
    cleanup = "cleanup"  # stop and delete the guest (AIB's default)
    abort = "abort"  # keep the guest running for inspection (AIB keeps the build VM)
    ask = "ask"  # on a terminal: retry the step / keep the guest / clean up


# ---------------------------------------------------------------------------------------------------------
# What the orchestrator needs from the machinery (real: localbuilder.platform; tests: fakes)


@dataclasses.dataclass(frozen=True)
class SourceImage:
    path: Path
    format: str  # qemu-img format name: qcow2, raw, vpc …
    os: GuestOS
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


# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    output_dir: Path | None = None  # default: <run dir>/outputs
    on_error: OnError | None = None  # None: the template's errorHandling
    allow_any_destination: bool = False
    force: bool = False
    timeout_seconds: float | None = None  # overrides buildTimeoutInMinutes (tests, --timeout)
    prompt: Callable[[str], str] | None = None  # for --on-error ask; None = input() on a TTY
    interactive: bool | None = None  # None: stdin is a TTY
    runs_root: Path | None = None  # default paths.runs_dir()
    azure: AzureOptions = AzureOptions()  # --staging / --staging-account-id / --dry-run-azure


@dataclasses.dataclass(frozen=True)
class FailurePolicy:
    mode: OnError
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
        self.run = RunDir.create(template.name, template_file, root=options.runs_root)
        self.record = self.run.read()
        self.phases: list[PhaseTiming] = []
        self.output_dir = (options.output_dir or self.run.path / "outputs").absolute()
        self.record = dataclasses.replace(self.record, output_dir=str(self.output_dir))
        self.os = GuestOS(str(template.os_type))
        self.clog = CustomizationLog(self.run.customization_log)
        seconds = options.timeout_seconds or template.build_timeout_minutes * 60
        self.timeout_seconds = float(seconds)
        self.deadline = time.monotonic() + self.timeout_seconds
        self.interrupts = _Interrupts(self.deadline, self.run.cancel_file)
        self.fetched: dict[str, Path] = {}
        self.user_deprovision = False
        self.source_image: SourceImage | None = None  # OS type + Hyper-V generation for Azure targets

    # -- state ------------------------------------------------------------------------------------------

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
                    self._finish(*final)
        finally:
            self.clog.close()
            remove_handler(handler)
        return self.record

    def _timeout_message(self) -> str:
        return (
            f"the build exceeded buildTimeoutInMinutes ({format_duration(self.timeout_seconds)}) during "
            f"{self.record.last_run_status.run_sub_state}; nothing was left running"
        )

    def _finish(self, state: RunState, message: str) -> None:
        if state is RunState.Failed and self.interrupts.reason == "cancel":
            state, message = RunState.Canceled, CANCELED_MESSAGE
        self.record = self.record.with_status(run_state=state, message=message, end_time=now_iso())
        self._save()
        self.clog.event(f"run ended: {state}" + (f": {message.splitlines()[0]}" if message else ""))
        table = phase_table(self.phases)
        if table:
            log.info("phase timings:\n%s", table)
        level = logging.INFO if state is RunState.Succeeded else logging.ERROR
        log.log(level, "%s %s: %s", self.template.name, state, message or "all phases completed")
        for out in self.record.run_outputs:
            log.info("runOutput %s: %s %s%s", out.name, out.provisioning_state, out.artifact_uri or "",
                     f" ({out.note})" if out.note else "")

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
        if failed and len(failed) == len(outputs):
            return RunState.Failed, "; ".join(f"{o.name}: {o.note}" for o in failed)
        if failed:
            return RunState.PartiallySucceeded, "; ".join(f"{o.name}: {o.note}" for o in failed)
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
            self.clog.event(f"fetched {f.uri} sha256={f.sha256} ({f.size} bytes{cached})")
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
            timeout=min(SSH_WAIT_SECONDS, self.remaining()),
        )

    def _policy(self, template_default: model.OnBuildError) -> FailurePolicy:
        mode = self.options.on_error or OnError(str(template_default))
        return FailurePolicy(mode, self.options.prompt)

    @contextlib.contextmanager
    def _booted(self, image: SourceImage, purpose: str) -> Iterator[BootedGuest]:
        self._sub_state(RunSubState.Building if purpose == "build" else RunSubState.Validating)
        start = time.monotonic()
        ok = False
        with complete_step(f"Booting {image.label} ({purpose} guest)"):
            cm = self.platform.boot(self._guest_request(image, purpose))
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
            self._after_boot(booted)
            yield booted
        except BaseException as exc:
            if not cm.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            cm.__exit__(None, None, None)

    def _after_boot(self, booted: BootedGuest) -> None:
        self.clog.event(f"guest up: ssh {booted.user}@{booted.host}:{booted.port}")

    def _cloud_init_wait(self, ctx: StepContext) -> None:
        # FACTS §3c: after a reboot cloud-init finishes its stages again before the next step.
        if ctx.os is not GuestOS.linux:
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
        vhd = self.run.path / "image.vhd"
        policy = self._policy(tpl.error_handling.on_customizer_error)
        with self._booted(image, "build") as booted:
            self._sub_state(RunSubState.Customizing)
            self._run_steps("customize", tpl.customize, booted, policy)
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
    ) -> None:
        for index, step in enumerate(steps):
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

    def _on_failure(
        self, step: str, error: LocalBuilderError, booted: BootedGuest, policy: FailurePolicy
    ) -> str:
        """Apply --on-error / errorHandling. Returns "retry" or raises StepFailure."""
        mode = policy.mode
        log.error("%s failed: %s", step, error.message)
        if mode is OnError.ask:
            interactive = self.options.interactive
            if interactive is None:
                interactive = sys.stdin.isatty()
            if not interactive and policy.prompt is None:
                log.warning("--on-error ask needs a terminal; cleaning up instead")
                mode = OnError.cleanup
            else:
                ask = policy.prompt or input
                answer = ""
                while answer not in ("r", "a", "c"):
                    answer = ask(f"{step} failed. [r]etry the step, [a]bort (keep the guest), [c]lean up? ")
                    answer = answer.strip().lower()[:1]
                if answer == "r":
                    self.clog.event(f"retrying {step} (user choice)")
                    return "retry"
                mode = OnError.abort if answer == "a" else OnError.cleanup
        kept = None
        if mode is OnError.abort and booted.guest.is_running():
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
            os_type="Windows" if self.os is GuestOS.windows else "Linux",
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
            except LocalBuilderError as exc:
                log.error("%s failed: %s", title, exc.message)
                out = RunOutput(
                    name=distributor.run_output_name,
                    type=distributor.type_name,
                    provisioning_state="Failed",
                    artifact_tags=dict(target.artifact_tags),
                    note=exc.message,
                )
            if out.note:
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
