"""Managed image / gallery version creation, asserted at the Azure SDK's transport boundary.

FAKE TRANSPORT: no request leaves the process. `RecordingTransport` stands where azure-core's
RequestsTransport would send HTTP; it records each request and answers like the Compute API does for
a finished long-running PUT (200 with provisioningState Succeeded).
"""

from __future__ import annotations

import io
import json
import shlex
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._requests_basic import RestRequestsTransportResponse

from localbuilder.azure.compute import (
    ComputeId,
    DryRunCompute,
    GalleryVersionPlan,
    ImagePlan,
    SdkCompute,
    TargetRegion,
    next_version,
    source_version,
)
from localbuilder.errors import DistributeError

SUB = "00000000-0000-0000-0000-000000000001"
IMAGE_ID = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/images/img1"
GALLERY_DEF = f"/subscriptions/{SUB}/resourceGroups/rg2/providers/Microsoft.Compute/galleries/gal/images/def"
BLOB = "https://stage.blob.core.windows.net/vhds/run1.vhd"
ACCOUNT_ID = f"/subscriptions/{SUB}/resourceGroups/rg2/providers/Microsoft.Storage/storageAccounts/stage"


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", 4102444800)


class RecordingTransport(HttpTransport):  # type: ignore[misc]
    def __init__(self, existing_versions: list[str] | None = None, fail_with: int | None = None) -> None:
        self.requests: list[Any] = []
        self.existing_versions = existing_versions or []
        self.fail_with = fail_with

    def __enter__(self) -> RecordingTransport:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> Any:
        self.requests.append(request)
        resp = requests.Response()
        resp.headers["content-type"] = "application/json"
        if self.fail_with:
            resp.status_code = self.fail_with
            body: dict[str, Any] = {"error": {"code": "AuthorizationFailed", "message": "no access"}}
        elif request.method == "GET":
            resp.status_code = 200
            body = {
                "value": [{"name": v, "id": f"{GALLERY_DEF}/versions/{v}"} for v in self.existing_versions]
            }
        else:
            resp.status_code = 200
            sent = _body(request)
            path = request.url.split("?")[0].split("management.azure.com")[-1]
            body = {
                **sent,
                "id": path,
                "properties": {**sent["properties"], "provisioningState": "Succeeded"},
            }
        resp._content = json.dumps(body).encode()
        resp.url = request.url
        resp.raw = io.BytesIO(resp._content)
        return RestRequestsTransportResponse(request=request, internal_response=resp)


def _body(request: Any) -> Any:
    body = request.content
    if hasattr(body, "read"):
        body.seek(0)
        body = body.read()
    return json.loads(body)


def _puts(transport: RecordingTransport) -> list[Any]:
    return [r for r in transport.requests if r.method == "PUT"]


def test_fake_transport_managed_image_request_body() -> None:
    transport = RecordingTransport()
    compute = SdkCompute(FakeCredential(), SUB, transport=transport)
    plan = ImagePlan(IMAGE_ID, "westeurope", BLOB, "Linux", "V2", {"team": "img"})
    assert compute.create_image(plan) == IMAGE_ID
    (put,) = _puts(transport)
    assert put.url.startswith(f"https://management.azure.com{IMAGE_ID}?api-version=")
    assert _body(put) == {
        "location": "westeurope",
        "tags": {"team": "img"},
        "properties": {
            "hyperVGeneration": "V2",
            "storageProfile": {
                "osDisk": {
                    "osType": "Linux",
                    "osState": "Generalized",
                    "blobUri": BLOB,
                    "storageAccountType": "Standard_LRS",
                }
            },
        },
    }
    assert put.headers["Authorization"] == "Bearer fake-token"


