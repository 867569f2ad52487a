"""`build` distributing to Azure: VHD(uri) + ManagedImage + SharedImage through the orchestrator.

Real: the page-blob uploads (a real Azurite, a real small fixed VHD made with mkfs.ext4 + qemu-img), the
Azure-readiness check on that VHD. FAKE TRANSPORT: the Compute API calls go through azure-mgmt-compute
into `RecordingTransport` (tests/azure/test_compute.py); no request leaves the process. No guest boots:
the orchestrator runs on tests/build/fakes.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from localbuilder.distributors import AzureOptions, DistributeContext, distributor_for
from localbuilder.distributors.azure_image import DRY_RUN_NOTE
from localbuilder.guest import SourceImage
from localbuilder.orchestrator import Build, BuildOptions, exit_code
from localbuilder.state import RunState
from localbuilder.template import model
from tests.azure.test_compute import (
    ACCOUNT_ID,
    GALLERY_DEF,
    IMAGE_ID,
    SUB,
    FakeCredential,
    RecordingTransport,
)
from tests.build.fakes import FakePlatform
from tests.fixtures.azurite import Azurite
from tests.fixtures.golden import Golden

MIB = 1024 * 1024
BAD_SAS = "?sv=2021-08-06&sr=c&sp=rw&sig=Zm9vYmFy"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def small_vhd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 MiB fixed VHD holding a bare ext4 root with /etc/passwd and no kernel, agent or console."""
    d = tmp_path_factory.mktemp("vhd")
    root = d / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB that is not zero
    raw = d / "disk.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(raw), "64M"], check=True)
    vhd = d / "disk.vhd"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on",
         str(raw), str(vhd)],
        check=True,
    )  # fmt: skip
    return vhd


