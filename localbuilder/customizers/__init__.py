"""Customizers: one class per AIB ``customize[].type``, each applying one step inside the guest.

Plugins register themselves by their exact AIB type name (STYLE §5)::

    class Shell(Customizer, type_name="Shell"):
        def apply(self, ctx: StepContext) -> None: ...

The orchestrator (``localbuilder.orchestrator``) builds a ``StepContext`` per step and calls ``apply``. A step
that fails raises ``StepFailed`` (exit code + output tail) or another ``CustomizerError``; anything the
guest prints goes through ``ctx.run(..)`` so it lands in ``customization.log`` with timestamps. The same
classes run ``validate.inVMValidations`` (AIB validators share the customizer schema for Shell,
PowerShell and File).

Scripts referenced by ``scriptUri``/``sourceUri`` are fetched and checksummed by the orchestrator
*before* the guest boots (``localbuilder.fetch``); a customizer gets the verified local copy through
``ctx.local_file(uri)`` and never downloads anything itself.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import pkgutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from localbuilder.communicator import CommandResult, Communicator, OutputCallback
from localbuilder.errors import BuildTimeout, CommunicatorError, CommunicatorTimeout, CustomizerError
from localbuilder.hypervisor import Guest
from localbuilder.template import model
from localbuilder.template.model import OsType

log = logging.getLogger("localbuilder.customizers")

# A connection that dropped without a guest reset is probed after this long (and again as long as the
# guest neither resets nor answers): a TCG guest took ~45 s from `reboot` to its reset here, and sshd is
# among the first services a shutdown stops, so a guest that still answers SSH is not rebooting.
DROP_PROBE_AFTER = 10.0
DROP_PROBE_TIMEOUT = 30.0

__all__ = [
    "Customizer",
    "StepContext",
    "StepFailed",
    "customizer_for",
    "registered_types",
]


class StepFailed(CustomizerError):
    """A command of a step exited non-zero. Carries what the user needs to fix it."""

    def __init__(
        self, message: str, *, exit_status: int, output_tail: str = "", hint: str | None = None
    ) -> None:
        text = message
        if output_tail.strip():
            text += "\nlast lines of output:\n" + output_tail.rstrip()
        super().__init__(text, hint=hint)
        self.exit_status = exit_status
        self.output_tail = output_tail


@dataclasses.dataclass
class StepContext:
    """Everything one step may use. Built by the orchestrator, one per step.

    ``deadline`` is a ``time.monotonic()`` value: the end of ``buildTimeoutInMinutes``. Every blocking
    call a customizer makes must be bounded by ``remaining()`` so that an expired build interrupts a
    hung command (``ctx.run`` does this for you).
    """

    index: int  # position in customize[] (or inVMValidations[]), for messages
    comm: Communicator
    os: OsType
    build_user: str
    deadline: float
    guest: Guest | None = None  # to observe reboots (reset_count) and power state
    fetched: Mapping[str, Path] = dataclasses.field(default_factory=dict)  # uri → verified local file
    output: OutputCallback | None = None  # receives every guest output line (customization.log)
    allow_any_destination: bool = False  # File: lift AIB's Linux "/tmp only" destination rule
    section: str = "customize"  # or "validate.inVMValidations": used in messages
    # Called after a reboot was detected and the communicator reconnected (cloud-init wait etc.).
    after_reboot: Callable[[StepContext], None] | None = None

    def remaining(self) -> float:
        """Seconds left before the build timeout; raises BuildTimeout when none are left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BuildTimeout(
                "buildTimeoutInMinutes expired",
                hint="Raise properties.buildTimeoutInMinutes or make the step faster.",
            )
        return left

    def local_file(self, uri: str) -> Path:
        try:
            return self.fetched[uri]
        except KeyError:
            # The orchestrator fetches every URI it finds in the model; reaching this is a bug.
            raise CustomizerError(f"{uri} was not fetched before the build started") from None

    def note(self, line: str) -> None:
        """A line of our own in the customization log (not guest output)."""
        if self.output is not None:
            self.output("localbuilder", line)

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> CommandResult:
        """Run ``command`` in the guest, streaming output to the log, bounded by the build deadline.

        A per-command ``timeout`` shorter than the build's remaining time is honoured too. A command
        that outlives the build deadline raises BuildTimeout (not CommunicatorTimeout).
        """
        left = self.remaining()
        bound = left if timeout is None else min(timeout, left)
        try:
            return self.comm.run(command, timeout=bound, on_output=on_output or self.output, stdin=stdin)
        except CommunicatorTimeout:
            if self.deadline - time.monotonic() <= 1.0:
                raise BuildTimeout(
                    f"buildTimeoutInMinutes expired while {self.section}[{self.index}] was running",
                    hint="Raise properties.buildTimeoutInMinutes, or find out why the step hangs "
                    "(--on-error abort keeps the guest for inspection).",
                ) from None
            raise

    def _up_without_reboot(self) -> bool:
        """After a drop with no reset yet: True when SSH answers from a system that is not going down.

        A guest on its way to a reboot refuses SSH (sshd stopped), or its systemd says ``stopping`` /
        has a shutdown job queued, or an unprivileged ``systemctl`` cannot reach the manager any more
        (``unknown``/``offline``, measured right after ``sudo reboot``): all of those mean "keep waiting".
        """
        probe = (
            'state="$(systemctl is-system-running 2>/dev/null)"; '
            "systemctl list-jobs --no-legend 2>/dev/null "
            "| grep -qE '(reboot|poweroff|halt|shutdown)\\.target' "
            '&& state="$state,shutdown-job"; echo "$state"'
        )
        try:
            self.comm.reconnect(min(DROP_PROBE_TIMEOUT, self.remaining()))
            result = self.comm.run(probe, timeout=min(DROP_PROBE_TIMEOUT, self.remaining()))
        except CommunicatorError:
            return False
        state = result.stdout_tail.strip()
        log.debug("connection dropped, no reset: the guest answers, systemd state %r", state)
        return state in ("running", "degraded", "starting", "initializing", "maintenance")

    def wait_for_reboot(self, resets_before: int, *, timeout: float = 1200.0) -> None:
        """After a connection drop: wait for the guest to come back and reconnect.

        The hypervisor's reset counter tells a reboot from a crash or a power-off: a guest that is no
        longer running did not reboot, it halted.
        """
        bound = min(timeout, self.remaining())
        if self.guest is not None:
            end = time.monotonic() + bound
            probe_at = time.monotonic() + DROP_PROBE_AFTER
            while self.guest.reset_count() <= resets_before:
                if not self.guest.is_running():
                    raise CustomizerError(
                        f"{self.section}[{self.index}]: the guest powered off instead of rebooting "
                        "(or its qemu process ended)",
                        hint="Use 'sudo reboot' (not 'poweroff'/'shutdown -h') inside a customize step; if "
                        "the step did not power off, the guest's serial.log and build.log (qemu's own "
                        "messages) in the run directory tell why it stopped.",
                    )
                if self.os is OsType.linux and time.monotonic() >= probe_at:
                    # Without this a dropped connection (sshd killed or restarted in the guest) waited
                    # the whole bound (20 min) for a reset that never comes.
                    if self._up_without_reboot() and self.guest.reset_count() <= resets_before:
                        raise CustomizerError(
                            "the SSH connection dropped while the step was running, and the guest did "
                            "not reboot (it still answers SSH)",
                            hint="Something in the guest ended the SSH session (sshd killed or restarted, "
                            "network reconfigured). The command may still run in the guest: use "
                            "--on-error abort to keep the guest and look.",
                        )
                    probe_at = time.monotonic() + DROP_PROBE_AFTER
                if time.monotonic() >= end:
                    self.remaining()
                    raise CustomizerError(
                        f"{self.section}[{self.index}]: the connection dropped but the guest did not "
                        f"reboot within {bound:.0f} s",
                        hint="Check the serial log in the run directory for what the guest was doing.",
                    )
                time.sleep(0.2)
        self.note("guest is rebooting; waiting for it to come back")
        self.comm.reconnect(self.remaining())
        if self.after_reboot is not None:
            self.after_reboot(self)


