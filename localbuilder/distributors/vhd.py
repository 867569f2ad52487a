"""VHD distributor: ``<output-dir>/<runOutputName>.vhd``, a verified fixed VHD Azure accepts.

With ``uri`` (API 2022-07-01+) AIB writes the VHD to that blob; so do we: a sparse page-blob upload
(SAS in the uri, else AZURE_STORAGE_KEY / AZURE_STORAGE_CONNECTION_STRING / Entra ID). The run output's
``artifactUri`` is then the blob URL without its query string, so no SAS reaches state.json.
"""

from __future__ import annotations

from localbuilder.distributors import DistributeContext, Distributor, place
from localbuilder.distributors._azure import upload
from localbuilder.state import RunOutput
from localbuilder.template.model import VhdDistributor


class Vhd(Distributor[VhdDistributor], type_name="VHD"):
    def distribute(self, ctx: DistributeContext) -> RunOutput:
        dst = self.output_path(ctx)
        place(ctx.vhd, dst, force=ctx.force)  # every OSError in it is a DistributeError already
        artifact_uri = dst.absolute().as_uri()
        uri = self.target.uri
        if uri:
            artifact_uri = upload(ctx, dst, uri, f"VHD '{self.run_output_name}' uri")
        return RunOutput(
            name=self.run_output_name,
            type=self.type_name,
            provisioning_state="Succeeded",
            artifact_uri=artifact_uri,
            artifact_tags=dict(self.target.artifact_tags),
        )