def test_fake_transport_gallery_version_latest_versioning() -> None:
    transport = RecordingTransport(existing_versions=["1.0.0", "1.0.9", "1.0.10", "0.9.99", "weird"])
    compute = SdkCompute(FakeCredential(), SUB, transport=transport)
    plan = GalleryVersionPlan(
        GALLERY_DEF, "westeurope", BLOB, ACCOUNT_ID,
        target_regions=(TargetRegion("westeurope", 1, "Standard_LRS"), TargetRegion("northeurope", 2)),
        exclude_from_latest=True, storage_account_type="Standard_ZRS", replication_mode="Shallow",
        versioning="Latest",
    )  # fmt: skip
    artifact = compute.create_gallery_version(plan)
    assert artifact == f"{GALLERY_DEF}/versions/1.0.11"
    (put,) = _puts(transport)
    assert f"{GALLERY_DEF}/versions/1.0.11?" in put.url
    body = _body(put)
    assert body["properties"]["publishingProfile"] == {
        "targetRegions": [
            {"name": "westeurope", "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS"},
            {"name": "northeurope", "regionalReplicaCount": 2},
        ],
        "excludeFromLatest": True,
        "storageAccountType": "Standard_ZRS",
        "replicationMode": "Shallow",
    }
    assert body["properties"]["storageProfile"]["osDiskImage"]["source"] == {
        "uri": BLOB,
        "storageAccountId": ACCOUNT_ID,
    }


def test_fake_transport_explicit_version_does_not_list() -> None:
    transport = RecordingTransport()
    compute = SdkCompute(FakeCredential(), SUB, transport=transport)
    plan = GalleryVersionPlan(f"{GALLERY_DEF}/versions/2.3.4", "eastus", BLOB, ACCOUNT_ID)
    assert compute.create_gallery_version(plan).endswith("/versions/2.3.4")
    assert [r.method for r in transport.requests] == ["PUT"]


def test_fake_transport_failure_is_translated() -> None:
    compute = SdkCompute(FakeCredential(), SUB, transport=RecordingTransport(fail_with=403))
    with pytest.raises(DistributeError) as err:
        compute.create_image(ImagePlan(IMAGE_ID, "westeurope", BLOB))
    assert "img1" in str(err.value) and err.value.hint


def test_dry_run_prints_az_commands() -> None:
    lines: list[str] = []
    dry = DryRunCompute(emit=lines.append, existing_versions=["1.0.0"])
    dry.create_image(ImagePlan(IMAGE_ID, "westeurope", BLOB, "Linux", "V2", {"a": "b"}))
    dry.create_gallery_version(
        GalleryVersionPlan(GALLERY_DEF, "westeurope", BLOB, ACCOUNT_ID, exclude_from_latest=True)
    )
    assert lines == [
        f"az image create --subscription {SUB} --resource-group rg1 --name img1 --location westeurope "
        f"--source {BLOB} --os-type Linux --hyper-v-generation V2 --tags a=b",
        f"az sig image-version create --subscription {SUB} --resource-group rg2 --gallery-name gal "
        f"--gallery-image-definition def --gallery-image-version 1.0.1 --location westeurope "
        f"--os-vhd-uri {BLOB} --os-vhd-storage-account {ACCOUNT_ID} --target-regions westeurope=1 "
        f"--exclude-from-latest true",
    ]
    assert all(shlex.split(line)[0] == "az" for line in lines)


def test_versions() -> None:
    assert next_version([]) == "1.0.0"
    assert next_version([], major=3) == "3.0.0"
    assert next_version(["1.2.3", "1.10.0", "1.9.9"]) == "1.10.1"  # numeric, not string order
    assert next_version(["1.2.3", "2.0.0"], major=1) == "1.2.4"
    assert source_version("0.20250101.1") == "0.20250101.1"
    with pytest.raises(DistributeError):
        source_version("latest")


@pytest.mark.parametrize(
    "text",
    [
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/disks/x",
        "not-an-id",
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images",
    ],
)
def test_bad_image_ids(text: str) -> None:
    with pytest.raises(DistributeError) as err:
        ComputeId.parse(text, "image", "properties.distribute[0].imageId")
    assert "properties.distribute[0].imageId" in str(err.value)
