"""The AIB API versions and, per version, which template fields exist.

Sources: the official swagger files (``Azure/azure-rest-api-specs``, ``specification/imagebuilder/…``) of
2018-02-01-preview, 2019-02-01-preview, 2019-05-01-preview, 2020-02-14, 2022-07-01, 2023-07-01, 2024-02-01 and
2025-10-01 (the last two stable ones besides 2020-02-14 are copied to ``../shared/reference/aib-swagger``
and cross-checked by ``tests/template/test_swagger.py``). Entries marked ``# inferred`` come from the
service's public docs and from the corpus verdicts (``../shared/corpus/aib-templates/VERDICTS.md``) rather
than from a swagger we read: 2021-10-01 and 2022-02-14 were not read field by field, and the stored
2019-05-01-preview swagger predates fields the service accepted at that version (runElevated,
sha256Checksum, WindowsUpdate).

How the service treats a body (VERDICTS.md "Method"): before 2024-02-01 property names and enum values
are case-insensitive and unknown properties are ignored; from 2024-02-01 both are enforced.

The table is declarative: ``SCHEMAS`` maps an object kind to its fields, ``FAMILIES`` maps a
discriminated family (source, customizer, …) to its type names. ``template.validate_shape`` walks a body
with it.
"""

from __future__ import annotations

import dataclasses
import enum

VERSIONS: tuple[str, ...] = (
    "2018-02-01-preview",
    "2019-02-01-preview",
    "2019-05-01-preview",
    "2020-02-14",
    "2021-10-01",
    "2022-02-14",
    "2022-07-01",
    "2023-07-01",
    "2024-02-01",
    "2025-10-01",
)
FIRST = VERSIONS[0]
LATEST = VERSIONS[-1]
PREVIEWS = frozenset(v for v in VERSIONS if v.endswith("-preview"))
# From this version the service rejects unknown properties and wrongly-cased names and values.
STRICT_FROM = "2024-02-01"
_INDEX = {v: i for i, v in enumerate(VERSIONS)}


def is_known(version: str) -> bool:
    return version in _INDEX


def at_least(version: str, base: str) -> bool:
    """``version`` ≥ ``base`` in release order (both must be known versions)."""
    return _INDEX[version] >= _INDEX[base]


def in_range(version: str, since: str, until: str | None) -> bool:
    return at_least(version, since) and (until is None or at_least(until, version))


def is_strict(version: str) -> bool:
    return at_least(version, STRICT_FROM)


def nearest_known(version: str) -> str:
    """The newest known version not after ``version`` (date order), for versions we do not know.

    API versions are dates, so a plain string compare on the ``YYYY-MM-DD`` prefix orders them.
    """
    earlier = [v for v in VERSIONS if v[:10] <= version[:10]]
    return earlier[-1] if earlier else FIRST


def span(since: str, until: str | None) -> str:
    """Human wording of a version range: ``from 2021-10-01`` / ``up to 2019-02-01-preview``."""
    if until is None:
        return f"from API {since}"
    if since == FIRST:
        return f"up to API {until}"
    return f"in API {since} … {until}"


class Kind(enum.StrEnum):
    string = "string"
    integer = "integer"
    boolean = "boolean"
    object = "object"  # a nested schema (``schema=``) or a family (``family=``)
    string_array = "array of strings"
    integer_array = "array of integers"
    object_array = "array of objects"
    string_map = "object of strings"  # tags
    any_map = "object with any values"  # userAssignedIdentities: keys matter, values are ignored
    any = "any"  # ARM envelope keys (dependsOn, copy …): not ours to check


class Need(enum.StrEnum):
    """Who needs a required field: localbuilder itself (error) or only the service (service finding)."""

    local = "local"
    service = "service"


@dataclasses.dataclass(frozen=True)
class Field:
    name: str  # AIB spelling
    kind: Kind
    since: str = FIRST
    until: str | None = None  # last version that has the field
    required: tuple[str, str | None] | None = None  # the versions in which it is required
    need: Need = Need.service  # severity of a missing/invalid value
    read_only: bool = False
    schema: str | None = None  # nested object / array item schema
    family: str | None = None  # discriminated family of the object / array items
    enum: tuple[tuple[str, str], ...] = ()  # (value, since)
    minimum: int | None = None
    maximum: int | None = None
    code: str | None = None  # service error code for a missing value

    def exists_at(self, version: str) -> bool:
        return in_range(version, self.since, self.until)

    def required_at(self, version: str) -> bool:
        return self.required is not None and in_range(version, *self.required)

    def enum_at(self, version: str) -> tuple[str, ...]:
        return tuple(value for value, since in self.enum if at_least(version, since))


