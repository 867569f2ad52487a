"""The model records: AIB spelling, defaults, ``as_dict()`` and its round trip through the validator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from localbuilder.template import model as m
from localbuilder.template import parse_template
from localbuilder.template.load import load_documents
from localbuilder.template.validate import validate_body


def test_type_property_gives_the_aib_type_string() -> None:
    assert m.ShellCustomizer(inline=("ls",)).type == "Shell"
    assert m.WindowsRestartCustomizer().type is m.CustomizerType.WindowsRestart
    assert m.VhdDistributor(run_output_name="x").type == "VHD"
    assert m.SharedImageVersionSource(image_version_id="/v").type == "SharedImageVersion"
    assert {cls.TYPE for cls in m.CUSTOMIZER_CLASSES.values()} == set(m.CustomizerType)
    assert {cls.TYPE for cls in m.DISTRIBUTOR_CLASSES.values()} == set(m.DistributorType)


def test_records_are_frozen() -> None:
    step = m.ShellCustomizer(name="a", inline=("ls",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.name = "b"  # type: ignore[misc]


def test_label_and_defaults() -> None:
    assert m.ShellCustomizer(name="install", inline=("x",)).label == "Shell 'install'"
    assert m.WindowsUpdateCustomizer().label == "WindowsUpdate"
    assert m.PowerShellCustomizer(inline=("x",)).accepted_exit_codes == (0,)
    assert m.PowerShellCustomizer(inline=("x",), valid_exit_codes=(0, 3010)).accepted_exit_codes == (0, 3010)
    assert m.WindowsRestartCustomizer().restart_command == 'shutdown /r /f /t 0 /c "packer restart"'
    assert m.PlatformImageSource(publisher="p", offer="o", sku="s", version="latest").urn == "p:o:s:latest"


def test_as_dict_uses_aib_names_and_leaves_out_empty_values() -> None:
    step = m.PowerShellCustomizer(name="p", script_uri="https://x/p.ps1", run_elevated=True)
    assert step.as_dict() == {"type": "PowerShell", "name": "p", "scriptUri": "https://x/p.ps1",
                              "runElevated": True, "runAsSystem": False}  # fmt: skip
    sig = m.SharedImageDistributor(
        run_output_name="sig", gallery_image_id="/g",
        target_regions=(
            m.TargetRegion(name="eastus", storage_account_type=m.StorageAccountType.Standard_ZRS),
        ),
        versioning=m.Versioning(scheme=m.VersioningScheme.Latest, major=1),
    )  # fmt: skip
    assert sig.as_dict() == {
        "type": "SharedImage", "runOutputName": "sig", "galleryImageId": "/g",
        "targetRegions": [{"name": "eastus", "replicaCount": 1, "storageAccountType": "Standard_ZRS"}],
        "versioning": {"scheme": "Latest", "major": 1}, "excludeFromLatest": False,
    }  # fmt: skip


def _corpus_templates(corpus: Path) -> list[m.Template]:
    out = []
    for path in sorted(corpus.glob("*.json")):
        for loaded in load_documents(path):
            template, _ = parse_template(loaded)
            if template is not None:
                out.append(template)
    return out


def test_as_dict_round_trips_through_the_validator(corpus_dir: Path) -> None:
    templates = _corpus_templates(corpus_dir)
    assert len(templates) >= 15
    for template in templates:
        again, result = validate_body(template.as_dict(), name=template.name)
        assert again == template, [str(f) for f in result]


def test_round_trip_of_a_full_template() -> None:
    template = m.Template(
        name="full",
        api_version="2025-10-01",
        location="westus",
        tags={"a": "b"},
        identity=m.Identity(type=m.IdentityType.UserAssigned, user_assigned_identities=("/id",)),
        source=m.PlatformImageSource(
            publisher="Canonical", offer="ubuntu-24_04-lts", sku="server", version="latest",
            plan_info=m.PlanInfo(plan_name="n", plan_product="p", plan_publisher="q"),
        ),
        customize=(
            m.ShellCustomizer(name="s", script_uri="https://x/s.sh", sha256_checksum="a" * 64),
            m.FileCustomizer(name="f", source_uri="https://x/f", destination="/tmp/f"),
        ),
        distribute=(
            m.VhdDistributor(run_output_name="vhd", uri="https://acct.blob.core.windows.net/c/x.vhd"),
            m.ManagedImageDistributor(run_output_name="mi", image_id="/img", location="westus",
                                      artifact_tags={"k": "v"}),
        ),
        vm_profile=m.VmProfile(vm_size="Standard_D2s_v3", os_disk_size_gb=64,
                               vnet_config=m.VnetConfig(subnet_id="/subnet")),
        build_timeout_minutes=90,
        validate=m.Validate(source_validation_only=False,
                            in_vm_validations=(m.ShellCustomizer(name="v", inline=("true",)),)),
        optimize=m.Optimize(vm_boot=m.State.Enabled),
        error_handling=m.ErrorHandling(on_customizer_error=m.OnBuildError.abort),
        staging_resource_group="/subscriptions/0/resourceGroups/stage",
        auto_run=True,
        managed_resource_tags={"x": "y"},
        additional_data_disks=(m.DataDisk(size_gb=10),),
    )  # fmt: skip
    again, result = validate_body(template.as_dict())
    assert [f for f in result if f.severity not in ("note",)] == []
    assert again == template
