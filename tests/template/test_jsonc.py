"""The JSON/JSONC reader: strict JSON, tolerated deviations, limits, and never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localbuilder.errors import TemplateError
from localbuilder.template import jsonc


def test_strict_json_has_no_deviations() -> None:
    parsed = jsonc.parse('{"a": [1, 2.5, -3e2, true, false, null, "x"]}')
    assert parsed.value == {"a": [1, 2.5, -300.0, True, False, None, "x"]}
    assert not parsed.jsonc
    assert parsed.duplicates == ()


def test_line_comment_is_stripped_and_recorded_with_its_line() -> None:
    parsed = jsonc.parse('{\n  // the name\n  "a": 1\n}')
    assert parsed.value == {"a": 1}
    assert parsed.deviations == (jsonc.Deviation("comment", 2),)
    assert parsed.jsonc


def test_block_comment_is_stripped() -> None:
    parsed = jsonc.parse('{"a": /* inline */ 1 /* multi\nline */}')
    assert parsed.value == {"a": 1}
    assert [d.kind for d in parsed.deviations] == ["comment", "comment"]


def test_double_slash_inside_a_string_is_not_a_comment() -> None:
    text = '{"scriptUri": "https://raw.githubusercontent.com/x/y.sh", "c": "/* not */"}'
    parsed = jsonc.parse(text)
    assert parsed.value["scriptUri"] == "https://raw.githubusercontent.com/x/y.sh"
    assert parsed.value["c"] == "/* not */"
    assert not parsed.jsonc


def test_escaped_quote_does_not_end_the_string_before_a_comment_marker() -> None:
    parsed = jsonc.parse(r'{"a": "say \"hi\" // still string"}')
    assert parsed.value == {"a": 'say "hi" // still string'}
    assert not parsed.jsonc


def test_trailing_commas_in_objects_and_arrays() -> None:
    parsed = jsonc.parse('{"a": [1, 2,],\n "b": 3,\n}')
    assert parsed.value == {"a": [1, 2], "b": 3}
    assert [(d.kind, d.line) for d in parsed.deviations] == [("trailing comma", 1), ("trailing comma", 2)]
    assert "2 trailing commas (lines 1, 2)" in parsed.deviation_summary()


def test_a_lone_comma_is_still_an_error() -> None:
    with pytest.raises(TemplateError, match="line 1 column 2"):
        jsonc.parse("[,]")


def test_raw_tab_in_a_string_is_tolerated_and_recorded() -> None:
    parsed = jsonc.parse('{"a": "x\ty"}')
    assert parsed.value == {"a": "x\ty"}
    assert parsed.deviations[0].kind == "control character in string"


def test_unterminated_block_comment_names_its_position() -> None:
    with pytest.raises(TemplateError, match=r"line 2 column 1: unterminated /\* comment"):
        jsonc.parse('{"a": 1,\n/* oops')


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(word: str) -> None:
    with pytest.raises(TemplateError, match=f"{word} is not valid JSON"):
        jsonc.parse(f'{{"a": {word}}}')


def test_huge_exponent_is_rejected_not_turned_into_infinity() -> None:
    with pytest.raises(TemplateError, match="out of range"):
        jsonc.parse("1e999")


def test_single_quotes_get_a_specific_hint() -> None:
    with pytest.raises(TemplateError) as info:
        jsonc.parse("{'a': 1}")
    assert "quoted property name" in str(info.value)


def test_duplicate_keys_last_wins_and_path_is_recorded() -> None:
    parsed = jsonc.parse('{"p": {"sku": "a", "x": [{"k": 1, "k": 2}], "sku": "b"}}')
    assert parsed.value == {"p": {"x": [{"k": 2}], "sku": "b"}}
    assert set(parsed.duplicates) == {("p", "x", 0, "k"), ("p", "sku")}


def test_unicode_escapes_and_surrogate_pairs() -> None:
    assert jsonc.parse(r'"\u00e9\ud83d\ude00"').value == "é😀"


def test_lone_surrogate_is_rejected() -> None:
    with pytest.raises(TemplateError, match="surrogate"):
        jsonc.parse(r'"\ud83d"')


def test_invalid_escape_names_it() -> None:
    with pytest.raises(TemplateError, match=r"invalid escape \\q"):
        jsonc.parse(r'"\q"')


def test_nesting_limit_is_a_clear_error_not_a_recursion_error() -> None:
    text = "[" * (jsonc.MAX_DEPTH + 5) + "]" * (jsonc.MAX_DEPTH + 5)
    with pytest.raises(TemplateError, match=f"nesting deeper than {jsonc.MAX_DEPTH}"):
        jsonc.parse(text)


def test_nesting_just_under_the_limit_parses() -> None:
    depth = jsonc.MAX_DEPTH - 1
    assert jsonc.parse("[" * depth + "]" * depth).value is not None


def test_trailing_garbage_is_an_error() -> None:
    with pytest.raises(TemplateError, match="after the end of the JSON value"):
        jsonc.parse('{"a": 1} x')


def test_empty_file_is_an_error() -> None:
    with pytest.raises(TemplateError, match="empty"):
        jsonc.parse("  // only a comment\n")


def test_overlong_number_is_an_error_not_a_valueerror() -> None:
    with pytest.raises(TemplateError, match="too long"):
        jsonc.parse("9" * 5000)


def test_decode_accepts_utf8_bom() -> None:
    assert jsonc.decode(b'\xef\xbb\xbf{"a": 1}', "t.json") == '{"a": 1}'


def test_decode_names_the_byte_offset_of_invalid_utf8() -> None:
    with pytest.raises(TemplateError, match="invalid byte 0xff at byte offset 6"):
        jsonc.decode(b'{"a": \xff}', "t.json")


def test_decode_recognises_utf16() -> None:
    with pytest.raises(TemplateError, match="UTF-16"):
        jsonc.decode('{"a": 1}'.encode("utf-16"), "t.json")


def test_load_file_size_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as fh:
        fh.truncate(jsonc.MAX_BYTES + 1)
    with pytest.raises(TemplateError, match="larger than the 10 MiB limit"):
        jsonc.load_file(big)


def test_load_file_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="no such file"):
        jsonc.load_file(tmp_path / "nope.json")
    with pytest.raises(TemplateError, match="is a directory"):
        jsonc.load_file(tmp_path)


def test_binary_junk_names_the_byte_offset(tmp_path: Path) -> None:
    junk = tmp_path / "disk.vhd"
    junk.write_bytes(b"conectix\x00\x00\x00\x02\x00\x01\x00\x00\xff\xff")
    with pytest.raises(TemplateError, match="NUL byte at byte offset 8"):
        jsonc.load_file(junk)


def test_byte_offsets_count_the_bom() -> None:
    with pytest.raises(TemplateError, match="byte offset 9"):
        jsonc.decode(b'\xef\xbb\xbf{"a": \xff}', "t.json")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_value_or_a_template_error(text: str) -> None:
    try:
        jsonc.parse(text)
    except TemplateError as exc:
        assert exc.hint


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_value_or_a_template_error(data: bytes) -> None:
    try:
        jsonc.parse(jsonc.decode(data, "fuzz"))
    except TemplateError:
        pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(_json_values)
def test_agrees_with_the_json_module_on_strict_json(value: object) -> None:
    text = json.dumps(value)
    parsed = jsonc.parse(text)
    assert parsed.value == json.loads(text)
    assert not parsed.jsonc