class VhdPlatform(FakePlatform):
    """FakePlatform whose conversion yields a real fixed VHD, from a UEFI (Hyper-V Gen2) source."""

    vhd: Path

    def resolve(self, source: Any) -> SourceImage:
        self.events.append("resolve")
        return SourceImage(self.source, "qcow2", self.image_os, "Debian:debian-12:12:latest", uefi=True)

    def convert(self, src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        self.events.append("convert")
        dst.write_bytes(self.vhd.read_bytes())
        return self.vhd.stat().st_size - 512


class GalleryDenied(RecordingTransport):
    """Answers like Azure for images, and 403 AuthorizationFailed for anything in a gallery."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        self.fail_with = 403 if "/galleries/" in request.url else None
        return super().send(request, **kwargs)


def _template(vhd_uri: str) -> model.Template:
    return model.Template(
        name="azdist",
        api_version="2022-07-01",
        source=model.PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="latest"),
        distribute=(
            model.VhdDistributor(run_output_name="disk", uri=vhd_uri, artifact_tags={"k": "v"}),
            model.ManagedImageDistributor(run_output_name="img", image_id=IMAGE_ID, location="westeurope"),
            model.SharedImageDistributor(
                run_output_name="sig", gallery_image_id=GALLERY_DEF,
                target_regions=(model.TargetRegion(name="westeurope"),),
                versioning=model.Versioning(scheme=model.VersioningScheme.Latest),
            ),
        ),
    )  # fmt: skip


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fake_transport_vhd_uri_managed_and_shared_image_one_failing(
    tmp_path: Path,
    azurite: Azurite,
    small_vhd: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container("uris")
    service.create_container("staging")
    sas = generate_container_sas(
        azurite.account, "uris", account_key=azurite.key,
        permission=ContainerSasPermissions(read=True, write=True, create=True),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
    )  # fmt: skip
    vhd_url = azurite.blob_url("uris", "out/disk.vhd")
    # The staging upload authenticates with the account key from the environment, as a user would.
    monkeypatch.setenv("AZURE_STORAGE_KEY", azurite.key)
    transport = GalleryDenied()
    subscriptions: list[str] = []

    def factory(subscription: str) -> Any:
        from localbuilder.azure.compute import SdkCompute

        subscriptions.append(subscription)
        return SdkCompute(FakeCredential(), subscription, transport=transport)

    platform = VhdPlatform(tmp_path)
    platform.vhd = small_vhd
    azure = AzureOptions(
        staging=f"{azurite.endpoint}/staging", staging_account_id=ACCOUNT_ID, compute_factory=factory
    )
    caplog.set_level(logging.WARNING)
    record = Build(
        _template(f"{vhd_url}?{sas}"), tmp_path / "t.json", platform,
        BuildOptions(output_dir=tmp_path / "o", azure=azure),
    ).execute()  # fmt: skip

    assert record.run_state is RunState.PartiallySucceeded, record.last_run_status.message
    assert exit_code(record) == 1
    out = {o.name: o for o in record.run_outputs}
    assert out["disk"].provisioning_state == "Succeeded" and out["disk"].note == ""
    assert out["disk"].artifact_uri == vhd_url  # the blob, without the SAS
    assert out["img"].provisioning_state == "Succeeded"
    assert out["img"].artifact_id == IMAGE_ID
    staged_img = f"{azurite.endpoint}/staging/img-{record.run_id}.vhd"
    assert out["img"].artifact_uri == staged_img
    assert out["sig"].provisioning_state == "Failed"
    assert "creating gallery image version" in out["sig"].note and "AuthorizationFailed" in out["sig"].note
    assert record.last_run_status.message.startswith("sig: creating gallery image version")
    assert subscriptions == [SUB, SUB]

    # The blobs really are in Azurite, byte for byte.
    want = _sha(small_vhd.read_bytes())
    for container, blob in (("uris", "out/disk.vhd"), ("staging", f"img-{record.run_id}.vhd"),
                            ("staging", f"sig-{record.run_id}.vhd")):  # fmt: skip
        got = service.get_blob_client(container, blob).download_blob().readall()
        assert _sha(got) == want, blob

    # The managed image was asked for with the staged blob, the source's OS and Hyper-V generation.
    (img_put,) = [r for r in transport.requests if r.method == "PUT" and "/images/img1" in r.url]
    body = json.loads(img_put.content.getvalue() if hasattr(img_put.content, "getvalue") else img_put.content)
    assert body["properties"]["hyperVGeneration"] == "V2"
    assert body["properties"]["storageProfile"]["osDisk"]["osType"] == "Linux"
    assert body["properties"]["storageProfile"]["osDisk"]["blobUri"] == staged_img

    # The readiness check ran on the VHD before the upload and warned (no kernel, agent or console).
    readiness = [r.getMessage() for r in caplog.records if "Azure readiness" in r.getMessage()]
    assert any("hyperv-drivers" in m for m in readiness), readiness
    assert len(readiness) == len(set(readiness))  # once per VHD, not once per target

    # No secret anywhere the run writes.
    run_dir = Path(record.output_dir).parent
    written = "".join(
        p.read_text(errors="replace") for p in run_dir.rglob("*") if p.suffix in (".json", ".log")
    )
    written += json.dumps(record.as_dict()) + caplog.text
    sig = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    assert sig not in written and azurite.key not in written
    assert "state.json" in {p.name for p in run_dir.rglob("*")}


def test_vhd_uri_upload_failure_fails_that_target_only(
    tmp_path: Path, azurite: Azurite, small_vhd: Path
) -> None:
    platform = VhdPlatform(tmp_path)
    platform.vhd = small_vhd
    tpl = model.Template(
        name="azdist",
        api_version="2022-07-01",
        source=model.PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="latest"),
        distribute=(
            # A container that does not exist, with a SAS signed by a wrong key: the upload must fail.
            model.VhdDistributor(run_output_name="bad", uri=azurite.blob_url("nope", "x.vhd") + BAD_SAS),
            model.VhdDistributor(run_output_name="local"),
        ),
    )  # fmt: skip
    record = Build(tpl, tmp_path / "t.json", platform, BuildOptions(output_dir=tmp_path / "o")).execute()
    assert record.run_state is RunState.PartiallySucceeded
    out = {o.name: o for o in record.run_outputs}
    assert out["local"].provisioning_state == "Succeeded"
    assert out["bad"].provisioning_state == "Failed" and "upload to" in out["bad"].note
    assert "Zm9vYmFy" not in json.dumps(record.as_dict())


def test_without_staging_the_note_names_the_option(tmp_path: Path, small_vhd: Path) -> None:
    platform = VhdPlatform(tmp_path)
    platform.vhd = small_vhd
    tpl = dataclasses.replace(_template(""), distribute=_template("").distribute[1:])
    record = Build(tpl, tmp_path / "t.json", platform, BuildOptions(output_dir=tmp_path / "o")).execute()
    assert record.run_state is RunState.Failed
    for o in record.run_outputs:
        assert o.provisioning_state == "Failed" and "--staging CONTAINER_URL" in o.note


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        ("account", "properties.distribute[1]: a gallery image version made from a VHD needs"),
        ("image_id", "properties.distribute[1].imageId: '/subscriptions/x/images/img1' is not a valid"),
    ],
)
def test_azure_target_problems_stop_the_build_before_boot(tmp_path: Path, bad: str, text: str) -> None:
    tpl = _template("")
    tpl = dataclasses.replace(tpl, distribute=tpl.distribute[1:])
    account: str | None = ACCOUNT_ID
    if bad == "account":
        account = None
    else:
        img = dataclasses.replace(tpl.distribute[0], image_id="/subscriptions/x/images/img1")
        tpl = dataclasses.replace(tpl, distribute=(tpl.distribute[0], img, tpl.distribute[1]))
    platform = FakePlatform(tmp_path)
    azure = AzureOptions(staging="http://127.0.0.1:9/acct/staging", staging_account_id=account)
    record = Build(
        tpl, tmp_path / "t.json", platform, BuildOptions(output_dir=tmp_path / "o", azure=azure)
    ).execute()
    assert record.run_state is RunState.Failed
    assert text in record.last_run_status.message
    assert platform.events == []  # nothing booted, nothing uploaded


def test_dry_run_azure_prints_the_az_commands(tmp_path: Path, small_vhd: Path, golden: Golden) -> None:
    lines: list[str] = []
    vhd = tmp_path / "image.vhd"
    vhd.write_bytes(small_vhd.read_bytes())
    ctx = DistributeContext(
        vhd=vhd, output_dir=tmp_path / "o", force=False, run_id="20260101T000000Z-abcd",
        template_name="azdist", azure=AzureOptions(dry_run=True, emit=lines.append), generation="V2",
    )  # fmt: skip
    outputs = []
    for target in _template("").distribute[1:]:
        d = distributor_for(target)
        d.preflight(ctx, "properties.distribute[x]")
        outputs.append(d.distribute(ctx))
    golden("\n".join(lines).replace(str(tmp_path), "TMP") + "\n", "azure-dry-run.txt")
    assert [o.provisioning_state for o in outputs] == ["Failed", "Failed"]
    assert all(o.note == DRY_RUN_NOTE for o in outputs)
    assert outputs[0].artifact_id == IMAGE_ID
    assert outputs[1].artifact_id == f"{GALLERY_DEF}/versions/1.0.0"


@pytest.mark.parametrize(
    ("flag", "value", "text"),
    [
        ("staging", "vhds?sv=1&sig=SECRETSIG", "not a blob container URL"),
        ("staging", "https://acct.blob.core.windows.net/?sig=SECRETSIG", "not a blob container URL"),
        ("staging_account_id", "/subscriptions/s/resourceGroups/r", "not a storage account resource id"),
    ],
)
def test_build_azure_options_are_checked(flag: str, value: str, text: str) -> None:
    from localbuilder.commands.build import _azure_options
    from localbuilder.errors import UsageError

    args = argparse.Namespace(
        staging=None, staging_account_id=None, dry_run_azure=False, json=False, quiet=True
    )
    setattr(args, flag, value)
    with pytest.raises(UsageError, match=text) as info:
        _azure_options(args)
    assert "SECRETSIG" not in info.value.message and info.value.hint


def test_build_azure_options_parsed() -> None:
    from localbuilder.cli import build_parser
    from localbuilder.commands.build import _azure_options

    args = build_parser().parse_args(
        ["build", "t.json", "--staging", "https://acct.blob.core.windows.net/vhds?sv=1&sig=S",
         "--staging-account-id", ACCOUNT_ID, "--dry-run-azure"]
    )  # fmt: skip
    opts = _azure_options(args)
    assert opts.staging == "https://acct.blob.core.windows.net/vhds?sv=1&sig=S"
    assert opts.staging_account_id == ACCOUNT_ID and opts.dry_run
    assert "sig=S" not in repr(opts)
