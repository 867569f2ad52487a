"""VHD distributor: ``<output-dir>/<runOutputName>.vhd``, a verified fixed VHD Azure accepts."""

from __future__ import annotations

from localbuilder.distributors import NOT_UPLOADED, DistributeContext, Distributor, place
from localbuilder.state import RunOutput


class Vhd(Distributor, type_name="VHD"):
    def distribute(self, ctx: DistributeContext) -> RunOutput:
        dst = self.output_path(ctx)
        place(ctx.vhd, dst, force=ctx.force)
        uri = getattr(self.target, "uri", None)
        note = ""
        state = "Succeeded"
        if uri:
            # API 2022-07-01+ lets a VHD target name a blob; AIB writes the VHD there. We cannot yet.
            note = f"{NOT_UPLOADED}: the VHD for {uri.split('?')[0]} is at {dst}"
            state = "Failed"
        return RunOutput(
            name=self.run_output_name,
            type=self.type_name,
            provisioning_state=state,
            artifact_uri=dst.absolute().as_uri(),
            artifact_tags=dict(self.target.artifact_tags),
            note=note,
        )
