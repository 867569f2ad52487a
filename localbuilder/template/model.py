"""The typed AIB image template: frozen records every other module builds from.

Names follow the AIB REST API (``Microsoft.VirtualMachineImages/imageTemplates``): enum values keep the
service's exact spelling (``"PlatformImage"``, ``"WindowsRestart"``) and every field records its camelCase
name in ``metadata["aib"]`` so ``as_dict()`` can give the template back in AIB shape (``--json``) and the
swagger cross-check test can compare the names with the official definitions.

Only the validator (``template.validate_rules``/``validate_steps``) constructs these records, from a body
it has checked; absent optional fields are resolved to the service's documented defaults, which are defined
here (``buildTimeoutInMinutes`` 0 → 240, restartTimeout ``5m`` …), so that consumers never re-implement
AIB's defaulting: they take the resolved values. Where a value is kept "as written" as well, the field says
so.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, ClassVar

from localbuilder.template.durations import parse_duration

# ---------------------------------------------------------------------------------------------------------
# Enums (values spelled exactly as AIB)


class SourceType(enum.StrEnum):
    PlatformImage = "PlatformImage"
    ManagedImage = "ManagedImage"
    SharedImageVersion = "SharedImageVersion"
    # Preview-only (2018/2019 previews), removed from every stable version; recognised so that the
    # validator can refuse it by name instead of calling it an unknown type.
    ISO = "ISO"


class CustomizerType(enum.StrEnum):
    Shell = "Shell"
    PowerShell = "PowerShell"
    File = "File"
    WindowsRestart = "WindowsRestart"
    WindowsUpdate = "WindowsUpdate"


class ValidatorType(enum.StrEnum):
    """``validate.inVMValidations[].type`` (API 2022-02-14 and later)."""

    Shell = "Shell"
    PowerShell = "PowerShell"
    File = "File"


class DistributorType(enum.StrEnum):
    ManagedImage = "ManagedImage"
    SharedImage = "SharedImage"
    VHD = "VHD"


class OsType(enum.StrEnum):
    """Guest OS family, detected from the source publisher or the customizer types."""

    linux = "linux"
    windows = "windows"


class IdentityType(enum.StrEnum):
    UserAssigned = "UserAssigned"
    None_ = "None"


class OnBuildError(enum.StrEnum):
    """``errorHandling.onCustomizerError`` / ``onValidationError`` (lower case, as the swagger spells it)."""

    cleanup = "cleanup"  # the build VM is deleted (AIB's default)
    abort = "abort"  # the build VM is kept for debugging


class StorageAccountType(enum.StrEnum):
    Standard_LRS = "Standard_LRS"
    Standard_ZRS = "Standard_ZRS"
    Premium_LRS = "Premium_LRS"


class ReplicationMode(enum.StrEnum):
    Full = "Full"
    Shallow = "Shallow"


class VersioningScheme(enum.StrEnum):
    Latest = "Latest"
    Source = "Source"


class State(enum.StrEnum):
    """``Enabled``/``Disabled`` of ``autoRun.state`` and ``optimize.*.state``."""

    Enabled = "Enabled"
    Disabled = "Disabled"


# ---------------------------------------------------------------------------------------------------------
# Defaults the service applies when a field is absent (or 0). Sources: the swagger descriptions, and for the
# Windows customizers the Packer provisioners AIB runs (FACTS.md §6).

DEFAULT_BUILD_TIMEOUT_MINUTES = 240
MAX_BUILD_TIMEOUT_MINUTES = 960
DEFAULT_RESTART_COMMAND = 'shutdown /r /f /t 0 /c "packer restart"'
DEFAULT_RESTART_TIMEOUT = "5m"
DEFAULT_RESTART_TIMEOUT_SECONDS = parse_duration(DEFAULT_RESTART_TIMEOUT)
DEFAULT_UPDATE_SEARCH_CRITERIA = "BrowseOnly=0 and IsInstalled=0"
DEFAULT_UPDATE_FILTERS: tuple[str, ...] = ("include:$true",)
DEFAULT_UPDATE_LIMIT = 1000
DEFAULT_VALID_EXIT_CODES: tuple[int, ...] = (0,)


def aib(name: str, **kwargs: Any) -> Any:
    """A dataclass field whose AIB (camelCase) property name is ``name``."""
    return dataclasses.field(metadata={"aib": name}, **kwargs)


def _plain(value: object) -> object:
    if isinstance(value, Record):
        return value.as_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """Base of every model record: ``as_dict()`` gives the AIB camelCase form.

    Fields without ``metadata["aib"]`` are localbuilder additions (parsed or resolved values) and are
    left out of ``as_dict()``; the discriminator ``type`` is written first when the record has one.
    """

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        type_value = getattr(type(self), "TYPE", None)
        if type_value is not None:
            out["type"] = str(type_value)
        for f in dataclasses.fields(self):
            name = f.metadata.get("aib")
            if name is None:
                continue
            value = getattr(self, f.name)
            # Absent and empty values are left out, as a template author would leave them out.
            if value is None or (not isinstance(value, bool | int) and not value):
                continue
            out[name] = _plain(value)
        return out

    @classmethod
    def aib_names(cls) -> dict[str, str]:
        """Python field name → AIB property name, for the fields that exist in AIB."""
        return {f.name: f.metadata["aib"] for f in dataclasses.fields(cls) if "aib" in f.metadata}


# ---------------------------------------------------------------------------------------------------------
# Source


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanInfo(Record):
    """Marketplace purchase plan (all three fields are required by the service)."""

    plan_name: str = aib("planName")
    plan_product: str = aib("planProduct")
    plan_publisher: str = aib("planPublisher")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlatformImageSource(Record):
    TYPE: ClassVar[SourceType] = SourceType.PlatformImage
    publisher: str = aib("publisher")
    offer: str = aib("offer")
    sku: str = aib("sku")
    version: str = aib("version")  # "latest" or an exact version
    plan_info: PlanInfo | None = aib("planInfo", default=None)

    @property
    def type(self) -> SourceType:
        return self.TYPE

    @property
    def urn(self) -> str:
        """``publisher:offer:sku:version``, the az CLI's image URN."""
        return f"{self.publisher}:{self.offer}:{self.sku}:{self.version}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManagedImageSource(Record):
    TYPE: ClassVar[SourceType] = SourceType.ManagedImage
    image_id: str = aib("imageId")

    @property
    def type(self) -> SourceType:
        return self.TYPE


