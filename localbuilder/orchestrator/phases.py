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

``buildTimeoutInMinutes`` bounds the whole run (``orchestrator.interrupts``); a failed step meets the
failure policy (``orchestrator.failures``); the checkpoint cache is ``orchestrator.checkpointing``.

The guest and disk services are injected through ``guest.Platform`` so the whole flow runs in unit tests
on ``FakeHypervisor`` + ``FakeCommunicator``; ``guest.local.LocalPlatform`` is the real one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from localbuilder import validators
from localbuilder.catalog import Generation
from localbuilder.checkpoints import Entry
from localbuilder.customizers import Customizer, StepContext, customizer_for
from localbuilder.distributors import AzureOptions, DistributeContext
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
)
from localbuilder.guest import BootedGuest, GuestRequest, Platform, SourceImage
from localbuilder.guest.bootwatch import DEFAULT_BOOT_TIMEOUT
from localbuilder.log import add_file_handler, complete_step, format_duration, remove_handler
from localbuilder.orchestrator.checkpointing import Checkpointing, chain_for
from localbuilder.orchestrator.distribute import distribute_all
from localbuilder.orchestrator.failures import FailurePolicy, StepFailure
from localbuilder.orchestrator.interrupts import Interrupts
from localbuilder.orchestrator.prepare import fetch_inputs, preflight
from localbuilder.orchestrator.rundir import guest_workdir, reopen
from localbuilder.recovery import release_short_workdirs
from localbuilder.runlog import CustomizationLog, phase_table
from localbuilder.state import (
    ActiveGuest,
    PhaseTiming,
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
SETTLE_SECONDS = 10 * 60  # after a reboot inside a step: cloud-init finishes again
CANCELED_MESSAGE = "the build was canceled; nothing was left running"
INVOCATION_FILE = "invocation.json"
WORK_VHD = "image.vhd"  # the converted VHD in the run directory, before the distributors place it


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
            self.run, self.resumed = reopen(options.resume_run)
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
        self.interrupts = Interrupts(self.deadline, self.run.cancel_file)
        self.fetched: dict[str, Path] = {}
        self.digests: dict[str, str] = {}  # uri → sha256 of what was fetched (checkpoint keys)
        self.checkpoints: Checkpointing | None = None
        self.user_deprovision = False
        self.source_image: SourceImage | None = None  # OS type + Hyper-V generation for Azure targets
        self.distribute_hints: list[str] = []  # of the failed targets, for the final message

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
        cp, self.checkpoints = self.checkpoints, None
        if cp is not None:
            cp.release(self.record)

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
                preflight(self.template, self.os, self._distribute_context(Path("/nonexistent")),
                          allow_any_destination=self.options.allow_any_destination)
                inputs = fetch_inputs(self.template, self.template_file.parent, note=self.clog.event)
                self.fetched = {uri: f.path for uri, f in inputs.items()}
                self.digests = {uri: f.sha256 for uri, f in inputs.items()}
                image = self.platform.resolve(tpl.source)
                self.source_image = image
                if image.provisioning is not None:
                    self.clog.event(f"provisioning: {image.provisioning.describe()}")
                    self.record = dataclasses.replace(self.record, provisioning=image.provisioning.as_dict())
                    self._save()
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

    # -- Building / Customizing / deprovision / Optimizing ----------------------------------------------

    def _guest_request(self, image: SourceImage, purpose: str) -> GuestRequest:
        return GuestRequest(
            image=image,
            workdir=guest_workdir(self.run.path, purpose),
            disk_size_bytes=self._disk_size(),
            vm_size=self.template.vm_profile.vm_size,
            purpose=purpose,
            timeout=min(self.options.boot_timeout, self.remaining()),
        )

    def _policy(self, template_default: model.OnBuildError) -> FailurePolicy:
        opts = self.options
        if opts.ask_on_error:
            return FailurePolicy(model.OnBuildError.cleanup, True, opts.prompt, opts.interactive)
        return FailurePolicy(opts.on_error or template_default, False, opts.prompt, opts.interactive)

    @contextlib.contextmanager
    def _booted(
        self, image: SourceImage, purpose: str, checkpoint: Entry | None = None
    ) -> Iterator[BootedGuest]:
        self._sub_state(RunSubState.Building if purpose == "build" else RunSubState.Validating)
        what = f"the checkpoint after {checkpoint.meta.title}" if checkpoint is not None else image.label
        with contextlib.ExitStack() as stack:
            stack.callback(self._after_guest_gone)  # runs last: after the platform stopped the guest
            start = time.monotonic()
            ok = False
            with complete_step(f"Booting {what} ({purpose} guest)"):
                request = dataclasses.replace(self._guest_request(image, purpose), checkpoint=checkpoint)
                try:
                    booted = stack.enter_context(self.platform.boot(request))
                    ok = True
                except CommunicatorTimeout:
                    self.interrupts.check()  # a wait bounded by the build deadline: report the timeout
                    raise
                finally:
                    name = "boot" if purpose == "build" else "validation boot"
                    self.phases.append(PhaseTiming(name, time.monotonic() - start, ok))
                    self._save()
            self._after_boot(booted)
            yield booted

    def _after_boot(self, booted: BootedGuest) -> None:
        self.clog.event(f"guest up: ssh {booted.user}@{booted.host}:{booted.port}")
        # Recorded so that a SIGKILLed build's guest is found and stopped on the next start
        # (localbuilder.recovery); cleared by _after_guest_gone/_finish.
        spec = booted.guest.spec
        validating = self.record.last_run_status.run_sub_state is RunSubState.Validating
        purpose = "validation" if validating else "build"
        active = ActiveGuest.for_process(booted.backend, spec.name, spec.workdir, purpose, booted.pid,
                                         booted.libvirt_uri)
        self.record = dataclasses.replace(self.record, guest=active)
        self._save()

    def _after_guest_gone(self) -> None:
        """Call when a ``_booted`` guest has been stopped (its context exited): nothing to recover."""
        if self.record.guest is not None:
            self.record = dataclasses.replace(self.record, guest=None)
            self._save()

    def _settle(self, booted: BootedGuest) -> Callable[[StepContext], None] | None:
        """What runs after a reboot inside a step, before the next command (the guest's own hook)."""
        settle = booted.settle
        if settle is None:
            return None
        return lambda ctx: ctx.note(settle(ctx.run, SETTLE_SECONDS))

    def _build_image(self, image: SourceImage) -> Path:
        tpl = self.template
        if image.os is not self.os:
            raise CustomizerError(
                f"the source image {image.label} is a {image.os} image but the template is for {self.os}",
                hint="Check properties.source and the catalog entry's --os.",
            )
        vhd = self.run.path / WORK_VHD
        policy = self._policy(tpl.error_handling.on_customizer_error)
        self.checkpoints = self._checkpointing(image)
        with self._booted_build(image) as (booted, restore):
            self._sub_state(RunSubState.Customizing)
            first = 0
            if restore is not None:
                first = restore.meta.depth
                assert self.checkpoints is not None
                self.checkpoints.note_restored(restore, tpl.customize)
            else:
                self._save_checkpoint(0, booted)
            self._run_steps("customize", tpl.customize, booted, policy, first=first,
                            on_success=lambda index: self._save_checkpoint(index + 1, booted))
            if self.checkpoints is not None and self.checkpoints.seconds:
                self.phases.append(PhaseTiming("checkpoints", self.checkpoints.seconds))
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
        for warning in result.warnings:
            # A check that could not run is no verdict: the VHD stays (docs/vhd.md says what is read).
            log.warning("the output image was not checked offline for generalization (%s); the image is kept",
                        warning)
            self.clog.event(f"offline inspection: {warning}")
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

    # -- checkpoints (orchestrator.checkpointing) -------------------------------------------------------

    def _checkpointing(self, image: SourceImage) -> Checkpointing | None:
        if not self.options.use_cache:
            self.clog.event("checkpoints: off (--no-cache)")
            return None
        if image.os is not OsType.linux:
            return None  # Windows guests: not yet (nothing to test them on here; docs/windows.md)
        traits = self.platform.checkpoint_traits(image)
        if traits is None:
            return None
        chain = chain_for(self.template, image, traits, self.digests, disk_bytes=self._disk_size(),
                          run_id=self.run.run_id, check_layer=self.platform.check_layer)
        return Checkpointing(chain, self.platform, self.clog, self.run.path) if chain is not None else None

    @contextlib.contextmanager
    def _booted_build(self, image: SourceImage) -> Iterator[tuple[BootedGuest, Entry | None]]:
        """The build guest: resumed from the deepest checkpoint that proves sound, else booted from the
        source. A checkpoint whose files fail their digests is discarded before it is used
        (``BuildChain.restore_point``); one whose guest, once up, does not say it is that checkpoint
        (``quiesce.confirm`` in the platform's boot) is discarded too, and the next one down is tried."""
        cp = self.checkpoints
        while True:
            restore = cp.restore_point(self.record) if cp is not None else None
            if cp is not None and cp.chain.verified_bytes:
                self.phases = [p for p in self.phases if p.name != "checkpoint verification"]
                self.phases.append(PhaseTiming("checkpoint verification", cp.chain.verify_seconds))
            entered = False
            try:
                with self._booted(image, "build", restore) as booted:
                    entered = True
                    yield booted, restore
                return
            except CheckpointMismatch as exc:
                if entered or cp is None or restore is None:
                    raise
                self.interrupts.check()
                cp.refuse(restore, exc.message)

    def _save_checkpoint(self, depth: int, booted: BootedGuest) -> None:
        if self.checkpoints is not None:
            self.checkpoints.save(depth, booted, timeout=self.remaining(), record=self.record)

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
                policy.decide(step, exc, booted, run_id=self.run.run_id, note=self.clog.event)  # or raises
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
            after_reboot=self._settle(booted),
        )

    def _run_steps(
        self,
        section: str,
        steps: Sequence[model.Customizer],
        booted: BootedGuest,
        policy: FailurePolicy,
        factory: Callable[[Any], Customizer[Any]] = customizer_for,
        *,
        first: int = 0,
        on_success: Callable[[int], None] | None = None,
    ) -> None:
        for index, step in enumerate(steps):
            if index < first:
                continue  # restored from a checkpoint (Checkpointing.note_restored)
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
                policy.decide(title, error, booted, run_id=self.run.run_id, note=self.clog.event)  # or raises
            if on_success is not None:
                on_success(index)

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
            os_type=self.os,
            generation=Generation.V2 if self.source_image and self.source_image.uefi else Generation.V1,
            source_version=getattr(self.template.source, "version", None),
        )

    def _distribute(self, vhd: Path) -> list[RunOutput]:
        self._sub_state(RunSubState.Distributing)

        def record(outputs: tuple[RunOutput, ...]) -> None:
            self.record = dataclasses.replace(self.record, run_outputs=outputs)
            self._save()

        outputs, self.distribute_hints = distribute_all(
            self.template.distribute, self._distribute_context(vhd), phase=self._phase,
            before_each=self.interrupts.check, after_each=record,
        )
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
