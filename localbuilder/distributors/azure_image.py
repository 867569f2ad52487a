"""ManagedImage and SharedImage targets: stage the VHD as a page blob, then create the image in Azure.

``--staging CONTAINER_URL`` uploads the run's VHD to ``<container>/<runOutputName>-<run-id>.vhd``; the
Compute API then creates the managed image / gallery image version from that blob (``azure/compute.py``)
with the source image's OS type and Hyper-V generation. ``--dry-run-azure`` prints the equivalent ``az``
commands instead of calling the Compute API. With neither, the target yields the local VHD with a note
naming the option, and does not count as succeeded: the run ends ``PartiallySucceeded`` (or ``Failed``),
never silently ``Succeeded``.
"""

from __future__ import annotations

import abc
import shlex
from typing import Literal, TypeVar, cast

from localbuilder.azure.compute import (
    Compute,
    ComputeId,
    DryRunCompute,
    GalleryVersionPlan,
    ImagePlan,
    SdkCompute,
    TargetRegion,
    azure_os_type,
)
from localbuilder.distributors import NOT_UPLOADED, DistributeContext, Distributor, _azure, place
from localbuilder.errors import DistributeError
from localbuilder.state import RunOutput
from localbuilder.template.model import ManagedImageDistributor, SharedImageDistributor

DRY_RUN_NOTE = "dry run (--dry-run-azure): the az commands were printed; nothing was created in Azure"


AzureTargetT = TypeVar("AzureTargetT", bound=ManagedImageDistributor | SharedImageDistributor)


class _AzureImage(Distributor[AzureTargetT]):
    kind: Literal["image", "gallery-image"] = "image"
    field = "imageId"

    @abc.abstractmethod
    def resource_id(self) -> str:
        """The Azure resource the service would create (image id / gallery image id)."""

    @abc.abstractmethod
    def create(self, compute: Compute, ctx: DistributeContext, blob_url: str) -> str:
        """Create the resource from ``blob_url`` (no SAS); return its resource id."""

    def preflight(self, ctx: DistributeContext, where: str) -> None:
        super().preflight(ctx, where)
        if ctx.azure.staging or ctx.azure.dry_run:
            # A malformed id should stop the build before the boot, not after an hour and an upload.
            ComputeId.parse(self.resource_id(), self.kind, f"{where}.{self.field}")
            self.check_options(ctx, where)

    def check_options(self, ctx: DistributeContext, where: str) -> None:
        """Target-specific checks that need no Azure call (run before the boot and again at the end)."""

    def describe_short(self) -> str:
        return f"{self.type_name} '{self.run_output_name}'"

    def distribute(self, ctx: DistributeContext) -> RunOutput:
        dst = self.output_path(ctx)
        place(ctx.vhd, dst, force=ctx.force)
        local_uri = dst.absolute().as_uri()
        if not ctx.azure.staging and not ctx.azure.dry_run:
            return RunOutput(
                name=self.run_output_name,
                type=self.type_name,
                provisioning_state="Failed",
                artifact_uri=local_uri,
                artifact_id=self.resource_id() or None,
                artifact_tags=dict(self.target.artifact_tags),
                note=f"{NOT_UPLOADED}: {self.type_name} {self.resource_id()} was not created; the VHD to "
                f"upload is {dst}",
            )
        self.check_options(ctx, self.describe_short())
        if ctx.azure.staging:
            blob_url = _azure.upload(
                ctx, dst, _azure.staging_blob(ctx, self.run_output_name), f"{self.type_name} staging"
            )
        else:
            _azure.readiness_warnings(ctx, dst)
            blob_url = _azure.dry_run_blob_url(ctx, self.run_output_name)
            # The upload that --staging would do, as a command the user can run (placeholders filled in).
            ctx.azure.emit(shlex.join(["localbuilder", "upload", str(dst), "--to", blob_url]))
        compute: Compute
        if ctx.azure.dry_run:
            compute = DryRunCompute(emit=ctx.azure.emit)
        else:
            sub = ComputeId.parse(self.resource_id(), self.kind, self.field).subscription
            compute = (ctx.azure.compute_factory or _default_compute)(sub)
        artifact_id = self.create(compute, ctx, blob_url)
        return RunOutput(
            name=self.run_output_name,
            type=self.type_name,
            # A dry run created nothing: it must not read as a success in state.json.
            provisioning_state="Failed" if ctx.azure.dry_run else "Succeeded",
            artifact_uri=blob_url if ctx.azure.staging else local_uri,
            artifact_id=artifact_id,
            artifact_tags=dict(self.target.artifact_tags),
            note=DRY_RUN_NOTE if ctx.azure.dry_run else "",
        )


