"""Managed images and Azure Compute Gallery image versions from an uploaded VHD.

What AIB's ManagedImage and SharedImage distributors do after the build, done from here: the VHD is
first uploaded to a staging page blob (``pageblob.upload_vhd``), then the Compute API creates
- a managed image: ``PUT …/Microsoft.Compute/images/{name}`` with ``storageProfile.osDisk.blobUri``;
- a gallery image version: ``PUT …/galleries/{g}/images/{def}/versions/{ver}`` with
  ``storageProfile.osDiskImage.source`` = the blob URI + the storage account id.

``SdkCompute`` calls Azure through azure-mgmt-compute; ``DryRunCompute`` prints the exact equivalent
``az`` commands instead (``--dry-run``). Request bodies are plain JSON built here, so tests assert them
at the SDK's transport boundary and the dry-run output stays in step with what is sent.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from localbuilder.catalog import Generation
from localbuilder.errors import DistributeError
from localbuilder.template.model import OsType

log = logging.getLogger("localbuilder.azure.compute")

API_IMAGES = "2024-03-01"  # Microsoft.Compute images
API_GALLERIES = "2023-07-03"  # Microsoft.Compute galleries

_ID_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/(?P<rest>.+)$",
    re.IGNORECASE,
)
_VERSION_RE = re.compile(r"^(\d{1,9})\.(\d{1,9})\.(\d{1,9})$")


@dataclasses.dataclass(frozen=True)
class ComputeId:
    subscription: str
    resource_group: str
    names: tuple[
        str, ...
    ]  # e.g. ("images", "img") or ("galleries", "g", "images", "def", "versions", "1.0.0")

    @classmethod
    def parse(cls, text: str, kind: Literal["image", "gallery-image"], field: str) -> ComputeId:
        m = _ID_RE.match(text.strip())
        parts = tuple(m.group("rest").split("/")) if m else ()
        ok = bool(m) and (
            (kind == "image" and len(parts) == 2 and parts[0].lower() == "images")
            or (
                kind == "gallery-image"
                and len(parts) in (4, 6)
                and parts[0].lower() == "galleries"
                and parts[2].lower() == "images"
                and (len(parts) == 4 or parts[4].lower() == "versions")
            )
        )
        if not m or not ok:
            example = (
                "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/images/NAME"
                if kind == "image"
                else "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/DEF"
            )
            raise DistributeError(f"{field}: {text!r} is not a valid resource id", hint=f"Expected {example}")
        return cls(m.group("sub"), m.group("rg"), parts)

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
            f"Microsoft.Compute/{'/'.join(self.names)}"
        )


@dataclasses.dataclass(frozen=True)
class TargetRegion:
    name: str
    replica_count: int = 1
    storage_account_type: str | None = None


AzureOsType = Literal["Linux", "Windows"]


def azure_os_type(os: OsType) -> AzureOsType:
    """The guest OS family as the Compute API spells ``osType`` (and ``az --os-type``)."""
    return "Windows" if os is OsType.windows else "Linux"


@dataclasses.dataclass(frozen=True)
class ImagePlan:
    """A managed image to create from a VHD blob."""

    image_id: str
    location: str
    blob_url: str  # without SAS
    os_type: AzureOsType = "Linux"
    generation: Generation = Generation.V1
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "tags": dict(self.tags),
            "properties": {
                "hyperVGeneration": str(self.generation),
                "storageProfile": {
                    "osDisk": {
                        "osType": self.os_type,
                        "osState": "Generalized",
                        "blobUri": self.blob_url,
                        "storageAccountType": "Standard_LRS",
                    }
                },
            },
        }

    def az_commands(self) -> list[list[str]]:
        rid = ComputeId.parse(self.image_id, "image", "imageId")
        cmd = [
            "az", "image", "create",
            "--subscription", rid.subscription,
            "--resource-group", rid.resource_group,
            "--name", rid.names[1],
            "--location", self.location,
            "--source", self.blob_url,
            "--os-type", self.os_type,
            "--hyper-v-generation", str(self.generation),
            *(["--tags", *[f"{k}={v}" for k, v in sorted(self.tags.items())]] if self.tags else []),
        ]  # fmt: skip
        return [cmd]


@dataclasses.dataclass(frozen=True)
class GalleryVersionPlan:
    """A gallery image version to create from a VHD blob (the SharedImage distributor)."""

    gallery_image_id: str  # image definition id, or a version id (explicit version)
    location: str
    blob_url: str
    storage_account_id: str  # the staging account: a gallery version from a VHD needs it
    target_regions: tuple[TargetRegion, ...] = ()
    exclude_from_latest: bool = False
    storage_account_type: str | None = None
    replication_mode: str | None = None
    versioning: Literal["Latest", "Source"] | None = None
    major: int | None = None
    source_version: str | None = None  # the source image's version, for versioning "Source"
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def definition(self) -> ComputeId:
        rid = ComputeId.parse(self.gallery_image_id, "gallery-image", "galleryImageId")
        return dataclasses.replace(rid, names=rid.names[:4])

    @property
    def explicit_version(self) -> str | None:
        rid = ComputeId.parse(self.gallery_image_id, "gallery-image", "galleryImageId")
        return rid.names[5] if len(rid.names) == 6 else None

    def body(self) -> dict[str, Any]:
        regions = self.target_regions or (TargetRegion(self.location),)
        publishing: dict[str, Any] = {
            "targetRegions": [
                {
                    "name": r.name,
                    "regionalReplicaCount": r.replica_count,
                    **({"storageAccountType": r.storage_account_type} if r.storage_account_type else {}),
                }
                for r in regions
            ],
            "excludeFromLatest": self.exclude_from_latest,
        }
        if self.storage_account_type:
            publishing["storageAccountType"] = self.storage_account_type
        if self.replication_mode:
            publishing["replicationMode"] = self.replication_mode
        return {
            "location": self.location,
            "tags": dict(self.tags),
            "properties": {
                "publishingProfile": publishing,
                "storageProfile": {
                    "osDiskImage": {
                        "hostCaching": "ReadWrite",
                        "source": {"uri": self.blob_url, "storageAccountId": self.storage_account_id},
                    }
                },
            },
        }

    def az_commands(self, version: str) -> list[list[str]]:
        d = self.definition
        regions = self.target_regions or (TargetRegion(self.location),)
        cmd = [
            "az", "sig", "image-version", "create",
            "--subscription", d.subscription,
            "--resource-group", d.resource_group,
            "--gallery-name", d.names[1],
            "--gallery-image-definition", d.names[3],
            "--gallery-image-version", version,
            "--location", self.location,
            "--os-vhd-uri", self.blob_url,
            "--os-vhd-storage-account", self.storage_account_id,
            "--target-regions", *[
                "=".join([r.name, str(r.replica_count), *filter(None, [r.storage_account_type])])
                for r in regions
            ],
            "--exclude-from-latest", "true" if self.exclude_from_latest else "false",
            *(["--storage-account-type", self.storage_account_type] if self.storage_account_type else []),
            *(["--replication-mode", self.replication_mode] if self.replication_mode else []),
            *(["--tags", *[f"{k}={v}" for k, v in sorted(self.tags.items())]] if self.tags else []),
        ]  # fmt: skip
        return [cmd]


def next_version(existing: Sequence[str], major: int | None = None) -> str:
    """AIB's ``versioning: Latest``: one patch above the highest existing version (within ``major``).

    With no existing version (in that major): ``MAJOR.0.0`` (``1.0.0`` without a major). Versions that are
    not ``X.Y.Z`` integers are ignored, as the gallery's own ordering is numeric per part.
    """
    parsed = []
    for v in existing:
        m = _VERSION_RE.match(v)
        if m:
            t = tuple(int(x) for x in m.groups())
            if major is None or t[0] == major:
                parsed.append(t)
    if not parsed:
        return f"{major if major is not None else 1}.0.0"
    a, b, c = max(parsed)
    return f"{a}.{b}.{c + 1}"


def source_version(version: str | None) -> str:
    """``versioning: Source``: the source image's own version, when it is a valid gallery version."""
    if version and _VERSION_RE.match(version):
        return version
    raise DistributeError(
        f"versioning scheme 'Source' needs a source image version like 1.2.3, got {version!r}",
        hint="Use versioning scheme 'Latest' or give an explicit version in galleryImageId.",
    )