@dataclasses.dataclass(frozen=True)
class Family:
    """A discriminated union: ``discriminator`` selects the schema ``<prefix>.<Type>``."""

    name: str
    discriminator: str
    types: dict[str, tuple[str, str | None]]  # AIB type name → (since, until)
    unknown_code: str  # service code for an unknown type (BadCustomizerType …)
    unsupported_code: str  # … for a type that exists, but not at this version


F = Field
S, INT, B = Kind.string, Kind.integer, Kind.boolean
_ALWAYS = (FIRST, None)
V19_02 = "2019-02-01-preview"
V19_05 = "2019-05-01-preview"
V20 = "2020-02-14"
V21 = "2021-10-01"
V22_02 = "2022-02-14"
V22_07 = "2022-07-01"
V23 = "2023-07-01"
V24 = "2024-02-01"
V25 = "2025-10-01"

_STORAGE = (("Standard_LRS", V20), ("Standard_ZRS", V20), ("Premium_LRS", V22_07))  # Premium: inferred
_ON_ERROR = (("cleanup", V23), ("abort", V23))
_STATE = (("Enabled", FIRST), ("Disabled", FIRST))

FAMILIES: dict[str, Family] = {
    "source": Family(
        "source",
        "type",
        {
            "PlatformImage": _ALWAYS,
            "ManagedImage": (V19_02, None),
            "SharedImageVersion": (V19_05, None),
            "ISO": (FIRST, V19_05),
        },
        "BadSourceType",
        "BadSourceType",
    ),
    "customizer": Family(
        "customizer",
        "type",
        {
            "Shell": _ALWAYS,  # spelled "shell" in 2018-02-01-preview (names were case-insensitive)
            "PowerShell": (V19_02, None),
            "WindowsRestart": (V19_02, None),
            "File": (V19_05, None),
            "WindowsUpdate": (
                V19_05,
                None,
            ),  # inferred: in use with 2019-05-01-preview; swagger from 2020-02-14
        },
        "BadCustomizerType",
        "UnsupportedCustomizerType",
    ),
    "validator": Family(
        "validator",
        "type",
        {"Shell": (V22_02, None), "PowerShell": (V22_02, None), "File": (V22_07, None)},  # File: inferred
        "BadValidatorType",
        "UnsupportedValidatorType",
    ),
    "distributor": Family(
        "distributor",
        "type",
        {"ManagedImage": _ALWAYS, "SharedImage": _ALWAYS, "VHD": (V19_02, None)},
        "BadDistributeType",
        "BadDistributeType",
    ),
    "versioning": Family(
        "versioning", "scheme", {"Latest": (V22_07, None), "Source": (V22_07, None)}, "Other", "Other"
    ),
}

_CUSTOMIZER_BASE = (F("type", S, required=_ALWAYS, need=Need.local), F("name", S))
_SCRIPT = (
    F("scriptUri", S, since=V19_05),
    F("sha256Checksum", S, since=V19_05),  # inferred for 2019-05-01-preview
    F("inline", Kind.string_array, since=V19_02),
)
_POWERSHELL_EXTRA = (
    F("runElevated", B, since=V19_05),  # inferred for 2019-05-01-preview (VERDICTS.md)
    F("runAsSystem", B, since=V21),
    F("validExitCodes", Kind.integer_array, since=V19_02),
)
_FILE = (
    F("sourceUri", S, required=_ALWAYS, need=Need.local),
    F("sha256Checksum", S, since=V19_05),
    F("destination", S, required=_ALWAYS, need=Need.local),
)
_DISTRIBUTOR_BASE = (
    F("type", S, required=_ALWAYS, need=Need.local),
    F("runOutputName", S, required=_ALWAYS, need=Need.local),
    F("artifactTags", Kind.string_map),
)
_EXACT_VERSION = F("exactVersion", S, since=V21, read_only=True)  # inferred: 2021-10-01

