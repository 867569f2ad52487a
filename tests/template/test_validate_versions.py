"""The version table helpers (versions.py)."""

from __future__ import annotations

import pytest

from localbuilder.template import versions as v


def test_versions_are_in_release_order() -> None:
    assert list(v.VERSIONS) == sorted(v.VERSIONS, key=lambda s: s[:10])
    assert v.FIRST == "2018-02-01-preview" and v.LATEST == "2025-10-01"
    assert v.PREVIEWS == {"2018-02-01-preview", "2019-02-01-preview", "2019-05-01-preview"}


@pytest.mark.parametrize(
    ("version", "strict"),
    [("2019-05-01-preview", False), ("2023-07-01", False), ("2024-02-01", True), ("2025-10-01", True)],
)
def test_strict_from_2024_02_01(version: str, strict: bool) -> None:
    assert v.is_strict(version) is strict


@pytest.mark.parametrize(
    ("written", "nearest"),
    [("2021-01-01", "2020-02-14"), ("2030-01-01", "2025-10-01"), ("2017-01-01", "2018-02-01-preview"),
     ("2022-07-01-preview", "2022-07-01")],
)  # fmt: skip
def test_nearest_known(written: str, nearest: str) -> None:
    assert v.nearest_known(written) == nearest


def test_span_wording() -> None:
    assert v.span("2021-10-01", None) == "from API 2021-10-01"
    assert v.span(v.FIRST, "2019-02-01-preview") == "up to API 2019-02-01-preview"
    assert (
        v.span("2019-02-01-preview", "2019-05-01-preview") == "in API 2019-02-01-preview … 2019-05-01-preview"
    )


def test_fields_appear_and_disappear_with_versions() -> None:
    shell = "customizer.Shell"
    assert "script" in v.fields_at(shell, "2019-02-01-preview")
    assert "script" not in v.fields_at(shell, "2019-05-01-preview")
    assert "scriptUri" in v.fields_at(shell, "2019-05-01-preview")
    ps = v.fields_at("customizer.PowerShell", "2020-02-14")
    assert "runElevated" in ps and "runAsSystem" not in ps
    assert "runAsSystem" in v.fields_at("customizer.PowerShell", "2021-10-01")
    assert "uri" not in v.fields_at("distributor.VHD", "2022-02-14")
    assert "uri" in v.fields_at("distributor.VHD", "2022-07-01")
    identity = v.fields_at("resource", "2019-05-01-preview")["identity"]
    assert not identity.required_at("2019-05-01-preview") and identity.required_at("2020-02-14")
    regions = v.fields_at("distributor.SharedImage", "2022-02-14")["replicationRegions"]
    assert regions.required_at("2022-02-14") and not regions.required_at("2022-07-01")
    assert v.field_anywhere("customizer.Shell", "SCRIPTURI") is not None


def test_every_nested_schema_and_family_exists() -> None:
    for fields in v.SCHEMAS.values():
        for field in fields:
            if field.schema is not None:
                assert field.schema in v.SCHEMAS
            if field.family is not None:
                family = v.FAMILIES[field.family]
                for type_name in family.types:
                    assert f"{field.family}.{type_name}" in v.SCHEMAS
            if field.kind in (v.Kind.object, v.Kind.object_array):
                assert (field.schema is None) != (field.family is None), field
