"""``localbuilder validate`` through ``localbuilder.__main__.main``: output format, exit codes, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localbuilder.__main__ import main

IDENTITY = {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/0/id/aib": {}}}


def template(**properties: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                   "sku": "server", "version": "latest"},
        "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hello"]}],
        "distribute": [{"type": "VHD", "runOutputName": "vhd"}],
    }  # fmt: skip
    props.update(properties)
    return {"apiVersion": "2022-02-14", "location": "westus", "identity": IDENTITY, "properties": props}


def write(tmp_path: Path, doc: Any, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["validate", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_a_clean_template_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, template())
    rc, out, _ = validate(capsys, str(path))
    assert rc == 0
    assert out == f"{path}: OK: can be built (API 2022-02-14, linux; clean)\n"


def test_findings_are_printed_with_path_code_and_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, template(customize=[{"type": "Shell", "name": "x"}]))
    rc, out, _ = validate(capsys, str(path))
    assert rc == 2
    assert out.splitlines() == [
        f"{path}: properties.customize[0]: error: Exactly one of 'scriptUri' or 'inline' can be specified: "
        "neither is given [NoCustomizerScript]",
        '    hint: add "scriptUri": "https://…" or "inline": ["command"]',
        f"{path}: FAILED: cannot be built (1 error)",
    ]


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, template(), "good.json")
    bad = write(tmp_path, template(buildTimeoutInMinutes="60"), "bad.json")
    rc, out, _ = validate(capsys, "--json", str(good), str(bad))
    assert rc == 2
    entries = json.loads(out)
    assert [(e["file"], e["shape"], e["apiVersion"], e["ok"]) for e in entries] == [
        (str(good), "bare", "2022-02-14", True),
        (str(bad), "bare", "2022-02-14", False),
    ]
    assert entries[1]["findings"] == [{
        "path": "properties.buildTimeoutInMinutes", "severity": "error",
        "message": "must be an integer, not a string ('60')", "hint": "write 60 without quotes", "code": None,
    }]  # fmt: skip


def test_strict_turns_service_findings_into_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = template()
    del doc["identity"]
    path = write(tmp_path, doc)
    rc, out, _ = validate(capsys, str(path))
    assert rc == 0
    assert f"{path}: identity: service: 'identity' is required (from API 2020-02-14)" in out
    rc, out, _ = validate(capsys, "--strict", str(path))
    assert rc == 2
    assert out.endswith(f"{path}: FAILED: cannot be built (1 service)\n")


def test_set_fixes_a_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, template(distribute=[{"type": "VHD", "runOutputName": "a b"}]))
    assert validate(capsys, str(path))[0] == 2
    rc, out, _ = validate(capsys, "--set", "properties.distribute[0].runOutputName=ab", str(path))
    assert rc == 0, out


def test_allow_any_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    step = {"type": "File", "sourceUri": "https://example.com/motd", "destination": "/etc/motd"}
    path = write(tmp_path, template(customize=[step]))
    assert validate(capsys, str(path))[0] == 2
    assert validate(capsys, "--allow-any-destination", str(path))[0] == 0


def test_arm_parameters_and_one_result_per_resource(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def resource(name: str) -> dict[str, Any]:
        body = template()
        return {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "[parameters('v')]",
                "name": name, "location": "westus", "identity": IDENTITY,
                "properties": body["properties"]}  # fmt: skip

    arm = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"v": {"type": "string"}},
        "resources": [resource("one"), resource("two")],
    }
    path = write(tmp_path, arm, "arm.json")
    rc, out, _ = validate(capsys, str(path))
    assert rc == 2 and f"{path} (one): apiVersion: error: cannot evaluate" in out
    rc, out, _ = validate(capsys, "--param", "v=2022-07-01", str(path))
    assert rc == 0
    assert f"{path} (one): OK: can be built (API 2022-07-01" in out
    assert f"{path} (two): OK: can be built (API 2022-07-01" in out
    rc, out, _ = validate(capsys, "--json", "--param", "v=2022-07-01", "--resource", "two", str(path))
    assert [(e["resource"], e["shape"], e["ok"]) for e in json.loads(out)] == [("two", "arm", True)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON at line 1 column 2"),
        (b"\x7fELF\x02\x01\x01\x00\xff\xfe", "binary data: a NUL byte"),
        (b'{"a": "\xff\xfe"}', "not UTF-8 text"),
        ("[1, 2]", "the top level is a JSON array, not an object"),
        ('{"a": ' * 1000 + "1" + "}" * 1000, "nest"),
    ],
)
def test_bad_files_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, message: str
) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    rc, out, _ = validate(capsys, str(path))
    assert rc == 2
    assert out.startswith(f"{path}: error: ") and message in out
    assert out.endswith(f"{path}: FAILED: cannot be built (1 error)\n")


def test_missing_file_and_directory_do_not_stop_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, template())
    rc, out, _ = validate(capsys, str(tmp_path / "nope.json"), str(tmp_path), str(good))
    assert rc == 2
    assert f"{tmp_path / 'nope.json'}: error: no such file" in out
    assert f"{tmp_path}: error: {tmp_path} is a directory" in out
    assert f"{good}: OK: can be built" in out


def test_bad_param_syntax_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, template())
    rc, _, err = validate(capsys, "--param", "novalue", str(path))
    assert rc == 2
    assert "--param 'novalue': expected NAME=VALUE" in err
    assert "hint: e.g. --param api-version=2022-02-14" in err


def test_no_template_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = validate(capsys)
    assert rc == 2
    assert "the following arguments are required: TEMPLATE" in err