@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedImageVersionSource(Record):
    TYPE: ClassVar[SourceType] = SourceType.SharedImageVersion
    image_version_id: str = aib("imageVersionId")
    # Read-only in the swagger (the service fills it in); kept when a template carries it.
    exact_version: str | None = aib("exactVersion", default=None)

    @property
    def type(self) -> SourceType:
        return self.TYPE


Source = PlatformImageSource | ManagedImageSource | SharedImageVersionSource


# ---------------------------------------------------------------------------------------------------------
# Customizers (and in-VM validators, which have the same fields as the customizers of the same type)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Customizer(Record):
    """Base of the customize steps. ``type`` gives the AIB type string."""

    TYPE: ClassVar[CustomizerType]
    name: str = aib("name", default="")

    @property
    def type(self) -> CustomizerType:
        return self.TYPE

    @property
    def label(self) -> str:
        """``Shell 'install-nginx'`` — for step titles and messages."""
        return f"{self.TYPE} {self.name!r}" if self.name else str(self.TYPE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShellCustomizer(Customizer):
    """Runs a script (``scriptUri``) or ``inline`` commands with bash; exactly one of the two is set.

    ``legacy`` marks the 2018/2019-preview spelling (lowercase ``shell`` with ``script``), accepted at the
    preview versions that defined it; its URI is in ``script_uri``.
    """

    TYPE: ClassVar[CustomizerType] = CustomizerType.Shell
    script_uri: str | None = aib("scriptUri", default=None)
    sha256_checksum: str = aib("sha256Checksum", default="")  # lower-case hex, "" = not checked
    inline: tuple[str, ...] = aib("inline", default=())
    legacy: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerShellCustomizer(Customizer):
    TYPE: ClassVar[CustomizerType] = CustomizerType.PowerShell
    script_uri: str | None = aib("scriptUri", default=None)
    sha256_checksum: str = aib("sha256Checksum", default="")
    inline: tuple[str, ...] = aib("inline", default=())
    run_elevated: bool = aib("runElevated", default=False)
    run_as_system: bool = aib("runAsSystem", default=False)  # only together with run_elevated
    valid_exit_codes: tuple[int, ...] = aib("validExitCodes", default=())  # as written; () = [0]

    @property
    def accepted_exit_codes(self) -> tuple[int, ...]:
        return self.valid_exit_codes or DEFAULT_VALID_EXIT_CODES


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileCustomizer(Customizer):
    """Downloads ``sourceUri`` to ``destination`` in the guest (the service limits files to ~20 MB)."""

    TYPE: ClassVar[CustomizerType] = CustomizerType.File
    source_uri: str = aib("sourceUri")
    sha256_checksum: str = aib("sha256Checksum", default="")
    destination: str = aib("destination")


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindowsRestartCustomizer(Customizer):
    TYPE: ClassVar[CustomizerType] = CustomizerType.WindowsRestart
    restart_command: str = aib("restartCommand", default=DEFAULT_RESTART_COMMAND)
    restart_check_command: str = aib("restartCheckCommand", default="")  # "" = none
    restart_timeout: str = aib("restartTimeout", default=DEFAULT_RESTART_TIMEOUT)  # as written: 5m, 2h…
    restart_timeout_seconds: int = DEFAULT_RESTART_TIMEOUT_SECONDS  # restart_timeout parsed


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindowsUpdateCustomizer(Customizer):
    """Defaults resolved from the packer windows-update plugin AIB runs (``updateLimit`` 0 → 1000)."""

    TYPE: ClassVar[CustomizerType] = CustomizerType.WindowsUpdate
    search_criteria: str = aib("searchCriteria", default=DEFAULT_UPDATE_SEARCH_CRITERIA)
    filters: tuple[str, ...] = aib("filters", default=DEFAULT_UPDATE_FILTERS)
    update_limit: int = aib("updateLimit", default=DEFAULT_UPDATE_LIMIT)


# An in-VM validator is one of these three customizer records (same fields in the swagger).
Validator = ShellCustomizer | PowerShellCustomizer | FileCustomizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Validate(Record):
    """``properties.validate`` (API 2022-02-14+): checks run on the resulting (or the source) image."""

    continue_distribute_on_failure: bool = aib("continueDistributeOnFailure", default=False)
    source_validation_only: bool = aib("sourceValidationOnly", default=False)
    in_vm_validations: tuple[Validator, ...] = aib("inVMValidations", default=())


# ---------------------------------------------------------------------------------------------------------
# Distributors


@dataclasses.dataclass(frozen=True, kw_only=True)
class Distributor(Record):
    TYPE: ClassVar[DistributorType]
    run_output_name: str = aib("runOutputName")
    artifact_tags: Mapping[str, str] = aib("artifactTags", default_factory=dict)

    @property
    def type(self) -> DistributorType:
        return self.TYPE


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManagedImageDistributor(Distributor):
    TYPE: ClassVar[DistributorType] = DistributorType.ManagedImage
    image_id: str = aib("imageId")
    location: str = aib("location")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetRegion(Record):
    name: str = aib("name")
    replica_count: int = aib("replicaCount", default=1)
    storage_account_type: StorageAccountType | None = aib("storageAccountType", default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Versioning(Record):
    """``versioning``: scheme ``Latest`` (optionally pinned ``major``, -1 = any) or ``Source``."""

    scheme: VersioningScheme = aib("scheme")
    major: int | None = aib("major", default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SharedImageDistributor(Distributor):
    TYPE: ClassVar[DistributorType] = DistributorType.SharedImage
    gallery_image_id: str = aib("galleryImageId")
    replication_regions: tuple[str, ...] = aib("replicationRegions", default=())
    target_regions: tuple[TargetRegion, ...] = aib("targetRegions", default=())
    versioning: Versioning | None = aib("versioning", default=None)
    exclude_from_latest: bool = aib("excludeFromLatest", default=False)
    storage_account_type: StorageAccountType | None = aib("storageAccountType", default=None)
    replication_mode: ReplicationMode | None = aib("replicationMode", default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VhdDistributor(Distributor):
    TYPE: ClassVar[DistributorType] = DistributorType.VHD
    uri: str | None = aib("uri", default=None)  # API 2022-07-01+: a blob URI to write the VHD to


# ---------------------------------------------------------------------------------------------------------
# The rest of the template


@dataclasses.dataclass(frozen=True, kw_only=True)
class VnetConfig(Record):
    subnet_id: str | None = aib("subnetId", default=None)
    container_instance_subnet_id: str | None = aib("containerInstanceSubnetId", default=None)
    proxy_vm_size: str | None = aib("proxyVmSize", default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VmProfile(Record):
    vm_size: str = aib("vmSize", default="")  # "" = AIB's default (Standard_D1_v2 / D2ds_v4 for Gen2)
    os_disk_size_gb: int = aib("osDiskSizeGB", default=0)  # 0 = the source image's disk size
    user_assigned_identities: tuple[str, ...] = aib("userAssignedIdentities", default=())
    vnet_config: VnetConfig | None = aib("vnetConfig", default=None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataDisk(Record):
    size_gb: int = aib("sizeGB")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Identity(Record):
    type: IdentityType = aib("type")
    # The keys of the ``userAssignedIdentities`` map (resource ids); the values are empty in requests.
    user_assigned_identities: tuple[str, ...] = aib("userAssignedIdentities", default=())

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"type": str(self.type)}
        if self.user_assigned_identities:
            out["userAssignedIdentities"] = {k: {} for k in self.user_assigned_identities}
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class ErrorHandling(Record):
    on_customizer_error: OnBuildError = aib("onCustomizerError", default=OnBuildError.cleanup)
    on_validation_error: OnBuildError = aib("onValidationError", default=OnBuildError.cleanup)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optimize(Record):
    """``optimize`` (API 2022-07-01+). The service-side optimizations have no local equivalent."""

    vm_boot: State | None = None  # optimize.vmBoot.state
    workload: State | None = None  # optimize.workload.state (2025-10-01)
    workload_script_uri: str | None = None
    workload_sha256_checksum: str = ""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.vm_boot is not None:
            out["vmBoot"] = {"state": str(self.vm_boot)}
        if self.workload is not None or self.workload_script_uri:
            work: dict[str, object] = {}
            if self.workload is not None:
                work["state"] = str(self.workload)
            if self.workload_script_uri:
                work["scriptUri"] = self.workload_script_uri
            if self.workload_sha256_checksum:
                work["sha256Checksum"] = self.workload_sha256_checksum
            out["workload"] = work
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Template(Record):
    """A validated image template.

    ``as_dict()`` gives the resource body (``name``/``location``/``tags``/``identity``/``properties``).
    ``additional_data_disks`` lives in ``properties`` in the swagger (not in ``vmProfile``).
    """

    name: str
    api_version: str
    location: str = ""
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    identity: Identity | None = None
    source: Source
    customize: tuple[Customizer, ...] = ()
    distribute: tuple[Distributor, ...]
    vm_profile: VmProfile = dataclasses.field(default_factory=VmProfile)
    build_timeout_minutes: int = DEFAULT_BUILD_TIMEOUT_MINUTES  # resolved: 0/absent → 240
    validate: Validate | None = None
    optimize: Optimize | None = None
    error_handling: ErrorHandling = dataclasses.field(default_factory=ErrorHandling)
    staging_resource_group: str | None = None
    auto_run: bool = False  # autoRun.state == Enabled
    managed_resource_tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    additional_data_disks: tuple[DataDisk, ...] = ()
    os_type: OsType = OsType.linux  # detected (publisher or customizer types)

    @property
    def build_timeout_seconds(self) -> int:
        return self.build_timeout_minutes * 60

    @property
    def is_windows(self) -> bool:
        return self.os_type is OsType.windows

    def as_dict(self) -> dict[str, object]:
        props: dict[str, object] = {
            "source": self.source.as_dict(),
            "customize": [c.as_dict() for c in self.customize],
            "distribute": [d.as_dict() for d in self.distribute],
            "vmProfile": self.vm_profile.as_dict(),
            "buildTimeoutInMinutes": self.build_timeout_minutes,
        }
        if self.validate is not None:
            props["validate"] = self.validate.as_dict()
        if self.optimize is not None:
            props["optimize"] = self.optimize.as_dict()
        props["errorHandling"] = self.error_handling.as_dict()
        if self.staging_resource_group is not None:
            props["stagingResourceGroup"] = self.staging_resource_group
        if self.auto_run:
            props["autoRun"] = {"state": "Enabled"}
        if self.managed_resource_tags:
            props["managedResourceTags"] = dict(self.managed_resource_tags)
        if self.additional_data_disks:
            props["additionalDataDisks"] = [d.as_dict() for d in self.additional_data_disks]
        out: dict[str, object] = {"name": self.name, "apiVersion": self.api_version}
        if self.location:
            out["location"] = self.location
        if self.tags:
            out["tags"] = dict(self.tags)
        if self.identity is not None:
            out["identity"] = self.identity.as_dict()
        out["properties"] = props
        return out


CUSTOMIZER_CLASSES: dict[CustomizerType, type[Customizer]] = {
    cls.TYPE: cls
    for cls in (
        ShellCustomizer,
        PowerShellCustomizer,
        FileCustomizer,
        WindowsRestartCustomizer,
        WindowsUpdateCustomizer,
    )
}
DISTRIBUTOR_CLASSES: dict[DistributorType, type[Distributor]] = {
    cls.TYPE: cls for cls in (ManagedImageDistributor, SharedImageDistributor, VhdDistributor)
}
