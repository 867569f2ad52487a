"""Secrets never appear in what a run leaves behind: logs, state, errors, ``--json`` output.

Each test runs a build whose secrets it knows, then greps every artefact for them (as text, URL-encoded,
UTF-16 and base64: tests/security/leaks.py), including the files of the run directory, stdout (``--json``),
stderr (the console, error messages) and every log record at debug level.

- SAS tokens, storage account key, connection string: ``localbuilder build`` (the real CLI) with a
  ``scriptUri`` and a ``sourceUri`` carrying SAS tokens (served by a local HTTP server), a VHD ``uri`` with a
  SAS, a ``--staging`` upload to a real Azurite (SAS in the URL, or the key / connection string in the
  environment, as the user would give them), and a failing upload whose error names the URL. The guest is
  the fake platform of tests/build (no VM), the Compute calls are ``--dry-run-azure``.
- The WinRM password: the Windows boot path through the orchestrator (first-boot ISO with a generated
  password, real pywinrm against the WS-Man test server, an elevated PowerShell step that hands the
  password to a scheduled task, Sysprep).
- The build key: tests/security/test_isolation_integration.py (a real guest).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from localbuilder.__main__ import main
from localbuilder.disk import to_fixed_vhd
from localbuilder.orchestrator import Build, BuildOptions
from localbuilder.redact import hide_query, redact, redact_line, strip_query
from localbuilder.state import RunState, iter_runs
from localbuilder.template import parse_template
from localbuilder.template.load import load_documents
from tests.azure.test_build_distribute import VhdPlatform
from tests.azure.test_compute import IMAGE_ID
from tests.build.test_fetch import http_root  # noqa: F401
from tests.fixtures.azurite import Azurite
from tests.security.leaks import forms, leaks_in_text, leaks_in_tree
from tests.windows.test_build_windows import TEMPLATE, TEST_PS_SCRIPT, FakeHypervisorPlatform


@pytest.fixture(scope="module")
def tiny_vhd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 MiB fixed VHD with 1 MiB of data: uploads stay quick (the secrets are what is tested)."""
    d = tmp_path_factory.mktemp("tiny")
    raw = d / "disk.raw"
    with open(raw, "wb") as fh:
        fh.truncate(8 * 1024 * 1024)
        fh.seek(1024 * 1024)
        fh.write(bytes(range(256)) * 4096)
    to_fixed_vhd(raw, "raw", d / "disk.vhd", progress=False)
    return d / "disk.vhd"


@contextlib.contextmanager
def debug_records() -> Iterator[list[str]]:
    """Every record of the ``localbuilder`` loggers, formatted with its exception, at debug level."""
    lines: list[str] = []
    formatter = logging.Formatter("%(name)s: %(message)s")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    handler = Collect(level=logging.DEBUG)
    root = logging.getLogger("localbuilder")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_each_redaction_rule_on_one_sas_url() -> None:
    """localbuilder.redact: what each of its rules keeps of the same URL (the artefact tests below rely on
    them)."""
    url = "https://acct.blob.core.windows.net/c/b.vhd?sv=2022-11-02&sp=r&sig=abc%2Fdef"
    assert strip_query(url + "#frag") == "https://acct.blob.core.windows.net/c/b.vhd"
    assert hide_query(url) == "https://acct.blob.core.windows.net/c/b.vhd?…"
    assert redact(url) == "https://acct.blob.core.windows.net/c/b.vhd?sv=2022-11-02&sp=r&sig=REDACTED"
    assert redact("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=xyz==;") == (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=REDACTED;"
    )
    assert redact("password=hunter2") == "password=hunter2"  # free text: storage secrets only
    assert redact_line(f"curl {url} password=hunter2") == f"curl {redact(url)} password=REDACTED"


def _sas(azurite: Azurite, container: str) -> str:
    return generate_container_sas(
        azurite.account, container, account_key=azurite.key,
        permission=ContainerSasPermissions(read=True, write=True, create=True),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1),
    )  # fmt: skip


def _sig(sas: str) -> str:
    return urllib.parse.unquote(dict(part.split("=", 1) for part in sas.split("&"))["sig"])


