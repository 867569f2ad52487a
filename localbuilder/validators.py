"""In-VM validations (``properties.validate.inVMValidations``, API 2022-02-14+).

AIB's validators are Shell, PowerShell and File steps with the customizer schema; they run after the
image was generalized, in a "build & validation VM" booted from the *result* (FACTS §6), or directly
from the source with ``sourceValidationOnly``. They reuse the customizer classes; this module holds what
differs: the allowed types, and what a failure means for the run:

- a failing validation fails the run (``Failed``), even when ``continueDistributeOnFailure`` lets the
  image be distributed anyway;
- ``errorHandling.onValidationError`` (cleanup|abort) decides whether the validation guest is kept.
"""

from __future__ import annotations

from typing import Any

from localbuilder.customizers import Customizer, customizer_for, step_type
from localbuilder.errors import CustomizerError
from localbuilder.template.model import Validator, ValidatorType

SECTION = "validate.inVMValidations"


def validator_for(step: Validator) -> Customizer[Any]:
    name = step_type(step)
    if name not in set(ValidatorType):
        raise CustomizerError(
            f"{name!r} is not a validator type",
            hint=f"inVMValidations accept {', '.join(sorted(ValidatorType))}.",
        )
    return customizer_for(step)


def outcome_message(failure: str, *, distributed: bool) -> str:
    """``lastRunStatus.message`` for a failed validation."""
    if distributed:
        return failure + " (the image was distributed anyway: continueDistributeOnFailure)"
    return failure + " (nothing was distributed)"
