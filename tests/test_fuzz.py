"""Fuzzing ``localbuilder validate``: mutated corpus templates and generated junk never crash it.

Every input must end in exit status 0 or 2 (never 1, the "internal error" of ``__main__``), and every
template that cannot be built must come with at least one error finding that has a path. The library
entry points may raise only ``TemplateError``. ``HYPOTHESIS_FUZZ_EXAMPLES`` scales the run
(``make fuzz`` uses 10000; the default keeps CI well under a minute).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localbuilder.__main__ import main
from localbuilder.errors import TemplateError
from localbuilder.template import jsonc, parse_template
from localbuilder.template.load import load_documents

EXAMPLES = int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", 2000))
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "aib-templates"
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # 2 shared cores: timing varies, and a slow example is not a failure
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _corpus() -> list[Any]:
    if not CORPUS.is_dir():
        return []
    return [jsonc.load_file(p).value for p in sorted(CORPUS.glob("*.json"))]


DOCS = _corpus()

# Values that have tripped validators before: wrong types spelled as strings, placeholders, expressions.
TRICKY = st.sampled_from([
    "false", "0", "", " ", "<placeholder>", "[parameters('x')]", "[concat('a'", "[[escaped]", "Shell",
    "shell",
    "ISO", "PlatformImage", "/etc/passwd", "/tmp/../etc/x", "c:\\x", "5 minutes", "1h30m", "2024-02-01",
    "2018-02-01-preview", "x" * 300, "\u0000", "ü", 2**31, -(2**31) - 1, 2**70, -1, 0, 1.5, 240.0, True, None,
    [], {}, [None], {"type": None}, {"type": "Shell"}, {"type": "VHD", "runOutputName": "a b"},
]).map(copy.deepcopy)  # fresh containers: the mutations below change values in place  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | TRICKY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | TRICKY.filter(
        lambda v: isinstance(v, str)), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def _containers(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(value, dict):
        out.append(path)
        for key, child in value.items():
            out.extend(_containers(child, (*path, key)))
    elif isinstance(value, list):
        out.append(path)
        for index, child in enumerate(value):
            out.extend(_containers(child, (*path, index)))
    return out


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def _mutate(data: st.DataObject, doc: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        paths = _containers(doc)
        if not paths:
            return data.draw(JSON)
        target = _at(doc, data.draw(st.sampled_from(paths), label="path"))
        op = data.draw(st.sampled_from(["drop", "replace", "insert", "retype"]), label="op")
        keys: list[Any] = list(target) if isinstance(target, dict) else list(range(len(target)))
        if op == "insert" or not keys:
            junk = data.draw(JSON, label="junk")
            if isinstance(target, dict):
                target[
                    data.draw(st.text(max_size=12) | st.sampled_from(["type", "Type", "scriptUri", "inline"]))
                ] = junk
            else:
                target.append(junk)
            continue
        key = data.draw(st.sampled_from(keys), label="key")
        if op == "drop":
            del target[key]
        elif op == "replace":
            target[key] = data.draw(JSON, label="value")
        else:  # the same value with another JSON type
            old = target[key]
            target[key] = data.draw(st.sampled_from([str(old), [old], {"value": old}, None, 1, True]))
    return doc


def _run_cli(path: Path, *extra: str) -> tuple[int, list[dict[str, Any]] | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["validate", "--json", *extra, str(path)])
    text = out.getvalue()
    return rc, (json.loads(text) if text.strip() else None), err.getvalue()


def _check_library(path: Path) -> None:
    try:
        for loaded in load_documents(path):
            parse_template(loaded)
            parse_template(loaded, strict=True)
    except TemplateError:
        pass


def _assert_sane(rc: int, entries: list[dict[str, Any]] | None, stderr: str, *, must_fail: bool) -> None:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert rc in ((2,) if must_fail else (0, 2)), stderr
    assert entries, stderr
    for entry in entries:
        assert set(entry) >= {"file", "resource", "shape", "apiVersion", "ok", "findings"}
        if not entry["ok"]:
            errors = [f for f in entry["findings"] if f["severity"] == "error"]
            assert errors, entry
            assert all(isinstance(f["path"], str) and f["path"] for f in errors)
    assert (rc == 0) == all(e["ok"] for e in entries)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.skipif(not DOCS, reason="../shared/corpus is absent")
@FUZZ
@given(data=st.data())
def test_mutated_corpus_templates(workdir: Path, data: st.DataObject) -> None:
    doc = data.draw(st.sampled_from(DOCS), label="template")
    path = workdir / "mutated.json"
    path.write_text(json.dumps(_mutate(data, doc)))
    _check_library(path)
    rc, entries, stderr = _run_cli(path)
    _assert_sane(rc, entries, stderr, must_fail=False)


@settings(FUZZ, max_examples=max(EXAMPLES // 4, 10))
@given(doc=JSON)
def test_junk_json_documents(workdir: Path, doc: Any) -> None:
    path = workdir / "junk.json"
    path.write_text(json.dumps(doc))
    _check_library(path)
    rc, entries, stderr = _run_cli(path)
    _assert_sane(rc, entries, stderr, must_fail=True)


@settings(FUZZ, max_examples=max(EXAMPLES // 8, 10))
@given(blob=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_junk_bytes(workdir: Path, blob: bytes) -> None:
    path = workdir / "junk.bin"
    path.write_bytes(blob)
    _check_library(path)
    rc, entries, stderr = _run_cli(path)
    _assert_sane(rc, entries, stderr, must_fail=True)


def test_deep_nesting_and_huge_files(workdir: Path) -> None:
    deep = workdir / "deep.json"
    deep.write_text('{"properties": ' * 5000 + "{}" + "}" * 5000)
    huge = workdir / "huge.json"
    huge.write_text('{"properties": {"x": "' + "a" * (11 * 1024 * 1024) + '"}}')
    for path in (deep, huge):
        _check_library(path)
        rc, entries, stderr = _run_cli(path)
        _assert_sane(rc, entries, stderr, must_fail=True)
