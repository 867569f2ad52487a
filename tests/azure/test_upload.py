"""Sparse page-blob upload against a real Azurite on 127.0.0.1 (tests/fixtures/azurite.py).

The reference workload of issue 8: a 30 GiB fixed VHD holding ~0.5 GiB of data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobClient

from localbuilder.__main__ import main
from localbuilder.azure.extents import Range
from localbuilder.azure.pageblob import upload_vhd
from localbuilder.azure.target import resolve_target
from localbuilder.disk import to_fixed_vhd
from localbuilder.errors import DistributeError
from localbuilder.redact import redact
from tests.fixtures.azurite import Azurite, make_sparse_vhd

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def big_vhd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """30 GiB virtual, 512 MiB of random data in 64 scattered 8 MiB blocks, as a fixed VHD."""
    vhd = make_sparse_vhd(tmp_path_factory.mktemp("vhd"))
    yield vhd, 512 * MiB
    vhd.unlink()


def _container(az: Azurite, name: str) -> None:
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(az.connection_string)
    try:
        svc.create_container(name)
    except Exception as exc:  # noqa: BLE001 - already exists is fine
        if "ContainerAlreadyExists" not in str(exc):
            raise


def _assert_blob_equals_file(az: Azurite, url: str, path: Path) -> None:
    """Independent check: every data extent of the file and every page range of the blob agree."""
    client = BlobClient.from_blob_url(url, credential={"account_name": az.account, "account_key": az.key})
    size = path.stat().st_size
    assert client.get_blob_properties().size == size
    ranges = [(r.start, r.end + 1) for r in client.list_page_ranges()]
    with open(path, "rb") as fh:
        fd = fh.fileno()
        # 1) every blob range holds exactly the file's bytes
        for start, end in ranges:
            remote = client.download_blob(offset=start, length=end - start).readall()
            fh.seek(start)
            assert remote == fh.read(end - start), f"bytes differ in [{start}, {end})"
        # 2) every non-zero byte of the file lies inside some blob range (outside, the blob reads 0)
        pos = 0
        while True:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            fh.seek(start)
            data = fh.read(end - start)
            for i in range(0, len(data), 512):
                if any(data[i : i + 512]):
                    off = start + i
                    assert any(s <= off < e for s, e in ranges), f"data at {off} missing from the blob"
            pos = end


def test_upload_30gib_sparse_vhd_sends_only_data(azurite: Azurite, big_vhd: tuple[Path, int], capsys) -> None:  # type: ignore[no-untyped-def]
    vhd, data = big_vhd
    _container(azurite, "vhds")
    url = azurite.blob_url("vhds", "image.vhd")
    rc = main(["upload", str(vhd), "--to", url, "--connection-string", azurite.connection_string, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    result = json.loads(out.out)
    assert azurite.key not in out.out + out.err
    assert result["verified"] == "full"
    # bytes sent within 1 % of the data actually stored (data + the 512-byte footer page)
    assert data <= result["bytes_sent"] <= (data + 512) * 1.01
    _assert_blob_equals_file(azurite, url, vhd)


def test_interrupted_upload_resumes_and_sends_only_the_rest(
    azurite: Azurite, big_vhd: tuple[Path, int]
) -> None:
    vhd, data = big_vhd
    _container(azurite, "resume")
    url = azurite.blob_url("resume", "image.vhd")
    target = resolve_target(url, connection_string=azurite.connection_string)
    seen: list[Range] = []

    class Interrupt(Exception):
        pass

    def stop_halfway(rng: Range) -> None:
        seen.append(rng)
        if sum(r.length for r in seen) >= data // 2:
            raise Interrupt("simulated network loss")

    with pytest.raises(Interrupt):
        upload_vhd(vhd, target, progress=False, on_sent=stop_halfway)
    first = sum(r.length for r in seen)
    assert data // 2 <= first < data

    result = upload_vhd(vhd, target, progress=False)
    assert result.bytes_resumed >= first
    assert result.bytes_sent + result.bytes_resumed == pytest.approx(data + 512, abs=512)
    assert result.bytes_sent <= data - data // 2 + 8 * 4 * MiB  # only what was missing (+ in-flight)
    _assert_blob_equals_file(azurite, url, vhd)


def test_wrong_key_is_a_clear_error_without_secrets(azurite: Azurite, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    vhd = tmp_path / "small.vhd"
    raw = tmp_path / "small.raw"
    with open(raw, "wb") as fh:
        fh.truncate(4 * MiB)
        fh.write(b"x" * 4096)
    to_fixed_vhd(raw, "raw", vhd, progress=False)
    bad_key = "A" * 86 + "=="
    rc = main(["upload", str(vhd), "--to", azurite.blob_url("vhds", "x.vhd"), "--account-key", bad_key])
    err = capsys.readouterr().err
    assert rc == 1
    assert "hint:" in err
    assert bad_key not in err


def test_not_a_fixed_vhd_is_refused_before_any_request(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "x.raw"
    f.write_bytes(b"\0" * 4096)
    rc = main(["upload", str(f), "--to", "http://127.0.0.1:9/devstoreaccount1/c/x.vhd?sig=SECRET"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "SECRET" not in err


def test_redact_removes_signatures_and_keys() -> None:
    text = "GET https://a.blob.core.windows.net/c/b?sv=2022&sig=abc%2Fdef&se=1 AccountKey=xyz=="
    red = redact(text)
    assert "abc%2Fdef" not in red and "xyz" not in red
    assert "sv=2022" in red


def test_resolve_target_forms() -> None:
    t = resolve_target("https://acct.blob.core.windows.net/c/b.vhd?sv=1&sig=s")
    assert t.url == "https://acct.blob.core.windows.net/c/b.vhd" and t.sas == "sv=1&sig=s"
    assert "sig" not in repr(t)
    t = resolve_target("https://acct.blob.core.windows.net/c/b.vhd", account_key="k")
    assert t.credential == {"account_name": "acct", "account_key": "k"}
    t = resolve_target(
        "c/b.vhd", connection_string="AccountName=acct;AccountKey=k;EndpointSuffix=core.windows.net"
    )
    assert t.url == "https://acct.blob.core.windows.net/c/b.vhd"
    from localbuilder.errors import UsageError

    with pytest.raises(UsageError):
        resolve_target("https://acct.blob.core.windows.net/onlycontainer", account_key="k")
    with pytest.raises(UsageError):
        resolve_target("c/b.vhd")
    assert DistributeError  # the error family uploads raise
