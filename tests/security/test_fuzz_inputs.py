"""Fuzzing the other two user inputs of ``validate``/``build``: ARM parameter files and ``--set`` values
(tests/test_fuzz.py fuzzes the template documents themselves).

The promise is the same: never a traceback, exit status 0 or 2, and a failed document has at least one
error finding with a path. ``HYPOTHESIS_FUZZ_EXAMPLES`` scales both tests (``make fuzz``: 10,000 each;
CI: 2,000 each).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localbuilder.errors import TemplateError
from localbuilder.template import parse_template
from localbuilder.template.load import load_documents
from tests.test_fuzz import CORPUS, DOCS, FUZZ, JSON, TRICKY, _assert_sane, _containers, _run_cli

# The corpus files in the order of DOCS (tests/test_fuzz.py reads them sorted).
FILES = sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []
# ARM deployments that declare parameters: the documents a parameters file is for.
ARM_WITH_PARAMS = [
    (path, list(doc["parameters"]))
    for path, doc in zip(FILES, DOCS, strict=True)
    if isinstance(doc, dict) and isinstance(doc.get("parameters"), dict) and "resources" in doc
]

NAME = st.text(max_size=12) | st.sampled_from(["", "imageTemplateName", "api-version", "$schema", "value"])
SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#"


@st.composite
def parameter_files(draw: st.DrawFn, names: list[str]) -> bytes:
    """A parameters file: the full and the bare shape with real and junk names and values, JSON junk, or
    bytes that are not JSON at all."""
    declared = st.sampled_from(names) if names else NAME
    entry = st.one_of(
        st.fixed_dictionaries({"value": JSON}),
        st.fixed_dictionaries({"reference": JSON}),
        st.dictionaries(NAME, JSON, max_size=3),
        JSON,
    )
    values = st.dictionaries(declared | NAME, entry, max_size=len(names) + 2)
    kind = draw(st.sampled_from(["full", "bare", "junk", "bytes"]))
    if kind == "full":
        doc: Any = {"$schema": SCHEMA, "contentVersion": "1.0.0.0", "parameters": draw(values)}
        if draw(st.booleans()):
            doc["parameters"] = draw(JSON)
    elif kind == "bare":
        doc = draw(values)
    elif kind == "junk":
        doc = draw(JSON)
    else:
        return draw(st.binary(max_size=120) | st.text(max_size=120).map(str.encode))
    return json.dumps(doc).encode()


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += "['" + part.replace("'", "\\'") + "']"
    return out


@st.composite
def set_values(draw: st.DrawFn, doc: Any) -> list[str]:
    """1–3 ``--set PATH=VALUE`` strings: real paths of the document (and their children, indices past
    the end, odd keys) or junk text, with JSON, plain-text or tricky values."""
    body = doc
    if isinstance(doc, dict) and isinstance(doc.get("resources"), list):
        body = next((r for r in doc["resources"] if isinstance(r, dict)), doc)
    real = [_dotted(p) for p in _containers(body) if p] or ["properties"]
    suffixes = [".x", "[0]", "[99]", "[-1]", "['a.b']", ".", "[", "]"]
    known = [
        "properties.source.sku", "properties.customize[0].inline[0]", "location", "tags.k",
        "identity.userAssignedIdentities['/subscriptions/x']", "properties.vmProfile.vmSize",
    ]  # fmt: skip
    path = st.one_of(
        st.sampled_from(real),
        st.tuples(st.sampled_from(real), st.sampled_from(suffixes)).map("".join),
        st.sampled_from(known),
        st.text(alphabet="abc.[]'\"=0123 \\", max_size=20),
        st.text(max_size=20),
    )
    value = st.one_of(
        JSON.map(json.dumps),
        TRICKY.map(lambda v: v if isinstance(v, str) else json.dumps(v)),
        st.text(max_size=20),
    )
    items = st.tuples(path, st.sampled_from(["=", "==", "", "= "]), value).map("".join)
    return draw(st.lists(items, min_size=1, max_size=3))


def _check_library(path: Path, **kwargs: Any) -> None:
    try:
        for loaded in load_documents(path, **kwargs):
            parse_template(loaded)
    except TemplateError:
        pass


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-inputs")


@pytest.mark.skipif(not ARM_WITH_PARAMS, reason="../shared/corpus has no ARM template with parameters")
@FUZZ
@given(data=st.data())
def test_parameter_files(workdir: Path, data: st.DataObject) -> None:
    template, names = data.draw(st.sampled_from(ARM_WITH_PARAMS), label="template")
    params = workdir / "params.json"
    params.write_bytes(data.draw(parameter_files(names), label="parameters file"))
    _check_library(template, parameters_file=params)
    rc, entries, stderr = _run_cli(template, "--parameters", str(params))
    _assert_sane(rc, entries, stderr, must_fail=False)


@pytest.mark.skipif(not DOCS, reason="../shared/corpus is absent")
@FUZZ
@given(data=st.data())
def test_set_values(workdir: Path, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(DOCS) - 1), label="template")
    template = FILES[index]
    sets = data.draw(set_values(DOCS[index]), label="--set")
    _check_library(template, sets=sets)
    # --set=VALUE: a value starting with '-' would otherwise be argparse's business, not the loader's.
    rc, entries, stderr = _run_cli(template, *[f"--set={s}" for s in sets])
    _assert_sane(rc, entries, stderr, must_fail=False)
