"""Cross-check the field table (versions.py) and the model (model.py) against the official swagger files.

For 2020-02-14 and 2025-10-01 (copied byte for byte to ../shared/reference/aib-swagger): every property
localbuilder accepts at that version exists in the swagger, every property of the swagger definitions a
build needs is accepted, and every discriminator / enum value matches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localbuilder.template import model as m
from localbuilder.template import versions as v
from localbuilder.template.validate_rules import RUN_OUTPUT_NAME

VERSIONS = ["2020-02-14", "2025-10-01"]

# our schema name → swagger definition (with the allOf base merged in)
DEFINITIONS = {
    "properties": "ImageTemplateProperties",
    "identity": "ImageTemplateIdentity",
    "source.PlatformImage": "ImageTemplatePlatformImageSource",
    "source.ManagedImage": "ImageTemplateManagedImageSource",
    "source.SharedImageVersion": "ImageTemplateSharedImageVersionSource",
    "planInfo": "PlatformImagePurchasePlan",
    "customizer.Shell": "ImageTemplateShellCustomizer",
    "customizer.PowerShell": "ImageTemplatePowerShellCustomizer",
    "customizer.File": "ImageTemplateFileCustomizer",
    "customizer.WindowsRestart": "ImageTemplateRestartCustomizer",
    "customizer.WindowsUpdate": "ImageTemplateWindowsUpdateCustomizer",
    "validator.Shell": "ImageTemplateShellValidator",
    "validator.PowerShell": "ImageTemplatePowerShellValidator",
    "validator.File": "ImageTemplateFileValidator",
    "distributor.ManagedImage": "ImageTemplateManagedImageDistributor",
    "distributor.SharedImage": "ImageTemplateSharedImageDistributor",
    "distributor.VHD": "ImageTemplateVhdDistributor",
    "targetRegion": "TargetRegion",
    "versioning.Latest": "DistributeVersionerLatest",
    "versioning.Source": "DistributeVersionerSource",
    "vmProfile": "ImageTemplateVmProfile",
    "vnetConfig": "VirtualNetworkConfig",
    "dataDisk": "DataDisk",
    "autoRun": "ImageTemplateAutoRun",
}
# Objects the swagger defines inline, as a path of property names below ImageTemplateProperties.
INLINE = {
    "validate": ("validate",),
    "optimize": ("optimize",),
    "optimize.vmBoot": ("optimize", "vmBoot"),
    "optimize.workload": ("optimize", "workload"),
    "errorHandling": ("errorHandling",),
}
# Our schema → the family whose discriminator the swagger keeps in the base definition.
FAMILY_BASE = {
    "source": "ImageTemplateSource",
    "customizer": "ImageTemplateCustomizer",
    "validator": "ImageTemplateInVMValidator",
    "distributor": "ImageTemplateDistributor",
    "versioning": "DistributeVersioner",
}


# Where each nested object hangs: (parent schema, property). Family members hang on their family type.
PARENTS = {
    "validate": ("properties", "validate"),
    "optimize": ("properties", "optimize"),
    "optimize.vmBoot": ("optimize", "vmBoot"),
    "optimize.workload": ("optimize", "workload"),
    "errorHandling": ("properties", "errorHandling"),
    "autoRun": ("properties", "autoRun"),
    "dataDisk": ("properties", "additionalDataDisks"),
    "targetRegion": ("distributor.SharedImage", "targetRegions"),
    "planInfo": ("source.PlatformImage", "planInfo"),
    "vnetConfig": ("vmProfile", "vnetConfig"),
    "vmProfile": ("properties", "vmProfile"),
    "identity": ("resource", "identity"),
}


def available(schema: str, version: str) -> bool:
    """Can an object of this schema appear in a body of this version at all?"""
    family, _, type_name = schema.partition(".")
    if family in v.FAMILIES and type_name:
        since, until = v.FAMILIES[family].types[type_name]
        return v.in_range(version, since, until) and (
            family != "versioning"
            or available("distributor.SharedImage", version)
            and "versioning" in v.fields_at("distributor.SharedImage", version)
        )
    if schema in PARENTS:
        parent, prop = PARENTS[schema]
        return available(parent, version) and prop in v.fields_at(parent, version)
    return True


def load(swagger_dir: Path, version: str) -> dict[str, Any]:
    return json.loads((swagger_dir / version / "imagebuilder.json").read_text())


def swagger_properties(doc: dict[str, Any], schema: str) -> dict[str, Any] | None:
    """Property name → definition for one of our schemas, or None when the swagger lacks the object."""
    defs = doc["definitions"]
    if schema in INLINE:
        node: dict[str, Any] | None = defs["ImageTemplateProperties"]
        for key in INLINE[schema]:
            node = (node or {}).get("properties", {}).get(key)
        return None if node is None else dict(node.get("properties", {}))
    name = DEFINITIONS[schema]
    if name not in defs:
        return None
    definition = defs[name]
    props = dict(definition.get("properties", {}))
    for base in definition.get("allOf", []):
        ref = base.get("$ref", "")
        if ref.startswith("#/definitions/"):
            props.update(defs[ref.split("/")[-1]].get("properties", {}))
    return props


def discriminators(doc: dict[str, Any], base: str) -> set[str]:
    out = set()
    for definition in doc["definitions"].values():
        for parent in definition.get("allOf", []):
            if parent.get("$ref") == f"#/definitions/{base}" and "x-ms-discriminator-value" in definition:
                out.add(definition["x-ms-discriminator-value"])
    return out


def enum_of(doc: dict[str, Any], prop: dict[str, Any]) -> set[str]:
    if "enum" in prop:
        return set(prop["enum"])
    ref = prop.get("$ref", "")
    if not ref.startswith("#/definitions/"):
        return set()
    return set(doc["definitions"][ref.split("/")[-1]].get("enum", []))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_accepted_property_is_in_the_swagger(swagger_dir: Path, version: str) -> None:
    doc = load(swagger_dir, version)
    problems = []
    for schema in [*DEFINITIONS, *INLINE]:
        ours = v.fields_at(schema, version) if available(schema, version) else {}
        theirs = swagger_properties(doc, schema)
        if theirs is None:
            # The swagger of this version has no such object (validators before 2022-02-14 …): then we
            # must not accept it at this version either.
            assert not ours, f"{schema} accepted at {version}, absent from its swagger"
            continue
        for name in ours:
            if name not in theirs:
                problems.append(f"{schema}.{name} accepted at {version} but not in the swagger")
    assert problems == []


@pytest.mark.parametrize("version", VERSIONS)
def test_every_swagger_property_is_accepted(swagger_dir: Path, version: str) -> None:
    doc = load(swagger_dir, version)
    problems = []
    for schema in [*DEFINITIONS, *INLINE]:
        theirs = swagger_properties(doc, schema)
        if theirs is None:
            continue
        assert available(schema, version), f"{schema} is in the {version} swagger but not accepted there"
        ours = v.fields_at(schema, version)
        for name, prop in theirs.items():
            if name not in ours:
                problems.append(f"{schema}.{name} is in the {version} swagger but not accepted")
            elif bool(prop.get("readOnly")) != ours[name].read_only:
                problems.append(f"{schema}.{name}: read-only differs")
    assert problems == []


def test_objects_absent_from_2020_are_not_accepted_there() -> None:
    # validate (2022-02-14), optimize (2022-07-01), errorHandling (2023-07-01), autoRun (2024-02-01) …
    props = v.fields_at("properties", "2020-02-14")
    for name in (
        "validate",
        "optimize",
        "errorHandling",
        "autoRun",
        "managedResourceTags",
        "stagingResourceGroup",
    ):
        assert name not in props


@pytest.mark.parametrize("version", VERSIONS)
def test_required_properties_match(swagger_dir: Path, version: str) -> None:
    doc = load(swagger_dir, version)
    defs = doc["definitions"]
    for schema, name in DEFINITIONS.items():
        if name not in defs:
            continue
        required = set(defs[name].get("required", []))
        for base in defs[name].get("allOf", []):
            ref = base.get("$ref", "")
            if ref.startswith("#/definitions/"):
                required |= set(defs[ref.split("/")[-1]].get("required", []))
        ours = {n for n, f in v.fields_at(schema, version).items() if f.required_at(version)}
        # We require more than the swagger where the service does (a PlatformImage needs publisher …,
        # a File customizer needs sourceUri and destination, a targetRegion its name); never less.
        assert required <= ours, (schema, required - ours)
    assert "identity" in defs["ImageTemplate"]["required"]
    assert v.fields_at("resource", version)["identity"].required_at(version)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("family", sorted(FAMILY_BASE))
def test_discriminators_match(swagger_dir: Path, version: str, family: str) -> None:
    doc = load(swagger_dir, version)
    theirs = discriminators(doc, FAMILY_BASE[family])
    ours = {t for t, (since, until) in v.FAMILIES[family].types.items() if v.in_range(version, since, until)}
    assert ours == theirs


def test_model_enums_match_the_latest_swagger(swagger_dir: Path) -> None:
    doc = load(swagger_dir, "2025-10-01")
    defs = doc["definitions"]
    assert {str(t) for t in m.SourceType} - {"ISO"} == discriminators(doc, "ImageTemplateSource")
    assert {str(t) for t in m.CustomizerType} == discriminators(doc, "ImageTemplateCustomizer")
    assert {str(t) for t in m.ValidatorType} == discriminators(doc, "ImageTemplateInVMValidator")
    assert {str(t) for t in m.DistributorType} == discriminators(doc, "ImageTemplateDistributor")
    assert {str(t) for t in m.VersioningScheme} == discriminators(doc, "DistributeVersioner")
    assert {str(t) for t in m.StorageAccountType} == set(defs["SharedImageStorageAccountType"]["enum"])
    sig = swagger_properties(doc, "distributor.SharedImage") or {}
    assert {str(t) for t in m.ReplicationMode} == enum_of(doc, sig["replicationMode"])
    assert {str(t) for t in m.OnBuildError} == set(defs["OnBuildError"]["enum"])
    assert {str(t) for t in m.IdentityType} == set(
        defs["ImageTemplateIdentity"]["properties"]["type"]["enum"]
    )
    assert {str(t) for t in m.State} == set(defs["ImageTemplateAutoRun"]["properties"]["state"]["enum"])


@pytest.mark.parametrize("version", VERSIONS)
def test_table_enums_match(swagger_dir: Path, version: str) -> None:
    doc = load(swagger_dir, version)
    for schema in [*DEFINITIONS, *INLINE]:
        theirs = swagger_properties(doc, schema)
        if theirs is None:
            continue
        for name, field in v.fields_at(schema, version).items():
            if field.read_only:
                continue
            expected = enum_of(doc, theirs[name]) if name in theirs else set()
            if field.enum or expected:
                assert set(field.enum_at(version)) == expected, (schema, name)


def test_run_output_name_pattern_is_the_swaggers(swagger_dir: Path) -> None:
    for version in VERSIONS:
        prop = load(swagger_dir, version)["definitions"]["ImageTemplateDistributor"]["properties"][
            "runOutputName"
        ]
        assert prop["pattern"] == "^" + RUN_OUTPUT_NAME.pattern.replace("\\-", "-") + "$"


# model record → schema whose property names its AIB fields must use
MODEL_SCHEMAS: list[tuple[type[m.Record], str]] = [
    (m.PlatformImageSource, "source.PlatformImage"),
    (m.ManagedImageSource, "source.ManagedImage"),
    (m.SharedImageVersionSource, "source.SharedImageVersion"),
    (m.PlanInfo, "planInfo"),
    (m.ShellCustomizer, "customizer.Shell"),
    (m.PowerShellCustomizer, "customizer.PowerShell"),
    (m.FileCustomizer, "customizer.File"),
    (m.WindowsRestartCustomizer, "customizer.WindowsRestart"),
    (m.WindowsUpdateCustomizer, "customizer.WindowsUpdate"),
    (m.Validate, "validate"),
    (m.ManagedImageDistributor, "distributor.ManagedImage"),
    (m.SharedImageDistributor, "distributor.SharedImage"),
    (m.VhdDistributor, "distributor.VHD"),
    (m.TargetRegion, "targetRegion"),
    (m.Versioning, "versioning.Latest"),
    (m.VmProfile, "vmProfile"),
    (m.VnetConfig, "vnetConfig"),
    (m.DataDisk, "dataDisk"),
    (m.Identity, "identity"),
    (m.ErrorHandling, "errorHandling"),
]


@pytest.mark.parametrize(("record", "schema"), MODEL_SCHEMAS, ids=[s for _, s in MODEL_SCHEMAS])
def test_model_field_names_are_aib_names(swagger_dir: Path, record: type[m.Record], schema: str) -> None:
    doc = load(swagger_dir, "2025-10-01")
    theirs = swagger_properties(doc, schema) or {}
    for python_name, aib_name in record.aib_names().items():
        assert aib_name in theirs, f"{record.__name__}.{python_name} → {aib_name} is not in the swagger"
        assert aib_name in {f.name for f in v.SCHEMAS[schema]}
