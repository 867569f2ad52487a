"""A JSON reader that also takes the JSONC that template authors write, and never raises a traceback.

AIB templates are hand-edited. Azure PowerShell (JSON.NET) and ARM accept ``//`` and ``/* */`` comments
and trailing commas, and a few corpus templates rely on that, while ``az`` and the portal are stricter.
So this module reads strict JSON and records each tolerated deviation (comment, trailing comma, raw
control character in a string) with its line, so the loader can tell the user the file is not strict
JSON instead of silently accepting it.

It is a hand-written tokenizer/recursive-descent parser rather than ``json.loads`` because we need:
comment handling that knows it is outside a string (``"https://…"`` is not a comment), duplicate-key
detection with paths (JSON.NET keeps the last value; we do too, and warn), a nesting limit that fails
with a message instead of a ``RecursionError``, and error positions as line/column.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from localbuilder.errors import TemplateError
from localbuilder.template.findings import PathPart

MAX_BYTES = 10 * 1024 * 1024  # AIB templates are a few KiB; 10 MiB means "this is not a template".
MAX_DEPTH = 200  # deepest corpus template is ~8; 200 keeps recursion far below Python's limit.
# Python refuses to convert longer digit strings to int (sys.int_info.default_max_str_digits);
# ARM integers are 64-bit anyway, so anything this long is junk.
_MAX_NUMBER_CHARS = 400

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WS = " \t\r\n"


@dataclasses.dataclass(frozen=True)
class Deviation:
    """One thing strict JSON would have refused, tolerated like JSON.NET does."""

    kind: str  # "comment" | "trailing comma" | "control character in string"
    line: int


@dataclasses.dataclass(frozen=True)
class ParsedJson:
    value: Any
    deviations: tuple[Deviation, ...] = ()
    # Paths (in document coordinates) of keys that appeared more than once in the same object.
    duplicates: tuple[tuple[PathPart, ...], ...] = ()

    @property
    def jsonc(self) -> bool:
        return bool(self.deviations)

    def deviation_summary(self) -> str:
        """``2 comments (lines 4, 9), 1 trailing comma (line 70)``."""
        kinds: dict[str, list[int]] = {}
        for dev in self.deviations:
            kinds.setdefault(dev.kind, []).append(dev.line)
        parts = []
        for kind, lines in kinds.items():
            shown = ", ".join(str(n) for n in lines[:5]) + (", …" if len(lines) > 5 else "")
            plural = "s" if len(lines) > 1 else ""
            parts.append(f"{len(lines)} {kind}{plural} (line{plural} {shown})")
        return ", ".join(parts)


def decode(data: bytes, source: str) -> str:
    """Bytes → text: UTF-8 with an optional BOM; anything else is a TemplateError naming the offset."""
    if len(data) > MAX_BYTES:
        raise TemplateError(
            f"{source}: {len(data)} bytes is larger than the {MAX_BYTES // (1024 * 1024)} MiB limit",
            hint="an image template is a few KiB of JSON; check that this is the right file",
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TemplateError(
            f"{source}: the file is UTF-16 encoded",
            hint="save it as UTF-8 (PowerShell: Out-File -Encoding utf8)",
        )
    offset = 0
    if data.startswith(b"\xef\xbb\xbf"):
        data, offset = data[3:], 3  # Windows editors write a UTF-8 BOM; ARM accepts it.
    nul = data.find(b"\0")
    if nul >= 0:
        # Valid UTF-8 but never text: a disk image, an archive, or UTF-16 without a BOM.
        raise TemplateError(
            f"{source}: binary data: a NUL byte at byte offset {nul + offset}",
            hint="a template must be a UTF-8 JSON document; is this the right file?",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(
            f"{source}: not UTF-8 text: invalid byte 0x{data[exc.start]:02x} at byte offset "
            f"{exc.start + offset}",
            hint="a template must be a UTF-8 JSON document; is this a binary file?",
        ) from exc


def kind(value: Any) -> str:
    """What a parsed value is, for messages: object, array, string, boolean, null, int or number."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "number"
    return "object"  # what ARM calls any other value its functions hand back


