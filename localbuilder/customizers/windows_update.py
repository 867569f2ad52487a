"""WindowsUpdate customizer: the install/restart loop of ``localbuilder.windows.update``.

The template validator has resolved the step's defaults (searchCriteria, filters, updateLimit 0 → 1000).
"""

from __future__ import annotations

from localbuilder.customizers import Customizer, StepContext
from localbuilder.template import model
from localbuilder.template.model import OsType
from localbuilder.windows.update import UpdateOptions, windows_update


class WindowsUpdate(Customizer[model.WindowsUpdateCustomizer], type_name="WindowsUpdate"):
    supported_os = frozenset({OsType.windows})

    def apply(self, ctx: StepContext) -> None:
        step = self.step
        options = UpdateOptions(
            search_criteria=step.search_criteria,
            filters=step.filters,
            update_limit=step.update_limit,
        )
        windows_update(ctx.comm, options, guest=ctx.guest, on_output=ctx.output, timeout=ctx.remaining())
