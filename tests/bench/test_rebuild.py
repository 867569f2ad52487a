"""The pure parts of bench/rebuild.py: the template edit and reading the builds' phases."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.rebuild import (
    EDIT_LINE,
    allocated_bytes,
    customizers_run,
    edit_last_customizer,
    phase_table,
    write_edited_copy,
)
from localbuilder.errors import TemplateError, UsageError
from localbuilder.template import parse_template
from localbuilder.template.load import load_documents

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "debian-hello.json"


def _example() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return doc


def test_only_the_last_inline_step_changes() -> None:
    doc = _example()
    edited = edit_last_customizer(doc, EXAMPLE)
    before, after = doc["properties"]["customize"], edited["properties"]["customize"]
    assert after[:-1] == before[:-1]
    assert after[-1]["inline"] == [*before[-1]["inline"], EDIT_LINE]
    assert {k: v for k, v in after[-1].items() if k != "inline"} == {
        k: v for k, v in before[-1].items() if k != "inline"
    }
    assert doc == _example()  # the input is not modified


def test_rest_and_arm_shapes_are_edited_in_place_of_the_resource() -> None:
    body = _example()
    rest = {"parameters": {"api-version": "2022-07-01", "parameters": copy.deepcopy(body)}}
    edited = edit_last_customizer(rest, Path("rest.json"))
    assert edited["parameters"]["parameters"]["properties"]["customize"][-1]["inline"][-1] == EDIT_LINE
    arm = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "resources": [{"type": "Microsoft.Resources/tags", "name": "x"}, copy.deepcopy(body)],
    }
    edited = edit_last_customizer(arm, Path("arm.json"))
    assert edited["resources"][1]["properties"]["customize"][-1]["inline"][-1] == EDIT_LINE
    assert edited["resources"][0] == arm["resources"][0]


@pytest.mark.parametrize(
    ("last", "needle"),
    [
        ({"type": "File", "sourceUri": "files/index.html", "destination": "/tmp/x"}, "'File' step"),
        ({"type": "Shell", "scriptUri": "scripts/configure-app.sh"}, "inline is not a list"),
        ({"type": "Shell", "inline": "echo not-a-list"}, "inline is not a list"),
    ],
)
def test_a_last_step_that_is_not_inline_shell_is_refused(last: dict[str, Any], needle: str) -> None:
    doc = _example()
    doc["properties"]["customize"][-1] = last
    with pytest.raises(UsageError) as info:
        edit_last_customizer(doc, EXAMPLE)
    assert "properties.customize[3]" in info.value.message
    assert needle in info.value.message
    assert info.value.hint


def test_no_customizers_is_refused() -> None:
    doc = _example()
    doc["properties"]["customize"] = []
    with pytest.raises(UsageError, match="properties.customize is not a non-empty list"):
        edit_last_customizer(doc, EXAMPLE)


def test_not_a_template_is_refused() -> None:
    with pytest.raises(TemplateError, match="no image template found"):
        edit_last_customizer({"hello": 1}, Path("x.json"))


def test_edited_copy_resolves_the_same_files_and_differs_only_in_the_last_step(tmp_path: Path) -> None:
    # A copy of examples/ so the test never writes into the repository.
    shutil.copytree(EXAMPLE.parent, tmp_path / "examples")
    original = tmp_path / "examples" / EXAMPLE.name
    copy_file = write_edited_copy(original)
    assert copy_file.parent == original.parent and copy_file.name.startswith(".")
    templates = []
    for path in (original, copy_file):
        (loaded,) = load_documents(path)
        template, result = parse_template(loaded)
        assert template is not None, result.findings
        templates.append(template)
    a, b = templates
    assert a.customize[:-1] == b.customize[:-1]
    assert a.customize[-1] != b.customize[-1]
    # Relative URIs are unchanged text, resolved against the same directory.
    assert [getattr(s, "script_uri", None) for s in a.customize] == [
        getattr(s, "script_uri", None) for s in b.customize
    ]


PHASES_COLD = [
    {"name": "prepare", "seconds": 0.2, "ok": True},
    {"name": "boot", "seconds": 72.0, "ok": True},
    {"name": "customize[0] Shell 'a'", "seconds": 1.3, "ok": True},
    {"name": "customize[1] Shell 'b'", "seconds": 0.8, "ok": True},
    {"name": "checkpoints", "seconds": 9.0, "ok": True},
    {"name": "deprovision", "seconds": 6.0, "ok": True},
]
PHASES_REBUILD = [
    {"name": "prepare", "seconds": 0.2, "ok": True},
    {"name": "boot", "seconds": 3.1, "ok": True},
    {"name": "customize[1] Shell 'b'", "seconds": 0.9, "ok": True},
    {"name": "checkpoints", "seconds": 2.5, "ok": True},
    {"name": "deprovision", "seconds": 6.1, "ok": True},
]


def test_customizers_run_lists_only_the_steps_that_ran() -> None:
    assert customizers_run(PHASES_COLD) == ["customize[0] Shell 'a'", "customize[1] Shell 'b'"]
    assert customizers_run(PHASES_REBUILD) == ["customize[1] Shell 'b'"]


def test_phase_table_has_a_column_per_build_and_dashes_for_missing_phases() -> None:
    text = phase_table([("cold", {"phase_detail": PHASES_COLD, "total_seconds": 90.0}),
                        ("rebuild", {"phase_detail": PHASES_REBUILD, "total_seconds": 13.0})])
    rows = {line.split("  ")[0]: line.split() for line in text.splitlines()}
    assert rows["boot"][-2:] == ["72.0", "3.1"]
    assert rows["customize[0] Shell 'a'"][-2:] == ["1.3", "-"]
    assert text.splitlines()[-1].split()[-2:] == ["90.0", "13.0"]


def test_allocated_bytes_counts_allocation_not_apparent_size(tmp_path: Path) -> None:
    assert allocated_bytes(tmp_path / "missing") == 0
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data").write_bytes(b"x" * 65536)
    with open(tmp_path / "sparse", "wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB apparent, nothing allocated
    total = allocated_bytes(tmp_path)
    assert 65536 <= total < 1 << 20
