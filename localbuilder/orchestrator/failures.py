"""What happens when a step fails: ``errorHandling`` (AIB) and ``--on-error`` (cleanup, abort, ask).

AIB deletes the build VM on a failed step (``cleanup``) or keeps it for debugging (``abort``); the CLI
adds ``ask``: on a terminal, retry the step, keep the guest, or clean up. ``FailurePolicy.decide``
returns only to retry; otherwise it raises ``StepFailure``, which ends the run (the guest kept or not).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable

from localbuilder.errors import LocalBuilderError
from localbuilder.guest import BootedGuest
from localbuilder.state import KeptGuest
from localbuilder.template.model import OnBuildError

log = logging.getLogger("localbuilder.build")


class StepFailure(Exception):
    """A step failed and the policy says stop. Carries the step and the user-facing error."""

    def __init__(self, step: str, error: LocalBuilderError, kept: KeptGuest | None) -> None:
        super().__init__(error.message)
        self.step = step
        self.error = error
        self.kept = kept

    def summary(self) -> str:
        """``customize[1] Shell 'x' failed with exit code 2`` + the output tail, named once."""
        text = self.error.message
        return text if text.startswith(self.step) else f"{self.step}: {text}"


@dataclasses.dataclass(frozen=True)
class FailurePolicy:
    mode: OnBuildError
    ask: bool  # ask on a terminal first (--on-error ask); without one, ``mode`` is cleanup
    prompt: Callable[[str], str] | None  # None: input() on a terminal
    interactive: bool | None = None  # None: stdin is a terminal

    def decide(self, step: str, error: LocalBuilderError, booted: BootedGuest, *, run_id: str,
               note: Callable[[str], None]) -> None:
        """Apply the policy to a failed ``step``: return to retry it, or raise StepFailure. ``note``
        writes a line to the customization log."""
        mode = self.mode
        log.error("%s failed: %s", step, error.message)
        if self.ask:
            interactive = sys.stdin.isatty() if self.interactive is None else self.interactive
            if not interactive and self.prompt is None:
                log.warning("--on-error ask needs a terminal; cleaning up instead")
                mode = OnBuildError.cleanup
            else:
                ask = self.prompt or input
                answer = ""
                while answer not in ("r", "a", "c"):
                    answer = ask(f"{step} failed. [r]etry the step, [a]bort (keep the guest), [c]lean up? ")
                    answer = answer.strip().lower()[:1]
                if answer == "r":
                    note(f"retrying {step} (user choice)")
                    return
                mode = OnBuildError.abort if answer == "a" else OnBuildError.cleanup
        kept = None
        if mode is OnBuildError.abort and booted.guest.is_running():
            kept = booted.keep()
            note(f"guest kept running for inspection: {kept.ssh_command()}")
            log.warning(
                "the guest is still running for inspection:\n    %s\n  stop it with: localbuilder cancel %s",
                kept.ssh_command(), run_id,
            )
        raise StepFailure(step, error, kept)
