"""Golden tests: one per validation rule, asserting the exact path, message, severity and code."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from localbuilder.template import model as m
from localbuilder.template.durations import parse_duration
from localbuilder.template.findings import Finding, PathPart, Severity, ValidationResult
from localbuilder.template.validate import validate_body

IDENTITY = {
    "type": "UserAssigned",
    "userAssignedIdentities": {
        "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a": {}
    },
}


def linux(version: str = "2022-02-14") -> dict[str, Any]:
    return {
        "apiVersion": version,
        "location": "westus",
        "identity": copy.deepcopy(IDENTITY),
        "properties": {
            "source": {
                "type": "PlatformImage",
                "publisher": "Canonical",
                "offer": "0001-com-ubuntu-server-jammy",
                "sku": "22_04-lts",
                "version": "latest",
            },
            "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hello"]}],
            "distribute": [{"type": "VHD", "runOutputName": "vhd"}],
        },
    }


def windows(version: str = "2022-02-14") -> dict[str, Any]:
    body = linux(version)
    body["properties"]["source"] = {
        "type": "PlatformImage",
        "publisher": "MicrosoftWindowsServer",
        "offer": "WindowsServer",
        "sku": "2022-datacenter-azure-edition",
        "version": "latest",
    }
    body["properties"]["customize"] = [{"type": "PowerShell", "name": "ps", "inline": ["Write-Host hi"]}]
    return body


def customize(body: dict[str, Any], *steps: dict[str, Any]) -> dict[str, Any]:
    body["properties"]["customize"] = list(steps)
    return body


def check(body: Any, **kwargs: Any) -> tuple[m.Template | None, ValidationResult]:
    return validate_body(body, **kwargs)


def only(result: ValidationResult, *severities: Severity) -> list[Finding]:
    wanted = severities or (Severity.error, Severity.service, Severity.warning)
    return [f for f in result if f.severity in wanted]


def assert_finding(
    result: ValidationResult,
    path: tuple[PathPart, ...],
    message: str,
    severity: Severity = Severity.error,
    *,
    code: str | None = None,
    hint: str | None = None,
) -> Finding:
    """Exactly one finding at ``path`` with this message; returns it for further checks."""
    at_path = [f for f in result if f.path == path]
    assert [f.message for f in at_path] == [message], [str(f) for f in result]
    finding = at_path[0]
    assert finding.severity is severity, str(finding)
    assert finding.code == code, str(finding)
    if hint is not None:
        assert finding.hint == hint
    return finding


# -- a clean template ------------------------------------------------------------------------------------


def test_clean_linux_template_builds_with_defaults_resolved() -> None:
    template, result = check(linux(), name="t")
    assert only(result) == []
    assert template is not None
    assert template.name == "t"
    assert template.os_type is m.OsType.linux
    assert template.build_timeout_minutes == 240
    assert template.source == m.PlatformImageSource(
        publisher="Canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts", version="latest"
    )
    assert template.customize == (m.ShellCustomizer(name="hello", inline=("echo hello",)),)
    assert template.distribute == (m.VhdDistributor(run_output_name="vhd"),)
    assert template.identity is not None and template.identity.type is m.IdentityType.UserAssigned
    assert template.error_handling.on_customizer_error is m.OnBuildError.cleanup


def test_clean_windows_template_is_windows() -> None:
    template, result = check(windows())
    assert only(result) == [] and template is not None
    assert template.is_windows


# -- required fields per version -------------------------------------------------------------------------


def test_identity_required_from_2020_02_14() -> None:
    body = linux("2020-02-14")
    del body["identity"]
    template, result = check(body)
    assert_finding(
        result,
        ("identity",),
        "'identity' is required (from API 2020-02-14)",
        Severity.service,
        hint='add "identity": {"type": "UserAssigned", "userAssignedIdentities": {"<identity id>": {}}}',
    )
    assert template is not None  # localbuilder does not need it …
    assert check(body, strict=True)[0] is None  # … but --strict mirrors the service


def test_identity_optional_in_2019_05_01_preview() -> None:
    body = linux("2019-05-01-preview")
    del body["identity"]
    del body["properties"]["customize"][0]["name"]
    template, result = check(body)
    assert only(result) == [] and template is not None


def test_missing_source_is_an_error() -> None:
    body = linux()
    del body["properties"]["source"]
    template, result = check(body)
    assert template is None
    assert_finding(result, ("properties", "source"), "'source' is required")


def test_platform_image_needs_publisher_offer_sku_version() -> None:
    body = linux()
    del body["properties"]["source"]["sku"]
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "source", "sku"),
        "'sku' is required in a PlatformImage source",
        code="BadPIRSource",
    )


def test_plan_info_needs_all_three_fields() -> None:
    body = linux()
    body["properties"]["source"]["planInfo"] = {"planName": "n", "planPublisher": "p"}
    template, result = check(body)
    assert_finding(
        result, ("properties", "source", "planInfo", "planProduct"), "'planProduct' is required",
        Severity.service, code="BadPIRSource",
    )  # fmt: skip
    assert template is not None


def test_distribute_is_required_and_not_empty() -> None:
    body = linux()
    body["properties"]["distribute"] = []
    template, result = check(body)
    assert template is None
    assert_finding(result, ("properties", "distribute"), "at least one distribute target is required")


# -- JSON types ------------------------------------------------------------------------------------------


def test_string_false_for_a_boolean() -> None:
    body = customize(windows(), {"type": "PowerShell", "inline": ["x"], "runElevated": "false"})
    template, result = check(body)
    assert template is None
    assert_finding(
        result,
        ("properties", "customize", 0, "runElevated"),
        "must be a boolean, not a string ('false')",
        hint="write false without quotes",
    )


def test_string_zero_for_an_integer() -> None:
    body = linux()
    body["properties"]["buildTimeoutInMinutes"] = "0"
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "buildTimeoutInMinutes"),
        "must be an integer, not a string ('0')",
        hint="write 0 without quotes",
    )


def test_strings_in_an_integer_array() -> None:
    body = customize(windows(), {"type": "PowerShell", "inline": ["x"], "validExitCodes": ["0", 3010]})
    _, result = check(body)
    assert_finding(
        result, ("properties", "customize", 0, "validExitCodes", 0), "must be an integer, not a string ('0')"
    )


def test_object_where_a_string_is_expected() -> None:
    body = linux()
    body["properties"]["source"]["sku"] = {"value": "22_04-lts"}
    _, result = check(body)
    assert_finding(
        result, ("properties", "source", "sku"), "must be a string, not an object ({'value': '22_04-lts'})"
    )


def test_integer_beyond_int32() -> None:
    body = linux()
    body["properties"]["vmProfile"] = {"osDiskSizeGB": 2**40}
    _, result = check(body)
    assert_finding(
        result, ("properties", "vmProfile", "osDiskSizeGB"), "1099511627776 does not fit a 32-bit integer"
    )


def test_integral_float_is_accepted_as_integer() -> None:
    body = linux()
    body["properties"]["buildTimeoutInMinutes"] = 120.0
    template, result = check(body)
    assert only(result) == [] and template is not None
    assert template.build_timeout_minutes == 120


def test_tag_values_must_be_strings() -> None:
    body = linux()
    body["tags"] = {"owner": 42}
    _, result = check(body)
    assert_finding(
        result, ("tags", "owner"), "tag values must be strings, not a number (42)", hint="quote the value"
    )


def test_body_must_be_an_object() -> None:
    template, result = check(["not", "a", "template"])
    assert template is None
    assert_finding(result, (), "the template must be a JSON object, not an array")


# -- Shell / PowerShell ----------------------------------------------------------------------------------


def test_shell_needs_exactly_one_of_script_uri_and_inline() -> None:
    both = customize(linux(), {"type": "Shell", "scriptUri": "https://x/s.sh", "inline": ["ls"]})
    _, result = check(both)
    assert_finding(
        result,
        ("properties", "customize", 0),
        "Exactly one of 'scriptUri' or 'inline' can be specified: both are given",
        code="NoCustomizerScript",
    )
    neither = customize(linux(), {"type": "Shell", "name": "empty"})
    _, result = check(neither)
    assert_finding(
        result,
        ("properties", "customize", 0),
        "Exactly one of 'scriptUri' or 'inline' can be specified: neither is given",
        code="NoCustomizerScript",
    )


def test_run_as_system_needs_run_elevated() -> None:
    body = customize(windows(), {"type": "PowerShell", "inline": ["whoami"], "runAsSystem": True})
    template, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "runAsSystem"),
        "runAsSystem can only be true when the runElevated field is set to true",
        Severity.service,
        hint='add "runElevated": true',
    )
    assert template is not None


def test_powershell_fields_reach_the_model() -> None:
    step = {"type": "PowerShell", "name": "p", "scriptUri": "https://x/p.ps1", "runElevated": True,
            "runAsSystem": True, "validExitCodes": [0, 3010], "sha256Checksum": "AB" * 32}  # fmt: skip
    template, result = check(customize(windows(), step))
    assert only(result) == [] and template is not None
    assert template.customize[0] == m.PowerShellCustomizer(
        name="p", script_uri="https://x/p.ps1", run_elevated=True, run_as_system=True,
        valid_exit_codes=(0, 3010), sha256_checksum="ab" * 32,
    )  # fmt: skip


def test_sha256_checksum_is_64_hex_digits() -> None:
    body = customize(linux(), {"type": "Shell", "scriptUri": "https://x/s.sh", "sha256Checksum": "abc123"})
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "sha256Checksum"),
        "must be 64 hexadecimal digits (a SHA-256), not 'abc123'",
        hint="compute it with 'sha256sum FILE', or leave it empty to skip the check",
    )


def test_a_windows_step_on_a_linux_source() -> None:
    body = customize(linux(), {"type": "PowerShell", "inline": ["x"]})
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "type"),
        "a PowerShell customizer needs a Windows source, but the source image is Linux",
    )


def test_a_shell_step_on_a_windows_source() -> None:
    body = customize(windows(), {"type": "Shell", "inline": ["x"]})
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "type"),
        "a Shell customizer runs on Linux, but the source image is Windows",
    )


def test_os_from_customizers_when_the_source_does_not_tell() -> None:
    body = windows()
    body["properties"]["source"] = {"type": "ManagedImage", "imageId": "/subscriptions/0/images/x"}
    template, _ = check(body)
    assert template is not None and template.os_type is m.OsType.windows


def test_mixed_os_steps_when_the_source_does_not_tell() -> None:
    body = customize(linux(), {"type": "Shell", "inline": ["x"]}, {"type": "WindowsRestart"})
    body["properties"]["source"] = {"type": "SharedImageVersion", "imageVersionId": "/galleries/g/versions/1"}
    template, result = check(body)
    assert template is None
    assert_finding(
        result,
        ("properties", "customize"),
        "mixes Shell steps (Linux) with WindowsRestart steps (Windows): one guest cannot run both",
        hint="keep the steps of the source image's OS",
    )


def test_duplicate_customizer_names_warn() -> None:
    body = customize(
        linux(),
        {"type": "Shell", "name": "a", "inline": ["x"]},
        {"type": "Shell", "name": "a", "inline": ["y"]},
    )
    template, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 1, "name"),
        "customizer name 'a' is also used by customize[0]",
        Severity.warning,
    )
    assert template is not None


# -- File ------------------------------------------------------------------------------------------------


def test_file_destination_outside_tmp_on_linux() -> None:
    body = customize(linux(), {"type": "File", "sourceUri": "https://x/f", "destination": "/etc/motd"})
    template, result = check(body)
    assert template is None
    assert_finding(
        result,
        ("properties", "customize", 0, "destination"),
        "on Linux the File customizer can only write under /tmp, not '/etc/motd': AIB fails the build, and "
        "localbuilder does the same",
        hint="upload to /tmp and move it with a Shell step (sudo mv), or build with --allow-any-destination",
    )
    template, result = check(body, allow_any_destination=True)
    assert only(result) == [] and template is not None


def test_file_destination_cannot_escape_tmp() -> None:
    body = customize(linux(), {"type": "File", "sourceUri": "https://x/f", "destination": "/tmp/../etc/motd"})
    assert check(body)[0] is None


def test_file_destination_on_windows() -> None:
    ok = customize(
        windows(), {"type": "File", "sourceUri": "https://x/f", "destination": "c:\\buildArtifacts\\a"}
    )
    assert check(ok)[0] is not None
    bad = customize(windows(), {"type": "File", "sourceUri": "https://x/f", "destination": "buildArtifacts"})
    _, result = check(bad)
    assert_finding(
        result,
        ("properties", "customize", 0, "destination"),
        "must be an absolute Windows path such as C:\\dir\\file, not 'buildArtifacts'",
    )


def test_file_needs_source_uri_and_destination() -> None:
    body = customize(linux(), {"type": "File", "name": "f"})
    _, result = check(body)
    assert_finding(
        result, ("properties", "customize", 0, "sourceUri"), "'sourceUri' is required in a File customizer"
    )
    assert_finding(
        result,
        ("properties", "customize", 0, "destination"),
        "'destination' is required in a File customizer",
    )


# -- WindowsRestart / WindowsUpdate ----------------------------------------------------------------------


def test_restart_timeout_format() -> None:
    body = customize(windows(), {"type": "WindowsRestart", "restartTimeout": "5 minutes"})
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "restartTimeout"),
        "must be a duration like '5m', '2h' or '300s', not '5 minutes'",
    )


def test_restart_defaults_and_parsed_timeout() -> None:
    template, _ = check(
        customize(
            windows(), {"type": "WindowsRestart"}, {"type": "WindowsRestart", "restartTimeout": "1h30m"}
        )
    )
    assert template is not None
    first, second = template.customize
    assert first == m.WindowsRestartCustomizer(restart_timeout="5m", restart_timeout_seconds=300)
    assert isinstance(second, m.WindowsRestartCustomizer) and second.restart_timeout_seconds == 5400


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("2h", 7200), ("300s", 300), ("1.5h", 5400), ("90", None), ("", None), ("m5", None)],
)
def test_parse_duration(text: str, seconds: int | None) -> None:
    if seconds is None:
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(text)
    else:
        assert parse_duration(text) == seconds


def test_update_limit_not_negative() -> None:
    body = customize(windows(), {"type": "WindowsUpdate", "updateLimit": -1})
    _, result = check(body)
    assert_finding(result, ("properties", "customize", 0, "updateLimit"), "must be at least 0, not -1")


def test_windows_update_defaults() -> None:
    template, _ = check(
        customize(windows(), {"type": "WindowsUpdate", "updateLimit": 0, "searchCriteria": ""})
    )
    assert template is not None
    assert template.customize[0] == m.WindowsUpdateCustomizer(
        search_criteria="BrowseOnly=0 and IsInstalled=0", filters=("include:$true",), update_limit=1000
    )


# -- distribute ------------------------------------------------------------------------------------------


def test_run_output_name_pattern() -> None:
    body = linux()
    body["properties"]["distribute"][0]["runOutputName"] = "my image/1"
    template, result = check(body)
    assert template is None
    assert_finding(
        result,
        ("properties", "distribute", 0, "runOutputName"),
        "must match ^[A-Za-z0-9-_.]{1,64}$, not 'my image/1'",
        hint="use letters, digits, '-', '_' and '.', at most 64 characters",
    )


def test_run_output_name_placeholder_is_left_to_the_loader() -> None:
    body = linux()
    body["properties"]["distribute"][0]["runOutputName"] = "<runOutputName>"
    assert only(check(body)[1]) == []


def test_run_output_names_are_unique() -> None:
    body = linux()
    body["properties"]["distribute"].append({"type": "VHD", "runOutputName": "VHD"})
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "distribute", 1, "runOutputName"),
        "runOutputName 'VHD' is also used by distribute[0]; each distribute target needs its own",
    )


def test_replication_regions_required_up_to_2022_02_14() -> None:
    body = linux("2022-02-14")
    body["properties"]["distribute"] = [
        {"type": "SharedImage", "runOutputName": "sig", "galleryImageId": "/g"}
    ]
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "distribute", 0, "replicationRegions"),
        "'replicationRegions' is required in a SharedImage distributor (up to API 2022-02-14)",
        Severity.service,
        code="BadSharedImageDistribute",
    )
    assert only(check(body | {"apiVersion": "2022-07-01"})[1]) == []


def test_replication_regions_exclusive_with_target_regions() -> None:
    body = linux("2023-07-01")
    body["properties"]["distribute"] = [{
        "type": "SharedImage", "runOutputName": "sig", "galleryImageId": "/g",
        "replicationRegions": ["westus"], "targetRegions": [{"name": "eastus", "replicaCount": 2}],
    }]  # fmt: skip
    template, result = check(body)
    assert_finding(
        result,
        ("properties", "distribute", 0, "targetRegions"),
        "replicationRegions can be specified only if targetRegions is not specified",
        Severity.service,
    )
    assert template is not None
    sig = template.distribute[0]
    assert isinstance(sig, m.SharedImageDistributor)
    assert sig.target_regions == (m.TargetRegion(name="eastus", replica_count=2),)


def test_storage_account_type_needs_replication_regions() -> None:
    body = linux("2024-02-01")
    sig = {"type": "SharedImage", "runOutputName": "sig", "galleryImageId": "/g"}
    body["properties"]["distribute"] = [sig | {"storageAccountType": "Standard_LRS"}]
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "distribute", 0, "storageAccountType"),
        "storageAccountType can be specified only if replicationRegions is specified",
        Severity.service,
    )


def test_enum_value_from_a_later_version() -> None:
    body = linux("2020-02-14")
    sig = {"type": "SharedImage", "runOutputName": "sig", "galleryImageId": "/g", "replicationRegions": []}
    body["properties"]["distribute"] = [sig | {"storageAccountType": "Premium_LRS"}]
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "distribute", 0, "storageAccountType"),
        "'Premium_LRS' is accepted from API 2022-07-01, not at API 2020-02-14",
        Severity.service,
    )


# -- types, versions, case -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message", "code"),
    [
        (("customize", 0), {"type": "Ansible"}, "unknown customizer type 'Ansible'", "BadCustomizerType"),
        (("source",), {"type": "Docker"}, "unknown source type 'Docker'", "BadSourceType"),
        (
            ("distribute", 0),
            {"type": "S3", "runOutputName": "x"},
            "unknown distributor type 'S3'",
            "BadDistributeType",
        ),
        (
            ("validate", "inVMValidations", 0),
            {"type": "Pester"},
            "unknown validator type 'Pester'",
            "BadValidatorType",
        ),
    ],
)
def test_unknown_types(path: tuple[PathPart, ...], value: dict[str, Any], message: str, code: str) -> None:
    body = linux()
    body["properties"].setdefault("validate", {"inVMValidations": [{}]})
    parent: Any = body["properties"]
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    template, result = check(body)
    assert template is None
    assert_finding(result, ("properties", *path, "type"), message, code=code)


def test_type_is_required() -> None:
    body = customize(linux(), {"name": "no type", "inline": ["ls"]})
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "type"),
        "'type' is required: every customizer names its type",
        code="BadCustomizerType",
    )


def test_iso_source_is_refused() -> None:
    body = linux("2019-05-01-preview")
    body["properties"]["source"] = {
        "type": "ISO",
        "sourceUri": "https://x/rhel.iso",
        "sha256Checksum": "0" * 64,
    }
    template, result = check(body)
    assert template is None
    assert_finding(
        result,
        ("properties", "source", "type"),
        "ISO sources were a preview feature (2018-02-01-preview … 2019-05-01-preview) that the service has "
        "removed; localbuilder has no ISO install path either",
        code="BadSourceType",
    )


def test_type_that_exists_only_later() -> None:
    body = customize(windows("2019-02-01-preview"), {"type": "WindowsUpdate"})
    del body["identity"]
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "type"),
        "customizer type 'WindowsUpdate' exists from API 2019-05-01-preview, not at API 2019-02-01-preview",
        Severity.service,
        code="UnsupportedCustomizerType",
    )


def test_lenient_versions_ignore_case_and_unknown_fields() -> None:
    body = customize(linux("2022-07-01"), {"type": "shell", "ScriptUri": "https://x/s.sh", "timeout": 5})
    template, result = check(body)
    assert template is not None
    assert template.customize[0] == m.ShellCustomizer(script_uri="https://x/s.sh")
    assert_finding(
        result,
        ("properties", "customize", 0, "timeout"),
        "unknown property 'timeout' of a Shell customizer (ignored by the service at API 2022-07-01)",
        Severity.warning,
    )
    assert [f.path for f in only(result)] == [("properties", "customize", 0, "timeout")]


def test_strict_versions_enforce_case_and_unknown_fields() -> None:
    body = customize(linux("2024-02-01"), {"type": "shell", "ScriptUri": "https://x/s.sh", "timeout": 5})
    template, result = check(body)
    assert template is not None  # localbuilder can still build it …
    assert check(body, strict=True)[0] is None  # … the service would not
    assert_finding(
        result,
        ("properties", "customize", 0, "type"),
        "type names are case-sensitive from API 2024-02-01: 'shell' must be spelled 'Shell'",
        Severity.service,
        code="BadCustomizerType",
    )
    assert_finding(
        result,
        ("properties", "customize", 0, "ScriptUri"),
        "property names are case-sensitive from API 2024-02-01: 'ScriptUri' must be spelled 'scriptUri'",
        Severity.service,
    )
    assert_finding(
        result,
        ("properties", "customize", 0, "timeout"),
        "unknown property 'timeout' of a Shell customizer (the service rejects unknown properties from API "
        "2024-02-01)",
        Severity.service,
    )


def test_discriminator_in_the_wrong_case_at_a_strict_version() -> None:
    body = customize(linux("2025-10-01"), {"Type": "Shell", "inline": ["ls"]})
    template, result = check(body)
    assert template is not None and template.customize[0] == m.ShellCustomizer(inline=("ls",))
    assert_finding(
        result,
        ("properties", "customize", 0, "Type"),
        "property names are case-sensitive from API 2024-02-01: 'Type' must be spelled 'type'",
        Severity.service,
        hint="rename 'Type' to 'type'",
    )


def test_field_from_a_later_version_is_ignored_like_the_service() -> None:
    body = customize(
        windows("2020-02-14"),
        {"type": "PowerShell", "inline": ["x"], "runElevated": True, "runAsSystem": True},
    )
    template, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "runAsSystem"),
        "'runAsSystem' exists from API 2021-10-01; the service ignores it at API 2020-02-14",
        Severity.warning,
        hint="use apiVersion 2021-10-01 or later to use it",
    )
    assert template is not None
    step = template.customize[0]
    assert isinstance(step, m.PowerShellCustomizer) and step.run_elevated and not step.run_as_system


def test_legacy_script_property() -> None:
    body = customize(linux("2019-02-01-preview"), {"type": "Shell", "script": "https://x/s.sh"})
    del body["identity"]
    template, result = check(body)
    assert only(result) == [] and template is not None
    assert template.customize[0] == m.ShellCustomizer(script_uri="https://x/s.sh", legacy=True)
    body["apiVersion"] = "2019-05-01-preview"
    template, result = check(body)
    assert template is None
    assert_finding(
        result,
        ("properties", "customize", 0, "script"),
        "'script' exists up to API 2019-02-01-preview; the service ignores it at API 2019-05-01-preview",
        Severity.warning,
        hint="'script' was renamed to 'scriptUri' in API 2019-05-01-preview: rename it",
    )
    assert_finding(
        result,
        ("properties", "customize", 0),
        "Exactly one of 'scriptUri' or 'inline' can be specified: neither is given",
        code="NoCustomizerScript",
    )


def test_same_property_twice_in_different_case() -> None:
    body = customize(linux(), {"type": "Shell", "inline": ["a"], "Inline": ["b"]})
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "customize", 0, "Inline"),
        "'inline' is given twice (names differ only in case)",
        hint="keep one of them",
    )


def test_read_only_fields_are_notes() -> None:
    body = linux()
    body["properties"]["provisioningState"] = "Succeeded"
    template, result = check(body)
    assert_finding(
        result,
        ("properties", "provisioningState"),
        "'provisioningState' is read-only and ignored in a request",
        Severity.note,
    )
    assert template is not None


# -- numbers ---------------------------------------------------------------------------------------------


def test_build_timeout_range() -> None:
    body = linux()
    body["properties"]["buildTimeoutInMinutes"] = 3
    template, result = check(body)
    assert_finding(
        result,
        ("properties", "buildTimeoutInMinutes"),
        "must be 0 (the default, 240) or between 6 and 960 minutes, not 3",
        Severity.service,
    )
    assert template is not None and template.build_timeout_minutes == 3
    body["properties"]["buildTimeoutInMinutes"] = 961
    _, result = check(body)
    assert_finding(result, ("properties", "buildTimeoutInMinutes"), "must be at most 960, not 961")


def test_os_disk_size_not_negative() -> None:
    body = linux()
    body["properties"]["vmProfile"] = {"osDiskSizeGB": -1}
    _, result = check(body)
    assert_finding(result, ("properties", "vmProfile", "osDiskSizeGB"), "must be at least 0, not -1")


# -- the rest --------------------------------------------------------------------------------------------


def test_error_handling_values() -> None:
    body = linux("2023-07-01")
    body["properties"]["errorHandling"] = {"onCustomizerError": "keep", "onValidationError": "Abort"}
    _, result = check(body)
    assert_finding(
        result, ("properties", "errorHandling", "onCustomizerError"), "'keep' is not one of cleanup, abort"
    )
    body["properties"]["errorHandling"] = {"onCustomizerError": "abort", "onValidationError": "Abort"}
    template, result = check(body)
    assert template is not None
    assert template.error_handling == m.ErrorHandling(
        on_customizer_error=m.OnBuildError.abort, on_validation_error=m.OnBuildError.abort
    )


def test_validate_block() -> None:
    body = linux("2022-02-14")
    body["properties"]["validate"] = {
        "continueDistributeOnFailure": True,
        "inVMValidations": [{"type": "Shell", "name": "v", "inline": ["test -f /etc/motd"]}],
    }
    template, result = check(body)
    assert only(result) == [] and template is not None
    assert template.validate == m.Validate(
        continue_distribute_on_failure=True,
        in_vm_validations=(m.ShellCustomizer(name="v", inline=("test -f /etc/motd",)),),
    )
    body["apiVersion"] = "2020-02-14"
    template, result = check(body)
    assert template is not None and template.validate is None
    assert_finding(
        result,
        ("properties", "validate"),
        "'validate' exists from API 2022-02-14; the service ignores it at API 2020-02-14",
        Severity.warning,
        hint="use apiVersion 2022-02-14 or later to use it",
    )


def test_validator_without_script() -> None:
    body = linux("2022-02-14")
    body["properties"]["validate"] = {"inVMValidations": [{"type": "Shell", "name": "v"}]}
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "validate", "inVMValidations", 0),
        "Exactly one of 'scriptUri' or 'inline' can be specified: neither is given",
        code="NoValidatorScript",
    )


def test_staging_resource_group_must_be_an_id() -> None:
    body = linux()
    body["properties"]["stagingResourceGroup"] = "my-rg"
    _, result = check(body)
    assert_finding(
        result,
        ("properties", "stagingResourceGroup"),
        "must be a resource group id (/subscriptions/<id>/resourceGroups/<name>), not 'my-rg'",
        Severity.service,
        code="BadStagingResourceGroup",
    )


def test_user_assigned_identity_needs_an_entry() -> None:
    body = linux()
    body["identity"] = {"type": "UserAssigned"}
    _, result = check(body)
    assert_finding(
        result,
        ("identity", "userAssignedIdentities"),
        "a UserAssigned identity needs at least one entry in userAssignedIdentities",
        Severity.service,
    )


@pytest.mark.parametrize(
    ("declared", "judged", "severity", "message"),
    [
        (None, "2025-10-01", Severity.note, "no apiVersion: judged at API 2025-10-01, the newest"),
        ("2021-01-01", "2020-02-14", Severity.service,
         "unknown API version '2021-01-01' (known: 2018-02-01-preview, 2019-02-01-preview, "
         "2019-05-01-preview, 2020-02-14, 2021-10-01, 2022-02-14, 2022-07-01, 2023-07-01, 2024-02-01, "
         "2025-10-01); judged at API 2020-02-14"),
        ("<apiVersion>", "2025-10-01", Severity.warning,
         "apiVersion '<apiVersion>' is not a version: judged at API 2025-10-01"),
    ],
)  # fmt: skip
def test_api_version_resolution(declared: str | None, judged: str, severity: Severity, message: str) -> None:
    body = linux()
    del body["apiVersion"]
    if declared is not None:
        body["apiVersion"] = declared
    template, result = check(body)
    assert template is not None and template.api_version == judged
    assert_finding(result, ("apiVersion",), message, severity)


def test_api_version_the_loader_could_not_evaluate() -> None:
    body = linux()
    body["apiVersion"] = "[parameters('api-version')]"
    loader = ValidationResult()
    loader.add(("apiVersion",), "cannot evaluate [parameters('api-version')]")
    template, result = check(body, result=loader)
    assert template is None  # the loader's error stops it
    assert [f.message for f in result if f.path == ("apiVersion",)] == [
        "cannot evaluate [parameters('api-version')]",
        "apiVersion could not be evaluated (see above): judged at API 2025-10-01, the newest",
    ]


def test_loader_errors_are_not_reported_twice() -> None:
    body = linux()
    body["properties"]["distribute"][0]["runOutputName"] = "[parameters('name')]"
    loader = ValidationResult()
    loader.add(("properties", "distribute", 0, "runOutputName"), "cannot evaluate [parameters('name')]")
    template, result = check(body, result=loader)
    assert template is None
    assert [f.message for f in result] == ["cannot evaluate [parameters('name')]"]


def test_every_finding_is_collected() -> None:
    body = linux()
    body["properties"]["customize"] = [
        {"type": "Shell"},
        {"type": "File", "sourceUri": "https://x", "destination": "/root/x"},
        {"type": "Nope"},
    ]
    body["properties"]["distribute"][0]["runOutputName"] = "a b"
    body["properties"]["buildTimeoutInMinutes"] = "60"
    _, result = check(body)
    paths = sorted(str(f.where) for f in result.errors())
    assert paths == [
        "properties.buildTimeoutInMinutes",
        "properties.customize[0]",
        "properties.customize[1].destination",
        "properties.customize[2].type",
        "properties.distribute[0].runOutputName",
    ]
