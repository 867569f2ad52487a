"""AIB's Distributing phase: each ``distribute[]`` target on its own.

A target that fails does not stop the others (AIB reports each runOutput); a cancel or the build's
timeout ends the run, not just the target. The reason a target failed is said once, in the run's final
message, with its hint.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

from localbuilder.distributors import DistributeContext, distributor_for
from localbuilder.errors import BuildTimeout, Canceled, LocalBuilderError
from localbuilder.log import complete_step
from localbuilder.state import RunOutput
from localbuilder.template import model

log = logging.getLogger("localbuilder.build")


def distribute_all(
    targets: Sequence[model.Distributor],
    ctx: DistributeContext,
    *,
    phase: Callable[[str], contextlib.AbstractContextManager[None]],
    before_each: Callable[[], None],
    after_each: Callable[[tuple[RunOutput, ...]], None],
) -> tuple[list[RunOutput], list[str]]:
    """Every target in order; returns the run outputs and the hints of the failed ones. ``phase(title)``
    times each target, ``before_each`` raises a pending cancel or timeout, ``after_each`` records the
    outputs so far."""
    outputs: list[RunOutput] = []
    hints: list[str] = []
    for i, target in enumerate(targets):
        before_each()
        distributor = distributor_for(target)
        title = distributor.describe(i)
        try:
            with complete_step(title), phase(title):
                out = distributor.distribute(ctx)
        except (BuildTimeout, Canceled):
            raise  # the run ends (Canceled / timeout), not just this target
        except LocalBuilderError as exc:
            if exc.hint:
                hints.append(exc.hint)
            out = RunOutput(
                name=distributor.run_output_name,
                type=distributor.type_name,
                provisioning_state="Failed",
                artifact_tags=dict(target.artifact_tags),
                note=exc.message,
            )
        if out.provisioning_state != "Succeeded" and i + 1 < len(targets):
            log.warning("%s failed; the other targets still run (the reason is in the summary)", title)
        elif out.note and out.provisioning_state == "Succeeded":
            log.warning("%s: %s", title, out.note)
        outputs.append(out)
        after_each(tuple(outputs))
    return outputs, hints