StepT = TypeVar("StepT", bound=model.Customizer)


class Customizer(abc.ABC, Generic[StepT]):
    """Base class of every customizer; subclasses register with ``type_name="<AIB type>"``.

    ``step`` is the frozen model object from ``localbuilder.template.model`` (ShellCustomizer,
    FileCustomizer, PowerShellCustomizer, …). ``supported_os`` lists the guests it can run on; the
    orchestrator refuses others before booting.
    """

    registry: ClassVar[dict[str, type[Customizer[Any]]]] = {}
    type_name: ClassVar[str] = ""
    supported_os: ClassVar[frozenset[OsType]] = frozenset({OsType.linux, OsType.windows})

    def __init_subclass__(cls, *, type_name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type_name is not None:
            if type_name in Customizer.registry:
                raise TypeError(f"customizer type {type_name!r} registered twice")
            cls.type_name = type_name
            Customizer.registry[type_name] = cls

    def __init__(self, step: StepT) -> None:
        self.step = step

    @property
    def name(self) -> str:
        return self.step.name

    def describe(self, index: int, section: str = "customize") -> str:
        """``customize[2] Shell 'install-nginx'`` — how steps are named everywhere."""
        label = f" '{self.name}'" if self.name else ""
        return f"{section}[{index}] {self.type_name}{label}"

    def preflight(self, os: OsType, *, allow_any_destination: bool, where: str) -> None:
        """Checks that need no guest, run before any boot; raise CustomizerError naming ``where``."""
        if os not in self.supported_os:
            raise CustomizerError(
                f"{where}: {self.type_name} steps cannot run on a {os} guest",
                hint=f"{self.type_name} supports: {', '.join(sorted(self.supported_os))}.",
            )

    @abc.abstractmethod
    def apply(self, ctx: StepContext) -> None:
        """Run the step in the guest; raise StepFailed / CustomizerError when it fails."""


_loaded = False


def _load_plugins() -> None:
    # Import every module of this package once so their classes register. A module that fails to
    # import is a bug in localbuilder, not a user error: let it surface.
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def registered_types() -> dict[str, type[Customizer[Any]]]:
    _load_plugins()
    return dict(Customizer.registry)


def step_type(step: model.Customizer) -> str:
    """The AIB type string of a model step (``step.type`` is a StrEnum spelled as AIB spells it)."""
    return str(step.type)


def customizer_for(step: model.Customizer) -> Customizer[Any]:
    types = registered_types()
    name = step_type(step)
    cls = types.get(name)
    if cls is None:
        raise CustomizerError(
            f"customizer type {name!r} is not supported by localbuilder",
            hint=f"Supported types: {', '.join(sorted(types))}.",
        )
    return cls(step)