SCHEMAS: dict[str, tuple[Field, ...]] = {
    # The ARM resource around the properties. Deployment-only keys (dependsOn, copy …) are accepted at every
    # version: ARM strips them before the body reaches the service.
    "resource": (
        F("id", S, read_only=True),
        F("name", S),
        F("type", S),
        F("apiVersion", S),
        F("location", S, required=_ALWAYS, need=Need.service),
        F("tags", Kind.string_map),
        F("identity", Kind.object, since=V19_05, required=(V20, None), schema="identity"),
        F("properties", Kind.object, required=_ALWAYS, need=Need.local, schema="properties"),
        F("systemData", Kind.any, read_only=True),
        F("dependsOn", Kind.any),
        F("comments", Kind.any),
        F("condition", Kind.any),
        F("copy", Kind.any),
        F("scope", Kind.any),
    ),
    "identity": (
        F("type", S, required=_ALWAYS, enum=(("UserAssigned", FIRST), ("None", FIRST))),
        F("userAssignedIdentities", Kind.any_map),
    ),
    "properties": (
        F("source", Kind.object, required=_ALWAYS, need=Need.local, family="source"),
        F("customize", Kind.object_array, family="customizer"),
        F("distribute", Kind.object_array, required=_ALWAYS, need=Need.local, family="distributor"),
        F("buildTimeoutInMinutes", INT, since=V19_05, minimum=0, maximum=960, need=Need.local),
        F("vmProfile", Kind.object, since=V19_05, schema="vmProfile"),
        F("validate", Kind.object, since=V22_02, schema="validate"),
        F("stagingResourceGroup", S, since=V22_02),
        F("optimize", Kind.object, since=V22_07, schema="optimize"),
        F("errorHandling", Kind.object, since=V23, schema="errorHandling"),
        F("autoRun", Kind.object, since=V24, schema="autoRun"),
        F("managedResourceTags", Kind.string_map, since=V24),
        F("additionalDataDisks", Kind.object_array, since=V25, schema="dataDisk"),
        F("provisioningState", Kind.any, read_only=True),
        F("provisioningError", Kind.any, read_only=True),
        F("lastRunStatus", Kind.any, read_only=True),
        F("exactStagingResourceGroup", S, since=V22_02, read_only=True),
    ),
    "source.PlatformImage": (
        F("type", S, required=_ALWAYS, need=Need.local),
        F("publisher", S, required=_ALWAYS, need=Need.local, code="BadPIRSource"),
        F("offer", S, required=_ALWAYS, need=Need.local, code="BadPIRSource"),
        F("sku", S, required=_ALWAYS, need=Need.local, code="BadPIRSource"),
        F("version", S, required=_ALWAYS, need=Need.local, code="BadPIRSource"),
        F("planInfo", Kind.object, since=V20, schema="planInfo"),
        _EXACT_VERSION,
    ),
    "source.ManagedImage": (
        F("type", S, required=_ALWAYS, need=Need.local),
        F("imageId", S, required=_ALWAYS, need=Need.local, code="BadManagedImageSource"),
    ),
    "source.SharedImageVersion": (
        F("type", S, required=_ALWAYS, need=Need.local),
        F("imageVersionId", S, required=_ALWAYS, need=Need.local, code="BadSharedImageVersionSource"),
        _EXACT_VERSION,
    ),
    "source.ISO": (
        F("type", S, required=_ALWAYS, need=Need.local),
        F("sourceUri", S),
        F("sha256Checksum", S),
    ),
    "planInfo": (
        F("planName", S, required=_ALWAYS, code="BadPIRSource"),
        F("planProduct", S, required=_ALWAYS, code="BadPIRSource"),
        F("planPublisher", S, required=_ALWAYS, code="BadPIRSource"),
    ),
    "customizer.Shell": (
        *_CUSTOMIZER_BASE,
        F("script", S, until=V19_02),  # renamed to scriptUri in 2019-05-01-preview
        *_SCRIPT,
    ),
    "customizer.PowerShell": (
        *_CUSTOMIZER_BASE,
        F("script", S, since=V19_02, until=V19_02),
        *_SCRIPT,
        *_POWERSHELL_EXTRA,
    ),
    "customizer.File": (*_CUSTOMIZER_BASE, *_FILE),
    "customizer.WindowsRestart": (
        *_CUSTOMIZER_BASE,
        F("restartCommand", S),
        F("restartCheckCommand", S),
        F("restartTimeout", S),
    ),
    "customizer.WindowsUpdate": (
        *_CUSTOMIZER_BASE,
        F("searchCriteria", S),
        F("filters", Kind.string_array),
        F("updateLimit", INT, minimum=0, need=Need.local),
    ),
    "validator.Shell": (*_CUSTOMIZER_BASE, *_SCRIPT),
    "validator.PowerShell": (*_CUSTOMIZER_BASE, *_SCRIPT, *_POWERSHELL_EXTRA),
    "validator.File": (*_CUSTOMIZER_BASE, *_FILE),
    "validate": (
        F("continueDistributeOnFailure", B),
        F("sourceValidationOnly", B),
        F("inVMValidations", Kind.object_array, family="validator"),
    ),
    "distributor.ManagedImage": (
        *_DISTRIBUTOR_BASE,
        F("imageId", S, required=_ALWAYS),
        F("location", S, required=_ALWAYS),
    ),
    "distributor.SharedImage": (
        *_DISTRIBUTOR_BASE,
        F("galleryImageId", S, required=_ALWAYS, code="BadSharedImageDistribute"),
        # Required up to 2022-02-14; from 2022-07-01 deprecated in favour of targetRegions.
        F("replicationRegions", Kind.string_array, required=(FIRST, V22_02), code="BadSharedImageDistribute"),
        F("excludeFromLatest", B, since=V20),
        F("storageAccountType", S, since=V20, enum=_STORAGE),
        F("targetRegions", Kind.object_array, since=V22_07, schema="targetRegion"),
        F("versioning", Kind.object, since=V22_07, family="versioning"),
        F("replicationMode", S, since=V25, enum=(("Full", V25), ("Shallow", V25))),
    ),
    "distributor.VHD": (*_DISTRIBUTOR_BASE, F("uri", S, since=V22_07)),
    "targetRegion": (
        F("name", S, required=_ALWAYS),
        F("replicaCount", INT, minimum=1),
        F("storageAccountType", S, enum=_STORAGE),
    ),
    "versioning.Latest": (F("scheme", S, required=_ALWAYS), F("major", INT, minimum=-1)),
    "versioning.Source": (F("scheme", S, required=_ALWAYS),),
    "vmProfile": (
        F("vmSize", S),
        F("osDiskSizeGB", INT, since=V20, minimum=0, need=Need.local),
        F("userAssignedIdentities", Kind.string_array, since=V21),  # inferred: 2021-10-01
        F("vnetConfig", Kind.object, since=V20, schema="vnetConfig"),
    ),
    "vnetConfig": (
        F("subnetId", S),
        F("proxyVmSize", S, since=V22_02),  # inferred: 2022-02-14
        F("containerInstanceSubnetId", S, since=V24),
    ),
    "optimize": (
        F("vmBoot", Kind.object, schema="optimize.vmBoot"),
        F("workload", Kind.object, since=V25, schema="optimize.workload"),
    ),
    "optimize.vmBoot": (F("state", S, enum=_STATE),),
    "optimize.workload": (F("state", S, enum=_STATE), F("scriptUri", S), F("sha256Checksum", S)),
    "errorHandling": (
        F("onCustomizerError", S, enum=_ON_ERROR, need=Need.local),
        F("onValidationError", S, enum=_ON_ERROR, need=Need.local),
    ),
    "autoRun": (F("state", S, enum=_STATE),),
    "dataDisk": (F("sizeGB", INT, minimum=0),),
}


def fields_at(schema: str, version: str) -> dict[str, Field]:
    """The fields of ``schema`` that exist at ``version``, by AIB name."""
    return {f.name: f for f in SCHEMAS[schema] if f.exists_at(version)}


def field_anywhere(schema: str, name: str) -> Field | None:
    """The field ``name`` of ``schema`` in any version (case-insensitive), to explain version mismatches."""
    lowered = name.lower()
    for f in SCHEMAS[schema]:
        if f.name.lower() == lowered:
            return f
    return None
