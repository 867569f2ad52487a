"""ManagedImage and SharedImage targets: the VHD is produced locally, the Azure side is not done.

Creating a managed image or a gallery image version needs the Azure Compute API (upload the VHD to a
page blob, then create the image from it). Until that is implemented, the target yields the local VHD
— what one would upload — with an explicit note, and does not count as succeeded: the run ends
``PartiallySucceeded`` (or ``Failed`` when no target succeeded), never silently ``Succeeded``.
"""

from __future__ import annotations

import abc

from localbuilder.distributors import NOT_UPLOADED, DistributeContext, Distributor, place
from localbuilder.state import RunOutput


class _AzureImage(Distributor):
    @abc.abstractmethod
    def resource_id(self) -> str:
        """The Azure resource the service would create (image id / gallery image id)."""

    def distribute(self, ctx: DistributeContext) -> RunOutput:
        dst = self.output_path(ctx)
        place(ctx.vhd, dst, force=ctx.force)
        return RunOutput(
            name=self.run_output_name,
            type=self.type_name,
            provisioning_state="Failed",
            artifact_uri=dst.absolute().as_uri(),
            artifact_id=self.resource_id() or None,
            artifact_tags=dict(self.target.artifact_tags),
            note=f"{NOT_UPLOADED}: {self.type_name} {self.resource_id()} was not created; the VHD to "
            f"upload is {dst}",
        )


class ManagedImage(_AzureImage, type_name="ManagedImage"):
    def resource_id(self) -> str:
        return str(self.target.image_id)


class SharedImage(_AzureImage, type_name="SharedImage"):
    def resource_id(self) -> str:
        return str(self.target.gallery_image_id)