class Compute(Protocol):
    """What the distributors need from Azure Compute. Implementations: SdkCompute, DryRunCompute."""

    def create_image(self, plan: ImagePlan) -> str: ...

    def create_gallery_version(self, plan: GalleryVersionPlan) -> str: ...


def _resolve_version(plan: GalleryVersionPlan, list_existing: Callable[[], list[str]]) -> str:
    if plan.explicit_version:
        return plan.explicit_version
    if plan.versioning == "Source":
        return source_version(plan.source_version)
    return next_version(list_existing(), plan.major)


class SdkCompute:
    """Azure Compute through azure-mgmt-compute. ``transport`` lets tests intercept every request."""

    def __init__(self, credential: Any, subscription_id: str, *, transport: Any = None) -> None:
        from azure.mgmt.compute import ComputeManagementClient

        kwargs: dict[str, Any] = {"polling_interval": 0} if transport is not None else {}
        if transport is not None:
            kwargs["transport"] = transport
        self.client = ComputeManagementClient(credential, subscription_id, **kwargs)

    def create_image(self, plan: ImagePlan) -> str:
        from azure.core.exceptions import AzureError

        rid = ComputeId.parse(plan.image_id, "image", "imageId")
        try:
            result = self.client.images.begin_create_or_update(
                rid.resource_group, rid.names[1], _json(plan.body())
            ).result()
        except AzureError as exc:
            raise DistributeError(f"creating managed image {rid.id} failed: {exc}", hint=_HINT) from exc
        return str(getattr(result, "id", None) or rid.id)

    def create_gallery_version(self, plan: GalleryVersionPlan) -> str:
        from azure.core.exceptions import AzureError

        d = plan.definition
        try:
            version = _resolve_version(
                plan,
                lambda: [
                    str(v.name)
                    for v in self.client.gallery_image_versions.list_by_gallery_image(
                        d.resource_group, d.names[1], d.names[3]
                    )
                ],
            )
            poller = self.client.gallery_image_versions.begin_create_or_update(
                d.resource_group, d.names[1], d.names[3], version, _json(plan.body())
            )
            result = poller.result()
        except AzureError as exc:
            raise DistributeError(
                f"creating gallery image version in {d.id} failed: {exc}", hint=_HINT
            ) from exc
        return str(getattr(result, "id", None) or f"{d.id}/versions/{version}")


def _json(body: dict[str, Any]) -> io.BytesIO:
    # Sent as bytes so that the request body is exactly what body() built (and what tests assert).
    return io.BytesIO(json.dumps(body).encode())


_HINT = "Check the identity's role on the resource group (Contributor) and that the location matches."


class DryRunCompute:
    """Print the exact ``az`` commands that would create the images, and call nothing."""

    def __init__(self, emit: Callable[[str], None] = print, existing_versions: Sequence[str] = ()) -> None:
        self.emit = emit
        self.commands: list[list[str]] = []
        self.existing_versions = list(existing_versions)

    def _out(self, cmds: list[list[str]]) -> None:
        for cmd in cmds:
            self.commands.append(cmd)
            self.emit(shlex.join(cmd))

    def create_image(self, plan: ImagePlan) -> str:
        self._out(plan.az_commands())
        return ComputeId.parse(plan.image_id, "image", "imageId").id

    def create_gallery_version(self, plan: GalleryVersionPlan) -> str:
        version = _resolve_version(plan, lambda: self.existing_versions)
        self._out(plan.az_commands(version))
        return f"{plan.definition.id}/versions/{version}"