def load_file(path: Path) -> ParsedJson:
    """Read and parse a JSON/JSONC file; every failure is a TemplateError with a hint."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            decode(b"\0" * (MAX_BYTES + 1), str(path))  # raises the size error
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except IsADirectoryError as exc:
        raise TemplateError(f"{path} is a directory", hint="pass the template's JSON file") from exc
    except FileNotFoundError as exc:
        raise TemplateError(f"{path}: no such file", hint="check the path") from exc
    except OSError as exc:
        raise TemplateError(
            f"{path}: cannot read: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from exc
    return parse(decode(data, str(path)), source=str(path))


def parse(text: str, *, source: str = "<string>") -> ParsedJson:
    """Parse JSON text, tolerating comments and trailing commas (recorded as deviations)."""
    parser = _Parser(text, source)
    value = parser.document()
    return ParsedJson(value, tuple(parser.deviations), tuple(parser.duplicates))


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.source = source
        self.deviations: list[Deviation] = []
        self.duplicates: list[tuple[PathPart, ...]] = []

    # -- helpers ---------------------------------------------------------------------------------
    def line_of(self, pos: int) -> int:
        return self.s.count("\n", 0, pos) + 1

    def error(self, message: str, pos: int | None = None, hint: str | None = None) -> TemplateError:
        pos = self.i if pos is None else pos
        line = self.line_of(pos)
        col = pos - (self.s.rfind("\n", 0, pos) + 1) + 1
        return TemplateError(
            f"{self.source}: invalid JSON at line {line} column {col}: {message}",
            hint=hint or "fix the JSON syntax at that position (a JSON linter shows the context)",
        )

    def deviation(self, kind: str, pos: int) -> None:
        self.deviations.append(Deviation(kind, self.line_of(pos)))

    def describe(self, pos: int) -> str:
        if pos >= self.n:
            return "end of file"
        ch = self.s[pos]
        return repr(ch) if ch.isprintable() else f"character U+{ord(ch):04X}"

    def skip_ws(self) -> None:
        s, n = self.s, self.n
        while self.i < n:
            ch = s[self.i]
            if ch in _WS:
                self.i += 1
            elif ch == "/" and self.i + 1 < n and s[self.i + 1] == "/":
                self.deviation("comment", self.i)
                end = s.find("\n", self.i)
                self.i = n if end < 0 else end + 1
            elif ch == "/" and self.i + 1 < n and s[self.i + 1] == "*":
                start = self.i
                end = s.find("*/", self.i + 2)
                if end < 0:
                    raise self.error("unterminated /* comment", start)
                self.deviation("comment", start)
                self.i = end + 2
            else:
                return

    # -- grammar ---------------------------------------------------------------------------------
    def document(self) -> Any:
        self.skip_ws()
        if self.i >= self.n:
            raise self.error("the file is empty", hint="a template is a JSON object: { … }")
        value = self.value((), 0)
        self.skip_ws()
        if self.i < self.n:
            raise self.error(f"unexpected {self.describe(self.i)} after the end of the JSON value")
        return value

    def value(self, path: tuple[PathPart, ...], depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise self.error(
                f"nesting deeper than {MAX_DEPTH} levels",
                hint="templates are a few levels deep; this file is not a template",
            )
        self.skip_ws()
        if self.i >= self.n:
            raise self.error("unexpected end of file, expected a value")
        ch = self.s[self.i]
        if ch == "{":
            return self.object(path, depth)
        if ch == "[":
            return self.array(path, depth)
        if ch == '"':
            return self.string()
        for word in ("NaN", "Infinity", "-Infinity"):
            if self.s.startswith(word, self.i):
                raise self.error(f"{word} is not valid JSON", hint="use a number or a string")
        if ch in "-0123456789":
            return self.number()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return val
        if ch == "'":
            raise self.error("strings must use double quotes", hint="replace '…' with \"…\"")
        raise self.error(f"unexpected {self.describe(self.i)}, expected a value")

    def object(self, path: tuple[PathPart, ...], depth: int) -> dict[str, Any]:
        self.i += 1  # {
        out: dict[str, Any] = {}
        self.skip_ws()
        if self.i < self.n and self.s[self.i] == "}":
            self.i += 1
            return out
        while True:
            self.skip_ws()
            if self.i >= self.n or self.s[self.i] != '"':
                raise self.error(f"expected a quoted property name, found {self.describe(self.i)}")
            key = self.string()
            self.skip_ws()
            if self.i >= self.n or self.s[self.i] != ":":
                raise self.error(f"expected ':' after property name {key!r}, found {self.describe(self.i)}")
            self.i += 1
            if key in out:
                # JSON.NET (ARM) keeps the last value; so do we, but the user hears about it.
                self.duplicates.append(path + (key,))
                del out[key]  # the last occurrence also decides the position
            out[key] = self.value(path + (key,), depth + 1)
            self.skip_ws()
            if self.i < self.n and self.s[self.i] == ",":
                comma = self.i
                self.i += 1
                self.skip_ws()
                if self.i < self.n and self.s[self.i] == "}":
                    self.deviation("trailing comma", comma)
                    self.i += 1
                    return out
                continue
            if self.i < self.n and self.s[self.i] == "}":
                self.i += 1
                return out
            raise self.error(f"expected ',' or '}}' in an object, found {self.describe(self.i)}")

    def array(self, path: tuple[PathPart, ...], depth: int) -> list[Any]:
        self.i += 1  # [
        out: list[Any] = []
        self.skip_ws()
        if self.i < self.n and self.s[self.i] == "]":
            self.i += 1
            return out
        while True:
            out.append(self.value(path + (len(out),), depth + 1))
            self.skip_ws()
            if self.i < self.n and self.s[self.i] == ",":
                comma = self.i
                self.i += 1
                self.skip_ws()
                if self.i < self.n and self.s[self.i] == "]":
                    self.deviation("trailing comma", comma)
                    self.i += 1
                    return out
                continue
            if self.i < self.n and self.s[self.i] == "]":
                self.i += 1
                return out
            raise self.error(f"expected ',' or ']' in an array, found {self.describe(self.i)}")

    def number(self) -> int | float:
        m = _NUMBER.match(self.s, self.i)
        if not m:
            raise self.error(f"malformed number starting with {self.describe(self.i)}")
        text = m.group()
        if len(text) > _MAX_NUMBER_CHARS:
            raise self.error(f"number of {len(text)} characters is too long")
        self.i = m.end()
        if self.i < self.n and (self.s[self.i].isalnum() or self.s[self.i] in "._"):
            raise self.error(f"malformed number {text + self.s[self.i]!r}…")
        if "." in text or "e" in text or "E" in text:
            value = float(text)
            if value in (float("inf"), float("-inf")):
                raise self.error(f"number {text} is out of range")
            return value
        return int(text)

    def string(self) -> str:
        start = self.i
        self.i += 1  # opening quote
        s, n = self.s, self.n
        chunks: list[str] = []
        while True:
            # Fast path: copy the run of ordinary characters up to the next quote or backslash.
            q = s.find('"', self.i)
            b = s.find("\\", self.i, q if q >= 0 else n)
            if q < 0:
                raise self.error("unterminated string", start)
            end = b if b >= 0 else q
            run = s[self.i : end]
            if any(ord(c) < 0x20 for c in run):
                # Strict JSON forbids raw control characters (a literal tab or newline) in strings;
                # JSON.NET takes them.
                bad = next(k for k, c in enumerate(run) if ord(c) < 0x20)
                self.deviation("control character in string", self.i + bad)
            chunks.append(run)
            self.i = end
            if b < 0:
                self.i += 1  # closing quote
                return "".join(chunks)
            chunks.append(self.escape())

    def escape(self) -> str:
        pos = self.i
        self.i += 1  # backslash
        if self.i >= self.n:
            raise self.error("unterminated string", pos)
        ch = self.s[self.i]
        if ch in _ESCAPES:
            self.i += 1
            return _ESCAPES[ch]
        if ch != "u":
            raise self.error(f"invalid escape \\{ch}", pos, hint='write a backslash as "\\\\"')
        code = self.hex4(pos)
        if 0xD800 <= code < 0xDC00 and self.s.startswith("\\u", self.i):
            low_pos = self.i
            self.i += 1
            low = self.hex4(low_pos)
            if 0xDC00 <= low < 0xE000:
                return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
            raise self.error("invalid UTF-16 surrogate pair in \\u escape", pos)
        if 0xD800 <= code < 0xE000:
            # A lone surrogate cannot be written back out as UTF-8 (logs, state.json): refuse it here.
            raise self.error("lone UTF-16 surrogate in \\u escape", pos)
        return chr(code)

    def hex4(self, pos: int) -> int:
        self.i += 1  # the 'u'
        digits = self.s[self.i : self.i + 4]
        if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise self.error("\\u must be followed by 4 hex digits", pos)
        self.i += 4
        return int(digits, 16)