def _default_compute(subscription: str) -> Compute:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:
        raise DistributeError(
            "azure-identity is not installed: no credential for the Compute API",
            hint="pip install azure-identity, then `az login` (or set AZURE_CLIENT_ID/SECRET/TENANT_ID).",
        ) from exc
    return SdkCompute(DefaultAzureCredential(), subscription)


class ManagedImage(_AzureImage[ManagedImageDistributor], type_name="ManagedImage"):
    kind = "image"
    field = "imageId"

    def resource_id(self) -> str:
        return str(self.target.image_id)

    def create(self, compute: Compute, ctx: DistributeContext, blob_url: str) -> str:
        plan = ImagePlan(
            image_id=self.resource_id(),
            location=str(self.target.location),
            blob_url=blob_url,
            os_type=azure_os_type(ctx.os_type),
            generation=ctx.generation,
            tags=dict(self.target.artifact_tags),
        )
        return compute.create_image(plan)


class SharedImage(_AzureImage[SharedImageDistributor], type_name="SharedImage"):
    kind = "gallery-image"
    field = "galleryImageId"

    def resource_id(self) -> str:
        return str(self.target.gallery_image_id)

    def _regions(self) -> tuple[TargetRegion, ...]:
        t = self.target
        return tuple(
            TargetRegion(
                r.name, r.replica_count, str(r.storage_account_type) if r.storage_account_type else None
            )
            for r in t.target_regions
        ) or tuple(TargetRegion(name) for name in t.replication_regions)

    def check_options(self, ctx: DistributeContext, where: str) -> None:
        if not self._regions():
            raise DistributeError(
                f"{where}: SharedImage has no targetRegions or replicationRegions",
                hint='Add targetRegions [{"name": "westeurope"}] to the distribute target.',
            )
        if not ctx.azure.staging_account_id and not ctx.azure.dry_run:
            raise DistributeError(
                f"{where}: a gallery image version made from a VHD needs the staging storage account's "
                "resource id",
                hint="Pass --staging-account-id /subscriptions/SUB/resourceGroups/RG/providers/"
                "Microsoft.Storage/storageAccounts/NAME",
            )

    def create(self, compute: Compute, ctx: DistributeContext, blob_url: str) -> str:
        t = self.target
        regions = self._regions()
        # Under --dry-run-azure without the option, the command shows where the id goes.
        account = ctx.azure.staging_account_id or "STORAGE_ACCOUNT_ID"
        versioning = t.versioning
        major = versioning.major if versioning is not None and versioning.major not in (None, -1) else None
        plan = GalleryVersionPlan(
            gallery_image_id=self.resource_id(),
            # AIB creates the version in the first replication region (the gallery's home region).
            location=regions[0].name,
            blob_url=blob_url,
            storage_account_id=account,
            target_regions=regions,
            exclude_from_latest=bool(t.exclude_from_latest),
            storage_account_type=str(t.storage_account_type) if t.storage_account_type else None,
            replication_mode=str(t.replication_mode) if t.replication_mode else None,
            versioning=cast(Literal["Latest", "Source"], str(versioning.scheme)) if versioning else None,
            major=major,
            source_version=ctx.source_version,
            tags=dict(t.artifact_tags),
        )
        return compute.create_gallery_version(plan)