@pytest.mark.parametrize(
    "credential",
    [
        "sas",
        "key",
        "connection-string",
        "sas-via-set",
    ],
)
def test_storage_secrets_never_reach_artefacts_output_or_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    azurite: Azurite,
    tiny_vhd: Path,
    http_root: tuple[str, Path],  # noqa: F811
    credential: str,
) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    # Azurite is shared by the session: containers of their own per case.
    uris, staged = f"uris-{credential}", f"staging-{credential}"
    for container in (uris, staged):
        service.create_container(container)
    uri_sas, staging_sas = _sas(azurite, uris), _sas(azurite, staged)
    staging = f"{azurite.endpoint}/{staged}"
    if credential.startswith("sas"):
        staging += f"?{staging_sas}"
    elif credential == "key":
        monkeypatch.setenv("AZURE_STORAGE_KEY", azurite.key)
    else:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)

    base, www = http_root
    (www / "setup.sh").write_text("#!/bin/sh\necho setup\n")
    (www / "motd").write_text("hello\n")
    fetch_sigs = ("c2NyaXB0LXNpZy1zZWNyZXQ=", "ZmlsZS1zaWctc2VjcmV0")
    bad_sig = "YmFkLXNpZy1zZWNyZXQ="
    query = "sv=2022-11-02&sr=b&sp=r&sig="
    script_uri = f"{base}/setup.sh?{query}{urllib.parse.quote(fetch_sigs[0])}"
    source_uri = f"{base}/motd?{query}{urllib.parse.quote(fetch_sigs[1])}"
    vhd_uri = f"{azurite.blob_url(uris, 'd.vhd')}?{uri_sas}"
    bad_uri = f"{azurite.blob_url('nope', 'x.vhd')}?sv=2021-08-06&sr=c&sp=rw&sig={bad_sig}"
    via_set = credential == "sas-via-set"
    body = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01",
        "location": "westeurope",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12",
                       "version": "latest"},
            "customize": [
                {"type": "Shell", "name": "s", "scriptUri": script_uri if not via_set else f"{base}/x"},
                {"type": "File", "name": "f", "destination": "/tmp/motd", "sourceUri": source_uri},
            ],
            "distribute": [
                {"type": "VHD", "runOutputName": "disk", "uri": vhd_uri if not via_set else bad_uri},
                {"type": "VHD", "runOutputName": "bad", "uri": bad_uri},
                {"type": "ManagedImage", "runOutputName": "img", "imageId": IMAGE_ID,
                 "location": "westeurope"},
            ],
        },
    }  # fmt: skip
    tpl = tmp_path / "tpl" / "t.json"
    tpl.parent.mkdir()
    tpl.write_text(json.dumps(body))

    platform = VhdPlatform(tmp_path)
    platform.vhd = tiny_vhd
    monkeypatch.setattr("localbuilder.commands.build.LocalPlatform", lambda **kwargs: platform)
    out, err = io.StringIO(), io.StringIO()
    with debug_records() as records, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        args = ["build", str(tpl), "--json", "--staging", staging, "--dry-run-azure"]
        if via_set:  # the way tests/windows points a template at local files
            args += [f"--set=properties.customize[0].scriptUri={script_uri}",
                     f"--set=properties.distribute[0].uri={vhd_uri}"]  # fmt: skip
        code = main(args)

    (run,) = iter_runs("t")
    record = run.read()
    assert code == 1 and record.run_state is RunState.PartiallySucceeded, record.last_run_status.message
    outputs = {o.name: o for o in record.run_outputs}
    assert outputs["disk"].provisioning_state == "Succeeded"
    assert outputs["bad"].provisioning_state == "Failed" and "upload to" in outputs["bad"].note
    # the uploads really happened (so the secrets were really used)
    assert service.get_blob_client(uris, "d.vhd").exists()
    assert service.get_blob_client(staged, f"img-{record.run_id}.vhd").exists()
    assert "fetched " in run.customization_log.read_text()

    needles: dict[str, bytes] = {}
    for name, secret in [("template SAS", _sig(uri_sas)), ("staging SAS", _sig(staging_sas)),
                         ("script SAS", fetch_sigs[0]), ("file SAS", fetch_sigs[1]), ("bad SAS", bad_sig),
                         ("account key", azurite.key)]:  # fmt: skip
        needles.update(forms(name, secret))
    found = leaks_in_tree(run.path, needles)
    found |= leaks_in_text("stdout (--json)", out.getvalue(), needles)
    found |= leaks_in_text("stderr", err.getvalue(), needles)
    found |= leaks_in_text("debug log records", "\n".join(records), needles)
    assert found == {}
    assert json.loads(out.getvalue())["runId"] == record.run_id  # stdout really is the --json record


def test_winrm_password_never_reaches_artefacts_or_logs(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("localbuilder.windows.restart.CHECK_INTERVAL", 0.05)
    from localbuilder.run import run

    base = tmp_path / "win.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"])
    script = tmp_path / "testPsScript.ps1"
    script.write_text(TEST_PS_SCRIPT)
    index = tmp_path / "index.html"
    index.write_text("<html>Azure Image Builder</html>\n")
    loaded = load_documents(
        corpus_dir / TEMPLATE,
        sets=[
            f"properties.customize[0].scriptUri={script.as_uri()}",
            f"properties.customize[2].sourceUri={index.as_uri()}",
            # elevated: the password goes to Register-ScheduledTask inside the guest
            "properties.customize[3].runElevated=true",
            'properties.distribute=[{"type": "VHD", "runOutputName": "win"}]',
            "properties.vmProfile.osDiskSizeGB=1",
        ],
    )
    template, _ = parse_template(loaded[0])
    assert template is not None
    platform = FakeHypervisorPlatform(base, tmp_path)
    try:
        # use_cache=False: customizer checkpoints are not what this test is about (and need qemu).
        options = BuildOptions(
            runs_root=tmp_path / "runs", output_dir=tmp_path / "out", interactive=False, use_cache=False
        )
        with debug_records() as records:
            record = Build(template, corpus_dir / TEMPLATE, platform, options).execute()
        assert record.run_state is RunState.Succeeded, record.last_run_status.message
        (srv,) = platform.servers
        ((user, password),) = srv.users.items()
        model = platform.models[0]
        # The elevated step really used the password (the model checks it), so it was really sent.
        assert [(t.run_as, t.password_ok) for t in model.tasks if t.run_as == user] == [(user, True)]
    finally:
        for srv in platform.servers:
            srv.stop()
    needles = forms("WinRM password", password)
    found = leaks_in_tree(tmp_path / "runs", needles)
    found |= leaks_in_tree(tmp_path / "out", needles)
    found |= leaks_in_text("state (--json)", json.dumps(record.as_dict()), needles)
    found |= leaks_in_text("log records", "\n".join(records), needles)
    assert found == {}
    assert len(records) > 50  # the debug log was really captured
